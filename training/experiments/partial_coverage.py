"""An input that holds data over part of the brain only: fed as zeros, or left out where it has none?

A slab acquisition, or an input resampled onto a larger grid (``--resample-to``), is exactly 0
where it was not measured. This experiment cuts one input of a subject (default T2) in two
ways, its data kept only below the top third of the brain (a slab limit, across the axial
slices a 2D model runs on) or only behind the front third (a field of view cut in the slice
plane), synthesises the target from all inputs and scores it in three regions: where the
input was cut ("cut"), the kept brain within ``BAND`` voxels of the cut ("band"), and the
rest of the brain ("kept"). Arms: every input complete ("all data"); the cut input left out
altogether ("without it"); the cut input fed as it is, zeros included (the product before
``coverage``: "zero-filled"); and the product's coverage-aware fusion with the cut input
left out where it holds no data, for several edge margins (``coverage.EDGE_VOXELS``).
Scores: SSIM (the mean of the 3D SSIM map over the region) and MSE, both volumes
mean_in_brain-normalised over the reference's foreground, as ``mrsynthesis evaluate`` does.

    python -m training.experiments.partial_coverage --subject ../shared/data/ms/patient07 \\
        --subject ../shared/data/ms/patient19 --subject ../shared/data/brats/BraTS-GLI-00001-000 \\
        --out docs/results/partial_coverage

The shared subjects were in the bundled model's training data: compare the arms, not the
absolute figures.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from MRSynthesisLib import metrics, registry
from MRSynthesisLib.cards import load_model
from MRSynthesisLib.coverage import EDGE_VOXELS, Coverage, input_coverage
from MRSynthesisLib.logic import SynthesisLogic, SynthesisRequest
from MRSynthesisLib.preprocessing import NormalisationSpec, foreground_mask, normalise
from MRSynthesisLib.volume import Volume, read_volume

from ..datasets import discover
from .loso import write_results

EDGES = (0, 4, 8, 16)
CLIP_PERCENTILES = (1, 3, 5)
BAND = 8  # voxels: the kept brain this close to the cut is scored apart
CUTS = {"slab": "no data above the lower two thirds of the brain (superior third cut)",
        "field of view": "no data in front of the posterior two thirds of the brain (anterior third cut)",
        "oblique": "no data beyond a plane at 45 degrees between superior and anterior (a third of the brain's "
                   "extent along that direction cut)"}


def world(volume: Volume, axis: int) -> np.ndarray:
    """The LPS coordinate ``axis`` (0 L, 1 P, 2 S) of every voxel centre, as a (z, y, x) array."""
    g = volume.geometry
    direction = np.asarray(g.direction).reshape(3, 3)
    index = np.indices(volume.array.shape[::-1], dtype=np.float32)  # ITK order (x, y, z) of (z, y, x) voxels
    coordinate = g.origin[axis] + sum(direction[axis, j] * g.spacing[j] * index[j] for j in range(3))
    return np.asarray(coordinate).transpose(2, 1, 0)


def cut_mask(volume: Volume, brain: np.ndarray, cut: str) -> np.ndarray:
    """Brain voxels the cut input holds no data in: the superior, the anterior or the superior-anterior third
    of the brain."""
    if cut == "slab":
        height = world(volume, 2)  # S: up
    elif cut == "field of view":
        height = -world(volume, 1)  # -P: anterior
    else:
        height = world(volume, 2) - world(volume, 1)  # up and forwards, at 45 degrees
    low, high = height[brain].min(), height[brain].max()
    return height > high - (high - low) / 3


def synthesise(logic: SynthesisLogic, given: dict[str, Volume], target: str, coverage=input_coverage) -> np.ndarray:
    """The product's synthesis with ``coverage`` as its coverage rule (the product's, another edge, none)."""
    result = SynthesisLogic(logic.model, coverage=coverage).run(
        SynthesisRequest(given, [target], device="cpu", precision="fp32"))
    return result.outputs[target].array


def score(synthetic: np.ndarray, reference: np.ndarray, regions: dict[str, np.ndarray]) -> dict[str, dict]:
    brain = foreground_mask([reference])
    spec = NormalisationSpec("mean_in_brain")
    s, r = normalise(synthetic, spec, brain)[0], normalise(reference, spec, brain)[0]
    ssim = metrics.ssim_map(s, r, data_range=metrics.data_range_of(r, brain))
    return {name: {"ssim": float(ssim[region].mean()), "mse": metrics.mse(s, r, region)}
            for name, region in regions.items()}


def run(subject: Path, inputs: list[str], cut_input: str, target: str, model: str | None, log=print
        ) -> dict[str, Any]:
    files = discover([str(subject)])
    if len(files) != 1:
        raise SystemExit(f"{subject}: expected one subject folder, found {len(files)}")
    volumes = {m: read_volume(files[0].images[m]) for m in [*inputs, target]}
    logic = SynthesisLogic(load_model(registry.resolve(model)))
    brain = foreground_mask([volumes[m].array for m in inputs])
    reference = volumes[target]
    full = synthesise(logic, {m: volumes[m] for m in inputs}, target)
    without = synthesise(logic, {m: volumes[m] for m in inputs if m != cut_input}, target)
    rows = []
    for cut, description in CUTS.items():
        removed = cut_mask(reference, brain, cut) & brain
        near = ndi.binary_dilation(removed, ndi.generate_binary_structure(3, 1), iterations=BAND) & brain & ~removed
        regions = {"cut": removed, "band": near, "kept": brain & ~removed & ~near}
        given = dict({m: volumes[m] for m in inputs})
        given[cut_input] = volumes[cut_input].with_array(np.where(removed, 0.0, volumes[cut_input].array)
                                                         .astype(np.float32))
        arms = {"all data": full, "without it": without,
                "zero-filled": synthesise(logic, given, target, lambda *a, **k: Coverage())}
        for edge in EDGES:
            arms[f"left out, edge {edge}"] = synthesise(logic, given, target, partial(input_coverage, edge=edge))
        found = brain & ~input_coverage({m: given[m].array for m in inputs}, brain, {m: m for m in inputs},
                                        slice_axis=0).held.get(cut_input, brain)
        row = {"cut": cut, "description": description,
               "share_of_brain": float(np.count_nonzero(removed) / np.count_nonzero(brain)),
               "found": float(np.count_nonzero(found & removed) / np.count_nonzero(removed)),
               "found_outside_the_cut": float(np.count_nonzero(found & ~removed) / np.count_nonzero(brain)),
               "scores": {arm: score(out, reference.array, regions) for arm, out in arms.items()}}
        log(f"{files[0].subject} {cut}: " + "; ".join(f"{arm} {v['cut']['ssim']:.3f}/{v['band']['ssim']:.3f}/"
                                                      f"{v['kept']['ssim']:.3f}" for arm, v in row["scores"].items()))
        rows.append(row)
    return {"subject": files[0].subject, "inputs": inputs, "cut_input": cut_input, "target": target, "rows": rows,
            "clipped": clipped_dark_tissue(volumes, inputs, brain)}


def clipped_dark_tissue(volumes: dict[str, Volume], inputs: list[str], brain: np.ndarray) -> dict[str, Any]:
    """Each input clipped at a low percentile of its brain and shifted to 0, as some pipelines normalise:
    zeros in its darkest tissue, which must not be taken for a missing field of view."""
    found = {}
    for percentile in CLIP_PERCENTILES:
        for m in inputs:
            low = np.percentile(volumes[m].array[brain], percentile)
            clipped = {n: volumes[n].array for n in inputs}
            clipped[m] = np.where(brain, np.maximum(volumes[m].array, low) - low, 0.0).astype(np.float32)
            coverage = input_coverage(clipped, brain, {n: n for n in inputs}, slice_axis=0)
            found[f"{m} at {percentile} %"] = sorted(coverage.used)
    return found


def markdown(results: list[dict[str, Any]], model: str, command: str) -> str:
    first = results[0]
    lines = [f"# An input with data over part of the brain: {' + '.join(first['inputs'])} -> {first['target']}, "
             f"{first['cut_input']} cut", "", f"Command: `{command}`", "",
             f"Model: {model} (the shared subjects were in its training data: compare the arms). The cut input is "
             f"0 where it was cut, as a slab or a resampled smaller field of view is. Regions: where "
             f"{first['cut_input']} was cut (cut), the kept brain within {BAND} voxels of the cut (band), the "
             "rest of the brain (kept). SSIM (mean of the 3D SSIM map over the region) / MSE, mean_in_brain "
             "normalised. Arms: every input complete (all data); without the cut input (without it); the cut "
             "input fed with its zeros (zero-filled, the product before coverage); left out where it holds no "
             "data, pixel by pixel in the max fusion, and for `edge` voxels in the slice plane before its data end "
             "(left out, edge; the product's default is marked).", ""]
    for row_index, cut in enumerate(CUTS):
        found = "; ".join(f"{r['subject']} {100 * r['rows'][row_index]['found']:.1f} % of the cut, "
                          f"{100 * r['rows'][row_index]['found_outside_the_cut']:.2f} % of the brain outside it"
                          for r in results)
        lines += [f"## {cut}: {CUTS[cut]}", "", f"Taken as not measured (`coverage.not_measured`): {found}.", "",
                  "| subject | arm | SSIM cut | SSIM band | SSIM kept | MSE cut | MSE band | MSE kept |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for result in results:
            row = result["rows"][row_index]
            for arm, v in row["scores"].items():
                mark = " (default)" if arm == f"left out, edge {EDGE_VOXELS}" else ""
                lines.append(f"| {result['subject']} ({100 * row['share_of_brain']:.0f} % cut) | {arm}{mark} | "
                             f"{v['cut']['ssim']:.3f} | {v['band']['ssim']:.3f} | {v['kept']['ssim']:.3f} | "
                             f"{v['cut']['mse']:.4f} | {v['band']['mse']:.4f} | {v['kept']['mse']:.4f} |")
        lines.append("")
    lines += ["## Clipped dark tissue is not a missing field of view", "",
              "Each input clipped at the 1st, 3rd and 5th percentile of its brain and shifted to 0 (zeros in its "
              "darkest tissue, as some normalisations leave them); inputs the product took as partial:", ""]
    for result in results:
        lines.append(f"- {result['subject']}: " + "; ".join(f"{case}: {', '.join(found) or 'none'}"
                                                         for case, found in result["clipped"].items()))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subject", action="append", required=True, type=Path,
                        help="a subject folder (shared MS or BraTS naming); repeat")
    parser.add_argument("--inputs", nargs="+", default=["T1", "T2"])
    parser.add_argument("--cut", default="T2", help="the input to cut (one of --inputs)")
    parser.add_argument("--target", default="FLAIR")
    parser.add_argument("--model", help="default: the bundled model")
    parser.add_argument("--out", type=Path, help="write results.json and results.md here")
    args = parser.parse_args(argv)
    if args.cut not in args.inputs or len(args.inputs) < 2:
        parser.error("--cut must be one of at least two --inputs")
    results = [run(subject, args.inputs, args.cut, args.target, args.model) for subject in args.subject]
    if args.out:
        command = "python -m training.experiments.partial_coverage " + " ".join(sys.argv[1:] if argv is None else argv)
        model = load_model(registry.resolve(args.model)).card.name
        write_results(args.out, {"model": model, "subjects": results}, markdown(results, model, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
