"""The ``mrsynthesis`` command line: the one door for the shell, Slicer batch mode and the Slicer panel.

Exit codes: 0 success, 2 bad input (the message says what to fix), 1 internal failure
(a traceback follows), 130 cancelled. With ``--progress json`` every step, note, result
and error is one JSON line on stdout, for programs that drive this one.
"""

from __future__ import annotations

import argparse
import signal
import sys
import traceback
from collections.abc import Sequence

from . import __version__
from .devices import DEVICES, PRECISIONS
from .errors import EXIT_BAD_INPUT, EXIT_CANCELLED, EXIT_INTERNAL, Cancelled, InputError
from .formats import WRITABLE_SUFFIXES
from .progress import MODES, Reporter


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so usage errors share the bad-input path."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise InputError(f"{self.prog}: {message} (see --help)")


def _pair(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"{text!r} is not MODALITY=PATH")
    return name, path


def _run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model",
                        help="model name (see `mrsynthesis models`; a name several model folders carry is refused: "
                             "give the folder) or model folder; default: the bundled model")
    parser.add_argument("--target", action="append", default=[], metavar="MODALITY",
                        help="contrast to synthesise (repeat or comma-separate); default: every output the model "
                             "produces that is not an input")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="auto picks CUDA, then MPS, then CPU")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="autocast precision; auto: fp16/bf16 on GPU, bf16 on CPUs with AMX or AMD's "
                             "AVX512-BF16 (measured faster there), else fp32")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="slices (2D) or tiles (3D) per step; default: 4 slices / 1 tile on the CPU (larger "
                             "batches ran slower on CPU caches), 16 slices / 2 tiles on a GPU")
    parser.add_argument("--tile", type=int,
                        help="3D models: edge of each tile's output core in voxels (default 96); tiles overlap by the "
                             "network's receptive field only, so the result equals one whole-volume pass (smaller: "
                             "less memory)")
    parser.add_argument("--plane", choices=("axial", "coronal", "sagittal"),
                        help="2D models: slice in this plane instead of the card's (view transfer)")
    parser.add_argument("--resample-to", metavar="MODALITY",
                        help="resample inputs on other grids onto this input's grid (otherwise they are refused)")
    parser.add_argument("--register", action="store_true",
                        help="register the other inputs rigidly onto the first one (or the --resample-to one), by "
                             "mutual information, before synthesis: for inputs of a session the patient moved in "
                             "(2-5 s per input)")
    parser.add_argument("--native-spacing", action="store_true",
                        help="synthesise on the inputs' own voxels even where they are coarser than the model's "
                             "training voxels (by default such inputs are synthesised on the model's spacing and "
                             "the results resampled back to the input grid)")
    parser.add_argument("--format", default=".nii.gz", choices=WRITABLE_SUFFIXES, help="format of outputs in a folder")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files (inputs never are)")
    parser.add_argument("--progress", choices=MODES, default="auto", help="json: one JSON line per step on stdout")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mrsynthesis", description="Multi-contrast brain MRI synthesis (MRSynthesis).")
    parser.add_argument("--version", action="version", version=f"mrsynthesis {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    synth = commands.add_parser("synthesize", help="synthesise missing contrasts of one subject")
    synth.add_argument("--input", action="append", type=_pair, required=True, metavar="MODALITY=PATH",
                       help="an input volume and its modality (repeat); aliases such as t1n, t2f are accepted")
    synth.add_argument("--out", required=True,
                       help="output folder, or an image file name when there is a single target")
    synth.add_argument("--lesion-mask", help="binary mask of lesions to synthesise (models with a lesion channel)")
    synth.add_argument("--lesion-mask-on", metavar="MODALITY",
                       help="which input's scan the lesion mask was drawn on; with --register the mask moves with "
                            "that input's registration onto the reference; default: the reference (the first input, "
                            "or the --resample-to one)")
    synth.add_argument("--brain-mask", help="binary brain mask; default: the inputs' foreground")
    synth.add_argument("--saliency-out", help="folder for per-input P3S saliency maps and contributions.json")
    synth.add_argument("--saliency-reference", action="append", type=_pair, default=[], metavar="MODALITY=PATH",
                       help="a real image of a target: saliency then follows the paper's prediction-error gradient")
    synth.add_argument("--saliency-region", metavar="PATH",
                       help="binary mask where contributions are also summarised (default: the --lesion-mask)")
    _run_options(synth)

    batch = commands.add_parser("batch", help="synthesise for a cohort listed in a CSV manifest (resumable; "
                                              "shards subjects across torchrun ranks)")
    batch.add_argument("--manifest", required=True,
                       help="CSV with a 'subject' column, one column per input modality (empty = missing), "
                            "optional 'lesion_mask' and 'brain_mask', and 'lesion_mask_on' (the modality whose scan "
                            "the lesion mask was drawn on, as --lesion-mask-on); relative paths are relative to the "
                            "CSV")
    batch.add_argument("--out", required=True, help="output folder; each subject gets a sub-folder")
    _run_options(batch)

    listing = commands.add_parser("models", help="list bundled and user models")
    listing.add_argument("--json", action="store_true", help="machine-readable list")

    evaluate = commands.add_parser("evaluate", help="metrics of a synthetic volume against a reference")
    evaluate.add_argument("--synthetic", required=True)
    evaluate.add_argument("--reference", required=True)
    evaluate.add_argument("--brain-mask", help="default: the reference's foreground")
    evaluate.add_argument("--lesion-mask", help="adds the lesion contrast ratios (Wei et al.)")
    evaluate.add_argument("--nawm-mask", help="white-matter mask for the ratios; default: derived from --t1")
    evaluate.add_argument("--t1", help="T1 image used to derive white matter (3-class Otsu) when no --nawm-mask")
    evaluate.add_argument("--normalisation", default="mean_in_brain",
                          help="applied to both volumes before comparing (default: divide by the mean in the brain, "
                               "as Chartsias et al. evaluate; 'none' compares raw intensities)")
    evaluate.add_argument("--slice-plane", choices=("axial", "coronal", "sagittal"),
                          help="plane a slice-wise model worked in: adds off-plane consistency figures")
    evaluate.add_argument("--json", help="also write the metrics to this JSON file")
    evaluate.add_argument("--figure", help="also write a PNG: axial, coronal and sagittal views of the synthetic "
                                           "volume, the reference and their absolute difference")
    evaluate.add_argument("--overwrite", action="store_true", help="replace an existing --json or --figure file")

    demo = commands.add_parser("demo", help="synthesise from the MNI152 T1 template nilearn ships, paint a demo "
                                            "lesion, write volumes and a PNG report")
    demo.add_argument("--out", default="mrsynthesis-demo", help="output folder (default: ./mrsynthesis-demo)")
    demo.add_argument("--model", help="model name or folder; default: the bundled model")
    demo.add_argument("--device", choices=DEVICES, default="auto")
    demo.add_argument("--overwrite", action="store_true",
                      help="replace any file under an output's name (without it, only the demo's own earlier outputs, "
                           "unchanged since, are replaced)")
    demo.add_argument("--progress", choices=MODES, default="auto")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    json_requested = "--progress=json" in argv or (
        "--progress" in argv and argv[argv.index("--progress") + 1:][:1] == ["json"])
    mode = "json" if json_requested else "auto"
    reporter = Reporter(mode)
    try:
        args = build_parser().parse_args(argv)
        reporter = Reporter(getattr(args, "progress", "auto"))
        _raise_on_termination()
        from . import (
            commands,  # late: keeps --help and usage errors fast (no torch import)
        )

        return getattr(commands, args.command)(args, reporter)
    except InputError as error:
        reporter.close()
        reporter.event("error", kind="input", message=str(error))
        print(f"mrsynthesis: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (Cancelled, KeyboardInterrupt):
        reporter.close()
        reporter.event("cancelled")
        print("mrsynthesis: cancelled; no output was written for the unfinished run", file=sys.stderr)
        return EXIT_CANCELLED
    except Exception as error:  # noqa: BLE001 - the last resort: report, with the traceback
        reporter.close()
        reporter.event("error", kind="internal", message=f"{type(error).__name__}: {error}")
        traceback.print_exc()
        print("mrsynthesis: internal error (a bug): please report it with the traceback above", file=sys.stderr)
        return EXIT_INTERNAL


def _raise_on_termination() -> None:
    """SIGTERM (the Slicer panel's Cancel) stops the run at once, like Ctrl-C."""

    def handler(signum: int, frame: object) -> None:
        raise Cancelled(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)
