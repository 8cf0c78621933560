"""Leave-one-subject-out (LOSO) comparison of synthesis methods (issue 3).

Run by hand from the repository root::

    python -m training.experiments.loso --inputs T1 T2 --target FLAIR \
        --methods poly rf "chartsias:runs/loso-{subject}/chartsias-mimo-shared" \
        --out docs/results/loso_flair_t1t2

Every subject found in ``--data`` (default: the shared MS and BraTS folders) is held out in
turn. The baselines (``training.baselines``: ``poly``, ``rf``) are fitted on the other
subjects and predict the held-out one. Networks are not trained here (up to an hour per
fold on CPU): ``chartsias:<template>``, ``wei3d:<template>`` (Wei et al.'s 3D FCN) and
``ae3d:<template>`` (Klingelhoefer's 3D autoencoder) name the model folder trained without
the held-out subject, ``{subject}`` standing for its name (configs: ``training/configs/loso/``);
a missing folder is reported as skipped, and a model whose card lists the held-out subject
among its training or validation subjects is refused. ``chartsias+lesion:<template>`` also
gives the model the subject's expert lesion mask as lesion channel (information the
baselines do not get); plain ``chartsias`` runs with the channel empty, like the baselines.

Preprocessing is the inference code's (``training.datasets.load_subject``): brain mask =
``foreground_mask`` over the inputs, every volume normalised ``mean_in_brain`` inside it.
Metrics (``metrics.compute_all``) are computed on that normalised scale: reference = the
real target normalised, synthetic = the baseline's prediction (trained in those units) or
the network's raw output (its card's ``output_intensity`` undone), so no method gets a
per-subject rescaling the others do not. PSNR/SSIM use the reference's data range (whole
volume), the same for every method. Lesion Ratio 1/2 (Wei et al. 2019) are computed for
subjects with an expert lesion mask, NAWM = ``white_matter_mask(T1)`` minus lesions.

With ``--training-fit`` every method is also scored on each of its fold's *training*
subjects that have an expert lesion mask: a model that misses the lesion contrast there
under-fits it, one that meets it there and misses it on the held-out subject does not
generalise, and the two call for different remedies. Those rows are a diagnostic, never a
held-out figure.

Writes ``results.md`` and ``results.json`` to ``--out``; no image volumes.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from MRSynthesisLib import modalities
from MRSynthesisLib.metrics import compute_all, white_matter_mask
from MRSynthesisLib.preprocessing import foreground_mask
from MRSynthesisLib.volume import read_volume

from ..baselines import BASELINES, make_baseline
from ..datasets import SubjectFiles, discover, load_subject

DEFAULT_DATA = ["../shared/data/ms", "../shared/data/brats"]
DEFAULT_OUT = "docs/results/loso_flair_t1t2"
RATIO1_TOLERANCE = 0.1  # issue 3: |Ratio 1 synthetic - Ratio 1 real| must be within this
TABLE_METRICS = ("ssim_brain", "psnr_brain", "mae_brain", "mse_brain")


@dataclass
class Case:
    """One subject preprocessed as inference does; arrays (z, y, x) with the axial axis first."""

    name: str
    files: SubjectFiles
    inputs: dict[str, np.ndarray]
    target: np.ndarray
    brain: np.ndarray
    lesion: np.ndarray | None  # expert mask, or None when the subject has none
    nawm: np.ndarray | None


def load_case(files: SubjectFiles, inputs: list[str], target: str) -> Case:
    extra = ["T1"] if "T1" not in inputs and "T1" in files.images else []
    subject, _, _ = load_subject(files, inputs, [target, *extra], lesion_input=True, lesion_fallback="zeros",
                                 flair_z=3.0, min_voxels=20, min_slice_brain_fraction=0.05)
    lesion = subject.lesion > 0.5 if subject.lesion_source == "mask" and subject.lesion.any() else None
    nawm = None
    if lesion is not None and "T1" in subject.images:
        nawm = white_matter_mask(subject.images["T1"], subject.brain)
    return Case(files.subject, files, {m: subject.images[m] for m in inputs}, subject.images[target],
                subject.brain, lesion, nawm)


MODEL_KINDS = ("chartsias", "chartsias+lesion", "wei3d", "ae3d")


def parse_method(spec: str) -> tuple[str, str | None]:
    """``poly`` / ``rf`` -> (name, None); ``<kind>[.<label>]:<template>`` -> (name, template), kind in
    MODEL_KINDS; the label tells two models of one kind apart (``chartsias+lesion.ignore``)."""
    if spec in BASELINES:
        return spec, None
    name, sep, template = spec.partition(":")
    kind, dot, label = name.partition(".")
    if kind in MODEL_KINDS and sep and template and (label or not dot):
        return name, template
    raise ValueError(f"unknown method {spec!r}: use {', '.join(BASELINES)} or <kind>[.<label>]:<model folder template> "
                     f"with kind one of {', '.join(MODEL_KINDS)} ({{subject}} = held-out subject)")


def population_mean(card: Any, target: str) -> float:
    """The training volumes' typical mean brain intensity of ``target``, from the card's output statistics.

    The harness compares on the mean_in_brain scale (target / its mean in the brain). A model's
    output, mapped to intensities by the card (``denormalise``), is put on that scale by
    dividing by this population value, never by the held-out subject's own (unknown) mean:
    ``offset`` for zscore (median of the means), ``scale / 3`` for three_mean_nonzero (median
    of 3 x the non-zero mean, which is the brain mean for skull-stripped images), ``scale``
    for mean_in_brain. So a Chartsias model's raw output is used exactly as before.
    """
    stats = card.output_intensity.get(target)
    if not stats:
        raise ValueError(f"model {card.name!r} has no output_intensity for {target}")
    scheme = card.normalisation.get("scheme")
    value = {"zscore": float(stats["offset"]), "three_mean_nonzero": float(stats["scale"]) / 3.0,
             "mean_in_brain": float(stats["scale"])}.get(scheme)
    if not value or value <= 0:
        raise ValueError(f"model {card.name!r}: cannot put normalisation {scheme!r} on the mean_in_brain scale")
    return value


def model_predict(folder: Path, case: Case, inputs: list[str], target: str, use_lesion: bool,
                  trained_on: bool = False, replaced: dict[str, Any] | None = None) -> np.ndarray:
    """A model's target from ``inputs`` on the held-out case (or, with ``trained_on``, on one of
    its training subjects), on the mean_in_brain scale, axial axis first; ``replaced``: modality ->
    a degraded copy of that input (on its grid) given instead, the brain still that of the files."""
    from MRSynthesisLib.cards import load_model
    from MRSynthesisLib.logic import SynthesisLogic, SynthesisRequest

    loaded = load_model(folder)
    card = loaded.card
    used = {s.get("subject") for group in (card.training.get("subjects") or {}).values() for s in group}
    if (case.name in used) != trained_on:
        if trained_on:
            raise ValueError(f"{folder}: its card does not list {case.name} among its training subjects")
        raise ValueError(f"{folder}: its card lists the held-out subject {case.name} among its training/"
                         "validation subjects; it is not a leave-one-subject-out model")
    volumes = {m: read_volume(case.files.images[m]) for m in inputs}
    grid = volumes[inputs[0]]
    brain = foreground_mask([v.array for v in volumes.values()])  # what load_subject used
    unknown = sorted(set(replaced or {}) - set(inputs))
    if unknown:  # a degraded copy that no input takes would leave the condition unmeasured without a word
        raise ValueError(f"replaced {', '.join(unknown)}: not among the inputs {', '.join(inputs)}")
    volumes.update(replaced or {})
    lesion = None
    if use_lesion:
        if case.files.lesion is None:
            raise ValueError(f"{case.name} has no lesion mask for chartsias+lesion")
        lesion = read_volume(case.files.lesion)
    request = SynthesisRequest(inputs=volumes, targets=[target], lesion_mask=lesion, device="cpu",
                               brain_mask=grid.with_array(brain.astype(np.float32), source="brain mask"))
    output = SynthesisLogic(loaded).run(request).outputs[target].array
    output = np.where(brain, output / population_mean(card, target), 0.0)
    axis = grid.geometry.axis_for("axial")
    return np.ascontiguousarray(np.moveaxis(output.astype(np.float32), axis, 0))


def evaluate(synthetic: np.ndarray, case: Case) -> dict[str, Any]:
    with_lesions = case.lesion is not None and case.nawm is not None
    try:
        metrics = compute_all(synthetic, case.target, brain_mask=case.brain,
                              lesion_mask=case.lesion if with_lesions else None,
                              nawm_mask=case.nawm if with_lesions else None)
    except ValueError as error:
        if not with_lesions:
            raise
        # e.g. a synthetic image that is 0 throughout the NAWM: the ratios are undefined, the rest is not
        metrics = compute_all(synthetic, case.target, brain_mask=case.brain)
        metrics["lesion_error"] = str(error)
    if "lesion_ratio1_synthetic" in metrics:
        metrics["lesion_ratio1_abs_difference"] = abs(metrics["lesion_ratio1_synthetic"]
                                                      - metrics["lesion_ratio1_reference"])
    return metrics


def run_loso(data: list[str], inputs: list[str], target: str, methods: list[str], out: Path | None = None,
             poly: dict[str, Any] | None = None, rf: dict[str, Any] | None = None, command: str = "",
             log=print, training_fit: bool = False) -> dict[str, Any]:
    """Hold out every subject in turn; returns (and with ``out`` writes) the results."""
    inputs = [modalities.canonical(m) for m in inputs]
    target = modalities.canonical(target)
    if target in inputs:
        raise ValueError(f"the target {target} is also an input")
    parsed = [parse_method(m) for m in methods]
    settings = {"poly": dict(poly or {}), "rf": dict(rf or {})}
    subjects = [s for s in discover(data) if all(m in s.images for m in [*inputs, target])]
    if len(subjects) < 2:
        raise ValueError(f"LOSO needs at least 2 subjects with {', '.join([*inputs, target])}; found {len(subjects)}")
    log(f"subjects: {', '.join(s.subject for s in subjects)}")
    cases = [load_case(s, inputs, target) for s in subjects]
    folds = []
    for held in cases:
        train = [c for c in cases if c is not held]
        fold: dict[str, Any] = {"held_out": held.name, "training": [c.name for c in train],
                                "lesion_metrics": held.nawm is not None, "methods": {}}
        for name, template in parsed:
            entry: dict[str, Any] = {}
            started = time.perf_counter()
            try:
                if template is None:
                    model = make_baseline(name, **settings[name])
                    model.fit([(c.inputs, c.target, c.brain) for c in train])
                    entry["fit_seconds"] = round(time.perf_counter() - started, 1)
                    entry["training_voxels"] = model.training_voxels
                    synthetic = model.predict(held.inputs, held.brain)
                    predict = lambda case: model.predict(case.inputs, case.brain)  # noqa: E731
                else:
                    folder = Path(template.format(subject=held.name))
                    entry["model"] = str(folder)
                    if not (folder / "card.json").is_file():
                        entry["skipped"] = f"no model folder {folder} (train it with training/configs/loso/)"
                        log(f"[{held.name}] {name}: skipped, {entry['skipped']}")
                        fold["methods"][name] = entry
                        continue
                    use_lesion = name.partition(".")[0].endswith("+lesion")
                    synthetic = model_predict(folder, held, inputs, target, use_lesion)
                    predict = lambda case: model_predict(folder, case, inputs, target, use_lesion,  # noqa: E731
                                                         trained_on=True)
                entry["metrics"] = evaluate(synthetic, held)
                if training_fit:
                    entry["training_fit"] = {c.name: evaluate(predict(c), c) for c in train if c.nawm is not None}
            except (ValueError, OSError) as error:
                entry["error"] = str(error)
                log(f"[{held.name}] {name}: ERROR {error}")
            entry["seconds"] = round(time.perf_counter() - started, 1)
            fold["methods"][name] = entry
            if "metrics" in entry:
                m = entry["metrics"]
                ratio = (f"  ratio1 {m['lesion_ratio1_synthetic']:.3f} (real {m['lesion_ratio1_reference']:.3f})"
                         if "lesion_ratio1_synthetic" in m else "")
                log(f"[{held.name}] {name}: ssim_brain {m['ssim_brain']:.4f}  psnr_brain {m['psnr_brain']:.2f}"
                    f"{ratio}  ({entry['seconds']} s)")
        folds.append(fold)
    results = {
        "experiment": f"LOSO {'+'.join(inputs)} -> {target}",
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command,
        "versions": versions(),
        "data": list(data),
        "inputs": inputs,
        "target": target,
        "methods": methods,
        "settings": {name: make_baseline(name, **settings[name]).settings() for name, t in parsed if t is None},
        "scale": "mean_in_brain-normalised target (brain mean 1); metrics in the brain = foreground_mask of the inputs",
        "folds": folds,
        "training_fit": training_fit,
        "mean": summarise(folds, [n for n, _ in parsed]),
    }
    if out is not None:
        out = Path(out)
        write_results(out, _finite(results), markdown(results))
        log(f"wrote {out / 'results.md'} and {out / 'results.json'}")
    return results


def summarise(folds: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, Any]]:
    """Per method: mean of each metric over the folds that have it, and how many folds that is."""
    summary = {}
    for name in names:
        runs = [f["methods"][name]["metrics"] for f in folds if "metrics" in f["methods"].get(name, {})]
        keys = sorted({k for r in runs for k, v in r.items() if isinstance(v, float)})
        summary[name] = {"folds": len(runs), **{k: float(np.mean([r[k] for r in runs if k in r])) for k in keys}}
        summary[name]["folds_with_lesion_metrics"] = sum("lesion_ratio1_synthetic" in r for r in runs)
    return summary


def _finite(value: Any) -> Any:
    """JSON has no inf/NaN: write them as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def versions() -> dict[str, str]:
    import scipy
    import sklearn
    found = {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
             "scikit-learn": sklearn.__version__, "platform": platform.platform()}
    try:
        import torch
        found["torch"] = torch.__version__
    except ImportError:
        pass
    try:
        root = Path(__file__).resolve().parents[2]
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=False,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=False,
                               timeout=10).stdout.strip()
        if commit:
            found["git"] = commit + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return found


def train_recipe(out: Path, name: str, config: Path, python: str = sys.executable) -> Path:
    """One run of ``config`` with ``python -m training.train`` (its output in ``out``/train.log), unless the model
    folder ``out``/``name`` exists already; the experiments that train their own arms use it."""
    folder = out / name
    if (folder / "card.json").is_file():
        return folder
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "train.log", "w") as log:
        done = subprocess.run([python, "-m", "training.train", "--config", str(config)], stdout=log,
                              stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"run {name} failed (exit {done.returncode}); see {out / 'train.log'}")
    return folder


def write_results(out: Path, results: dict[str, Any], text: str) -> None:
    """``results.json`` and ``results.md`` (``text``) in ``out``, each replaced whole: a run stopped
    half-way leaves the previous file, never half of one."""
    from MRSynthesisLib.atomic import replacing, write_json

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", results)
    with replacing(out / "results.md") as tmp:
        tmp.write_text(text, encoding="utf-8")


def _fmt(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    names = list(results["mean"])
    lines = [f"# {results['experiment']}: leave-one-subject-out", "",
             f"Date: {results['date']}  ", f"Command: `{results['command']}`  ",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()), "",
             (f"Scale: {results['scale']}. PSNR/SSIM use the real target's data range (whole volume). "
              "Ratio 1 = mean(lesion) / mean(NAWM), Ratio 2 = mean(lesion) / mean(NAWM within 5 voxels "
              "of the lesions) (Wei et al. 2019), for subjects with an expert lesion mask; "
              f"|dR1| = |Ratio 1 synthetic - Ratio 1 real| (issue 3 asks <= {RATIO1_TOLERANCE})."), "",
             "Settings: " + "; ".join(f"{n}: " + ", ".join(f"{k}={v}" for k, v in s.items())
                                      for n, s in results["settings"].items()), ""]
    header = ("| held out | method | SSIM brain | PSNR brain (dB) | MAE brain | MSE brain | Ratio 1 syn / real "
              "| \\|dR1\\| | Ratio 2 syn / real | fit (s) |")
    lines += ["## Per subject", "", header, "|" + " --- |" * 10]
    for fold in results["folds"]:
        for name in names:
            entry = fold["methods"].get(name, {})
            if "metrics" not in entry:
                why = entry.get("skipped") or entry.get("error") or "not run"
                lines.append(f"| {fold['held_out']} | {name} | {why} |" + " |" * 7)
                continue
            m = entry["metrics"]
            r1 = (f"{m['lesion_ratio1_synthetic']:.3f} / {m['lesion_ratio1_reference']:.3f}"
                  if "lesion_ratio1_synthetic" in m else "-")
            r2 = (f"{m['lesion_ratio2_synthetic']:.3f} / {m['lesion_ratio2_reference']:.3f}"
                  if "lesion_ratio2_synthetic" in m else "-")
            d1 = _fmt(m.get("lesion_ratio1_abs_difference"), 3)
            lines.append(f"| {fold['held_out']} | {name} | {_fmt(m['ssim_brain'])} | {_fmt(m['psnr_brain'], 2)} | "
                         f"{_fmt(m['mae_brain'])} | {_fmt(m['mse_brain'])} | {r1} | {d1} | {r2} | "
                         f"{entry.get('fit_seconds', '-')} |")
    lines += ["", "## Mean over held-out subjects", "",
              ("| method | folds | SSIM brain | PSNR brain (dB) | MAE brain | MSE brain | folds with lesions "
               "| Ratio 1 syn / real | \\|dR1\\| |"), "|" + " --- |" * 9]
    for name in names:
        m = results["mean"][name]
        if not m["folds"]:
            lines.append(f"| {name} | 0 |" + " - |" * 7)
            continue
        r1 = (f"{m['lesion_ratio1_synthetic']:.3f} / {m['lesion_ratio1_reference']:.3f}"
              if "lesion_ratio1_synthetic" in m else "-")
        lines.append(f"| {name} | {m['folds']} | {_fmt(m['ssim_brain'])} | {_fmt(m['psnr_brain'], 2)} | "
                     f"{_fmt(m['mae_brain'])} | {_fmt(m['mse_brain'])} | {m['folds_with_lesion_metrics']} | {r1} | "
                     f"{_fmt(m.get('lesion_ratio1_abs_difference'), 3)} |")
    if results.get("training_fit"):
        lines += ["", "## Fit on the training subjects (diagnostic, not held out)", "",
                  ("| held out | method | scored on (trained on it) | SSIM brain | MSE brain | Ratio 1 syn / real "
                   "| \\|dR1\\| |"),
                  "|" + " --- |" * 7]
        for fold in results["folds"]:
            for name in names:
                for subject, m in fold["methods"].get(name, {}).get("training_fit", {}).items():
                    r1 = (f"{m['lesion_ratio1_synthetic']:.3f} / {m['lesion_ratio1_reference']:.3f}"
                          if "lesion_ratio1_synthetic" in m else "-")
                    lines.append(f"| {fold['held_out']} | {name} | {subject} | {_fmt(m['ssim_brain'])} | "
                                 f"{_fmt(m['mse_brain'])} | {r1} | {_fmt(m.get('lesion_ratio1_abs_difference'), 3)} |")
    lines += ["", "Training subjects per fold: " + "; ".join(
        f"{f['held_out']} held out <- {', '.join(f['training'])}" for f in results["folds"]), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.experiments.loso", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", nargs="+", default=DEFAULT_DATA, help="subject folders / CSV manifests")
    parser.add_argument("--inputs", nargs="+", default=["T1", "T2"])
    parser.add_argument("--target", default="FLAIR")
    parser.add_argument("--methods", nargs="+", default=["poly", "rf"],
                        help="poly, rf, or <kind>[.<label>]:<model folder template> with kind chartsias, "
                             "chartsias+lesion, wei3d, ae3d ({subject} = held-out subject)")
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--poly-degree", type=int, default=2)
    parser.add_argument("--poly-alpha", type=float, default=0.0)
    parser.add_argument("--rf-trees", type=int, default=60)
    parser.add_argument("--rf-voxels", type=int, default=100_000, help="training voxels (all folds' subjects)")
    parser.add_argument("--rf-min-leaf", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--training-fit", action="store_true",
                        help="also score every method on its fold's training subjects with lesion masks (diagnostic)")
    args = parser.parse_args(argv)
    command = "python -m training.experiments.loso " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    import torch

    torch.set_num_threads(args.jobs)  # the networks' inference too, not only the random forest
    run_loso(args.data, args.inputs, args.target, args.methods, Path(args.out),
             poly={"degree": args.poly_degree, "alpha": args.poly_alpha, "seed": args.seed},
             rf={"trees": args.rf_trees, "max_voxels": args.rf_voxels, "min_samples_leaf": args.rf_min_leaf,
                 "n_jobs": args.jobs, "seed": args.seed},
             command=command, log=lambda message: print(message, flush=True), training_fit=args.training_fit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
