"""The Tables IV-V experiment: its configs hold the subject out and differ only where the tables say,
and the evaluation fills the tables from tiny models on phantoms (including a run not trained yet)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_subject, make_tiny_model, write_image

from training.config import AugmentConfig, load_config
from training.experiments import missing_inputs as mi

REPO = Path(__file__).resolve().parents[2]


def test_configs_hold_the_subject_out_and_vary_only_subsets_and_costs(tmp_path):
    paths = mi.write_configs(tmp_path, log=lambda _: None)
    assert len(paths) == 2 * (1 + 7 + 3 + 3)
    configs = {p.stem: load_config(p) for p in paths}
    for held_out in mi.MS_FOLDS:
        fold = {name: c for name, c in configs.items() if name.startswith(f"mi-{held_out}-")}
        assert len(fold) == 14
        for config in fold.values():
            assert not any(held_out in source for source in config.data), config.name
            assert config.outputs == ["FLAIR"] and not config.lesion_input and config.validation_subjects == []
            assert config.out == f"{mi.RUNS}/{held_out}/{config.name.removeprefix(f'mi-{held_out}-')}"
        # everything but inputs, input_subsets, loss weights and augmentation is the same recipe (same seed, crops)
        varied = {"name", "description", "out", "inputs", "input_subsets", "loss_weights", "augment"}
        recipes = {json.dumps({k: v for k, v in c.to_dict().items() if k not in varied}, sort_keys=True)
                   for c in fold.values()}
        assert len(recipes) == 1
        singles = [c for c in fold.values() if c.input_subsets == "all"]
        assert sorted("+".join(c.inputs) for c in singles) == sorted(mi.subset_name(s) for s in mi.subsets(mi.INPUTS))
        default = AugmentConfig()
        ablations = sorted(tuple(c.loss_weights) for c in fold.values()
                           if c.input_subsets == "random" and c.augment == default)
        assert ablations == [(0.0, 1.0, 1.0), (1.0, 0.0, 1.0), (1.0, 1.0, 0.0), (1.0, 1.0, 1.0)]
        augmented = {c.name.removeprefix(f"mi-{held_out}-any-subset-"): c.augment for c in fold.values()
                     if c.augment != default}
        assert set(augmented) == {"no-augment", "intensity-augment", "geometric-augment"}
        assert all(c.loss_weights == [1.0, 1.0, 1.0] for c in fold.values() if c.augment != default)
        off = augmented["no-augment"]
        assert not off.flip and off.rotate_degrees == off.scale == off.gamma == off.intensity_scale == 0
        assert off.bias_field == 0 and augmented["intensity-augment"].gamma == default.gamma
        assert augmented["geometric-augment"].flip and augmented["geometric-augment"].bias_field == 0


def test_committed_configs_are_what_the_generator_writes(tmp_path):
    mi.write_configs(tmp_path, log=lambda _: None)
    committed = REPO / mi.CONFIG_DIR
    assert sorted(p.name for p in committed.glob("*.json")) == sorted(p.name for p in tmp_path.glob("*.json"))
    for path in tmp_path.glob("*.json"):
        assert (committed / path.name).read_text() == path.read_text(), path.name


def _phantom_fold(root: Path, seed: int, name: str) -> None:
    subject = make_subject(root / "data" / name, seed=seed)
    write_image(subject.arrays["T1"] * 1.2 + 30.0 * subject.arrays["brain"], root / "data" / name / "T1c.nii.gz")


def _tiny_models(runs: Path, held_out: str, skip: set[str]) -> None:
    intensity = {"FLAIR": {"offset": 0.0, "scale": 400.0}}
    for seed, run in enumerate(mi.run_names()):
        if run.name in skip:
            continue
        make_tiny_model(mi.model_folder(runs, held_out, run.name), seed=seed, inputs=list(run.inputs),
                        outputs=["FLAIR"], lesion_input=False, output_intensity=intensity,
                        missing_inputs="any_subset" if run.mode == "random" else "all_required")


def test_evaluation_fills_both_tables_and_counts_where_one_model_is_not_worse(tmp_path):
    _phantom_fold(tmp_path, 0, "patient07")
    _phantom_fold(tmp_path, 1, "patient19")
    runs = tmp_path / "runs"
    _tiny_models(runs, "patient07", skip=set())
    _tiny_models(runs, "patient19", skip={"any-subset-no-c3", "only-T1c"})
    out = tmp_path / "out"
    assert mi.main(["evaluate", "--data", str(tmp_path / "data"), "--runs", str(runs), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    p07, p19 = results["folds"]["patient07"], results["folds"]["patient19"]
    assert sorted(p07["any-subset"]) == sorted(mi.subset_name(s) for s in mi.subsets(mi.INPUTS))
    assert list(p07["only-T1+T2"]) == ["T1+T2"] and p19["only-T1c"] == {} and p19["any-subset-no-c3"] == {}
    summary = results["summary"]
    for row in summary["table4"]:
        verdict = summary["b_not_worse"][row]
        expected = [f["any-subset"][row]["mse_brain"] <= f[f"only-{row}"][row]["mse_brain"]
                    for f in (p07, p19) if row in f[f"only-{row}"]]
        assert verdict == {"folds": len(expected), "B_not_worse_mse": sum(expected)}
        mse_b = summary["table4"][row]["mse_brain"]["B"]
        assert mse_b == pytest.approx(np.mean([p07["any-subset"][row]["mse_brain"], p19["any-subset"][row]["mse_brain"]]))
        assert summary["table5"][row]["all-costs"] == pytest.approx(mse_b)
    # a run that is missing in one fold averages over the folds that have it
    assert summary["table4"]["T1c"]["mse_brain"]["A"] == pytest.approx(p07["only-T1c"]["T1c"]["mse_brain"])
    assert summary["table5"]["T1"]["no-c3"] == pytest.approx(p07["any-subset-no-c3"]["T1"]["mse_brain"])
    assert summary["augmentation"]["T2"]["no-augment"]["ssim_brain"] == pytest.approx(
        np.mean([p07["any-subset-no-augment"]["T2"]["ssim_brain"], p19["any-subset-no-augment"]["T2"]["ssim_brain"]]))
    assert summary["augmentation"]["T2"]["all-augment"]["mse_brain"] == pytest.approx(
        summary["table4"]["T2"]["mse_brain"]["B"])
    text = (out / "results.md").read_text()
    assert "## Table IV" in text and "## Table V" in text and "## Augmentation" in text and "| T1c | " in text and "/1 |" in text


def test_evaluation_names_a_missing_held_out_subject(tmp_path):
    _phantom_fold(tmp_path, 0, "patient07")
    with pytest.raises(ValueError, match="patient19"):
        mi.run_evaluation([str(tmp_path / "data")], tmp_path / "runs", None, log=lambda _: None)
