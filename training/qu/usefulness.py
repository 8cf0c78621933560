"""Usefulness check of Qu et al.'s synthetic data (their Table 2, at small scale).

``python -m training.qu.usefulness --train-subject DIR --test-subject DIR --synthetic DIR
--output results.json [--modality FLAIR] [--size 64] [--steps 800] [--seeds 0 1 2]``

A lesion segmenter (``LesionSegmentor``, the paper's L2 cost ``loss_l``, Adam with beta1 0.5
and ``--learning-rate``, Sec. 3.4's 1e-4 by default; batch ``--batch-size``) is trained on one
modality under three data regimes with the same number of steps, and tested on the held-out
real subject:

- ``real``: real training slices only (Table 2 row 1);
- ``real+synthetic``: real and synthetic slices mixed at random, one synthetic slice per real
  one at most (rows 15/32-34, "random mixing");
- ``synthetic_first``: the first half of the steps on synthetic slices, the second on real
  ones (row 17, "synthetic first", the paper's best).

Reported per regime and seed: Dice over every lesion pixel of the test slices (pooled), the
mean per-slice Dice over the test slices that contain lesion (the paper averages 2D scores;
slices with no lesion would score 1 for an empty answer and hide misses), and the MSE between
the softmax and the one-hot label. The paper keeps the best of four runs; we report every
seed and the mean, since a best-of-n on a single test subject flatters whichever regime is
noisier.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from MRSynthesisLib import modalities
from MRSynthesisLib.atomic import write_json
from MRSynthesisLib.errors import InputError
from MRSynthesisLib.models.losses_qu import LESION_LOSSES, label_cost, sq
from MRSynthesisLib.models.qu_multimodal_generator import one_hot_label
from MRSynthesisLib.models.qu_segmentors import LesionSegmentor
from MRSynthesisLib.structure_maps import dice
from MRSynthesisLib.volume import read_volume

from .data import load_subject_slices

REGIMES = ("real", "real+synthetic", "synthetic_first")


def load_synthetic(folder: Path, modality: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, H, W), labels (N, H, W)) of a folder written by ``training.qu.build_dataset``."""
    path = folder / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such file; is {folder} a data set written by "
                         "training.qu.build_dataset?") from None
    if modality not in manifest.get("modalities", []):
        raise InputError(f"{path}: the data set has no {modality} (it has {manifest.get('modalities')})")
    if manifest.get("size") != size:
        raise InputError(f"{path}: slices are {manifest.get('size')} pixels, --size is {size}")
    images = [read_volume(folder / s["files"][modality]).array for s in manifest["subjects"]]
    labels = [read_volume(folder / s["files"]["lesion_mask"]).array for s in manifest["subjects"]]
    return np.concatenate(images), np.concatenate(labels).astype(np.int64)


def evaluate(model: LesionSegmentor, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        probabilities = torch.cat([model(torch.from_numpy(images[i:i + 32])[:, None])
                                   for i in range(0, len(images), 32)])
    predicted = probabilities.argmax(1).numpy()
    target = torch.from_numpy(labels)
    lesion_slices = [i for i in range(len(labels)) if labels[i].any()]
    return {"dice_pooled": dice(predicted, labels),
            "dice_per_lesion_slice": float(np.mean([dice(predicted[i], labels[i]) for i in lesion_slices])),
            "mse": sq(one_hot_label(target, probabilities.shape[1]) - probabilities).item(),
            "lesion_slices": len(lesion_slices)}


def train(regime: str, real: tuple[np.ndarray, np.ndarray], synthetic: tuple[np.ndarray, np.ndarray],
          steps: int, batch_size: int, seed: int, learning_rate: float = 1e-4, loss: str = "l2") -> LesionSegmentor:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = LesionSegmentor(2, 16)
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate, betas=(0.5, 0.999))
    pooled = (np.concatenate([real[0], synthetic[0][:len(real[0])]]),
              np.concatenate([real[1], synthetic[1][:len(real[0])]]))
    model.train()
    for step in range(steps):
        if regime == "real":
            images, labels = real
        elif regime == "real+synthetic":
            images, labels = pooled
        else:
            images, labels = synthetic if step < steps // 2 else real
        index = rng.integers(len(images), size=batch_size)
        x = torch.from_numpy(images[index])[:, None]
        cost = label_cost(model(x), torch.from_numpy(labels[index].astype(np.int64)), loss)
        optimiser.zero_grad()
        cost.backward()
        optimiser.step()
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.qu.usefulness", description=__doc__.splitlines()[0])
    parser.add_argument("--train-subject", required=True, help="real subject folder with a lesion_mask (training)")
    parser.add_argument("--test-subject", required=True, help="real subject folder with a lesion_mask (held out)")
    parser.add_argument("--synthetic", required=True, help="folder written by training.qu.build_dataset")
    parser.add_argument("--output", required=True, help="JSON results file")
    parser.add_argument("--modality", default="FLAIR")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--slice-range", type=float, nargs=2, default=[0.3, 0.7])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-4,
                        help="Adam's (paper 1e-4 for ~1.5 M steps; a few hundred steps need more)")
    parser.add_argument("--loss", choices=LESION_LOSSES, default="l2",
                        help="l2: the paper's loss_l; soft_dice: see losses_qu.LESION_LOSSES")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        modality = modalities.canonical(args.modality)
        subjects = {}
        for role, folder in (("train", args.train_subject), ("test", args.test_subject)):
            s = load_subject_slices(folder, [modality], args.size, args.slice_range, 0.1, labelled=True)
            subjects[role] = (s.images[0], s.labels.astype(np.int64))
        synthetic = load_synthetic(Path(args.synthetic), modality, args.size)
    except (InputError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    runs = []
    for regime in REGIMES:
        for seed in args.seeds:
            started = time.time()
            model = train(regime, subjects["train"], synthetic, args.steps, args.batch_size, seed,
                          args.learning_rate, args.loss)
            row = {"regime": regime, "seed": seed, **evaluate(model, *subjects["test"]),
                   "seconds": round(time.time() - started, 1)}
            runs.append(row)
            print(json.dumps(row))
    summary = {regime: {key: float(np.mean([r[key] for r in runs if r["regime"] == regime]))
                        for key in ("dice_pooled", "dice_per_lesion_slice", "mse")} for regime in REGIMES}
    write_json(args.output, {
        "command": "python -m training.qu.usefulness " + " ".join(argv if argv is not None else sys.argv[1:]),
        "modality": modality, "size": args.size, "steps": args.steps, "batch_size": args.batch_size,
        "learning_rate": args.learning_rate, "loss": args.loss,
        "train_slices": len(subjects["train"][0]), "test_slices": len(subjects["test"][0]),
        "synthetic_slices": len(synthetic[0]),
        "synthetic_manifest": str(Path(args.synthetic).resolve() / "manifest.json"),
        "runs": runs, "mean": summary})
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
