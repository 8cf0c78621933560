"""Should training resample a coarse subject to the fine scale of the others? (issue 3; training/README.md)

A clinical cohort mixes 1 mm research scans with coarser clinical ones. Here one training subject
is 1 mm (patient19) and the other, the BraTS case, is made a 2 x 2 mm in-plane acquisition
(``input_spacing.degrade``: each image smoothed with a Gaussian of FWHM the added voxel size, then
resampled over the same field of view). Two 2D models T1 + T2 -> FLAIR are trained on them with
one recipe, seed and number of steps, differing only in that case's voxels:

* ``own voxels``: the network sees the BraTS case at half the scale, in voxels;
* ``resampled``: the BraTS case resampled back to 1 mm (linearly, ``volume.resample_to``, in-plane:
  what a recipe's ``spacing_mm`` of [1, 1, 1] did to it until this experiment), still as blurred as
  acquired, but at the scale of the other subject.

Resampling lowered the held-out SSIM with both seeds (mean 0.677 -> 0.634): so a recipe's
``spacing_mm`` brings only finer subjects to it and keeps coarser ones on their voxels.

Both are scored on the held-out patient07 at 1 mm with the LOSO harness (``loso.load_case``,
``loso.model_predict``, ``loso.evaluate``: mean_in_brain scale, metrics in the brain, lesion ratios).
The schedule is the short Table IV one (8 x 60 steps of batch 16, crops of 64): two runs side by side
on a 2-core machine in about 25 minutes. Each arm is trained with every ``--seeds`` (weights and
crops follow the seed): at this budget one seed's SSIM moves by a few hundredths (docs/results/
loso_lesion_nocrops and its seed1: 0.638 vs 0.610), so the arms are compared on their means.
A run whose model folder exists is not trained again.

    python -m training.experiments.mixed_spacing --jobs 2 --seeds 0 1 --out docs/results/mixed_spacing

Writes the degraded case, the recipes and the runs under ``runs/mixed-spacing/`` (never committed),
results.json and results.md under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from MRSynthesisLib.cards import load_model
from MRSynthesisLib.volume import read_volume, resample_to, write_volume

from ..datasets import discover
from .input_spacing import degrade
from .loso import evaluate, load_case, model_predict, train_recipe, versions, write_results

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"  # ../shared/data beside the repository
TRAINING_MS = DATA / "ms/patient19"
COARSE_CASE = DATA / "brats/BraTS-GLI-00001-000"
HELD_OUT = DATA / "ms/patient07"
COARSE_MM = (2.0, 2.0, 1.0)  # ITK x, y, z = left-right, anterior-posterior, inferior-superior (the case is LPS)
INPUTS, TARGET = ["T1", "T2"], "FLAIR"
BRATS_SUFFIXES = {"T1": "t1n", "T2": "t2w", "FLAIR": "t2f"}
ARMS = {"own-voxels": None, "resampled": [1.0, 1.0, 1.0]}  # the BraTS case's in-plane voxels: as acquired, 1 mm
WORK = Path("runs/mixed-spacing")


def prepare_coarse_case(folder: Path, spacing_mm: list[float] | None = None) -> Path:
    """The BraTS case's T1, T2 and FLAIR as a 2 x 2 mm in-plane acquisition, in BraTS naming; with
    ``spacing_mm`` (ITK x, y, z) resampled to it afterwards."""
    files = discover([str(COARSE_CASE)])[0]
    case = folder / files.subject
    case.mkdir(parents=True, exist_ok=True)
    for modality, suffix in BRATS_SUFFIXES.items():
        volume = degrade(read_volume(files.images[modality]), COARSE_MM)
        if spacing_mm is not None:
            volume = resample_to(volume, volume.geometry.respaced(spacing_mm))
        write_volume(volume, case / f"{files.subject}-{suffix}.nii.gz", overwrite=True)
    return case


def run_name(arm: str, seed: int) -> str:
    return arm if seed == 0 else f"{arm}-seed{seed}"


def recipe(arm: str, coarse_case: Path, seed: int = 0) -> dict[str, Any]:
    run = run_name(arm, seed)
    return {
        "name": f"mixed-spacing-{run}", "version": "0.1.0",
        "description": (f"training/experiments/mixed_spacing.py, arm '{arm}', seed {seed}: T1 + T2 -> FLAIR on "
                        f"patient19 (1 mm) and the BraTS case degraded to {COARSE_MM} mm and resampled to "
                        f"{ARMS[arm] or 'nothing'}; patient07 held out."),
        "data": [str(TRAINING_MS.resolve()), str(coarse_case.resolve())],
        "inputs": INPUTS, "outputs": [TARGET], "out": str(WORK / run), "validation_subjects": [],
        "lesion_input": False, "latent_channels": 16, "filters": [32, 64, 128], "fusion": "max",
        "input_subsets": "all", "learning_rate": 0.001, "batch_size": 16, "crop_size": 64,
        "epochs": 8, "steps_per_epoch": 60, "max_minutes": None, "seed": seed, "threads": 1,
    }


def markdown(results: dict[str, Any], command: str) -> str:
    lines = ["# Training on a cohort of mixed voxel sizes: resample a coarse subject to the fine scale?", "",
             f"Command: `{command}`  ", f"Versions: {', '.join(f'{k} {v}' for k, v in results['versions'].items())}",
             "",
             f"T1 + T2 -> FLAIR, 2D, trained on patient19 (1 mm) and BraTS-GLI-00001-000 degraded to "
             f"{' x '.join(f'{v:g}' for v in COARSE_MM)} mm (smoothed and resampled, "
             "training/experiments/input_spacing.py), then kept or resampled back to 1 mm; 8 x 60 steps of "
             "batch 16, the same recipe; scored on the held-out patient07 at 1 mm with the LOSO harness "
             "(mean_in_brain scale, metrics in the brain).", "",
             "| arm | BraTS case resampled to | seed | card spacing_mm | SSIM brain | MSE brain | PSNR brain (dB) "
             "| Ratio 1 syn / real |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in results["runs"]:
        m = row["metrics"]
        ratio = (f"{m['lesion_ratio1_synthetic']:.3f} / {m['lesion_ratio1_reference']:.3f}"
                 if "lesion_ratio1_synthetic" in m else "-")
        lines.append(f"| {row['arm']} | {row['spacing_mm']} | {row['seed']} | {row['card_spacing_mm']} | "
                     f"{m['ssim_brain']:.4f} | {m['mse_brain']:.4f} | {m['psnr_brain']:.2f} | {ratio} |")
    lines += ["", "| arm | seeds | mean SSIM brain | mean MSE brain |", "| --- | --- | --- | --- |"]
    for arm, mean in results["means"].items():
        lines.append(f"| {arm} | {mean['seeds']} | {mean['ssim_brain']:.4f} | {mean['mse_brain']:.4f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at a time (each asks for one thread)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds each arm is trained with")
    parser.add_argument("--out", type=Path, help="write results.json and results.md here")
    args = parser.parse_args(argv)
    cases = {arm: prepare_coarse_case(WORK / "data" / arm, spacing) for arm, spacing in ARMS.items()}
    runs = [(arm, seed) for seed in args.seeds for arm in ARMS]
    configs = {}
    for arm, seed in runs:
        configs[arm, seed] = WORK / "configs" / f"{run_name(arm, seed)}.json"
        configs[arm, seed].parent.mkdir(parents=True, exist_ok=True)
        configs[arm, seed].write_text(json.dumps(recipe(arm, cases[arm], seed), indent=2) + "\n")
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        folders = list(pool.map(lambda key: train_recipe(WORK / run_name(*key), f"mixed-spacing-{run_name(*key)}",
                                                         configs[key]), runs))
    case = load_case(discover([str(HELD_OUT)])[0], INPUTS, TARGET)
    rows = []
    for (arm, seed), folder in zip(runs, folders):
        metrics = evaluate(model_predict(folder, case, INPUTS, TARGET, use_lesion=False), case)
        rows.append({"arm": arm, "seed": seed, "spacing_mm": ARMS[arm],
                     "card_spacing_mm": load_model(folder).card.spacing_mm, "metrics": metrics})
        print(f"{arm} seed {seed}: SSIM {metrics['ssim_brain']:.4f}, MSE {metrics['mse_brain']:.4f}", flush=True)
    means = {arm: {"seeds": [r["seed"] for r in rows if r["arm"] == arm],
                   **{k: float(np.mean([r["metrics"][k] for r in rows if r["arm"] == arm]))
                      for k in ("ssim_brain", "mse_brain")}} for arm in ARMS}
    results = {"runs": rows, "means": means, "versions": versions(), "coarse_mm": list(COARSE_MM)}
    if args.out:
        command = "python -m training.experiments.mixed_spacing " + shlex.join(sys.argv[1:] if argv is None else argv)
        write_results(args.out, results, markdown(results, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
