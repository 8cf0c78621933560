"""Does P3S saliency rank the inputs as removing them does? (Wei et al. 2019, Table 4a and Fig. 6.)

Run by hand from the repository root::

    python -m training.experiments.saliency_ranking --model "runs/loso-{subject}/chartsias-loso-{subject}" \\
        --inputs T1 T1c T2 --target FLAIR --out docs/results/saliency_ranking

For every subject that has the inputs and the target, with the model named by ``--model``
(``{subject}`` standing for the subject, so a leave-one-subject-out model can be used per
subject; a folder without it is one model for all, and subjects its card lists among its
training subjects are marked "seen"):

1. synthesise the target from all inputs with P3S maps, once with the paper's objective (the
   gradient of the L2 prediction error, eq. 3, the real target as reference) and once with the
   target-free variant the product uses when the target is missing; each input's share of
   the mean saliency in the brain ranks the inputs;
2. synthesise it again leaving each input out in turn (Table 4a); the increase of the MSE in
   the brain over the all-input MSE ranks the inputs by how much the prediction needs them;
3. compare the rankings: Kendall's tau and whether the top input agrees.

Leaving an input out needs a model that accepts missing inputs (card ``missing_inputs``
"any_subset": the Chartsias model, or a 3D model trained with input dropout), or, as Wei et al.
did for Table 4a, one model retrained without each input: ``--without-model T1=<folder>
T1c=<folder> T2=<folder>`` (templates with ``{subject}``), each with the same recipe. Errors are on
the mean_in_brain scale of the LOSO harness (``loso.population_mean``). Writes results.md,
results.json and one Fig. 6-style PNG per subject (``P3S_<subject>.png``) to ``--out``; no image
volumes.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import kendalltau

from MRSynthesisLib import modalities
from MRSynthesisLib.cards import load_model
from MRSynthesisLib.logic import SynthesisLogic, SynthesisRequest
from MRSynthesisLib.preprocessing import foreground_mask
from MRSynthesisLib.report import saliency_figure
from MRSynthesisLib.volume import read_volume

from ..datasets import discover
from .loso import DEFAULT_DATA, _finite, population_mean, versions, write_results


def rank(values: dict[str, float]) -> list[str]:
    """Names by decreasing value."""
    return sorted(values, key=lambda n: -values[n])


def subject_row(folder: Path, files: Any, inputs: list[str], target: str, figure: Path | None,
                without: dict[str, Path] | None = None, log=print) -> dict[str, Any]:
    """``without``: {input: model folder retrained without it} (Wei et al.'s protocol); when None,
    the input is left out at inference, which the model must accept."""
    loaded = load_model(folder)
    card = loaded.card
    if without is None and card.missing_inputs != "any_subset":
        raise ValueError(f"{folder}: model {card.name!r} needs all its inputs; leaving one out is not possible "
                         "(give --without-model: models retrained without each input)")
    retrained = {m: load_model(path) for m, path in (without or {}).items()}
    for left_out, model in retrained.items():
        expected = sorted(m for m in inputs if m != left_out)
        if sorted(model.card.inputs) != expected or target not in model.card.outputs:
            raise ValueError(f"{without[left_out]}: the model without {left_out} must take {', '.join(expected)} and "
                             f"give {target}; its card says {', '.join(model.card.inputs)} -> "
                             f"{', '.join(model.card.outputs)}")
    seen = {s.get("subject") for group in (card.training.get("subjects") or {}).values() for s in group}
    volumes = {m: read_volume(files.images[m]) for m in inputs}
    real = read_volume(files.images[target])
    grid = volumes[inputs[0]]
    brain = foreground_mask([v.array for v in volumes.values()])
    brain_volume = grid.with_array(brain.astype(np.float32), source="brain mask")
    truth = np.where(brain, real.array / real.array[brain].mean(), 0.0)

    def run(given: list[str], model: Any = loaded, **saliency: Any) -> tuple[float, Any]:
        request = SynthesisRequest({m: volumes[m] for m in given}, [target], brain_mask=brain_volume, device="cpu",
                                   **saliency)
        result = SynthesisLogic(model).run(request)
        synthetic = result.outputs[target].array / population_mean(model.card, target)
        return float(((synthetic - truth)[brain] ** 2).mean()), result

    full_mse, paper = run(inputs, saliency=True, saliency_references={target: real})
    _, free = run(inputs, saliency=True)
    increase = {}
    for left_out in inputs:
        mse, _ = run([m for m in inputs if m != left_out], retrained.get(left_out, loaded))
        increase[left_out] = mse - full_mse
        log(f"[{files.subject}] without {left_out}: MSE {mse:.4f} (all inputs {full_mse:.4f})")
    row: dict[str, Any] = {"subject": files.subject, "model": str(folder), "seen_in_training": files.subject in seen,
                           "mse_all_inputs": full_mse, "mse_increase_without": increase,
                           "objective_paper": paper.saliency_objective,
                           "objective_target_free": free.saliency_objective,
                           "left_out_by": "retrained models" if retrained else "leaving the input out at inference",
                           "retrained_models": {m: str(p) for m, p in (without or {}).items()}}
    by_error = rank(increase)
    for label, result in (("paper", paper), ("target_free", free)):
        shares = result.contributions[target]
        order = rank(shares)
        tau = kendalltau([shares[m] for m in inputs], [increase[m] for m in inputs]).statistic
        row[label] = {"shares": shares, "ranking": order, "kendall_tau": float(tau),
                      "top_agrees": order[0] == by_error[0]}
    row["ranking_by_error_increase"] = by_error
    if figure is not None:
        row["figure"] = str(saliency_figure(volumes, paper.saliency[target], figure,
                                            title=f"{files.subject}: P3S for {target} (eq. 3, real {target})"))
    return row


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# P3S ranking vs leave-one-input-out error: {'+'.join(results['inputs'])} -> {results['target']}", "",
             f"Date: {results['date']}  ", f"Command: `{results['command']}`  ",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()), "",
             ("Shares: each input's mean P3S in the brain over the sum of the inputs' (Wei et al. 2019, eq. 3 = "
              "gradient of the L2 error to the real target; target-free = gradient of the prediction's sum in "
              "the brain). MSE increase: MSE in the brain (mean_in_brain scale) without that input minus with "
              "all inputs (Table 4a). tau: Kendall's tau between shares and MSE increases."), "",
             "| subject | seen (card lists it for training or validation) | MSE all | MSE increase without "
             "| ranking by error | P3S (eq. 3) shares "
             "| tau / top agrees | target-free shares | tau / top agrees |", "|" + " --- |" * 9]
    for row in results["rows"]:
        if "error" in row:
            lines.append(f"| {row['subject']} | {row['error']} |" + " |" * 7)
            continue
        inc = ", ".join(f"{m} {v:+.4f}" for m, v in row["mse_increase_without"].items())

        cells = []
        for label in ("paper", "target_free"):
            entry = row[label]
            cells.append(", ".join(f"{m} {100 * v:.1f} %" for m, v in entry["shares"].items()))
            cells.append(f"{entry['kendall_tau']:+.2f} / {'yes' if entry['top_agrees'] else 'no'}")
        lines.append(f"| {row['subject']} | {'yes' if row['seen_in_training'] else 'no'} | "
                     f"{row['mse_all_inputs']:.4f} | {inc} | {' > '.join(row['ranking_by_error_increase'])} | "
                     + " | ".join(cells) + " |")
    lines += ["", "Inputs left out by: " + "; ".join(sorted({r["left_out_by"] for r in results["rows"]
                                                           if "left_out_by" in r})) + ".",
              "", "Figures (Fig. 6 layout: P3S maps on one shared colour scale above the inputs): "
              + ", ".join(f"`{Path(r['figure']).name}`" for r in results["rows"] if "figure" in r), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.experiments.saliency_ranking",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model folder, or a template with {subject}")
    parser.add_argument("--data", nargs="+", default=DEFAULT_DATA)
    parser.add_argument("--inputs", nargs="+", default=["T1", "T1c", "T2"])
    parser.add_argument("--target", default="FLAIR")
    parser.add_argument("--out", default="docs/results/saliency_ranking")
    parser.add_argument("--without-model", nargs="+", default=[], metavar="INPUT=FOLDER",
                        help="a model retrained without INPUT, per input (templates with {subject}); Wei et al.'s "
                             "protocol, for models that cannot leave an input out at inference")
    args = parser.parse_args(argv)
    inputs = [modalities.canonical(m) for m in args.inputs]
    target = modalities.canonical(args.target)
    without_templates = {}
    for item in args.without_model:
        name, sep, template = item.partition("=")
        if not sep or not template:
            parser.error(f"--without-model takes INPUT=FOLDER, got {item!r}")
        without_templates[modalities.canonical(name)] = template
    if without_templates and sorted(without_templates) != sorted(inputs):
        parser.error(f"--without-model needs one model per input ({', '.join(inputs)}), got "
                     f"{', '.join(without_templates)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for files in discover(args.data):
        if not all(m in files.images for m in [*inputs, target]):
            continue
        folder = Path(args.model.format(subject=files.subject))
        without = {m: Path(t.format(subject=files.subject)) for m, t in without_templates.items()} or None
        absent = [p for p in [folder, *(without or {}).values()] if not (p / "card.json").is_file()]
        if absent:
            rows.append({"subject": files.subject, "error": f"no model folder {', '.join(map(str, absent))}"})
            continue
        try:
            rows.append(subject_row(folder, files, inputs, target, out / f"P3S_{files.subject}.png", without,
                                    log=lambda m: print(m, flush=True)))
        except ValueError as error:
            rows.append({"subject": files.subject, "error": str(error)})
        print(json.dumps(rows[-1], default=str)[:400], flush=True)
    command = "python -m training.experiments.saliency_ranking " + " ".join(shlex.quote(a) for a in
                                                                           (argv or sys.argv[1:]))
    results = {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "command": command,
               "versions": versions(), "inputs": inputs, "target": target, "rows": rows}
    write_results(out, _finite(results), markdown(results))
    print(f"wrote {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
