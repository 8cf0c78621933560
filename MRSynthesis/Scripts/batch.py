"""Synthesise from image files with Slicer and no main window (batch mode).

    Slicer --no-splash --no-main-window --python-script <module folder>/Scripts/batch.py -- \\
        --input T1=t1.nii.gz --input T2=t2.nii.gz --target FLAIR --out results/

(<module folder>: the folder of MRSynthesis.py, ``qt-scripted-modules`` in an installed
extension.) The script lives in ``Scripts/`` because Slicer registers every ``.py`` file
directly in a scripted-module folder as a module of that name, and fails on this one.
Slicer passes arguments it does not know to the script; the ``--`` stops it from reading
any that follow, which ``--help`` needs (Slicer would show its own help). Inputs are read
with ``slicer.util.loadVolume`` (any format Slicer reads), synthesised by the MRSynthesisLib
command line exactly as the panel does, and the results saved with ``slicer.util.saveNode``
under a temporary name, given the command line's header line (``header_notes``), then
renamed: an interrupted run leaves no half-written file, an existing file is replaced only
with ``--overwrite``, an input never. Slicer exits with 0 on
success, 2 on bad input (with the reason on stderr), 130 when the command line was cancelled (SIGINT, SIGTERM),
1 on an internal error or any other end of the command line (killed by a signal, such as the kernel's OOM killer).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
# Outputs are written under a temporary name and renamed (MRSynthesisLib.atomic): only single-file
# formats survive that, a detached header (.nhdr, .mhd) would name its data file's temporary name.
OUTPUT_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_CANCELLED = 0, 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    from MRSynthesisModuleLib.job import DEVICES, PLANES, PRECISIONS

    parser = argparse.ArgumentParser(
        prog="Slicer --no-main-window --python-script Scripts/batch.py --",
        description="Synthesise missing MR contrasts of one subject inside Slicer (MRSynthesis batch mode).")
    parser.add_argument("--input", action="append", required=True, metavar="MODALITY=PATH",
                        help="an input volume and its modality (repeat; the first one's grid is the outputs')")
    parser.add_argument("--target", action="append", required=True, metavar="MODALITY",
                        help="a contrast to synthesise (repeat)")
    parser.add_argument("--out", required=True,
                        help="output folder (gets <TARGET>_synthetic.nii.gz), or an image file name for one target")
    parser.add_argument("--model", help="model folder or name; default: the bundled model")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="auto picks CUDA, then MPS, then CPU")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="autocast precision; auto: fp16/bf16 on GPU, bf16 on CPUs with AMX or AMD's "
                             "AVX512-BF16 (measured faster there), else fp32")
    parser.add_argument("--plane", choices=PLANES,
                        help="2D models: slice in this plane instead of the card's (view transfer)")
    parser.add_argument("--lesion-mask", help="binary mask of lesions to synthesise, on the first input's grid")
    parser.add_argument("--lesion-mask-on", metavar="MODALITY",
                        help="which input's scan the lesion mask was drawn on; with --register the mask moves with "
                             "that input's registration onto the first input; default: the first input")
    parser.add_argument("--brain-mask", help="binary brain mask on the first input's grid; default: the inputs' "
                                             "foreground (which includes the skull of an unstripped scan)")
    parser.add_argument("--saliency-out", help="folder for the per-input P3S saliency maps")
    parser.add_argument("--saliency-reference", action="append", default=[], metavar="TARGET=PATH",
                        help="a real scan of a target (repeat): its maps become the paper's P3S, the gradient of the "
                             "prediction's error against it, instead of the target-free variant")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files (never an input)")
    parser.add_argument("--resample", action="store_true",
                        help="resample the other inputs and the lesion mask onto the first input's grid where they lie "
                             "on another one (otherwise they are refused), as the panel's checkbox does")
    parser.add_argument("--register", action="store_true",
                        help="register the other inputs rigidly onto the first one before synthesis (mutual "
                             "information on edges), as the panel's checkbox does")
    parser.add_argument("--native-spacing", action="store_true",
                        help="synthesise on the inputs' own voxels even where they are coarser than the model's")
    return parser


class SlicerFiles:
    """Reading and saving through Slicer's own I/O (stand-ins replace it in tests)."""

    def __init__(self) -> None:
        import slicer

        self.slicer = slicer
        self.scene = slicer.mrmlScene

    def load_volume(self, path: str, name: str) -> Any:
        """Raises ``RuntimeError`` when Slicer cannot read ``path``."""
        return self.slicer.util.loadVolume(path, {"name": name, "show": False})

    def save_node(self, node: Any, path: str) -> bool:
        return self.slicer.util.saveNode(node, path)


def output_path(out: str, target: str, targets: Sequence[str]) -> str:
    if out.lower().endswith(IMAGE_SUFFIXES):
        if not out.lower().endswith(OUTPUT_SUFFIXES):
            raise ValueError(f"--out {out}: a detached-header format; write one of {', '.join(OUTPUT_SUFFIXES)}")
        if len(targets) != 1:
            raise ValueError(f"--out {out} is an image file, but {len(targets)} targets were asked for; "
                             "give a folder")
        return out
    check_folder(out, "--out", f"or an image file ({', '.join(OUTPUT_SUFFIXES)})")
    return os.path.join(out, f"{target}_synthetic.nii.gz")


def check_folder(path: str, option: str, alternative: str = "") -> None:
    """A new folder named like a file (``flair.png``, ``maps.nii.gz``) is a mistake for a file name, as the
    command line's ``check_out`` says; an existing folder is taken as it is, and a dot that starts no file
    extension (``sub-01.ses-1``) names a folder (``formats.looks_like_a_file``)."""
    from MRSynthesisLib.formats import looks_like_a_file

    if looks_like_a_file(path.rstrip(os.sep)) and not os.path.isdir(path):
        raise ValueError(f"{option} {path}: looks like a file name, but it names a folder to write into; "
                         f"name a folder without an extension {alternative}".rstrip())


def save_all(files: Any, saves: Sequence[tuple[Any, str]]) -> None:
    """Save every (node, path) under a temporary name beside its file, with the line the command line writes in the
    header (``scene.header_line``; MRML storage writes none: ``header_notes``), and rename it into place; when one
    fails, the files this call created are removed again, as the command line does: all or nothing."""
    from MRSynthesisLib.atomic import replacing, write_json
    from MRSynthesisLib.errors import InputError
    from MRSynthesisLib.header_notes import write_note
    from MRSynthesisLib.nifti_checks import truncation
    from MRSynthesisLib.provenance import sidecar_path
    from MRSynthesisModuleLib.saved_files import provenance, sidecar_record
    from MRSynthesisModuleLib.scene import header_line

    created: list[str] = []
    try:
        for node, path in saves:
            existed = os.path.exists(path)
            suffix = next(s for s in OUTPUT_SUFFIXES if path.lower().endswith(s))
            with replacing(path, suffix=suffix) as temporary:
                if not files.save_node(node, str(temporary)):
                    raise OSError(f"could not save {node.GetName()} to {path}")
                if truncation(temporary):  # ITK's NIfTI writer reports a short write as success
                    raise InputError(f"{path}: could not save {node.GetName()} completely; is the disk full?")
                write_note(temporary, header_line(node))
            if not existed:
                created.append(path)
            record = provenance(node)
            if record is not None:  # a synthetic image: its sidecar, as the command line writes it
                sidecar = str(sidecar_path(path))
                existed = os.path.exists(sidecar)
                write_json(sidecar, sidecar_record(record, path))
                if not existed:
                    created.append(sidecar)
            print(f"{node.GetName()}: {path}")
    except BaseException:
        for path in created:
            os.remove(path)
        raise


def run(argv: Sequence[str], files: Any, launcher: Any = None) -> int:
    """Parse, load, synthesise, save; returns the exit status (messages go to stderr)."""
    from MRSynthesisModuleLib import paths
    from MRSynthesisModuleLib.process import CliLauncher
    from MRSynthesisModuleLib.scene import SceneBridge
    from MRSynthesisModuleLib.synthesis import SynthesisFailed, synthesize_and_wait

    paths.ensure_importable()
    from MRSynthesisLib.atomic import check_writable
    from MRSynthesisLib.modalities import canonical, check_given_once
    from MRSynthesisLib.nifti_checks import truncation
    from MRSynthesisLib.provenance import sidecars

    try:
        args = build_parser().parse_args(list(argv))
    except SystemExit as stop:  # --help (0) or a usage error (2): argparse has printed why
        return int(stop.code or 0)
    try:
        pairs = [(canonical(modality), path) for modality, path in map(_pair, args.input)]
        check_given_once(pairs, "--input")  # as the command line and the panel
        targets = [canonical(target) for target in args.target]
        outputs = {target: output_path(args.out, target, targets) for target in targets}
        if args.saliency_out:
            check_folder(args.saliency_out, "--saliency-out")
        named = [(canonical(target), path) for target, path in
                 (_pair(text, "--saliency-reference") for text in args.saliency_reference)]
        check_given_once(named, "--saliency-reference")
        references = dict(named)
        if references and not args.saliency_out:
            raise ValueError("--saliency-reference: used by the saliency maps only; add --saliency-out DIR")
        maps = [os.path.join(args.saliency_out, f"P3S_{target}_from_{modality}.nii.gz")
                for target in targets for modality, _ in pairs] if args.saliency_out else []
        given = [path for _, path in pairs] + [p for p in (args.lesion_mask, args.brain_mask) if p]
        given += list(references.values())
        theirs, ours = sidecars(list(outputs.values()))  # one of ours beside no image describes nothing
        check_writable([*outputs.values(), *theirs, *maps], given, args.overwrite)  # inputs never replaced
        check_writable(ours, given, True)
        rows = []
        for modality, path in pairs:
            problem = truncation(path) if os.path.isfile(path) else None  # Slicer would read it zero-filled
            if problem:
                raise ValueError(f"--input {modality}={path}: {problem}")
            try:
                rows.append((files.load_volume(path, modality), modality))
            except RuntimeError as error:
                raise ValueError(f"cannot load --input {modality}={path}: {error}") from None
    except ValueError as error:
        print(f"batch.py: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        results = synthesize_and_wait(SceneBridge(files.scene), launcher or CliLauncher(), rows, targets,
                                      model=args.model, device=args.device, precision=args.precision,
                                      plane=args.plane, lesion_file=args.lesion_mask, lesion_on=args.lesion_mask_on,
                                      brain_file=args.brain_mask,
                                      saliency=bool(args.saliency_out), saliency_reference_files=references,
                                      resample=args.resample,
                                      native_spacing=args.native_spacing, register=args.register,
                                      labels=dict(pairs))
    except SynthesisFailed as error:
        hint = ("\nIn batch mode: register the inputs first, or pass --resample to resample them onto the first "
                "input's grid." if "different grids" in str(error) and not args.resample else "")
        print(f"batch.py: error: {error}{hint}", file=sys.stderr)
        # A killed command line's status (-9, or the launcher's 247) would reach Slicer's exit as it is.
        return error.exit_code if error.exit_code in (EXIT_BAD_INPUT, EXIT_CANCELLED) else EXIT_INTERNAL
    saves = [(results.outputs[target], path) for target, path in outputs.items()]
    saves += [(node, os.path.join(args.saliency_out, f"P3S_{target}_from_{modality}.nii.gz"))
              for target, per_input in results.saliency.items() for modality, node in per_input.items()]
    try:
        save_all(files, saves)
    except ValueError as error:  # a full disk, a read-only folder (MRSynthesisLib's InputError)
        print(f"batch.py: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as error:  # Slicer's saveNode said no, without a reason
        print(f"batch.py: error: {error}", file=sys.stderr)
        return EXIT_INTERNAL
    for target, shares in results.contributions.items():
        print(f"{target} contributions: " + ", ".join(f"{m} {100 * v:.1f} %" for m, v in shares.items()))
    if results.saliency_objective:
        print(f"saliency maps: {results.saliency_objective}")
    for note in results.notes:
        print(f"note: {note}")
    return EXIT_OK


def _pair(text: str, option: str = "--input") -> tuple[str, str]:
    modality, sep, path = text.partition("=")
    if not sep or not modality or not path:
        raise ValueError(f"{option} {text!r} is not MODALITY=PATH")
    return modality, path


def _put_module_folder_on_path() -> None:
    """Slicer's --python-script puts only this script's folder (Scripts/) on sys.path;
    MRSynthesisModuleLib is one folder up."""
    module_folder = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if module_folder not in sys.path:
        sys.path.insert(0, module_folder)


if __name__ == "__main__":  # run by Slicer's --python-script (in its __main__, with __file__ set)
    _put_module_folder_on_path()
    import slicer

    try:
        status = run(sys.argv[1:], SlicerFiles())
    except Exception:  # noqa: BLE001 - Slicer must exit even on a bug, or a batch job would hang
        import traceback

        traceback.print_exc()
        status = EXIT_INTERNAL
    slicer.util.exit(status)
