"""An input acquired in thick 2D slices beside a 1 mm 3D one: does training with thick-slice inputs help?
(issue 3; training/README.md, "Thick-slice inputs")

The clinical protocols the product is for pair a 1 mm 3D T1 with a 2D T2 or FLAIR of 3-6 mm slices;
resampled onto the T1's grid (``--resample-to T1``), such a T2 is sharp in its slice plane and a blend
of neighbouring slices across it. Measured with the bundled model first (patient07, T1 + T2 -> FLAIR):
a 5 mm axial T2 brought SSIM in the brain from 0.692 (1 mm T2) to 0.649, below T1 alone (0.686).

Two 2D models T1 + T2 -> FLAIR (random input subsets, so each also synthesises from T1 or T2 alone)
are trained per leave-one-subject-out fold with one recipe, seed and number of steps, differing only in
``augment.thick_slice_mm`` (training/augment.py: each input of a sample, with probability
``thick_slice_probability``, made a thick-slice acquisition along a random axis, boxcar slice profile,
resampled back linearly; the targets never). They are scored on the held-out subject as acquired and
with one input made thick the way ``input_spacing.degrade`` does it (a Gaussian slice profile, not the
training's boxcar, then resampled onto the other input's grid as the product does), against the real
FLAIR, with the LOSO harness (mean_in_brain scale, metrics in the brain, lesion ratios), with the brain
mask of the 1 mm inputs in every condition.

    python -m training.experiments.thick_slices --jobs 2 --seeds 0 --out docs/results/thick_slices

Writes the recipes and the runs under ``runs/thick-slices/`` (never committed), results.json and
results.md under ``--out``. A run whose model folder exists is not trained again.
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

from MRSynthesisLib import registry
from MRSynthesisLib.cards import load_model
from MRSynthesisLib.volume import Volume, read_volume, resample_to

from ..datasets import discover
from .input_spacing import degrade
from .loso import evaluate, load_case, model_predict, train_recipe, versions, write_results

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"  # ../shared/data beside the repository
BRATS = DATA / "brats/BraTS-GLI-00001-000"
FOLDS = {"patient07": DATA / "ms/patient07", "patient19": DATA / "ms/patient19"}  # held out -> its folder
INPUTS, TARGET = ["T1", "T2"], "FLAIR"
THICK = {"thick_slice_mm": 7.0, "thick_slice_probability": 0.25}
ARMS = {"plain": {}, "thick": THICK}  # augment keys added to the recipe's
# (label, the input made thick or None, the plane its slices are in, slice thickness mm, the inputs given)
CONDITIONS = [
    ("T1 + T2", None, None, None, ["T1", "T2"]),
    ("T1 + T2 axial 3 mm", "T2", "axial", 3.0, ["T1", "T2"]),
    ("T1 + T2 axial 5 mm", "T2", "axial", 5.0, ["T1", "T2"]),
    ("T1 + T2 coronal 5 mm", "T2", "coronal", 5.0, ["T1", "T2"]),
    ("T1 axial 5 mm + T2", "T1", "axial", 5.0, ["T1", "T2"]),
    ("T1 alone", None, None, None, ["T1"]),
    ("T2 alone", None, None, None, ["T2"]),
]
WORK = Path("runs/thick-slices")


def run_name(arm: str, held_out: str, seed: int) -> str:
    return f"{arm}-{held_out}" + ("" if seed == 0 else f"-seed{seed}")


def recipe(arm: str, held_out: str, seed: int = 0) -> dict[str, Any]:
    run = run_name(arm, held_out, seed)
    training = [str(folder.resolve()) for name, folder in FOLDS.items() if name != held_out] + [str(BRATS.resolve())]
    return {
        "name": f"thick-slices-{run}", "version": "0.1.0",
        "description": (f"training/experiments/thick_slices.py, arm '{arm}', seed {seed}: T1 + T2 -> FLAIR, random "
                        f"input subsets, augment {ARMS[arm] or 'as the defaults'}; {held_out} held out."),
        "data": training, "inputs": INPUTS, "outputs": [TARGET], "out": str(WORK / run), "validation_subjects": [],
        "lesion_input": False, "latent_channels": 16, "filters": [32, 64, 128], "fusion": "max",
        "input_subsets": "random", "learning_rate": 0.001, "batch_size": 16, "crop_size": 64,
        "epochs": 8, "steps_per_epoch": 60, "max_minutes": None, "seed": seed, "threads": 1,
        "augment": dict(ARMS[arm]),
    }


def thick(volume: Volume, plane: str, thickness: float, onto: Volume) -> Volume:
    """``volume`` acquired in ``plane`` slices ``thickness`` mm thick, resampled onto ``onto``'s grid."""
    spacing = list(volume.geometry.spacing)
    spacing[2 - volume.geometry.axis_for(plane)] = thickness  # numpy axis k is ITK axis 2 - k
    return resample_to(degrade(volume, tuple(spacing)), onto.geometry)


def score_conditions(folder: Path, held_out: str, trained_on: bool = False) -> dict[str, dict[str, Any]]:
    """The model's FLAIR of ``held_out`` under every condition, scored against the real FLAIR; ``trained_on``:
    the subject is one of the model's training subjects (the bundled model's)."""
    files = discover([str(FOLDS[held_out])])[0]
    case = load_case(files, INPUTS, TARGET)
    volumes = {m: read_volume(files.images[m]) for m in INPUTS}
    scores = {}
    for label, made_thick, plane, thickness, given in CONDITIONS:
        replaced = {made_thick: thick(volumes[made_thick], plane, thickness, volumes["T1"])} if made_thick else None
        synthetic = model_predict(folder, case, given, TARGET, use_lesion=False, trained_on=trained_on,
                                  replaced=replaced)
        scores[label] = evaluate(synthetic, case)
    return scores


def cached_scores(folder: Path, held_out: str) -> dict[str, dict[str, Any]]:
    """``score_conditions``, kept beside the model (scores.json) for the weights and conditions it was made for."""
    from MRSynthesisLib.atomic import write_json

    path = folder.parent / "scores.json"
    key = {"weights_sha256": load_model(folder).card.weights_sha256, "conditions": CONDITIONS}
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("key") == json.loads(json.dumps(key)):
            return saved["scores"]
    scores = score_conditions(folder, held_out)
    write_json(path, {"key": key, "scores": scores})
    return scores


def means(rows: list[dict[str, Any]], arm: str, label: str) -> dict[str, float]:
    chosen = [r["scores"][label] for r in rows if r["arm"] == arm]
    return {k: float(np.mean([s[k] for s in chosen])) for k in ("ssim_brain", "mse_brain")}


def markdown(results: dict[str, Any], command: str) -> str:
    rows = results["runs"]
    lines = ["# An input acquired in thick slices: training with thick-slice inputs (T1 + T2 -> FLAIR)", "",
             f"Command: `{command}`  ", f"Versions: {', '.join(f'{k} {v}' for k, v in results['versions'].items())}",
             "",
             "Leave-one-subject-out: each fold trains on the other MS subject and BraTS-GLI-00001-000, 8 x 60 steps "
             "of batch 16, random input subsets, the default augmentation; the `thick` arm adds augment "
             f"{json.dumps(THICK)} (training/augment.py, boxcar slice profile). Held-out inputs made thick with a "
             "Gaussian slice profile of FWHM the added thickness (input_spacing.degrade), resampled linearly onto "
             "the T1's 1 mm grid; brain mask of the 1 mm inputs throughout. mean_in_brain scale, metrics in the "
             "brain; Ratio 1 = mean(lesion) / mean(NAWM).", "",
             "| held out | seed | condition | SSIM plain | SSIM thick | MSE plain | MSE thick "
             "| Ratio 1 plain / thick / real |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    by = {(r["arm"], r["held_out"], r["seed"]): r["scores"] for r in rows}
    for held_out, seed in sorted({(r["held_out"], r["seed"]) for r in rows}):
        plain, thick_ = by.get(("plain", held_out, seed)), by.get(("thick", held_out, seed))
        if plain is None or thick_ is None:
            continue
        for label, *_ in CONDITIONS:
            p, t = plain[label], thick_[label]
            ratio = (f"{p['lesion_ratio1_synthetic']:.3f} / {t['lesion_ratio1_synthetic']:.3f} / "
                     f"{p['lesion_ratio1_reference']:.3f}" if "lesion_ratio1_synthetic" in p else "-")
            lines.append(f"| {held_out} | {seed} | {label} | {p['ssim_brain']:.4f} | {t['ssim_brain']:.4f} | "
                         f"{p['mse_brain']:.4f} | {t['mse_brain']:.4f} | {ratio} |")
    lines += ["", "Means over the held-out subjects and seeds:", "",
              "| condition | SSIM plain | SSIM thick | MSE plain | MSE thick |", "| --- | --- | --- | --- | --- |"]
    for label, *_ in CONDITIONS:
        p, t = results["means"]["plain"][label], results["means"]["thick"][label]
        lines.append(f"| {label} | {p['ssim_brain']:.4f} | {t['ssim_brain']:.4f} | {p['mse_brain']:.4f} | "
                     f"{t['mse_brain']:.4f} |")
    if results.get("bundled"):
        bundled = results["bundled"]
        subjects = list(bundled["scores"])
        lines += ["", f"The bundled model ({bundled['model']}, no thick-slice augmentation), on subjects it was "
                  "trained on (compare the conditions, not the absolute figures): SSIM / MSE in the brain", "",
                  "| condition | " + " | ".join(subjects) + " |", "| --- |" + " --- |" * len(subjects)]
        for label, *_ in CONDITIONS:
            lines.append(f"| {label} | " + " | ".join(f"{s[label]['ssim_brain']:.4f} / {s[label]['mse_brain']:.4f}"
                                                     for s in bundled["scores"].values()) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at a time (each asks for one thread)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds each arm is trained with")
    parser.add_argument("--held-out", nargs="+", choices=list(FOLDS), default=list(FOLDS), help="folds to run")
    parser.add_argument("--train-only", action="store_true", help="train the runs, score nothing")
    parser.add_argument("--bundled", action="store_true",
                        help="also score the bundled model (trained on every shared subject) under the conditions")
    parser.add_argument("--out", type=Path, help="write results.json and results.md here")
    args = parser.parse_args(argv)
    runs = [(arm, held_out, seed) for seed in args.seeds for held_out in args.held_out for arm in ARMS]
    configs = {}
    for key in runs:
        configs[key] = WORK / "configs" / f"{run_name(*key)}.json"
        configs[key].parent.mkdir(parents=True, exist_ok=True)
        configs[key].write_text(json.dumps(recipe(*key), indent=2) + "\n")
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        folders = list(pool.map(lambda key: train_recipe(WORK / run_name(*key), f"thick-slices-{run_name(*key)}",
                                                         configs[key]), runs))
    if args.train_only:
        return 0
    rows = []
    for (arm, held_out, seed), folder in zip(runs, folders):
        scores = cached_scores(folder, held_out)
        rows.append({"arm": arm, "held_out": held_out, "seed": seed, "scores": scores})
        print(f"{arm} {held_out} seed {seed}: " + "; ".join(f"{label} {s['ssim_brain']:.3f}"
                                                           for label, s in scores.items()), flush=True)
    bundled = {}
    if args.bundled:
        folder = registry.resolve(None)
        bundled = {"model": load_model(folder).card.name,
                   "scores": {subject: score_conditions(folder, subject, trained_on=True) for subject in FOLDS}}
    results = {"runs": rows, "bundled": bundled, "versions": versions(), "thick": THICK,
               "means": {arm: {label: means(rows, arm, label) for label, *_ in CONDITIONS} for arm in ARMS}}
    if args.out:
        command = "python -m training.experiments.thick_slices " + shlex.join(sys.argv[1:] if argv is None else argv)
        write_results(args.out, results, markdown(results, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
