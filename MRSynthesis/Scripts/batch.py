"""Synthesise from image files with Slicer and no main window (batch mode).

    Slicer --no-splash --no-main-window --python-script <module folder>/Scripts/batch.py -- \\
        --input T1=t1.nii.gz --input T2=t2.nii.gz --target FLAIR --out results/

(<module folder>: the folder of MRSynthesis.py, ``qt-scripted-modules`` in an installed
extension.) The script lives in ``Scripts/`` because Slicer registers every ``.py`` file
directly in a scripted-module folder as a module of that name, and fails on this one.
Slicer passes arguments it does not know to the script; the ``--`` stops it from reading
any that follow, which ``--help`` needs (Slicer would show its own help). Inputs are read
with ``slicer.util.loadVolume`` (any format Slicer reads), synthesised by the MRSynthesisLib
command line exactly as the panel does, and the results saved with ``slicer.util.saveNode``. Slicer exits with 0 on success, 2 on bad input (with
the reason on stderr), 1 on an internal error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
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
    parser.add_argument("--device", choices=("auto", "cuda", "mps", "cpu"), default="auto")
    parser.add_argument("--lesion-mask", help="0/1 mask of lesions to synthesise, on the first input's grid")
    parser.add_argument("--saliency-out", help="folder for the per-input P3S saliency maps")
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
        if len(targets) != 1:
            raise ValueError(f"--out {out} is an image file, but {len(targets)} targets were asked for; "
                             "give a folder")
        return out
    return os.path.join(out, f"{target}_synthetic.nii.gz")


def run(argv: Sequence[str], files: Any, launcher: Any = None) -> int:
    """Parse, load, synthesise, save; returns the exit status (messages go to stderr)."""
    from MRSynthesisModuleLib import paths
    from MRSynthesisModuleLib.process import CliLauncher
    from MRSynthesisModuleLib.scene import SceneBridge
    from MRSynthesisModuleLib.synthesis import SynthesisFailed, synthesize_and_wait

    paths.ensure_importable()
    from MRSynthesisLib.modalities import canonical

    try:
        args = build_parser().parse_args(list(argv))
    except SystemExit as stop:  # --help (0) or a usage error (2): argparse has printed why
        return int(stop.code or 0)
    try:
        pairs = [(canonical(modality), path) for modality, path in map(_pair, args.input)]
        targets = [canonical(target) for target in args.target]
        outputs = {target: output_path(args.out, target, targets) for target in targets}
        rows = []
        for modality, path in pairs:
            try:
                rows.append((files.load_volume(path, modality), modality))
            except RuntimeError as error:
                raise ValueError(f"cannot load --input {modality}={path}: {error}") from None
    except ValueError as error:
        print(f"batch.py: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        results = synthesize_and_wait(SceneBridge(files.scene), launcher or CliLauncher(), rows, targets,
                                      model=args.model, device=args.device, lesion_file=args.lesion_mask,
                                      saliency=bool(args.saliency_out))
    except SynthesisFailed as error:
        print(f"batch.py: error: {error}", file=sys.stderr)
        return error.exit_code
    saves = [(results.outputs[target], path) for target, path in outputs.items()]
    saves += [(node, os.path.join(args.saliency_out, f"P3S_{target}_from_{modality}.nii.gz"))
              for target, maps in results.saliency.items() for modality, node in maps.items()]
    for node, path in saves:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if not files.save_node(node, path):
            print(f"batch.py: error: could not save {node.GetName()} to {path}", file=sys.stderr)
            return EXIT_INTERNAL
        print(f"{node.GetName()}: {path}")
    for target, shares in results.contributions.items():
        print(f"{target} contributions: " + ", ".join(f"{m} {100 * v:.1f} %" for m, v in shares.items()))
    for note in results.notes:
        print(f"note: {note}")
    return EXIT_OK


def _pair(text: str) -> tuple[str, str]:
    modality, sep, path = text.partition("=")
    if not sep or not modality or not path:
        raise ValueError(f"--input {text!r} is not MODALITY=PATH")
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
