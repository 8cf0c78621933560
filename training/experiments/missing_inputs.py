"""Tables IV and V of Chartsias et al. 2018 on the shared MS data, and what augmentation buys (issue 3).

Table IV: is one model, given a subset of the inputs it was trained with, as good as a model
trained for that subset alone? As in the paper, Experiment A trains one model per subset of
{T1, T1c, T2} (7 models, all their inputs every step) and Experiment B gives the subsets to the
tri-modal model of Experiment A at test time. A third column, B', does the same with the
product's recipe: one model trained on a random subset each step (``input_subsets: random``,
training/README.md). Table V: the tri-modal model trained with one cost part removed (c1 each
input's latent decoded alone, c2 latent variance, c3 fused latent), evaluated on every subset.
Augmentation: the B' model trained again with none, only the geometric or only the intensity transforms.
Seeds (long schedule): the runs of the cells where B lost most (T1 alone, T1c alone, and the tri-modal
model) trained again with seeds 1 and 2, to tell a gap between A and B from run-to-run noise.
Cost weights (long schedule): the tri-modal model trained with c1 counted twice, and without c2, to see
whether a change of its cost closes B's loss on single inputs. Budget (long schedule): the tri-modal model
and the T1-alone and T1c-alone models trained twice as long, to see whether more steps close it.

Three steps, run by hand from the repository root::

    python -m training.experiments.missing_inputs configs          # writes training/configs/missing_inputs/
    python -m training.experiments.missing_inputs train --jobs 2   # each config with python -m training.train
    python -m training.experiments.missing_inputs evaluate --out docs/results/missing_inputs

``--schedule long`` (every command) does Table IV again at the budget of the project's own
recipes (``SCHEDULES``): configs in training/configs/missing_inputs_long/, runs in
runs/missing-inputs-long/, tables in docs/results/missing_inputs_long/.

The folds are leave-one-subject-out over the MS subjects (they have expert lesion masks and
all of T1, T1c, T2, FLAIR): each held-out MS subject is never read by its fold's runs, which
train on the other MS subject and the BraTS case. Every run of a fold uses the same recipe,
seed, crops (the batch sampler depends on seed and step only) and a fixed number of steps
without early stopping, so the only differences are the ones the tables are about. Inputs T1,
T1c, T2 (the issue's {T1, T1c, T2}, the paper's {T1, T2, DWI}), output FLAIR only, as in the
paper's Tables IV-V. No lesion channel: these tables measure what the images alone carry
(Section VI-H is ``lesion_painting``).

Every model is evaluated on every non-empty subset of its own inputs, with the LOSO harness's
preprocessing and scale (``loso.load_case`` / ``loso.model_predict``: mean_in_brain, metrics in
the brain) on the whole held-out volume. Writes results.md and results.json; no image volumes.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shlex
import subprocess
import sys
from itertools import combinations
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from MRSynthesisLib.atomic import write_json

from ..datasets import discover
from .loso import DEFAULT_DATA, _finite, evaluate, load_case, model_predict, versions, write_results

INPUTS = ["T1", "T1c", "T2"]
TARGET = "FLAIR"
MS_FOLDS = ["patient07", "patient19"]
OTHER_TRAINING = "BraTS-GLI-00001-000"
# The cost variants of Table V: name -> (w1, w2, w3); "all-costs" is the tri-modal model itself.
COSTS = {"all-costs": [1.0, 1.0, 1.0], "no-c1": [0.0, 1.0, 1.0], "no-c2": [1.0, 0.0, 1.0], "no-c3": [1.0, 1.0, 0.0]}


class Schedule(NamedTuple):
    """How long every run trains (the same for all, which is what the comparison needs), and which tables it feeds."""

    epochs: int
    steps_per_epoch: int
    average_epochs: int  # the delivered weights average the last epochs' steps (training/averaging.py); 0: last step
    configs: Path
    runs: str
    tables: tuple[str, ...]  # "IV", "V", "augmentation", "seeds", "weights"


# "short": 8 x 60 steps of batch 16. Chosen by the CPU budget (24 runs on a 2-core machine in about
# two hours, measured 0.35-1.1 s per step with one thread), not by convergence. "long": the budget
# of the project's own recipes (the bundled model and the LOSO folds: 25 x 80 steps, the weights
# averaged over the last 5 epochs, which damps the step-to-step noise that decided several cells
# of the short Table IV), for Table IV and the augmentation check (whether augmentation helps a
# model trained this long; at 480 steps nothing did): 22 runs of 2,000 steps; on one core each
# (2026-12-06) 0.6 s per step for a random-subset run and 1.0 s for the tri-modal one, about 4 hours
# with --jobs 2. The paper trained to convergence with early stopping, which would favour neither side.
SCHEDULES = {
    "short": Schedule(8, 60, 0, Path("training/configs/missing_inputs"), "runs/missing-inputs",
                      ("IV", "V", "augmentation")),
    "long": Schedule(25, 80, 5, Path("training/configs/missing_inputs_long"), "runs/missing-inputs-long",
                     ("IV", "augmentation", "seeds", "weights", "budget")),
}
# Whether B's per-cell losses are more than noise (issue 3): at the long budget B lost most with T1
# alone and T1c alone (+3 % to +7 % MSE per fold, one seed). Those two A models and the tri-modal
# model (B for every subset) again with other seeds; everything else (data, crops, steps) unchanged.
# Two more seeds make three per cell, the fewest that give a spread; 6 runs per seed, about an
# hour each with --jobs 2.
SEEDS = (1, 2)
SEEDED_SUBSETS = (("T1",), ("T1c",))
# Can the tri-modal model's training close that gap (issue 3's open decision)? Over three seeds B pays 2-4 %
# MSE with T1 or T1c alone. A single input is decoded from its own latent, trained by c1 alone; c2 pulls the
# latents of the three inputs together and c3 trains the fused one. Two changes of the cost weights
# (c1, c2, c3), each the tri-modal run with only its weights changed: c1 counted twice (the single-input
# paths get more of the gradient; in Experiment A c1 and c3 are the same term, so the single-input model
# counts it twice too) and c2 removed (the short Table V's "no c2" brought T1 alone level with A, which
# suggests the invariance term is what costs the single inputs). Set before any run, not tuned.
WEIGHT_VARIANTS = {"c1x2": [2.0, 1.0, 1.0], "no-c2": COSTS["no-c2"]}
# Or is the gap the budget's? From 480 to 2,000 steps B's mean gap to A fell from 2.7 % to 0.9 %, and the paper
# trained to convergence. The tri-modal model and the two single-input models where B loses (seed 0) trained
# for BUDGET times the epochs, the weights still averaged over the last ``average_epochs`` (the same damping):
# B at twice the steps against A at twice the steps, and against A at the usual budget. Tri-modal runs first
# (they decide whether more steps close the gap at all; 75 minutes each on one core, the single-input
# runs 25).
BUDGET = 2
BUDGET_RUNS = (tuple(INPUTS), *SEEDED_SUBSETS)
# "Say what helped" (issue 3): the any-subset run again with all, none, only the geometric
# (flips, rotation, zoom) or only the intensity (gamma, scaling, bias field) transforms. name ->
# AugmentConfig changes; "all-augment" (None) is the any-subset run itself.
_GEOMETRIC_OFF = {"flip": False, "rotate_degrees": 0.0, "scale": 0.0}
_INTENSITY_OFF = {"gamma": 0.0, "intensity_scale": 0.0, "bias_field": 0.0}
AUGMENTATIONS: dict[str, dict[str, Any] | None] = {
    "all-augment": None,
    "no-augment": {**_GEOMETRIC_OFF, **_INTENSITY_OFF},
    "geometric-only": _INTENSITY_OFF,
    "intensity-only": _GEOMETRIC_OFF,
}

CREDITS = [
    ("MS data: Lesjak Z, Galimzianova A, Koren A, et al. A novel public MR image dataset of multiple sclerosis "
     "patients with lesion segmentations based on multi-rater consensus. Neuroinformatics 16:51-63 (2018), "
     "doi:10.1007/s12021-017-9348-7; CC BY 4.0 (via the open_ms_data repository)."),
    ("BraTS 2023 glioma data (development and testing use): Menze BH et al., IEEE TMI 34(10):1993-2024 (2015); "
     "Bakas S et al., Scientific Data 4:170117 (2017); Baid U et al., arXiv:2107.02314 (2021)."),
]


def subsets(inputs: list[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset, singles first, in the inputs' order (the rows of Table IV)."""
    return [c for k in range(1, len(inputs) + 1) for c in combinations(inputs, k)]


def subset_name(subset: tuple[str, ...]) -> str:
    return "+".join(subset)


class Run(NamedTuple):
    """One training run of a fold: what it is trained on and how."""

    name: str
    inputs: tuple[str, ...]
    mode: str  # input_subsets: "random" (any subset, Experiment B) or "all" (Experiment A)
    weights: list[float]  # c1, c2, c3
    augment: dict[str, Any] | None = None  # None: AugmentConfig's defaults (all transforms on)
    seed: int = 0  # weights, subsets and augmentation draws; the batch crops follow it too
    budget: int = 1  # the schedule's epochs times this


TRI_MODAL = "only-" + "+".join(INPUTS)  # Experiment A's tri-modal model = the paper's Experiment B model
ANY_SUBSET = "any-subset"  # B': the product's recipe, a random subset each step


def seeded(name: str, seed: int) -> str:
    """The run name of ``name`` trained with ``seed`` (seed 0 is the run itself)."""
    return name if seed == 0 else f"{name}-seed{seed}"


def budgeted(name: str) -> str:
    """The run name of ``name`` trained for ``BUDGET`` times the epochs."""
    return f"{name}-x{BUDGET}"


def run_names(tables: tuple[str, ...] = ("IV", "V", "augmentation")) -> list[Run]:
    """The runs of one fold that ``tables`` need, most important first: Table IV, Table V, augmentation, seeds,
    cost weights, budget."""
    runs = [Run(ANY_SUBSET, tuple(INPUTS), "random", COSTS["all-costs"])]
    runs += [Run(f"only-{subset_name(s)}", s, "all", COSTS["all-costs"]) for s in reversed(subsets(INPUTS))]
    if "V" in tables:
        runs += [Run(f"{TRI_MODAL}-{cost}", tuple(INPUTS), "all", w) for cost, w in COSTS.items()
                 if cost != "all-costs"]
    if "augmentation" in tables:
        runs += [Run(f"{ANY_SUBSET}-{name}", tuple(INPUTS), "random", COSTS["all-costs"], changes)
                 for name, changes in AUGMENTATIONS.items() if changes is not None]
    if "seeds" in tables:  # the single-input runs first: a third of the tri-modal run's time each
        runs += [Run(seeded(f"only-{subset_name(s)}", seed), s, "all", COSTS["all-costs"], seed=seed)
                 for s in (*SEEDED_SUBSETS, tuple(INPUTS)) for seed in SEEDS]
    if "weights" in tables:
        known = {run.name for run in runs}  # "no-c2" is also Table V's run
        runs += [Run(f"{TRI_MODAL}-{name}", tuple(INPUTS), "all", w) for name, w in WEIGHT_VARIANTS.items()
                 if f"{TRI_MODAL}-{name}" not in known]
    if "budget" in tables:
        runs += [Run(budgeted(f"only-{subset_name(s)}"), s, "all", COSTS["all-costs"], budget=BUDGET)
                 for s in BUDGET_RUNS]
    return runs


def fold_config(held_out: str, run: Run, schedule: Schedule = SCHEDULES["short"]) -> dict[str, Any]:
    training = [f"../../../../shared/data/ms/{s}" for s in MS_FOLDS if s != held_out]
    training.append(f"../../../../shared/data/brats/{OTHER_TRAINING}")
    epochs = schedule.epochs * run.budget
    averaged = (f" ({epochs} x {schedule.steps_per_epoch} steps, the weights averaged over the last "
                f"{schedule.average_epochs} epochs)" if schedule.average_epochs else "")
    config = {
        "name": f"mi-{held_out}-{run.name}",
        "version": "0.1.0",
        "description": (f"Chartsias et al. 2018 Tables IV-V experiment (training/experiments/missing_inputs.py), "
                        f"fold holding out {held_out} (never read by this run). Run '{run.name}': inputs "
                        f"{', '.join(run.inputs)} -> FLAIR, input subsets '{run.mode}', cost weights c1/c2/c3 = "
                        f"{'/'.join(str(w) for w in run.weights)}. Fixed schedule"
                        f"{averaged}, no early stopping{f', seed {run.seed}' if run.seed else ''}."),
        "credits": CREDITS,
        "data": training,
        "inputs": list(run.inputs),
        "outputs": [TARGET],
        "out": f"{schedule.runs}/{held_out}/{run.name}",
        "validation_subjects": [],
        "lesion_input": False,
        "latent_channels": 16,
        "filters": [32, 64, 128],
        "fusion": "max",
        "loss_weights": list(run.weights),
        "input_subsets": run.mode,
        "learning_rate": 0.001,
        "batch_size": 16,
        "crop_size": 64,
        "epochs": epochs,
        "steps_per_epoch": schedule.steps_per_epoch,
        "max_minutes": None,
        "seed": run.seed,
        "threads": 1,
    }
    if schedule.average_epochs:
        config["average_epochs"] = schedule.average_epochs
    if run.augment is not None:
        config["augment"] = dict(run.augment)
    return config


def write_configs(folder: Path | None = None, log=print, schedule: Schedule = SCHEDULES["short"]) -> list[Path]:
    """One config per fold and run of the schedule; returns the paths in the order they should be trained."""
    folder = schedule.configs if folder is None else folder
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for held_out in MS_FOLDS:
        for run in run_names(schedule.tables):
            path = folder / f"mi-{held_out}-{run.name}.json"
            write_json(path, fold_config(held_out, run, schedule))
            written.append(path)
    log(f"wrote {len(written)} configs to {folder}")
    return written


def train_all(schedule: Schedule, jobs: int = 1, folder: Path | None = None, python: str = sys.executable,
              log=print) -> int:
    """Train the schedule's runs that have not finished, ``jobs`` at a time, most important run first.

    The queue goes run by run across the folds (both folds' any-subset model, then both folds'
    tri-modal model, ...), so an interrupted experiment has whole Table IV rows rather than one whole
    fold and nothing of the other.

    A run whose model folder exists is skipped and one with a checkpoint is resumed, so the same
    command continues the experiment after an interruption (losing at most an epoch per run).
    Each run's output goes to ``train.log`` in its folder. Returns the number of runs that failed.
    """
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from ..config import load_config
    from ..run_folder import CHECKPOINT

    lock = threading.Lock()

    def say(message: str) -> None:  # one line at a time from the worker threads
        with lock:
            log(message)

    folder = schedule.configs if folder is None else folder
    paths = [folder / f"mi-{held_out}-{run.name}.json" for run in run_names(schedule.tables) for held_out in MS_FOLDS]
    absent = [p for p in paths if not p.is_file()]
    if absent:
        raise ValueError(f"{folder}: no config {absent[0].name} (write them with: configs --schedule ...)")

    def train_one(path: Path) -> bool:
        config = load_config(path)
        out = Path(config.out)
        if (out / config.name / "card.json").is_file():
            say(f"{config.name}: finished, skipped")
            return True
        command = [python, "-m", "training.train", "--config", str(path)]
        if (out / CHECKPOINT).is_file():
            command.append("--resume")
        out.mkdir(parents=True, exist_ok=True)
        say(f"{config.name}: {shlex.join(command)}")
        with open(out / "train.log", "a", encoding="utf-8") as handle:
            code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT).returncode
        say(f"{config.name}: done" if code == 0 else f"{config.name}: failed (exit {code}), see {out / 'train.log'}")
        return code == 0

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return sum(not ok for ok in pool.map(train_one, paths))


def model_folder(runs: Path, held_out: str, run: str) -> Path:
    return runs / held_out / run / f"mi-{held_out}-{run}"


METRICS = ("mse_brain", "ssim_brain", "psnr_brain")


CACHE = "evaluation.json"  # per run folder: metrics already computed for these weights


def evaluate_fold(runs: Path, case: Any, log=print, tables: tuple[str, ...] = ("IV", "V", "augmentation")
                  ) -> dict[str, Any]:
    """Every model of the fold on every subset of its inputs: {run: {subset: metrics}} ({} = not trained).

    Metrics are kept in ``<run folder>/evaluation.json`` with the weights' SHA-256 and reused
    while the weights are the same, so the evaluation can follow the trainings as they finish.
    """
    from MRSynthesisLib.cards import file_sha256, read_card

    table: dict[str, dict[str, Any]] = {}
    for spec in run_names(tables):
        run = spec.name
        folder = model_folder(runs, case.name, run)
        table[run] = {}
        if not (folder / "card.json").is_file():
            log(f"[{case.name}] {run}: no model folder {folder}")
            continue
        card = read_card(folder)
        sha = card.weights_sha256 or file_sha256(folder / card.weights)
        cache_path = folder.parent / CACHE
        cache = json.loads(cache_path.read_text(encoding="utf-8")) if cache_path.is_file() else {}
        if cache.get("weights_sha256") != sha or cache.get("held_out") != case.name:
            cache = {"weights_sha256": sha, "held_out": case.name, "metrics": {}}
        for subset in subsets(list(spec.inputs)):
            name = subset_name(subset)
            if name not in cache["metrics"]:
                synthetic = model_predict(folder, case, list(subset), TARGET, use_lesion=False)
                metrics = evaluate(synthetic, case)
                cache["metrics"][name] = {k: metrics[k] for k in METRICS}
                write_json(cache_path, cache)  # atomic: an interrupted run leaves the previous cache
            table[run][name] = cache["metrics"][name]
            log(f"[{case.name}] {run} <- {name}: " +
                "  ".join(f"{k} {table[run][name][k]:.4f}" for k in METRICS))
    return table


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


SIDES = {"A": None, "B": TRI_MODAL, "B'": ANY_SUBSET}  # Table IV columns: None = the subset's own model


def summarise(folds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Table IV, Table V and the augmentation table, each cell the mean over the folds that have it."""
    def cell(run: str, subset: str, metric: str) -> float | None:
        return _mean([f[run][subset][metric] for f in folds.values() if subset in f.get(run, {})])

    def average(table: dict[str, dict[str, Any]], *keys: str) -> float | None:
        values = []
        for row in table.values():
            for key in keys:
                row = row[key]
            values.append(row)
        return _mean([v for v in values if v is not None])

    rows = [subset_name(s) for s in subsets(INPUTS)]
    table4 = {row: {metric: {side: cell(run or f"only-{row}", row, metric) for side, run in SIDES.items()}
                    for metric in METRICS} for row in rows}
    table5 = {row: {cost: cell(TRI_MODAL if cost == "all-costs" else f"{TRI_MODAL}-{cost}", row, "mse_brain")
                    for cost in COSTS} for row in rows}
    augmentation = {row: {name: {metric: cell(ANY_SUBSET if name == "all-augment" else f"{ANY_SUBSET}-{name}",
                                              row, metric) for metric in ("mse_brain", "ssim_brain")}
                          for name in AUGMENTATIONS} for row in rows}
    # The paper's Table IV claim, per subset and fold: the shared model's MSE <= the subset's own model's.
    verdict: dict[str, dict[str, Any]] = {}
    for row in rows:
        own = f"only-{row}"
        verdict[row] = {}
        for side, run in SIDES.items():
            if run is None:
                continue
            per_fold = [f[run][row]["mse_brain"] <= f[own][row]["mse_brain"]
                        for f in folds.values() if row in f.get(run, {}) and row in f.get(own, {})]
            verdict[row][side] = {"folds": len(per_fold), "not_worse": sum(per_fold)}
    return {"table4": table4, "table5": table5, "not_worse_than_A": verdict, "seeds": seed_spread(folds),
            "weights": weight_variants(folds), "budget": budget_check(folds),
            "table4_average": {metric: {side: average(table4, metric, side) for side in SIDES} for metric in METRICS},
            "table5_average": {cost: average(table5, cost) for cost in COSTS},
            "augmentation": augmentation,
            "augmentation_average": {name: {metric: average(augmentation, name, metric)
                                            for metric in ("mse_brain", "ssim_brain")} for name in AUGMENTATIONS}}


def _seed_values(fold: dict[str, Any], run: str, row: str) -> list[float]:
    """MSE of ``run`` and its seeded twins on subset ``row``, for the seeds trained."""
    return [fold[name][row]["mse_brain"] for name in [seeded(run, seed) for seed in (0, *SEEDS)]
            if row in fold.get(name, {})]


def seed_spread(folds: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per fold and Table IV row: A's and B's MSE over the seeds trained, and whether B's loss exceeds the noise.

    A row is listed where B has more than one seed, but the tri-modal row (there A is B).
    ``welch_p``: two-sided Welch t-test of B's MSE against A's (needs two seeds on each side; with
    three a side it only detects gaps several times the spread, so a large p means "not shown",
    not "equal"). ``gap_over_spread``: B's mean minus A's over the larger of the two sides'
    standard deviations (A's single seed has none: B's alone).
    """
    from scipy.stats import ttest_ind

    spread: dict[str, dict[str, Any]] = {}
    for held_out, fold in folds.items():
        for row in (subset_name(s) for s in subsets(INPUTS)[:-1]):  # the last subset is all inputs
            a, b = _seed_values(fold, f"only-{row}", row), _seed_values(fold, TRI_MODAL, row)
            if len(b) < 2 or not a:
                continue
            sd = max(float(np.std(a, ddof=1)) if len(a) > 1 else 0.0, float(np.std(b, ddof=1)))
            gap = float(np.mean(b) - np.mean(a))
            p = float(ttest_ind(b, a, equal_var=False).pvalue) if len(a) > 1 else None
            spread.setdefault(held_out, {})[row] = {
                "A": a, "B": b, "gap": gap, "gap_percent": 100 * gap / float(np.mean(a)),
                "gap_over_spread": gap / sd if sd > 0 else None, "welch_p": p}
    return spread


def weight_variants(folds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per fold and Table IV row: A's and B's MSE (means over their trained seeds) and each
    ``WEIGHT_VARIANTS`` model's, with its gap to A in %; and per side, in how many (fold, subset) cells
    short of all inputs it is not worse than A (the all-input row is where a variant could pay for it).
    """
    cells: dict[str, dict[str, Any]] = {}
    count = {side: {"cells": 0, "not_worse": 0} for side in ("B", *WEIGHT_VARIANTS)}
    for held_out, fold in folds.items():
        for subset in subsets(INPUTS):
            row = subset_name(subset)
            a, b = _seed_values(fold, f"only-{row}", row), _seed_values(fold, TRI_MODAL, row)
            variants = {name: fold[f"{TRI_MODAL}-{name}"][row]["mse_brain"] for name in WEIGHT_VARIANTS
                        if row in fold.get(f"{TRI_MODAL}-{name}", {})}
            if not a or not variants:
                continue
            mean_a = float(np.mean(a))
            sides = {"B": float(np.mean(b)) if b else None, **variants}
            cells.setdefault(held_out, {})[row] = {
                "A": mean_a, "A_seeds": len(a), "B_seeds": len(b),
                **{side: {"mse_brain": v, "gap_percent": None if v is None else 100 * (v - mean_a) / mean_a}
                   for side, v in sides.items()}}
            if len(subset) < len(INPUTS):
                for side, v in sides.items():
                    if v is not None:
                        count[side]["cells"] += 1
                        count[side]["not_worse"] += int(v <= mean_a)
    return {"cells": cells, "not_worse_than_A": count}


def budget_check(folds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per fold and Table IV row short of all inputs, where the tri-modal model was trained for ``BUDGET`` times
    the steps: A's and B's MSE at the usual budget (means over their trained seeds) and at ``BUDGET`` times it
    (A only where trained), with B's gap in % to A at the same budget and to A at the usual one."""
    cells: dict[str, dict[str, Any]] = {}
    long_b = budgeted(TRI_MODAL)
    for held_out, fold in folds.items():
        for subset in subsets(INPUTS)[:-1]:
            row = subset_name(subset)
            a, b = _seed_values(fold, f"only-{row}", row), _seed_values(fold, TRI_MODAL, row)
            if not a or row not in fold.get(long_b, {}):
                continue
            a_long = fold.get(budgeted(f"only-{row}"), {}).get(row, {}).get("mse_brain")
            b_long = fold[long_b][row]["mse_brain"]
            mean_a = float(np.mean(a))
            cells.setdefault(held_out, {})[row] = {
                "A": mean_a, "A_seeds": len(a), "B": float(np.mean(b)) if b else None, "B_seeds": len(b),
                "A_long": a_long, "B_long": b_long,
                "gap_long_percent": None if a_long is None else 100 * (b_long - a_long) / a_long,
                "gap_to_A_percent": 100 * (b_long - mean_a) / mean_a}
    return {"budget": BUDGET, "cells": cells}


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    summary = results["summary"]
    schedule = results["schedule"]
    rows = list(summary["table4"])
    averaged = (f", the weights averaged over the last {schedule['average_epochs']} epochs"
                if schedule.get("average_epochs") else "")
    lines = ["# Chartsias et al. 2018 Tables IV and V on the shared MS data (leave-one-subject-out)", "",
             f"Date: {results['date']}  ", f"Command: `{results['command']}`  ",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()), "",
             (f"Inputs {', '.join(INPUTS)} -> {TARGET}; held out: {', '.join(results['folds'])}; each fold trains "
              f"on the other MS subject and {OTHER_TRAINING}. {schedule['epochs']} x {schedule['steps_per_epoch']} "
              f"steps of batch 16 per run{averaged}, same seed and crops for every run (but the seeds table's). "
              "Scale: mean_in_brain-"
              "normalised FLAIR (brain mean 1), "
              "metrics in the brain (foreground of the inputs), whole held-out volume. Means over the held-out "
              "subjects."), "",
             "## Table IV: a model per subset (A) vs the tri-modal model given the subset (B, the paper's) "
             "vs one model trained on random subsets (B')", "",
             "| inputs | MSE A | MSE B | MSE B' | SSIM A | SSIM B | SSIM B' | PSNR A | PSNR B | PSNR B' "
             "| B not worse (MSE), folds | B' not worse (MSE), folds |",
             "|" + " --- |" * 12]
    for row in rows:
        t = summary["table4"][row]
        v = summary["not_worse_than_A"][row]
        lines.append(f"| {row} | " + " | ".join(_fmt(t[m][side], 2 if m == "psnr_brain" else 4)
                                               for m in METRICS for side in SIDES) + " | "
                     + " | ".join(f"{v[side]['not_worse']}/{v[side]['folds']}" for side in ("B", "B'")) + " |")
    avg = summary["table4_average"]
    lines.append("| average | " + " | ".join(_fmt(avg[m][side], 2 if m == "psnr_brain" else 4)
                                           for m in METRICS for side in SIDES) + " | | |")
    tables = schedule.get("tables", ["IV", "V", "augmentation"])
    if "V" in tables:
        lines += ["", "## Table V: MSE of the tri-modal model trained with a cost part removed", "",
                  "| inputs | " + " | ".join(COSTS) + " |", "|" + " --- |" * (len(COSTS) + 1)]
        for row in rows:
            lines.append(f"| {row} | " + " | ".join(_fmt(summary["table5"][row][c]) for c in COSTS) + " |")
        lines.append("| average | " + " | ".join(_fmt(summary["table5_average"][c]) for c in COSTS) + " |")
    if "augmentation" in tables:
        lines += ["", "## Augmentation: the random-subset model (B') trained with and without augmentation "
                  "(MSE / SSIM)", "",
                  "All: flips, rotation, zoom, gamma, scaling, bias field (training/augment.py); none: all off; "
                  "geometric-only: flips, rotation, zoom; intensity-only: gamma, scaling, bias field.", "",
                  "| inputs | " + " | ".join(AUGMENTATIONS) + " |", "|" + " --- |" * (len(AUGMENTATIONS) + 1)]
        for row in rows:
            cells = summary["augmentation"][row]
            lines.append(f"| {row} | " + " | ".join(f"{_fmt(cells[n]['mse_brain'])} / {_fmt(cells[n]['ssim_brain'])}"
                                                   for n in AUGMENTATIONS) + " |")
        average = summary["augmentation_average"]
        lines.append("| average | " + " | ".join(f"{_fmt(average[n]['mse_brain'])} / "
                                                 f"{_fmt(average[n]['ssim_brain'])}" for n in AUGMENTATIONS) + " |")
    if "seeds" in tables and summary.get("seeds"):
        lines += ["", "## Seeds: is B's loss more than run-to-run noise? (MSE per seed: 0, 1, 2)", "",
                  "A and the tri-modal model trained again with other seeds (weights, subsets, augmentation and "
                  "crops follow the seed). Gap: mean B - mean A; spread: the larger standard deviation over seeds; "
                  "Welch p: two-sided, B vs A (three seeds a side detect only gaps several times the spread).", "",
                  "| held out | inputs | A (per seed) | B (per seed) | gap (% of A) | gap / spread | Welch p |",
                  "|" + " --- |" * 7]
        for held_out, rows_ in summary["seeds"].items():
            for row, c in rows_.items():
                lines.append(f"| {held_out} | {row} | {', '.join(_fmt(v) for v in c['A'])} | "
                             f"{', '.join(_fmt(v) for v in c['B'])} | {c['gap']:+.4f} ({c['gap_percent']:+.1f} %) | "
                             f"{_fmt(c['gap_over_spread'], 2)} | {_fmt(c['welch_p'], 3)} |")
    if "weights" in tables and summary.get("weights", {}).get("cells"):
        variants = list(WEIGHT_VARIANTS)
        lines += ["", "## Cost weights: can the tri-modal model's training close B's gap? (MSE)", "",
                  "The tri-modal model trained with only its cost weights c1/c2/c3 changed: "
                  + ", ".join(f"{n} = {'/'.join(f'{w:g}' for w in WEIGHT_VARIANTS[n])}" for n in variants)
                  + " (seed 0). A and B: means over their trained seeds. In brackets: the gap to A.", "",
                  "| held out | inputs | A (seeds) | B (gap to A), seeds | " + " | ".join(variants) + " |",
                  "|" + " --- |" * (4 + len(variants))]
        for held_out, rows_ in summary["weights"]["cells"].items():
            for row, c in rows_.items():
                shown = [f"{_fmt(c[side]['mse_brain'])} ({c[side]['gap_percent']:+.1f} %)"
                         if c.get(side, {}).get("mse_brain") is not None else "-" for side in ("B", *variants)]
                lines.append(f"| {held_out} | {row} | {_fmt(c['A'])} ({c['A_seeds']}) | {shown[0]}, "
                             f"{c['B_seeds']} seeds | " + " | ".join(shown[1:]) + " |")
        count = summary["weights"]["not_worse_than_A"]
        lines += ["", "Not worse than A (MSE), (fold, subset) cells short of all inputs: "
                  + ", ".join(f"{side} {c['not_worse']} of {c['cells']}" for side, c in count.items()) + "."]
    if "budget" in tables and summary.get("budget", {}).get("cells"):
        times = summary["budget"]["budget"]
        lines += ["", f"## Budget: does training {times} x as long close B's gap? (MSE)", "",
                  f"The tri-modal model (B) and the single-input models of T1 and T1c (A) trained for {times} x the "
                  "epochs (seed 0), the weights averaged over the same last epochs. A and B at the usual budget: "
                  "means over their trained seeds. Gaps: B at the long budget against A at the long budget, and "
                  "against A at the usual one.", "",
                  f"| held out | inputs | A (seeds) | B (seeds) | A x{times} | B x{times} | gap, both x{times} "
                  f"| gap to A |", "|" + " --- |" * 8]
        for held_out, rows_ in summary["budget"]["cells"].items():
            for row, c in rows_.items():
                gap = "-" if c["gap_long_percent"] is None else f"{c['gap_long_percent']:+.1f} %"
                lines.append(f"| {held_out} | {row} | {_fmt(c['A'])} ({c['A_seeds']}) | {_fmt(c['B'])} "
                             f"({c['B_seeds']}) | {_fmt(c['A_long'])} | {_fmt(c['B_long'])} | {gap} | "
                             f"{c['gap_to_A_percent']:+.1f} % |")
    lines += ["", "## Per held-out subject", "", "| held out | run | inputs | MSE | SSIM | PSNR |",
              "|" + " --- |" * 6]
    for held_out, fold in results["folds"].items():
        for run, cells in fold.items():
            for subset, m in cells.items():
                lines.append(f"| {held_out} | {run} | {subset} | {_fmt(m['mse_brain'])} | {_fmt(m['ssim_brain'])} | "
                             f"{_fmt(m['psnr_brain'], 2)} |")
    return "\n".join(lines) + "\n"


def run_evaluation(data: list[str], runs: Path | None, out: Path | None, command: str = "", log=print,
                   schedule: Schedule = SCHEDULES["short"]) -> dict[str, Any]:
    """Evaluate the schedule's runs (under ``runs``, default the schedule's) and write the tables to ``out``."""
    runs = Path(schedule.runs) if runs is None else runs
    found = {s.subject: s for s in discover(data)}
    missing = [s for s in MS_FOLDS if s not in found]
    if missing:
        raise ValueError(f"held-out subjects {missing} are not in {data}")
    folds = {}
    for held_out in MS_FOLDS:
        case = load_case(found[held_out], INPUTS, TARGET)
        folds[held_out] = evaluate_fold(runs, case, log=log, tables=schedule.tables)
    results = {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "command": command,
               "versions": versions(), "inputs": INPUTS, "target": TARGET, "runs": str(runs),
               "schedule": {"epochs": schedule.epochs, "steps_per_epoch": schedule.steps_per_epoch, "batch_size": 16,
                            "average_epochs": schedule.average_epochs, "tables": list(schedule.tables)},
               "folds": folds, "summary": summarise(folds)}
    if out is not None:
        write_results(out, _finite(results), markdown(results))
        log(f"wrote {out / 'results.md'} and {out / 'results.json'}")
    return results


def _log(message: str) -> None:
    print(message, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.experiments.missing_inputs",
                                     description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    configs = commands.add_parser("configs", help="write the training configs of every fold and run")
    configs.add_argument("--folder", type=Path, help="default: the schedule's (training/configs/missing_inputs[_long])")
    training = commands.add_parser("train", help="train the runs not finished yet (resumes interrupted ones)")
    training.add_argument("--jobs", type=int, default=1, help="runs at a time (each config asks for 1 thread)")
    training.add_argument("--folder", type=Path, help="configs (default: the schedule's)")
    evaluation = commands.add_parser("evaluate", help="evaluate the trained runs and write the tables")
    evaluation.add_argument("--data", nargs="+", default=DEFAULT_DATA)
    evaluation.add_argument("--runs", type=Path, help="default: the schedule's (runs/missing-inputs[-long])")
    evaluation.add_argument("--out", type=Path, help="default: docs/results/missing_inputs[_long]")
    evaluation.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    for command in (configs, training, evaluation):
        command.add_argument("--schedule", choices=sorted(SCHEDULES), default="short",
                             help="short: 8 x 60 steps, Tables IV, V and augmentation; long: 25 x 80 steps "
                                  "averaged over the last 5 epochs, Table IV, augmentation, seeds, cost weights and "
                                  "twice the budget")
    args = parser.parse_args(argv)
    schedule = SCHEDULES[args.schedule]
    if args.command == "configs":
        write_configs(args.folder, log=_log, schedule=schedule)
    elif args.command == "train":
        if args.jobs < 1:
            parser.error("--jobs must be at least 1")
        return 1 if train_all(schedule, args.jobs, args.folder, log=_log) else 0
    else:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        command = ("python -m training.experiments.missing_inputs "
                   + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])))
        out = args.out or Path("docs/results") / schedule.configs.name
        run_evaluation(args.data, args.runs, out, command=command, log=_log, schedule=schedule)
    return 0


if __name__ == "__main__":
    sys.exit(main())
