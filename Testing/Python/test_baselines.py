"""The classical baselines of issue 3 (training/baselines.py) and the LOSO harness (training/experiments/loso.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from conftest import make_subject, make_tiny_model
from training.baselines import (
    PolynomialBaseline,
    RandomForestBaseline,
    make_baseline,
    patch_features,
)
from training.experiments.loso import run_loso

SHAPE = (12, 14, 16)


def _brain(shape=SHAPE) -> np.ndarray:
    grid = np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in shape], indexing="ij")
    return sum(g ** 2 for g in grid) < 0.8


def _inputs(seed: int, shape=SHAPE) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    brain = _brain(shape)
    smooth = lambda: ndi.gaussian_filter(rng.uniform(0.3, 2.0, shape), 1.0).astype(np.float32)
    return {"T1": np.where(brain, smooth(), 0.0), "T2": np.where(brain, smooth(), 0.0)}, brain


def _quadratic(inputs: dict[str, np.ndarray], brain: np.ndarray) -> np.ndarray:
    a, b = inputs["T1"].astype(np.float64), inputs["T2"].astype(np.float64)
    return np.where(brain, 0.7 + 2.0 * a - b + 0.5 * a * a + 0.3 * a * b - 0.2 * b * b, 0.0)


def test_poly_fits_an_exact_quadratic_to_near_zero_error():
    train = [(x, _quadratic(x, m), m) for x, m in (_inputs(0), _inputs(1))]
    model = PolynomialBaseline(degree=2).fit(train)
    inputs, brain = _inputs(2)
    error = np.abs(model.predict(inputs, brain) - _quadratic(inputs, brain))[brain]
    assert error.max() < 1e-4


def test_rf_beats_the_mean_predictor_on_a_patch_dependent_target():
    def target(x, m):  # the 3x3x3 mean of T1 minus the centre voxel of T2: needs the neighbourhood
        return np.where(m, ndi.uniform_filter(x["T1"], 3, mode="constant") - 0.5 * x["T2"], 0.0)

    rng = np.random.default_rng(5)
    noisy = lambda seed: {k: np.where(m, v + 0.3 * rng.standard_normal(SHAPE), 0.0).astype(np.float32)
                          for x, m in [_inputs(seed)] for k, v in x.items()}
    brain = _brain()
    train = [(x, target(x, brain), brain) for x in (noisy(0), noisy(1))]
    model = RandomForestBaseline(trees=20, max_voxels=None, n_jobs=1).fit(train)
    test = noisy(2)
    truth = target(test, brain)[brain]
    rf_mse = np.mean((model.predict(test, brain)[brain] - truth) ** 2)
    mean_mse = np.mean((np.mean(np.concatenate([t[brain] for _, t, _ in train])) - truth) ** 2)
    assert rf_mse < 0.5 * mean_mse
    # and beats the voxel-wise polynomial, which cannot see the neighbourhood
    poly = PolynomialBaseline().fit(train)
    assert rf_mse < np.mean((poly.predict(test, brain)[brain] - truth) ** 2)


@pytest.mark.parametrize("name", ["poly", "rf"])
def test_predict_is_zero_outside_the_brain_and_checks_inputs(name):
    inputs, brain = _inputs(0)
    model = make_baseline(name, **({"trees": 3, "n_jobs": 1} if name == "rf" else {}))
    model.fit([(inputs, _quadratic(inputs, brain), brain)])
    smaller = brain & (np.indices(SHAPE)[0] < SHAPE[0] // 2)
    output = model.predict(inputs, smaller)
    assert output.shape == SHAPE and output.dtype == np.float32
    assert (output[~smaller] == 0).all() and np.abs(output[smaller]).min() > 0
    with pytest.raises(ValueError, match="fitted on inputs"):
        model.predict({"T1": inputs["T1"]}, brain)


def test_patch_features_match_explicit_neighbourhoods():
    inputs, brain = _inputs(3)
    index = np.flatnonzero(brain.ravel())[::37]
    features = patch_features(inputs, index, ["T1", "T2"])
    assert features.shape == (index.size, 54)
    padded = {k: np.pad(v, 1) for k, v in inputs.items()}
    for row, flat in enumerate(index[:5]):
        z, y, x = np.unravel_index(flat, SHAPE)
        expected = np.concatenate([padded[k][z:z + 3, y:y + 3, x:x + 3].ravel() for k in ("T1", "T2")])
        np.testing.assert_array_equal(features[row], expected)
        assert features[row, 13] == inputs["T1"][z, y, x]  # the cube's centre


def test_loso_runs_end_to_end_on_three_tiny_subjects(tmp_path):
    for seed in range(3):
        make_subject(tmp_path / "data" / f"s{seed}", seed=seed)
    make_tiny_model(tmp_path / "models" / "s1")  # random weights, a card without training subjects
    out = tmp_path / "out"
    results = run_loso([str(tmp_path / "data")], ["T1", "T2"], "FLAIR",
                       ["poly", "rf", "chartsias+lesion:" + str(tmp_path / "models" / "{subject}")], out,
                       rf={"trees": 5, "max_voxels": 3000, "n_jobs": 1}, command="test", log=lambda m: None)
    written = json.loads((out / "results.json").read_text())
    assert written["target"] == "FLAIR" and written["inputs"] == ["T1", "T2"]
    assert [f["held_out"] for f in written["folds"]] == ["s0", "s1", "s2"]
    for fold in written["folds"]:
        assert fold["training"] == [s for s in ("s0", "s1", "s2") if s != fold["held_out"]]
        if fold["held_out"] == "s1":  # the one fold with a model folder runs it through SynthesisLogic
            metrics = fold["methods"]["chartsias+lesion"]["metrics"]
            assert math.isfinite(metrics["ssim_brain"]) and math.isfinite(metrics["psnr_brain"])
        else:
            assert "skipped" in fold["methods"]["chartsias+lesion"]
        for name in ("poly", "rf"):
            metrics = fold["methods"][name]["metrics"]
            for key in ("ssim_brain", "psnr_brain", "mse_brain", "mae_brain",
                        "lesion_ratio1_synthetic", "lesion_ratio1_reference", "lesion_ratio2_synthetic"):
                assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), (name, key)
    assert written["mean"]["poly"]["folds"] == 3 and written["mean"]["chartsias+lesion"]["folds"] == 1
    assert results["mean"]["rf"]["ssim_brain"] == pytest.approx(written["mean"]["rf"]["ssim_brain"])
    text = (out / "results.md").read_text()
    assert "| s0 | rf |" in text and "no model folder" in text


def test_loso_training_fit_scores_each_method_on_its_folds_training_subjects(tmp_path):
    for seed in range(3):
        make_subject(tmp_path / "data" / f"s{seed}", seed=seed)
    trained_on = {"subjects": {"training": [{"subject": "s0"}, {"subject": "s2"}], "validation": []}}
    make_tiny_model(tmp_path / "models" / "s1", training=trained_on)
    make_tiny_model(tmp_path / "models" / "s0")  # its card names no training subject: refused as "trained on s1"
    results = run_loso([str(tmp_path / "data")], ["T1", "T2"], "FLAIR",
                       ["poly", "chartsias+lesion:" + str(tmp_path / "models" / "{subject}")], tmp_path / "out",
                       command="test", log=lambda m: None, training_fit=True)
    folds = {f["held_out"]: f["methods"] for f in results["folds"]}
    for held, methods in folds.items():
        fit = methods["poly"]["training_fit"]
        assert sorted(fit) == [s for s in ("s0", "s1", "s2") if s != held]
        assert all(math.isfinite(m["lesion_ratio1_synthetic"]) for m in fit.values())
    model = folds["s1"]["chartsias+lesion"]
    assert sorted(model["training_fit"]) == ["s0", "s2"] and "error" not in model
    # the training subject's own figures, not the held-out one's
    assert model["training_fit"]["s0"]["ssim_brain"] != model["metrics"]["ssim_brain"]
    assert "does not list s1 among its training subjects" in folds["s0"]["chartsias+lesion"]["error"]
    text = (tmp_path / "out" / "results.md").read_text()
    assert "## Fit on the training subjects" in text and "| s1 | chartsias+lesion | s2 |" in text


def test_loso_methods_of_one_kind_are_told_apart_by_a_label():
    from training.experiments.loso import parse_method

    assert parse_method("chartsias+lesion.ignore:runs/{subject}") == ("chartsias+lesion.ignore", "runs/{subject}")
    assert parse_method("wei3d:m/{subject}") == ("wei3d", "m/{subject}")
    for bad in ("chartsias+lesion.:m", "unet.x:m", "chartsias"):
        with pytest.raises(ValueError, match="unknown method"):
            parse_method(bad)
