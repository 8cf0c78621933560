"""The per-task comparison of models on one subject (training/experiments/held_out_tasks.py) on a tiny phantom."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import make_subject, make_tiny_model
from training.experiments.held_out_tasks import main, subject_role
from training.validate import validation_tasks

MODALITIES = ["T1", "T2", "FLAIR"]
OUTPUT_INTENSITY = {m: {"offset": 0.0, "scale": 500.0} for m in MODALITIES}


def _model(folder, seed, **card):
    return make_tiny_model(folder, seed=seed, inputs=MODALITIES, outputs=MODALITIES,
                           output_intensity=OUTPUT_INTENSITY, **card)


def test_every_task_scored_per_model_with_what_the_run_did_with_the_subject(tmp_path):
    subject = make_subject(tmp_path / "s0")
    seen = {"subjects": {"training": [{"subject": "s0", "lesion_channel": "mask"}], "validation": []}}
    a = _model(tmp_path / "a", 0)
    b = _model(tmp_path / "b", 1, training=seen)
    out = tmp_path / "out"
    assert main(["--subject", str(subject.folder), "--models", f"a={a}", f"again={a}", f"b={b}",
                 "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    first, again, other = results["models"]
    assert [m["role"] for m in results["models"]] == ["unseen", "unseen", "training"]
    tasks = {f"{'+'.join(g)}->{t}" for g, targets in validation_tasks(MODALITIES, MODALITIES) for t in targets}
    assert {k[4:-1] for k in first["scores"] if k.startswith("mse[")} == tasks and len(tasks) == 9
    assert first["scores"] == again["scores"]  # deterministic
    assert first["scores"] != other["scores"]  # and it is the model that is scored
    assert all(np.isfinite(v) and v >= 0 for v in first["scores"].values())
    assert first["mean_mse"] == pytest.approx(np.mean([v for k, v in first["scores"].items() if "mse[" in k]))
    # a constant 1.0 is the brain mean of every normalised image: its MSE is the target's variance in the brain
    assert all(0 < v < 10 for v in first["constant"].values())
    text = (out / "results.md").read_text()
    assert "| b | tiny | 0.0.0 | training |" in text and "| T1+T2->FLAIR |" in text

    assert main(["--subject", str(subject.folder), "--models", f"a={a}", "--stride", "3", "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["models"][0]["slices"] < first["slices"]


def test_a_lesion_model_on_a_subject_without_an_expert_mask_is_refused(tmp_path, capsys):
    subject = make_subject(tmp_path / "s0")
    subject.paths["lesion_mask"].unlink()
    model = _model(tmp_path / "m", 0)
    assert main(["--subject", str(subject.folder), "--models", f"m={model}", "--out", str(tmp_path / "out")]) == 2
    assert "no expert lesion mask" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_subject_role_reads_the_card():
    training = {"subjects": {"training": [{"subject": "p19"}], "validation": [{"subject": "p07"}]}}
    assert [subject_role(training, s) for s in ("p19", "p07", "x")] == ["training", "validation", "unseen"]
    assert subject_role({}, "p07") == "unseen"
