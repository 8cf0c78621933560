"""Augmentation of the 3D trainer's windows (``augment`` in a 3D recipe, ``training.augment3d``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from test_training3d import log_rows, run, tiny
from test_training_data import write_dataset
from training.augment3d import augmented_batch, draw_geometry, rotation
from training.config import AugmentConfig
from training.config3d import Train3DConfig
from training.loop import CHECKPOINT
from training.patches3d import Geometry3D, Patch, cut_batch, window, window_through
from training.volumes3d import Volume3D

OFF = dict(flip=False, rotate_degrees=0.0, scale=0.0, gamma=0.0, intensity_scale=0.0, bias_field=0.0)


def geometry(matrix=np.eye(3), flips=(False, False, False)) -> Geometry3D:
    return Geometry3D(tuple(flips), tuple(map(tuple, np.asarray(matrix, float).tolist())))


def noise_volume(shape=(24, 24, 24)) -> Volume3D:
    rng = np.random.default_rng(0)
    image = rng.random(shape, dtype=np.float32) - 0.5  # z-scored-like: negative and positive tissue
    image[:, :, :4] = 0  # background
    lesion = (rng.random(shape) > 0.7).astype(np.float32)
    return Volume3D("noise", {"T1": image, "FLAIR": image.copy()}, lesion, np.ones(shape, bool), "mask",
                    axial_axis=2)


def test_flips_are_exact_and_turns_and_zooms_read_about_the_window_centre():
    array = np.random.default_rng(1).random((20, 20, 20)).astype(np.float32)
    plain = window(array, (3, 4, 5), 8)
    flipped = window_through(array, (3, 4, 5), 8, geometry(flips=(True, False, True)))
    assert np.array_equal(flipped, plain[::-1, :, ::-1])
    quarter = window_through(array, (3, 4, 5), 8, geometry(rotation((math.pi / 2, 0, 0))))
    np.testing.assert_allclose(quarter, np.rot90(plain, -1, axes=(1, 2)), atol=1e-6)  # grid points onto grid points
    ramp = np.broadcast_to(np.arange(20, dtype=np.float32)[:, None, None], (20, 20, 20)).copy()
    zoomed = window_through(ramp, (6, 6, 6), 8, geometry(np.eye(3) / 2))  # magnified 2x: half the slope
    np.testing.assert_allclose(zoomed[:, 4, 4], 6 + 3.5 + (np.arange(8) - 3.5) / 2, atol=1e-5)
    outside = window_through(array, (16, 16, 16), 8, geometry(rotation((0.3, 0, 0))))
    assert not outside[-1].any()  # past the volume's edge: 0, as the tiler pads


def test_the_axial_axis_is_never_flipped_and_an_empty_draw_changes_nothing():
    config = AugmentConfig(**{**OFF, "flip": True})
    draws = [draw_geometry(np.random.default_rng(k), config, axial_axis=0) for k in range(64)]
    assert all(g is None or not g.flips[0] for g in draws)
    assert {g.flips[1:] for g in draws if g is not None} == {(True, False), (False, True), (True, True)}
    assert all(draw_geometry(np.random.default_rng(k), AugmentConfig(**OFF), 0) is None for k in range(8))
    volumes = [noise_volume()]
    patches = [Patch(0, (2, 3, 4)), Patch(0, (10, 9, 8))]
    cut = dict(size=12, margin=3, inputs=["T1"], outputs=["FLAIR"], lesion_input=True)
    plain, same = cut_batch(volumes, patches, **cut), augmented_batch(volumes, patches, AugmentConfig(**OFF), seed=1,
                                                                      step=0, **cut)
    for a, b in ((plain.inputs, same.inputs), (plain.targets, same.targets)):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(plain.lesion, same.lesion)


def test_targets_are_the_central_crop_of_the_turned_window_and_only_inputs_are_jittered():
    volumes = [noise_volume()]
    patches = [Patch(0, (k, 4, 5)) for k in range(6)]
    config = AugmentConfig(flip=True, rotate_degrees=20.0, scale=0.1, gamma=0.3, intensity_scale=0.1,
                           bias_field=0.05, probability=1.0)
    batch = augmented_batch(volumes, patches, config, seed=3, step=7, size=12, margin=3, inputs=["T1"],
                            outputs=["FLAIR"], lesion_input=True)
    geometric = augmented_batch(volumes, patches, AugmentConfig(**{**config.__dict__, **{
        k: 0.0 for k in ("gamma", "intensity_scale", "bias_field")}}), seed=3, step=7, size=12, margin=3,
        inputs=["T1"], outputs=["FLAIR"], lesion_input=True)
    # the same draws place the windows (the geometry is drawn first), so the targets agree
    assert torch.equal(batch.targets["FLAIR"], geometric.targets["FLAIR"])
    # FLAIR is T1's copy: the target is the central crop of the window read through the same turn
    np.testing.assert_array_equal(geometric.inputs["T1"][..., 3:-3, 3:-3, 3:-3], batch.targets["FLAIR"])
    assert not torch.equal(geometric.inputs["T1"], cut_batch(volumes, patches, size=12, margin=3, inputs=["T1"],
                                                              outputs=["FLAIR"], lesion_input=True).inputs["T1"])
    jittered, clean = batch.inputs["T1"], geometric.inputs["T1"]
    assert not torch.allclose(jittered, clean)
    assert torch.equal(jittered == 0, clean == 0)  # the background stays 0 even where tissue is negative
    assert set(torch.unique(batch.lesion).tolist()) <= {0.0, 1.0}  # nearest: the mask stays binary
    again = augmented_batch(volumes, patches, config, seed=3, step=7, size=12, margin=3, inputs=["T1"],
                            outputs=["FLAIR"], lesion_input=True)
    assert torch.equal(again.inputs["T1"], jittered)  # a pure function of (seed, step, index)


def test_a_recipe_reads_and_checks_augment(tmp_path):
    config = Train3DConfig.from_dict(tiny(["x"], tmp_path, augment={"rotate_degrees": 5.0}))
    assert config.augment == AugmentConfig(rotate_degrees=5.0) and config.to_dict()["augment"]["rotate_degrees"] == 5
    assert Train3DConfig.from_dict(tiny(["x"], tmp_path)).augment is None
    with pytest.raises(ValueError, match="thick_slice_mm is the 2D trainer's"):
        Train3DConfig.from_dict(tiny(["x"], tmp_path, augment={"thick_slice_mm": 5.0}))
    with pytest.raises(ValueError, match="unknown augment keys \\['rotate'\\]"):
        Train3DConfig.from_dict(tiny(["x"], tmp_path, augment={"rotate": 5.0}))


@pytest.mark.parametrize("architecture", ["wei2019_fcn3d", "klingelhoefer_ae3d"])
def test_augmented_runs_are_seeded_and_resume_identically(tmp_path, architecture):
    sources = write_dataset(tmp_path / "data")
    augment = {"probability": 1.0}
    run(sources, tmp_path / "whole", architecture=architecture, augment=augment)
    run(sources, tmp_path / "split", architecture=architecture, augment=augment, epochs=1)
    run(sources, tmp_path / "split", architecture=architecture, augment=augment, resume=True)
    run(sources, tmp_path / "plain", architecture=architecture)
    whole, split = (load_file(str(tmp_path / f / CHECKPOINT)) for f in ("whole", "split"))
    assert all(torch.equal(whole[k], split[k]) for k in whole)
    assert log_rows(tmp_path / "split") == log_rows(tmp_path / "whole") != log_rows(tmp_path / "plain")
