"""The P3S ranking experiment (Table 4a check) end to end on tiny phantoms, and the LOSO scale conversion."""

from __future__ import annotations

import json
import math

import pytest

from conftest import make_subject, make_tiny_model
from MRSynthesisLib.cards import ModelCard
from training.experiments.loso import population_mean
from training.experiments.saliency_ranking import main, rank


def test_ranking_experiment_on_tiny_subjects(tmp_path):
    for seed in range(2):
        make_subject(tmp_path / "data" / f"s{seed}", seed=seed)
    make_tiny_model(tmp_path / "models" / "s0")
    make_tiny_model(tmp_path / "models" / "s1", missing_inputs="all_required")
    out = tmp_path / "out"
    assert main(["--model", str(tmp_path / "models" / "{subject}"), "--data", str(tmp_path / "data"),
                 "--inputs", "T1", "T2", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    s0, s1 = results["rows"]
    assert "leaving one out is not possible" in s1["error"]
    assert set(s0["mse_increase_without"]) == {"T1", "T2"} and not s0["seen_in_training"]
    for label in ("paper", "target_free"):
        assert sum(s0[label]["shares"].values()) == pytest.approx(1.0)
        assert sorted(s0[label]["ranking"]) == ["T1", "T2"]
        assert math.isnan(s0[label]["kendall_tau"]) or -1 <= s0[label]["kendall_tau"] <= 1
    assert "eq. 3" in s0["objective_paper"] and "target-free" in s0["objective_target_free"]
    assert (out / "P3S_s0.png").read_bytes()[:4] == b"\x89PNG" and not (out / "P3S_s1.png").exists()
    assert "| s0 | no |" in (out / "results.md").read_text()


def test_ranking_with_models_retrained_without_each_input(tmp_path):
    """Wei et al.'s protocol: a model that needs all its inputs, and one retrained model per left-out input."""
    make_subject(tmp_path / "data" / "s0", seed=0)
    make_tiny_model(tmp_path / "models" / "all", inputs=["T1", "T2"], missing_inputs="all_required")
    make_tiny_model(tmp_path / "models" / "no-T1", seed=1, inputs=["T2"], missing_inputs="all_required")
    make_tiny_model(tmp_path / "models" / "no-T2", seed=2, inputs=["T1"], missing_inputs="all_required")
    out = tmp_path / "out"
    args = ["--model", str(tmp_path / "models" / "all"), "--data", str(tmp_path / "data"), "--inputs", "T1", "T2",
            "--out", str(out), "--without-model", f"T1={tmp_path / 'models' / 'no-T1'}"]
    with pytest.raises(SystemExit):  # one retrained model per input, or none
        main(args)
    assert main([*args, f"T2={tmp_path / 'models' / 'no-T2'}"]) == 0
    (row,) = json.loads((out / "results.json").read_text())["rows"]
    assert row["left_out_by"] == "retrained models" and set(row["retrained_models"]) == {"T1", "T2"}
    assert set(row["mse_increase_without"]) == {"T1", "T2"}
    assert "Inputs left out by: retrained models." in (out / "results.md").read_text()
    # a retrained model with the wrong inputs is named, not used
    assert main([*args[:-1], f"T1={tmp_path / 'models' / 'no-T2'}", f"T2={tmp_path / 'models' / 'no-T1'}"]) == 0
    (row,) = json.loads((out / "results.json").read_text())["rows"]
    assert "the model without T1 must take T2" in row["error"]


def test_rank_orders_by_decreasing_value():
    assert rank({"T1": 0.2, "T2": 0.5, "FLAIR": 0.3}) == ["T2", "FLAIR", "T1"]


@pytest.mark.parametrize("scheme, stats, expected", [
    ("mean_in_brain", {"offset": 0.0, "scale": 400.0}, 400.0),
    ("three_mean_nonzero", {"offset": 0.0, "scale": 1200.0}, 400.0),
    ("zscore", {"offset": 400.0, "scale": 90.0}, 400.0),
])
def test_population_mean_puts_every_scheme_on_the_brain_mean_scale(scheme, stats, expected):
    card = ModelCard(name="m", architecture="wei2019_fcn3d", inputs=["T1"], outputs=["FLAIR"], spatial_dims=3,
                     plane=None, normalisation={"scheme": scheme}, output_intensity={"FLAIR": stats})
    assert population_mean(card, "FLAIR") == pytest.approx(expected)
