"""Every synthesis task of a model scored on one subject: to compare recipes on a subject they did not learn from.

Run by hand from the repository root::

    python -m training.experiments.held_out_tasks --subject ../shared/data/ms/patient07 \\
        --models old=<model folder> new=<model folder> --out docs/results/<name>

The tasks are training validation's (``training.validate.validation_tasks``): each input alone
to every other output, and every input but one to the missing one. Each is synthesised on
every ``--stride``-th slice through the product's slice-wise path and scored like validation
(``training.validate.task_scores``: MSE and mean 2D SSIM in the brain, on the card's
normalised scale, the subject's expert lesion mask as lesion channel when the model has one).
"constant" is the MSE of predicting the brain mean (1.0) everywhere, the trivial baseline.

Each model's card says whether it learnt from the subject: "unseen", "validation" (it chose
the epoch or stopped the run: slightly optimistic) or "training" (not a held-out figure);
the table shows it. Writes ``results.md`` and ``results.json`` to ``--out``; no volumes.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from MRSynthesisLib import metrics
from MRSynthesisLib.cards import load_model
from MRSynthesisLib.devices import DEVICES, PRECISIONS, choose_device, choose_precision
from MRSynthesisLib.inference import RunSettings
from MRSynthesisLib.preprocessing import NormalisationSpec

from ..datasets import Subject, discover, load_subject
from ..validate import task_scores, validation_tasks
from .loso import versions, write_results


def subject_role(card_training: dict[str, Any], subject: str) -> str:
    """'training', 'validation' or 'unseen': what the card's run did with ``subject``."""
    groups = card_training.get("subjects") or {}
    for role in ("training", "validation"):
        if any(entry.get("subject") == subject for entry in groups.get(role, [])):
            return role
    return "unseen"


def constant_mse(subject: Subject, inputs: Sequence[str], outputs: Sequence[str], stride: int) -> dict[str, float]:
    """MSE of predicting 1.0 (the brain mean of every normalised image) for each task's targets."""
    index = subject.slices[::stride]
    scored = subject.supervised(index)
    return {f"mse[{'+'.join(given)}->{t}]": metrics.mse(np.ones_like(subject.images[t][index]),
                                                        subject.images[t][index], scored)
            for given, targets in validation_tasks(inputs, outputs) for t in targets}


def score_model(label: str, folder: Path, subject_folder: Path, *, stride: int, device: torch.device,
                dtype: torch.dtype | None) -> dict[str, Any]:
    """One model's per-task scores on the subject, with what its card says of the subject."""
    loaded = load_model(folder)
    card = loaded.card
    found = discover([str(subject_folder)])
    if len(found) != 1:
        raise ValueError(f"{subject_folder}: expected one subject folder, found {len(found)}")
    files = found[0]
    subject, _, _ = load_subject(files, card.inputs, card.outputs, lesion_input=card.lesion_input,
                                 lesion_fallback="zeros", flair_z=3.0, min_voxels=20, min_slice_brain_fraction=0.05,
                                 normalisation=NormalisationSpec.from_dict(card.normalisation))
    if card.lesion_input and subject.lesion_source != "mask":
        raise ValueError(f"{subject_folder}: model {card.name!r} has a lesion channel and the subject has no expert "
                         "lesion mask; its scores would depend on a lesion fallback")
    settings = RunSettings(device, dtype, batch_size=4 if device.type == "cpu" else 16)
    scores = task_scores(loaded.network.to(device), [subject], card.inputs, card.outputs,
                         lesion_input=card.lesion_input, stride=stride, settings=settings)
    return {"label": label, "folder": str(folder), "name": card.name, "version": card.version,
            "weights_sha256": card.weights_sha256, "role": subject_role(card.training, files.subject),
            "subject": files.subject, "slices": len(subject.slices[::stride]),
            "constant": constant_mse(subject, card.inputs, card.outputs, stride), "scores": scores,
            "mean_mse": float(np.mean([v for k, v in scores.items() if k.startswith("mse[")])),
            "mean_ssim": float(np.mean([v for k, v in scores.items() if k.startswith("ssim[")]))}


def markdown(results: dict[str, Any]) -> str:
    models = results["models"]
    stride = "all" if results["stride"] == 1 else f"every {results['stride']}th"
    lines = ["# Every task of each model on one subject", "",
             f"Date: {results['date']}  ", f"Command: `{results['command']}`  ",
             f"Versions: {', '.join(f'{k} {v}' for k, v in results['versions'].items())}", "",
             f"Subject `{models[0]['subject']}`, {stride} of the slices with brain ({models[0]['slices']} "
             f"slices), {results['precision']}; MSE (SSIM) in the brain on the normalised "
             "scale, lower MSE is better. Role: what the model's run did with the subject.", "",
             "| model | name | version | role | mean MSE | mean SSIM |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {m['label']} | {m['name']} | {m['version']} | {m['role']} | {m['mean_mse']:.4f} | "
              f"{m['mean_ssim']:.3f} |" for m in models]
    tasks = [k[len("mse["):-1] for k in models[0]["scores"] if k.startswith("mse[")]
    lines += ["", "| task | " + " | ".join(m["label"] for m in models) + " | constant |",
              "| --- " * (len(models) + 2) + "|"]
    for task in tasks:
        cells = []
        for m in models:
            mse, ssim = m["scores"].get(f"mse[{task}]"), m["scores"].get(f"ssim[{task}]")
            cells.append("" if mse is None else f"{mse:.4f} ({ssim:.3f})")
        lines.append(f"| {task} | " + " | ".join(cells) + f" | {models[0]['constant'][f'mse[{task}]']:.4f} |")
    return "\n".join(lines) + "\n"


def _model_arg(text: str) -> tuple[str, Path]:
    label, sep, folder = text.partition("=")
    if not sep or not label or not folder:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LABEL=FOLDER")
    return label, Path(folder)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.experiments.held_out_tasks",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--subject", required=True, type=Path, help="one subject folder (BraTS or MS naming)")
    parser.add_argument("--models", nargs="+", required=True, type=_model_arg, metavar="LABEL=FOLDER")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--stride", type=int, default=1, help="score every STRIDE-th slice (default: all)")
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS, help="default fp32")
    args = parser.parse_args(argv)
    if args.stride < 1:
        parser.error("--stride must be at least 1")
    device, note = choose_device(args.device)
    if note:
        print(note, file=sys.stderr)
    dtype = choose_precision(args.precision, device)
    try:
        models = []
        for label, folder in args.models:
            models.append(score_model(label, folder, args.subject, stride=args.stride, device=device, dtype=dtype))
            print(f"{label}: mean MSE {models[-1]['mean_mse']:.4f}, SSIM {models[-1]['mean_ssim']:.3f} "
                  f"({models[-1]['role']})", flush=True)
    except ValueError as error:  # ModelCardError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 2
    results = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               "command": "python -m training.experiments.held_out_tasks " + shlex.join(sys.argv[1:] if argv is None
                                                                                        else list(argv)),
               "versions": versions(), "stride": args.stride, "device": str(device),
               "precision": str(dtype or "fp32"), "models": models}
    write_results(args.out, results, markdown(results))
    print(args.out / "results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
