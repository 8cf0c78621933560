"""Grey/white matter contrast of synthetic images against the real ones: does a model keep the tissue order?

Run by hand from the repository root::

    python -m training.experiments.tissue_contrast --model <model folder> --inputs T1 \\
        --subjects ../shared/data/ms/patient07 ../shared/data/ms/patient19 --template --out docs/results/<name>

MSE and SSIM reward a synthetic image for being near the real one voxel by voxel; a radiologist
first checks the tissue contrast: in T2 and FLAIR grey matter is brighter than white matter, in T1
darker. This reports, per case, the ratio of the mean intensity in grey matter to that in white
matter for each synthesised output and, where the case has it, for the real image.

Tissue classes: three-class Otsu thresholds of the T1 inside the brain (CSF < grey < white
matter), the product's brain mask (``preprocessing.foreground_mask`` of the inputs), minus the
case's expert lesion mask. Otsu on intensities is coarse next to FSL FAST or ANTs Atropos (no
bias-field model, no spatial prior; partial-volume voxels fall on either side), but the same
masks score the synthetic and the real image, so the comparison between them is fair, and it
needs nothing beyond SimpleITK. ``--template`` adds the MNI152 T1 template the demo uses
(``MRSynthesisLib.demo``): an average of 152 brains, not a scan, which shows how a model
behaves on an input unlike its training scans. The template is scored twice: with the Otsu
classes, and with the anatomical classes of its own grey and white matter probability maps
(above 0.5), which do not follow the T1 intensity (blurred cortex and deep grey matter have
T1 intensities near white matter's in an average). Synthesis goes through the product's
``SynthesisLogic`` (fp32 by default). Writes ``results.md`` and ``results.json``; no volumes.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from MRSynthesisLib import registry
from MRSynthesisLib.cards import load_model
from MRSynthesisLib.demo import TEMPLATE, WHITE_MATTER, nilearn_file
from MRSynthesisLib.devices import DEVICES, PRECISIONS
from MRSynthesisLib.logic import SynthesisLogic, SynthesisRequest
from MRSynthesisLib.preprocessing import foreground_mask
from MRSynthesisLib.volume import Volume, read_volume

from ..datasets import discover
from .held_out_tasks import subject_role
from .loso import versions, write_results

GREY_MATTER = "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"  # the template's tissue maps, beside it
OTSU = "Otsu of the T1"


def tissue_masks(t1: np.ndarray, brain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(grey matter, white matter): the middle and brightest of three Otsu classes of ``t1`` in ``brain``."""
    values = np.asarray(t1, np.float32)[brain]
    if values.size < 3:
        raise ValueError("the brain mask holds fewer than 3 voxels")
    otsu = sitk.OtsuMultipleThresholdsImageFilter()
    otsu.SetNumberOfThresholds(2)
    otsu.Execute(sitk.GetImageFromArray(values[None, None]))
    low, high = otsu.GetThresholds()
    return brain & (t1 > low) & (t1 <= high), brain & (t1 > high)


def grey_white_ratio(image: np.ndarray, grey: np.ndarray, white: np.ndarray) -> float:
    return float(np.mean(image[grey], dtype=np.float64) / np.mean(image[white], dtype=np.float64))


def score_case(logic: SynthesisLogic, name: str, volumes: Mapping[str, Volume], inputs: Sequence[str],
               lesion: Volume | None, role: str, *, device: str, precision: str,
               tissue_maps: tuple[Volume, Volume] | None = None) -> list[dict[str, Any]]:
    """Synthesise every output of the model that is not an input and compare grey/white ratios.

    One entry per tissue definition: the T1's Otsu classes, and the (grey, white) probability
    maps above 0.5 when ``tissue_maps`` are given.
    """
    missing = [m for m in ("T1", *inputs) if m not in volumes]
    if missing:
        raise ValueError(f"{name}: no {', '.join(dict.fromkeys(missing))} image (T1 defines the tissue classes)")
    for volume in [*volumes.values(), *([lesion] if lesion is not None else [])]:
        if volume.array.shape != volumes["T1"].array.shape:  # the real images are scored on the T1's masks
            raise ValueError(f"{volume.source}: {volume.array.shape} voxels, the T1 {volumes['T1'].source} has "
                             f"{volumes['T1'].array.shape}; register and resample the case first")
    targets = [t for t in logic.model.card.outputs if t not in inputs]
    result = logic.run(SynthesisRequest(inputs={m: volumes[m] for m in inputs}, targets=targets,
                                        device=device, precision=precision))
    brain = foreground_mask([volumes[m].array for m in inputs])
    if lesion is not None:
        brain &= ~(lesion.array > 0)
    classes = {OTSU: tissue_masks(volumes["T1"].array, brain)}
    if tissue_maps is not None:
        classes["tissue maps > 0.5"] = tuple(brain & (m.array > 0.5) for m in tissue_maps)
    return [{"case": name, "classes": label, "role": role, "grey_voxels": int(grey.sum()),
             "white_voxels": int(white.sum()), "t1": grey_white_ratio(volumes["T1"].array, grey, white),
             "synthetic": {t: grey_white_ratio(result.outputs[t].array, grey, white) for t in targets},
             "real": {t: grey_white_ratio(volumes[t].array, grey, white) for t in targets if t in volumes}}
            for label, (grey, white) in classes.items()]


def markdown(results: dict[str, Any]) -> str:
    cases = results["cases"]
    targets = list(cases[0]["synthetic"]) if cases else []
    lines = ["# Grey/white matter contrast of synthetic images", "",
             f"Date: {results['date']}  ", f"Command: `{results['command']}`  ",
             f"Versions: {', '.join(f'{k} {v}' for k, v in results['versions'].items())}", "",
             f"Model `{results['model']}` {results['version']}, inputs {' + '.join(results['inputs'])}, "
             f"{results['precision']}. Mean intensity in grey matter over that in white matter, inside the "
             "brain, expert lesions excluded: synthetic (real). Classes: three-class Otsu of the T1, or the "
             "template's own tissue maps. Role: what the model's training did with the case.", "",
             "| case | classes | role | T1 | " + " | ".join(targets) + " |", "| --- " * (4 + len(targets)) + "|"]
    for case in cases:
        cells = [f"{case['synthetic'][t]:.3f}" + (f" ({case['real'][t]:.3f})" if t in case["real"] else "")
                 for t in targets]
        lines.append(f"| {case['case']} | {case['classes']} | {case['role']} | {case['t1']:.3f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.experiments.tissue_contrast",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder or name (default: the bundled model)")
    parser.add_argument("--inputs", nargs="+", default=["T1"], help="the inputs given to the model (default: T1)")
    parser.add_argument("--subjects", nargs="*", default=[], type=Path, help="subject folders (BraTS or MS naming)")
    parser.add_argument("--template", action="store_true", help="also the demo's MNI152 T1 template (T1 input only)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS, help="default fp32")
    args = parser.parse_args(argv)
    if not args.subjects and not args.template:
        parser.error("give --subjects, --template or both")
    if args.template and args.inputs != ["T1"]:
        parser.error("--template is a T1 image: use it with --inputs T1")
    try:
        loaded = load_model(registry.resolve(args.model))
        logic = SynthesisLogic(loaded)
        options = {"device": args.device, "precision": args.precision}
        cases = []
        for files in discover([str(s) for s in args.subjects]):
            volumes = {m: read_volume(p) for m, p in files.images.items()}
            lesion = read_volume(files.lesion) if files.lesion else None
            role = subject_role(loaded.card.training, files.subject)
            cases += score_case(logic, files.subject, volumes, args.inputs, lesion, role, **options)
            print(f"{files.subject}: {cases[-1]['synthetic']}", flush=True)
        if args.template:
            template = read_volume(nilearn_file(TEMPLATE))
            maps = (read_volume(nilearn_file(GREY_MATTER)), read_volume(nilearn_file(WHITE_MATTER)))
            cases += score_case(logic, "MNI152 template", {"T1": template}, ["T1"], None, "unseen",
                                tissue_maps=maps, **options)
            print(f"MNI152 template: {[c['synthetic'] for c in cases[-2:]]}", flush=True)
    except ValueError as error:  # InputError, ModelCardError, missing images
        print(f"error: {error}", file=sys.stderr)
        return 2
    results = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               "command": "python -m training.experiments.tissue_contrast " + shlex.join(
                   sys.argv[1:] if argv is None else list(argv)),
               "versions": versions(), "model": loaded.card.name, "version": loaded.card.version,
               "folder": str(loaded.folder), "inputs": args.inputs, "precision": args.precision, "cases": cases}
    write_results(args.out, results, markdown(results))
    print(args.out / "results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
