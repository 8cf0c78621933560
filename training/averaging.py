"""Weight averaging over the last epochs (stochastic weight averaging, Izmailov et al. 2018).

Why: the LOSO runs end at Adam's constant rate, where the weights still move by noise of
the size of a step. Which point of that noise a run stops at moved a held-out subject's
FLAIR SSIM by up to 0.04 over the last 400 steps, and the same recipe meets the quality
bars with one seed and misses them with another. An anneal (``schedule.py``) shrinks the
steps; averaging keeps them and returns the centre of the region the last steps explored
instead of its last point. The average is taken uniformly over the weights after every
step of the last ``average_epochs`` epochs, with torch's ``AveragedModel`` (its default
running mean). The network has no normalisation layers, so no batch statistics need
recomputing afterwards, which SWA needs for BatchNorm networks. Measured on the LOSO folds:
training/README.md, "A third seed, and weight averaging".

Averaging never changes the steps: the trained weights (and so the checkpoint's model) are
bit for bit those of the run without it; what changes is the network that validation
scores and the model folder holds once the window has begun. Like the schedule, the window
is a pure function of the config (``start``), so ``--resume`` may change it exactly where
no step already taken would have to join or leave the average (``same_until``).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from torch import nn
from torch.optim.swa_utils import AveragedModel


def start(config: Mapping[str, Any]) -> float:
    """The first 0-based step whose weights join the average (infinity: no averaging).

    ``config`` is a TrainConfig's ``to_dict()`` or a checkpoint's saved config; one saved
    before ``average_epochs`` existed ran without averaging."""
    epochs = config.get("average_epochs", 0)
    return (config["epochs"] - epochs) * config["steps_per_epoch"] if epochs else math.inf


def same_until(current: Mapping[str, Any], saved: Mapping[str, Any], steps: int) -> bool:
    """Whether both configs put the same ones of the first ``steps`` steps into the average."""
    return min(start(current), steps) == min(start(saved), steps)


def averaged(model: nn.Module, config: Mapping[str, Any]) -> AveragedModel | None:
    """An empty running average of ``model``'s weights, or None when the config averages nothing."""
    return AveragedModel(model) if config.get("average_epochs", 0) else None
