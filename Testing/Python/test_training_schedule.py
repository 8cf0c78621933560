"""The learning-rate schedule (constant, then a cosine anneal) and when --resume may change it."""

from __future__ import annotations

import math

import pytest

from training.config import TrainConfig
from training.loop import _check_resumable
from training.schedule import Schedule


def config(**changes) -> TrainConfig:
    return TrainConfig.from_dict({"name": "m", "data": ["d"], "inputs": ["T1"], "outputs": ["FLAIR"],
                                  "epochs": 4, "steps_per_epoch": 10, **changes})


def test_constant_until_the_last_epochs_then_a_half_cosine_to_the_floor():
    schedule = Schedule.of(config(lr_decay_epochs=2, lr_final_fraction=0.01).to_dict())
    rates = [schedule.at(s) for s in range(40)]
    assert rates[:20] == [1e-3] * 20
    assert rates[20] < 1e-3 and rates[-1] == pytest.approx(1e-5)
    assert all(a > b for a, b in zip(rates[20:], rates[21:]))
    assert rates[29] == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi / 2)))
    assert {Schedule.of(config().to_dict()).at(s) for s in range(40)} == {1e-3}


def test_a_checkpoint_saved_before_the_anneal_keys_existed_ran_at_a_constant_rate():
    saved = config().to_dict()
    del saved["lr_decay_epochs"], saved["lr_final_fraction"]
    assert Schedule.of(saved) == Schedule.of(config().to_dict())


@pytest.mark.parametrize("key", ["lr_decay_epochs", "lr_final_fraction"])
def test_out_of_range_anneal_keys_are_refused(key):
    with pytest.raises(ValueError, match=key):
        config(**{key: 5 if key == "lr_decay_epochs" else 1.5})


def test_resume_may_add_an_anneal_after_the_steps_taken_but_not_change_theirs():
    constant = config(epochs=2).to_dict()
    longer = config(epochs=4, lr_decay_epochs=2, name="renamed", description="annealed")
    _check_resumable(constant, longer, steps_done=20)  # the 20 steps taken were at 1e-3 under both
    with pytest.raises(ValueError, match="learning rate of steps the checkpoint has already taken"):
        _check_resumable(constant, config(epochs=4, lr_decay_epochs=3), steps_done=20)
    annealing = config(epochs=4, lr_decay_epochs=2).to_dict()
    with pytest.raises(ValueError, match="already taken"):  # more epochs move a decay that has begun
        _check_resumable(annealing, config(epochs=5, lr_decay_epochs=2), steps_done=30)
    _check_resumable(annealing, config(epochs=5, lr_decay_epochs=2), steps_done=20)
