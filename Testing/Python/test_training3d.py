"""Tests of the 3D training (Wei's FCN, Klingelhoefer's AE): patches, config, UP_p, runs, export, resume.

Phantom volumes of a few thousand voxels and networks of a few hundred weights: seconds in all.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from MRSynthesisLib.cards import load_model
from MRSynthesisLib.errors import InputError
from test_training_data import write_dataset, write_ms_subject
from test_training_run import tensorboard_scalars
from training.config3d import Train3DConfig, load_config
from training.early_stopping import up_stops
from training.loop import BEST, CHECKPOINT, METRICS
from training.loop3d import train3d
from training.patches3d import (
    GridSampler,
    RandomCropSampler,
    cut_batch,
    grid_patches,
    window,
)
from training.volumes3d import Volume3D

REPO = Path(__file__).resolve().parents[2]
TIMING_COLUMNS = ("epoch_seconds", "seconds")


def tiny(sources: list[str], out: Path, architecture: str = "wei2019_fcn3d", **changes) -> dict:
    """A config of the given architecture that trains in about a second."""
    common = {"name": "tiny3d", "data": sources, "inputs": ["T1", "T2"], "outputs": ["FLAIR"], "out": str(out),
              "validation_subjects": ["patient02"], "validation_patches": 4, "epochs": 2, "steps_per_epoch": 2,
              "loss": "mse", "precision": "fp32", "threads": 1, "seed": 5}
    if architecture == "wei2019_fcn3d":
        specific = {"params": {"filters": 4, "layers": 2}, "optimiser": "sgd", "learning_rate": 0.01,
                    "batch_size": 2, "patch_size": 10}
    else:
        specific = {"params": {"filters": 2}, "optimiser": "adam", "learning_rate": 0.001, "batch_size": 3,
                    "patch_size": 24, "patch_step": 4}
    return {**common, "architecture": architecture, **specific, **changes}


def run(sources: list[str], out: Path, resume: bool = False, **changes) -> Path:
    return train3d(Train3DConfig.from_dict(tiny(sources, out, **changes)), resume=resume, command="test")


def log_rows(out: Path) -> list[dict[str, str]]:
    with open(out / METRICS, newline="") as handle:
        return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> list[str]:
    return write_dataset(tmp_path_factory.mktemp("data3d"))


# --- patches ------------------------------------------------------------------------------

def ramp_volume(shape: tuple[int, int, int], brain: np.ndarray) -> Volume3D:
    """Every voxel holds its own flat index (+1), so a cut window says where it was cut from."""
    values = (np.arange(np.prod(shape), dtype=np.float32) + 1).reshape(shape)
    return Volume3D("ramp", {"T1": values, "FLAIR": values}, np.zeros(shape, np.float32), brain, "none")


def test_window_reads_zero_outside_the_volume():
    array = np.arange(27, dtype=np.float32).reshape(3, 3, 3) + 1
    cut = window(array, (-1, 1, 2), 3)
    assert cut.shape == (3, 3, 3)
    assert (cut[0] == 0).all() and (cut[:, :, 1:] == 0).all() and (cut[:, 2:] == 0).all()
    np.testing.assert_array_equal(cut[1:, :2, 0], array[:2, 1:, 2])
    assert not window(array, (5, 0, 0), 3).any()


def test_grid_keeps_exactly_the_blocks_centred_in_the_brain_and_targets_are_central_crops():
    shape = (41, 37, 50)
    rng = np.random.default_rng(0)
    brain = rng.random(shape) < 0.3
    size, margin, step = 38, 11, 16  # Klingelhoefer: 38^3 in, 16^3 out, grid step 16
    patches = grid_patches(brain, size, margin, step)
    centres = {tuple(s + margin + 8 for s in p.start) for p in patches}
    expected = {(z, y, x) for z in range(8, 41, 16) for y in range(8, 37, 16) for x in range(8, 50, 16)
                if brain[z, y, x]}
    assert centres == expected and len(patches) == len(expected) > 5
    assert all(brain[c] for c in centres)

    volume = ramp_volume(shape, brain)
    batch = cut_batch([volume], patches, size=size, margin=margin, inputs=["T1"], outputs=["FLAIR"],
                      lesion_input=True)
    assert batch.inputs["T1"].shape == (len(patches), 1, 38, 38, 38)
    assert batch.targets["FLAIR"].shape == (len(patches), 1, 16, 16, 16)
    assert batch.lesion.shape == batch.inputs["T1"].shape
    # input and target are the same ramp: the target is the input's central 16^3 crop, the input's
    # voxel 19 (its centre) is the patch's centre voxel, and windows past the edge read 0
    torch.testing.assert_close(batch.targets["FLAIR"], batch.inputs["T1"][..., 11:27, 11:27, 11:27])
    for patch, values in zip(patches, batch.inputs["T1"]):
        centre = tuple(s + 19 for s in patch.start)
        assert float(values[0, 19, 19, 19]) == volume.images["T1"][centre]
    assert (batch.inputs["T1"][0, 0, :11] == 0).all()  # the first block starts at voxel 0: 11 voxels before it


def test_grid_sampler_passes_are_permutations_and_pure_functions_of_the_count():
    patches = grid_patches(np.ones((40, 40, 40), bool), 38, 11, 16)
    sampler = GridSampler(patches, seed=1, stream=0)
    n = len(patches)
    first, second = [sampler(k) for k in range(n)], [sampler(k) for k in range(n, 2 * n)]
    assert sorted(first, key=str) == sorted(patches, key=str) == sorted(second, key=str)
    assert first != second
    assert GridSampler(patches, seed=1, stream=0)(n + 3) == second[3]
    assert len(sampler.fixed(5)) == 5 and sampler.fixed(100) == patches


def test_random_crops_are_centred_on_brain_voxels_and_reproducible():
    brains = [np.zeros((20, 20, 20), bool), np.zeros((10, 30, 10), bool)]
    brains[0][5:8, 5:8, 5:8] = True
    brains[1][2, 3:25, 4] = True
    sampler = RandomCropSampler(brains, size=12, margin=3, seed=2, stream=0)
    patches = [sampler(k) for k in range(200)]
    assert {p.volume for p in patches} == {0, 1}
    for patch in patches:
        centre = tuple(s + 6 for s in patch.start)  # target 6: centre voxel 3, plus the margin 3
        assert brains[patch.volume][centre]
    assert patches == RandomCropSampler(brains, 12, 3, seed=2, stream=0).fixed(200)


# --- early stopping -------------------------------------------------------------------------

def test_up_criterion_needs_rises_in_p_successive_strips():
    q = 5
    falling = list(np.linspace(1.0, 0.1, 30))
    assert not any(up_stops(falling[:t], q, 3) for t in range(1, 31))
    # strip ends (epochs 5, 10, 15, 20) carry 0.5, 0.6, 0.7, 0.8: three successive rises
    errors = [1.0] * 4 + [0.5] + [0.1] * 4 + [0.6] + [0.1] * 4 + [0.7] + [0.1] * 4 + [0.8]
    assert up_stops(errors, q, 3)
    assert not up_stops(errors[:15], q, 3)  # only two strips compared yet (E(0) is not measured)
    assert up_stops(errors[:15], q, 2) and up_stops(errors[:10], q, 1)
    assert not up_stops(errors[:19], q, 3)  # not an end-of-strip epoch
    dip = list(errors)
    dip[14] = 0.55  # a fall between strips 2 and 3 resets the count
    assert not up_stops(dip, q, 3) and up_stops(dip, q, 1)
    with pytest.raises(ValueError):
        up_stops(errors, 0, 3)


# --- config ---------------------------------------------------------------------------------

@pytest.mark.parametrize("changes, message", [
    ({"batch_sise": 2}, "unknown config keys"),
    ({"architecture": "unet"}, "architecture must be one of"),
    ({"patch_step": 16}, "patch_step must be null"),
    ({"optimiser": "rmsprop"}, "optimiser must be one of"),
    ({"loss": "huber"}, "loss must be one of"),
    ({"precision": "fp16"}, "precision must be one of"),
    ({"patch_size": 4}, "leaves no target"),
    ({"params": {"input_dropout": True}}, "params may not set"),
    ({"params": {"width": 3}}, "params do not fit"),
    ({"strips": 3, "validation_subjects": []}, "needs validation_subjects"),
    ({"outputs": ["T2"]}, "both input and output"),
    ({"inputs": ["T1"], "input_dropout": True}, "at least two inputs"),
    ({"epochs": 0}, "epochs must be >= 1"),
])
def test_config_errors(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        Train3DConfig.from_dict(tiny(["x"], tmp_path, **changes))


@pytest.mark.parametrize("changes, message", [
    ({"patch_step": None}, "patch_step must be a positive integer"),
    ({"patch_size": 37}, "does not fit"),
])
def test_autoencoder_config_errors(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        Train3DConfig.from_dict(tiny(["x"], tmp_path, "klingelhoefer_ae3d", **changes))


def test_missing_key_is_an_error(tmp_path):
    data = tiny(["x"], tmp_path)
    del data["learning_rate"]
    with pytest.raises(ValueError, match="learning_rate"):
        Train3DConfig.from_dict(data)


def test_bundled_configs_parse_and_loso_folds_never_read_their_held_out_subject():
    folder = REPO / "training" / "configs"
    wei = load_config(folder / "wei-fcn3d-flair.json")  # the paper's UP_3 on strips of 5 epochs
    assert wei.validation_subjects and (wei.strips, wei.strip_length) == (3, 5)
    assert (wei.optimiser, wei.learning_rate, wei.batch_size, wei.loss) == ("sgd", 0.0005, 1, "mse")
    ae = load_config(folder / "klingelhoefer-ae3d-flair.json")  # 38^3 -> 16^3 on a grid of 16, Adam, batch 32
    assert (ae.patch_size, ae.target_size, ae.patch_step, ae.optimiser, ae.batch_size, ae.loss) == \
        (38, 16, 16, "adam", 32, "mse")
    for architecture in ("wei-fcn3d", "klingelhoefer-ae3d"):
        for held in ("patient07", "patient19", "BraTS-GLI-00001-000"):
            path = folder / "loso" / f"{architecture}-loso-{held}.json"
            config = load_config(path)
            assert not any(held in p for p in config.data), path
            assert config.validation_subjects == [] and config.strips is None and config.max_minutes is None
            assert config.out == f"runs/loso-{held}/{architecture}" and config.name == f"{architecture}-loso-{held}"
    # the augmentation folds are their base recipe with augment on, nothing else changed
    for architecture in ("wei-fcn3d", "klingelhoefer-ae3d"):
        for held in ("patient07", "patient19"):
            base = load_config(folder / "loso" / f"{architecture}-loso-{held}.json").to_dict()
            augmented = load_config(folder / "loso" / f"{architecture}-augment-loso-{held}.json").to_dict()
            changed = {k for k in base if base[k] != augmented[k]}
            assert changed == {"name", "description", "out", "augment"} and augmented["augment"]["rotate_degrees"] > 0
    for arm in ("incomplete", "complete-only"):  # the 3D incomplete-cohort experiment
        config = load_config(folder / "incomplete" / f"wei-fcn3d-{arm}-loso-patient19.json")
        assert config.input_dropout and config.incomplete_subjects == (arm == "incomplete")
        assert not any("patient19" in p for p in config.data)


# --- runs -----------------------------------------------------------------------------------

def test_a_recipe_spacing_resamples_every_axis_of_a_3d_run(sources, tmp_path, capsys):
    folder = run(sources, tmp_path / "run", spacing_mm=[1.0, 1.0, 1.25], epochs=1)
    assert load_model(folder).card.spacing_mm == pytest.approx([1.0, 1.0, 1.25])  # the slice axis too
    assert capsys.readouterr().out.count("resampled from 1 x 1 x 1 mm to 1 x 1 x 1.25 mm") == 3


@pytest.mark.parametrize("architecture", ["wei2019_fcn3d", "klingelhoefer_ae3d"])
def test_tiny_run_writes_a_loadable_model_folder(sources, tmp_path, architecture):
    out = tmp_path / "run"
    folder = run(sources, out, architecture=architecture)
    loaded = load_model(folder)
    card = loaded.card
    assert card.architecture == architecture and card.spatial_dims == 3 and card.plane is None
    assert card.missing_inputs == "all_required" and card.params["input_dropout"] is False
    assert card.patch_size == [tiny([], out, architecture)["patch_size"]] * 3
    assert card.spacing_mm == [1.0, 1.0, 1.0]
    scheme = "zscore" if architecture == "wei2019_fcn3d" else "three_mean_nonzero"
    assert card.normalisation["scheme"] == scheme
    assert set(card.output_intensity) == {"FLAIR"} and card.output_intensity["FLAIR"]["scale"] > 0
    assert card.training["recipe"]["config"]["architecture"] == architecture
    assert [s["subject"] for s in card.training["subjects"]["validation"]] == ["patient02"]
    assert card.metrics["epochs_run"] == 2 and card.metrics["val_mse"] > 0
    best = load_file(str(out / BEST))
    state = loaded.network.state_dict()
    assert set(best) == set(state)
    for key, value in best.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0)
    rows = log_rows(out)
    assert [r["epoch"] for r in rows] == ["1", "2"] and all(float(r["val_mse"]) > 0 for r in rows)
    with pytest.raises(ValueError, match="already holds a run"):
        run(sources, out, architecture=architecture)


@pytest.mark.parametrize("architecture", ["wei2019_fcn3d", "klingelhoefer_ae3d"])
def test_seeded_runs_agree_and_resume_continues_identically(sources, tmp_path, architecture):
    run(sources, tmp_path / "whole", architecture=architecture)
    run(sources, tmp_path / "again", architecture=architecture)
    run(sources, tmp_path / "split", architecture=architecture, epochs=1)
    run(sources, tmp_path / "split", resume=True, architecture=architecture)
    reference = load_file(str(tmp_path / "whole" / CHECKPOINT))
    for other in ("again", "split"):
        tensors = load_file(str(tmp_path / other / CHECKPOINT))
        assert set(tensors) == set(reference)
        for key, value in reference.items():
            torch.testing.assert_close(tensors[key], value, rtol=0, atol=0, msg=f"{other}: {key}")
        assert log_rows(tmp_path / other) == log_rows(tmp_path / "whole")
        assert tensorboard_scalars(tmp_path / other) == tensorboard_scalars(tmp_path / "whole")
    with pytest.raises(ValueError, match="differs from the checkpoint's in \\['learning_rate'\\]"):
        run(sources, tmp_path / "split", resume=True, architecture=architecture, learning_rate=0.5, epochs=3)


def test_resume_refuses_a_subject_added_under_the_run(tmp_path):
    sources = write_dataset(tmp_path / "data")
    run(sources, tmp_path / "run", epochs=1)
    write_ms_subject(tmp_path / "data" / "ms", "patient04", 4)
    with pytest.raises(InputError, match=r"--resume: the data are not those.*training subjects added: \['patient04'\]"):
        run(sources, tmp_path / "run", resume=True)


def test_input_dropout_model_declares_any_subset_and_takes_a_subset(sources, tmp_path):
    folder = run(sources, tmp_path / "run", input_dropout=True, inputs=["T1", "T2", "T1c"])
    loaded = load_model(folder)
    assert loaded.card.missing_inputs == "any_subset" and loaded.card.params["input_dropout"] is True
    x = torch.ones(1, 1, 10, 10, 10)
    with torch.no_grad():
        out = loaded.network({"T2": x})["FLAIR"]
    assert out.shape == x.shape
    # presence flags: the same T2 with and without T1 given as zeros differs
    with torch.no_grad():
        zero_t1 = loaded.network({"T2": x, "T1": torch.zeros_like(x)})["FLAIR"]
    assert not torch.equal(out, zero_t1)


def test_early_stopping_ends_a_run_when_validation_error_rises(sources, tmp_path, monkeypatch):
    errors = iter([0.5, 0.6, 0.7, 0.8, 0.9, 1.0])  # rises every epoch: UP_2 with q = 1 stops after epoch 3
    monkeypatch.setattr("training.loop3d.validate", lambda *a, **k: {"val_mse": next(errors), "val_mae": 0.0})
    folder = run(sources, tmp_path / "run", epochs=6, strip_length=1, strips=2)
    card = load_model(folder).card
    assert card.metrics["epochs_run"] == 3 and card.metrics["best_epoch"] == 1
    assert card.metrics["stopped"].startswith("early stopping (UP_2)")
    weights = load_file(str(tmp_path / "run" / BEST))
    network = load_model(folder).network
    assert all(torch.equal(network.state_dict()[k], v) for k, v in weights.items())
    assert json.loads((tmp_path / "run" / "config.json").read_text())["strips"] == 2


def test_volumes_come_in_the_axis_order_the_tiler_uses(tmp_path):
    """A file whose axial axis is numpy axis 2: its axes are put in the training data's order, as inference puts
    them before the tiler runs (logic._onto_model_grid); load_subject moves the axial axis first, load_volumes
    moves it back."""
    from conftest import make_subject
    from MRSynthesisLib.volume import read_volume, reordered, training_axis_order
    from training.datasets import discover
    from training.volumes3d import load_volumes

    axial_last = (0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0)  # ITK axis 0 runs inferior-superior
    subject = make_subject(tmp_path / "ms" / "patient01", direction=axial_last)
    assert read_volume(subject["T1"]).geometry.axis_for("axial") == 2
    files = {s.subject: s for s in discover([str(tmp_path / "ms")])}
    config = Train3DConfig.from_dict(tiny([str(tmp_path / "ms")], tmp_path / "out", validation_subjects=[]))
    (volume,), _, _ = load_volumes(config, ["patient01"], files, verbose=False)
    read = read_volume(subject["T1"])
    t1 = reordered(read, training_axis_order(read.geometry)).array
    assert volume.images["T1"].shape == volume.brain.shape == t1.shape != read.array.shape
    np.testing.assert_array_equal(volume.images["T1"] != 0, t1 != 0)


def test_fixed_schedule_without_validation_exports_the_last_epoch(sources, tmp_path):
    out = tmp_path / "run"
    folder = run(sources, out, validation_subjects=[], epochs=3, architecture="klingelhoefer_ae3d")
    card = load_model(folder).card
    assert card.metrics["best_epoch"] == card.metrics["epochs_run"] == 3
    assert card.metrics["stopped"] == "3 epochs done" and card.training["subjects"]["validation"] == []
    assert "val_mse" not in log_rows(out)[0]


def test_tensorboard_gets_each_step_and_epoch(sources, tmp_path):
    """TensorBoard events beside metrics.csv: the step losses, and every epoch's row at the step that ended it."""
    run(sources, tmp_path / "run")
    scalars = tensorboard_scalars(tmp_path / "run")
    assert [step for step, _ in scalars["train/mse"]] == [0, 1, 2, 3]
    rows = log_rows(tmp_path / "run")
    for column in ("train_mse", "val_mse"):
        assert [step for step, _ in scalars[f"epoch/{column}"]] == [2, 4]
        assert [value for _, value in scalars[f"epoch/{column}"]] == pytest.approx([float(r[column]) for r in rows])
