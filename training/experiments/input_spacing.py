"""Does synthesising on the model's voxel spacing help inputs with coarser voxels? (logic.COARSER_THAN_MODEL)

A clinical scan often has coarser voxels than the 1 mm volumes the models were trained on. A
2D network then sees every structure smaller, in voxels, than it learnt it. This experiment
simulates such acquisitions from a subject's 1 mm volumes (each image smoothed with a Gaussian
of FWHM the added voxel size along each axis, then resampled with linear interpolation onto a
grid of the new spacing over the same field of view), synthesises the target from them
twice, on the coarse grid itself (``native_spacing``) and with the product's default (on the
model's spacing, results resampled back), and scores both against the real target degraded the
same way, on the coarse grid, as ``mrsynthesis evaluate`` does (mean_in_brain normalisation,
SSIM/MSE in the brain, the reference's foreground as brain).

    python -m training.experiments.input_spacing --subject ../shared/data/ms/patient07 \\
        --spacing 2,2,1 --spacing 1,1,3 --out docs/results/input_spacing

The subject was in the bundled model's training data (every shared subject was): the absolute
figures flatter the model, the comparison between the two paths at one spacing is what counts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from MRSynthesisLib import metrics, registry
from MRSynthesisLib.cards import load_model
from MRSynthesisLib.logic import SynthesisLogic, SynthesisRequest
from MRSynthesisLib.preprocessing import NormalisationSpec, foreground_mask, normalise
from MRSynthesisLib.volume import Volume, read_volume, resample_to

from ..datasets import discover
from .loso import write_results

FWHM_TO_SIGMA = 1 / (2 * np.sqrt(2 * np.log(2)))


def degrade(volume: Volume, spacing: tuple[float, float, float]) -> Volume:
    """``volume`` as if acquired with voxels of ``spacing`` (ITK x, y, z order, mm)."""
    image = volume.to_sitk()
    variance = [(max(0.0, new - old) * FWHM_TO_SIGMA) ** 2 for new, old in zip(spacing, image.GetSpacing())]
    smooth = sitk.DiscreteGaussian(image, variance, 32, 0.01, True)
    moved = resample_to(Volume.from_sitk(smooth), volume.geometry.respaced(spacing))
    # the registered MS scans ring a little below 0; an acquisition would not
    return moved.with_array(np.maximum(moved.array, 0.0), source=f"{volume.source} at {spacing} mm")


def score(synthetic: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    brain = foreground_mask([reference])
    spec = NormalisationSpec("mean_in_brain")
    values = metrics.compute_all(normalise(synthetic, spec, brain)[0], normalise(reference, spec, brain)[0],
                                 brain_mask=brain)
    return {k: values[k] for k in ("ssim_brain", "mse_brain", "psnr_brain")}


def run(subject: Path, spacings: list[tuple[float, float, float]], inputs: list[str], target: str,
        model: str | None, log=print) -> dict[str, Any]:
    files = discover([str(subject)])
    if len(files) != 1:
        raise SystemExit(f"{subject}: expected one subject folder, found {len(files)}")
    volumes = {m: read_volume(files[0].images[m]) for m in [*inputs, target]}
    loaded = load_model(registry.resolve(model))
    logic = SynthesisLogic(loaded)
    rows = []
    for spacing in spacings:
        coarse = {m: degrade(v, spacing) for m, v in volumes.items()}
        row: dict[str, Any] = {"spacing_mm": list(spacing), "grid": list(coarse[target].geometry.size)}
        for label, native in (("native", True), ("model_spacing", False)):
            result = logic.run(SynthesisRequest({m: coarse[m] for m in inputs}, [target], device="cpu",
                                                native_spacing=native))
            row[label] = score(result.outputs[target].array, coarse[target].array)
            row[f"{label}_notes"] = result.notes
        log(f"{spacing}: native {row['native']}, model spacing {row['model_spacing']}")
        rows.append(row)
    return {"subject": str(subject), "model": loaded.card.name, "inputs": inputs, "target": target,
            "card_spacing_mm": loaded.card.spacing_mm, "rows": rows}


def markdown(results: dict[str, Any], command: str) -> str:
    lines = [f"# Synthesis from inputs with coarser voxels: {results['model']}, "
             f"{' + '.join(results['inputs'])} -> {results['target']}", "",
             f"Command: `{command}`", "",
             f"Subject `{results['subject']}` (in the model's training data: compare the two paths, not the "
             f"absolute figures). Model trained on voxels of {results['card_spacing_mm']} mm. Every image "
             "smoothed (Gaussian, FWHM the added voxel size per axis) and resampled to the spacing; scored "
             "against the real target degraded the same way, on the coarse grid, mean_in_brain-normalised, "
             "in the reference's foreground.", "",
             "| spacing (mm, x y z) | synthesised on | SSIM brain | MSE brain | PSNR brain |",
             "| --- | --- | --- | --- | --- |"]
    for row in results["rows"]:
        for label, name in (("native", "the input grid (--native-spacing)"),
                            ("model_spacing", "the model's spacing (default)")):
            v = row[label]
            lines.append(f"| {' x '.join(f'{s:g}' for s in row['spacing_mm'])} | {name} | {v['ssim_brain']:.3f} | "
                         f"{v['mse_brain']:.4f} | {v['psnr_brain']:.2f} |")
    lines += ["", "A 2D model's slice axis is never resampled (`logic.model_grid`): a spacing coarser only along it "
              "gives the same result on both paths."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subject", required=True, type=Path, help="one subject folder (shared MS or BraTS naming)")
    parser.add_argument("--spacing", action="append", required=True,
                        help="voxel spacing to simulate, x,y,z in mm (repeat)")
    parser.add_argument("--inputs", nargs="+", default=["T1", "T1c", "T2"])
    parser.add_argument("--target", default="FLAIR")
    parser.add_argument("--model", help="default: the bundled model")
    parser.add_argument("--out", type=Path, help="write results.json and results.md here")
    args = parser.parse_args(argv)
    try:
        spacings = [tuple(float(v) for v in text.split(",")) for text in args.spacing]
    except ValueError:
        parser.error("--spacing takes x,y,z in mm, e.g. 2,2,1")
    if any(len(s) != 3 or min(s) <= 0 for s in spacings):
        parser.error("--spacing takes three positive sizes x,y,z in mm, e.g. 2,2,1")
    results = run(args.subject, spacings, args.inputs, args.target, args.model)
    if args.out:
        command = "python -m training.experiments.input_spacing " + " ".join(sys.argv[1:] if argv is None else argv)
        write_results(args.out, results, markdown(results, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
