"""Weight averaging over the last epochs (training/averaging.py): the window and when --resume may move it."""

from __future__ import annotations

import math

import pytest

from training import averaging
from training.config import TrainConfig
from training.loop import _check_resumable


def config(**changes) -> dict:
    return TrainConfig.from_dict({"name": "m", "data": ["d"], "inputs": ["T1"], "outputs": ["FLAIR"],
                                  "epochs": 4, "steps_per_epoch": 10, **changes}).to_dict()


def test_the_window_is_the_last_epochs_steps_and_none_without_averaging():
    assert averaging.start(config(average_epochs=1)) == 30
    assert averaging.start(config(average_epochs=4)) == 0
    assert averaging.start(config()) == math.inf
    saved = config()
    del saved["average_epochs"]  # a checkpoint saved before the key existed ran without averaging
    assert averaging.start(saved) == math.inf and averaging.averaged(object(), saved) is None


def test_out_of_range_average_epochs_are_refused():
    with pytest.raises(ValueError, match="average_epochs"):
        config(average_epochs=5)
    with pytest.raises(ValueError, match="average_epochs"):
        config(average_epochs=-1)


def test_resume_may_move_the_window_only_where_no_step_taken_changes_sides():
    plain, averaged = config(epochs=2), config(epochs=3, average_epochs=1)  # window: steps 20-29
    _check_resumable(plain, TrainConfig.from_dict(averaged), 20)  # add averaging after the steps taken: fine
    _check_resumable(averaged, TrainConfig.from_dict({**averaged, "epochs": 4, "average_epochs": 2}), 20)
    with pytest.raises(ValueError, match="weight average"):  # step 20 is already in the average
        _check_resumable(averaged, TrainConfig.from_dict({**averaged, "average_epochs": 0}), 21)
    with pytest.raises(ValueError, match="weight average"):  # steps 10-19 would have had to join it
        _check_resumable(plain, TrainConfig.from_dict({**averaged, "average_epochs": 2}), 20)
    with pytest.raises(ValueError, match="weight average"):  # more epochs move a begun window
        _check_resumable(averaged, TrainConfig.from_dict({**averaged, "epochs": 4}), 25)
