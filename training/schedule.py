"""The learning-rate schedule: Adam's rate held constant, then optionally annealed to a floor.

Why an anneal: at the paper's constant rate (1e-3) the LOSO runs' training cost still falls
at epoch 20 while each step's update stays as large as at epoch 2, so the weights keep
moving by noise of that size; small, rare structures (MS lesions: 0.3-3 % of the brain) are
what such noise blurs first. Holding the rate and then decaying it over the last epochs
(the "constant then cosine" / warmup-stable-decay shape, e.g. Hu et al. 2024, MiniCPM; SGDR's
cosine, Loshchilov & Hutter 2017) keeps everything before the decay identical to the
constant-rate run, so an anneal can be measured against that run itself.

The rate is a pure function of the step and the config: ``--resume`` needs no scheduler
state, and a schedule change on resume is safe exactly when it leaves every step already
taken at the rate it was taken with (``same_until``). torch's ``SequentialLR(ConstantLR,
CosineAnnealingLR)`` draws a similar curve, but as stateful objects stepped once per step:
that state would have to be checkpointed, and comparing two schedules would mean replaying both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class Schedule:
    learning_rate: float
    total_steps: int
    decay_steps: int  # the last ``decay_steps`` steps follow a half cosine down to the floor
    final_fraction: float  # the floor, as a fraction of ``learning_rate``, reached at the last step

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> "Schedule":
        """From a config's keys (a TrainConfig's ``to_dict()`` or a checkpoint's saved config;
        one saved before the anneal keys existed ran without an anneal)."""
        steps = config["steps_per_epoch"]
        return cls(config["learning_rate"], config["epochs"] * steps, config.get("lr_decay_epochs", 0) * steps,
                   config.get("lr_final_fraction", 0.01))

    def at(self, step: int) -> float:
        """Adam's rate for the 0-based ``step``."""
        start = self.total_steps - self.decay_steps
        if not self.decay_steps or step < start:
            return self.learning_rate
        progress = min(1.0, (step - start + 1) / self.decay_steps)
        floor = self.learning_rate * self.final_fraction
        return floor + (self.learning_rate - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def same_until(self, other: "Schedule", steps: int) -> bool:
        """Whether both schedules give every one of the first ``steps`` steps the same rate."""
        return all(self.at(s) == other.at(s) for s in range(steps))
