"""Training recipes read strictly (training.config_io): types, missing keys, the file named, exit 2."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest

from MRSynthesisLib.errors import InputError
from training.config import AugmentConfig, TrainConfig, load_config
from training.config3d import Train3DConfig
from training.config3d import load_config as load_config3d
from training.config_io import _accepts
from training.qu.config import QuConfig, Source
from training.qu.config import load_config as load_qu_config
from training.train import main as train_main
from training.train3d import main as train3d_main

RECIPE = {"name": "x", "data": ["subjects"], "inputs": ["T1"], "outputs": ["FLAIR"], "out": "run"}


def write(folder: Path, data: object, name: str = "recipe.json") -> Path:
    path = folder / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


@pytest.mark.parametrize("changes, message", [
    ({"epochs": "10"}, "epochs must be int, got '10'"),
    ({"epochs": True}, "epochs must be int, got True"),  # a bool is an int to Python: one epoch
    ({"epochs": 2.5}, "epochs must be int, got 2.5"),
    ({"data": "subjects"}, "data must be list[str], got 'subjects'"),  # would be read letter by letter
    ({"filters": [32, "64", 128]}, "filters must be list[int]"),
    ({"max_minutes": "1h"}, "max_minutes must be float | None"),
    ({"lesion_input": 1}, "lesion_input must be bool, got 1"),
    ({"augment": {"gamma": "0.3"}}, "augment.gamma must be float, got '0.3'"),
    ({"augment": []}, "augment must be an object of keys"),
    ({"augment": {"gama": 0.3}}, "unknown augment keys ['gama']"),
    ({"epochz": 3}, "unknown config keys ['epochz']"),
    ({"spacing_mm": [1, 1]}, "spacing_mm must be null or three positive voxel sizes in mm"),
    ({"spacing_mm": [1, 0, 1]}, "spacing_mm must be null or three positive voxel sizes in mm"),
    ({"spacing_mm": 1.0}, "spacing_mm must be list[float] | None"),
])
def test_recipe_values_of_the_wrong_type_are_refused_naming_the_file(tmp_path, changes, message):
    path = write(tmp_path, {**RECIPE, **changes})
    with pytest.raises(InputError) as error:
        load_config(path)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)


@pytest.mark.parametrize("changes, message", [
    ({"max_minutes": -1}, "max_minutes must be > 0"),  # stopped before epoch 1, then failed on a missing file
    ({"max_minutes": 0}, "max_minutes must be > 0"),  # silently meant "no limit"
    ({"augment": {"rotate_degrees": float("nan")}}, "augment.rotate_degrees must be float, got nan"),
    ({"learning_rate": float("inf")}, "learning_rate must be float, got inf"),
    ({"learning_rate": 0}, "learning_rate must be > 0"),
    ({"min_slice_brain_fraction": 2.0}, "min_slice_brain_fraction must be in [0, 1)"),
    ({"filters": [32, 64]}, "filters must be 3 positive widths"),
    ({"filters": [32, 0, 128]}, "filters must be 3 positive widths"),
    ({"latent_channels": 0}, "latent_channels must be positive"),
    ({"fusion": "min"}, "unknown fusion 'min'"),
    ({"loss_weights": [0, 0, 0]}, "loss_weights must be [w1, w2, w3], none negative and not all 0"),
    ({"loss_weights": [1, -1, 1]}, "loss_weights must be [w1, w2, w3], none negative and not all 0"),
    ({"seed": -1}, "seed must be >= 0"),
    ({"split_seed": -1}, "split_seed must be >= 0"),
    ({"threads": 0}, "threads must be >= 1"),
    ({"val_loss_batches": 0}, "val_loss_batches must be >= 1"),
    ({"lesion_min_voxels": -5}, "lesion_min_voxels must be >= 0"),
    ({"lesion_flair_z": -1.0}, "lesion_flair_z must be >= 0"),
    ({"monitor": "val_ssim"}, "monitor must be one of ['val_mse', 'val_loss']"),
])
def test_recipe_values_out_of_range_are_refused_before_any_data_is_read(tmp_path, changes, message):
    """Each of these used to pass the type check and fail after every subject was loaded (with a traceback or a
    misleading message), or to be taken silently."""
    path = write(tmp_path, {**RECIPE, **changes})
    with pytest.raises(InputError) as error:
        load_config(path)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)


@pytest.mark.parametrize("name", [".", "..", "", "a/b", ".hidden", "checkpoint.safetensors", "metrics.csv",
                                  "config.json", "best.safetensors", "tensorboard"])
def test_a_model_name_that_would_replace_the_run_folder_or_its_files_is_refused(tmp_path, name):
    """The model folder is <out>/<name>, written with overwrite: "." was the run folder itself, whose checkpoint
    and log the export then deleted."""
    with pytest.raises(InputError, match="name"):
        load_config(write(tmp_path, {**RECIPE, "name": name}))
    recipe3d = {**RECIPE, "name": name, "architecture": "wei2019_fcn3d", "optimiser": "sgd", "learning_rate": 0.0005,
                "batch_size": 1, "patch_size": 16, "loss": "mse", "epochs": 1, "steps_per_epoch": 1}
    with pytest.raises(InputError, match="name"):
        load_config3d(write(tmp_path, recipe3d))


def test_numbers_json_writes_without_a_point_are_floats_and_null_is_none(tmp_path):
    config = load_config(write(tmp_path, {**RECIPE, "learning_rate": 1, "max_minutes": None,
                                          "augment": {"rotate_degrees": 5}}))
    assert config.learning_rate == 1 and config.max_minutes is None and config.augment.rotate_degrees == 5


@pytest.mark.parametrize("text, message", [
    ('{"name": "x",', "not valid JSON"),
    ("[1, 2]", "a config is a JSON object of keys, not a list"),
    (json.dumps({k: v for k, v in RECIPE.items() if k != "name"}), "missing config keys ['name']"),
])
def test_unreadable_recipes(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(InputError) as error:
        load_config(path)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)
    with pytest.raises(InputError, match="no such config file"):
        load_config(tmp_path / "absent.json")


def test_3d_recipes_are_checked_the_same_way(tmp_path):
    with pytest.raises(InputError, match=r"recipe\.json: missing config keys \['architecture'"):
        load_config3d(write(tmp_path, RECIPE))
    recipe = {**RECIPE, "architecture": "wei2019_fcn3d", "optimiser": "sgd", "learning_rate": 0.0005,
              "batch_size": 1, "patch_size": 16, "loss": "mse", "epochs": 1, "steps_per_epoch": 1}
    assert load_config3d(write(tmp_path, {**recipe, "spacing_mm": [1, 1, 1.5]})).spacing_mm == [1, 1, 1.5]
    with pytest.raises(InputError, match="spacing_mm must be null or three positive voxel sizes"):
        load_config3d(write(tmp_path, {**recipe, "spacing_mm": [1, 1, -1]}))


def test_every_recipe_field_has_a_type_the_checker_knows():
    """A field added with an annotation config_io cannot read would fail every recipe at run time;
    a value of no type at all makes the checker look at every part of every annotation."""
    for cls in (TrainConfig, AugmentConfig, Train3DConfig, QuConfig, Source):
        for f in fields(cls):
            if f.name in ("augment", "sources"):  # sub-configs, checked as sections of their own
                continue
            try:
                assert not _accepts(str(f.type), object()), f"{cls.__name__}.{f.name}"
            except TypeError as error:
                pytest.fail(f"{cls.__name__}.{f.name}: {error}")


@pytest.mark.parametrize("changes, message", [
    ({"structure_steps": True}, "structure_steps must be int, got True"),
    ({"structure_weights": {"adversarial": "1"}}, "structure_weights must be dict[str, float]"),
    ({"sources": "subject"}, "sources must be a list"),  # a string, read letter by letter as folders before
    ({"sources": [3]}, "a source is a folder or an object of keys, got 3"),
    ({"sources": [{"folder": "s", "labeled": False}]}, "unknown source keys ['labeled']"),
    ({"sources": [{"folder": "s", "labelled": "no"}]}, "source.labelled must be bool, got 'no'"),
])
def test_qu_recipes_are_checked_the_same_way(tmp_path, changes, message):
    path = write(tmp_path, {"name": "q", "sources": ["s"], **changes})
    with pytest.raises(InputError) as error:
        load_qu_config(path)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)


@pytest.mark.parametrize("main, prog", [(train_main, "training.train"), (train3d_main, "training.train3d")])
def test_the_trainers_say_what_is_wrong_in_one_line_and_exit_2(tmp_path, capsys, main, prog):
    path = write(tmp_path, {**RECIPE, "epochs": "ten"})
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"python -m {prog}: error: {path}: "), err
    assert not (tmp_path / "run").exists()


def test_an_override_the_recipe_does_not_fit_is_named_with_the_files_value(tmp_path):
    """``--epochs 1`` on the bundled recipe (average_epochs 5) was refused as "average_epochs must be in [0,
    epochs]", blamed on the file, with neither value: the message now gives both, and which one the command line
    replaced."""
    recipe = Path(__file__).resolve().parents[2] / "training" / "configs" / "chartsias-mimo-shared.json"
    with pytest.raises(InputError) as refused:
        load_config(recipe, {"epochs": 1, "steps_per_epoch": None, "out": str(tmp_path)})
    message = str(refused.value)
    assert "average_epochs (5) must be in [0, epochs] (epochs 1)" in message
    assert "epochs 1 from the command line, 25 in the file" in message and "steps_per_epoch" not in message
    assert load_config(recipe, {"epochs": 5, "out": str(tmp_path)}).epochs == 5
