"""The Tables IV-V experiment: its configs hold the subject out and differ only where the tables say,
the training queue continues where it stopped, and the evaluation fills the tables from tiny models on
phantoms (including a run not trained yet)."""

from __future__ import annotations

import json
import shutil
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
            run = config.name.removeprefix(f"mi-{held_out}-")
            assert config.out == f"{mi.SCHEDULES['short'].runs}/{held_out}/{run}"
        # everything but inputs, input_subsets, loss weights and augmentation is the same recipe (same seed, crops)
        varied = {"name", "description", "out", "inputs", "input_subsets", "loss_weights", "augment"}
        recipes = {json.dumps({k: v for k, v in c.to_dict().items() if k not in varied}, sort_keys=True)
                   for c in fold.values()}
        assert len(recipes) == 1
        singles = [c for c in fold.values() if c.input_subsets == "all" and c.loss_weights == [1.0, 1.0, 1.0]]
        assert sorted("+".join(c.inputs) for c in singles) == sorted(mi.subset_name(s) for s in mi.subsets(mi.INPUTS))
        default = AugmentConfig()
        # Table V: the tri-modal model of Experiment A (all inputs every step, as the paper) minus a cost part
        ablations = sorted(tuple(c.loss_weights) for c in fold.values()
                           if c.inputs == mi.INPUTS and c.input_subsets == "all")
        assert ablations == [(0.0, 1.0, 1.0), (1.0, 0.0, 1.0), (1.0, 1.0, 0.0), (1.0, 1.0, 1.0)]
        assert [c.name for c in fold.values() if c.input_subsets == "random" and c.augment == default] == [
            f"mi-{held_out}-any-subset"]
        augmented = {c.name.removeprefix(f"mi-{held_out}-any-subset-"): c.augment for c in fold.values()
                     if c.augment != default}
        assert set(augmented) == {"no-augment", "geometric-only", "intensity-only"}
        assert all(c.loss_weights == [1.0, 1.0, 1.0] and c.input_subsets == "random"
                   for c in fold.values() if c.augment != default)
        off, geometric, intensity = (augmented[n] for n in ("no-augment", "geometric-only", "intensity-only"))
        assert not off.flip and off.rotate_degrees == off.scale == off.gamma == off.intensity_scale == 0
        assert off.bias_field == 0
        # each half switches exactly the other half off and keeps its own transforms at the defaults
        assert (geometric.flip, geometric.rotate_degrees, geometric.scale) == (default.flip, default.rotate_degrees,
                                                                              default.scale)
        assert geometric.gamma == geometric.intensity_scale == geometric.bias_field == 0
        assert (intensity.gamma, intensity.intensity_scale, intensity.bias_field) == (
            default.gamma, default.intensity_scale, default.bias_field)
        assert not intensity.flip and intensity.rotate_degrees == intensity.scale == 0


def test_the_long_schedule_trains_table_iv_and_augmentation_at_the_recipe_budget_with_averaging(tmp_path):
    short = {p.name: load_config(p) for p in mi.write_configs(tmp_path / "short", log=lambda _: None)}
    long = {p.name: load_config(p) for p in mi.write_configs(tmp_path / "long", log=lambda _: None,
                                                           schedule=mi.SCHEDULES["long"])}
    seeded = {name for name in long if "-seed" in name}
    weighted = {f"mi-{held_out}-{mi.TRI_MODAL}-{variant}.json" for held_out in mi.MS_FOLDS
                for variant in mi.WEIGHT_VARIANTS}
    budgeted = {name for name in long if name.endswith(f"-x{mi.BUDGET}.json")}
    assert len(long) == 2 * (1 + 7 + 3 + 3 * len(mi.SEEDS) + len(mi.WEIGHT_VARIANTS) + len(mi.BUDGET_RUNS))
    assert weighted < set(long) and set(long) - seeded - weighted - budgeted < set(short)
    for name in budgeted:  # the seed-0 run but for the number of epochs, the averaging window the same
        config, base = long[name], long[name.replace(f"-x{mi.BUDGET}", "")]
        assert (config.epochs, config.average_epochs) == (mi.BUDGET * base.epochs, base.average_epochs)
        assert config.out == f"{base.out}-x{mi.BUDGET}" and config.seed == base.seed == 0
        same = {k: v for k, v in config.to_dict().items() if k not in {"out", "description", "name", "epochs"}}
        assert same == {k: v for k, v in base.to_dict().items() if k in same}
    assert sorted(n.removeprefix("mi-patient19-").removesuffix(".json") for n in budgeted if "patient19" in n) == (
        sorted(f"only-{row}-x2" for row in ("T1", "T1c", "T1+T1c+T2")))
    # of Table V only the runs the weights table asks for are trained at the long schedule
    assert {name for name in long if "-no-c" in name} == {n for n in weighted if "-no-c" in n}
    for held_out, variant in ((h, v) for h in mi.MS_FOLDS for v in mi.WEIGHT_VARIANTS):
        # the tri-modal run but for the cost weights
        config, base = long[f"mi-{held_out}-{mi.TRI_MODAL}-{variant}.json"], long[f"mi-{held_out}-{mi.TRI_MODAL}.json"]
        assert config.loss_weights == mi.WEIGHT_VARIANTS[variant] != base.loss_weights
        assert config.out == f"{base.out}-{variant}"
        same = {k: v for k, v in config.to_dict().items() if k not in {"out", "description", "name", "loss_weights"}}
        assert same == {k: v for k, v in base.to_dict().items() if k in same}
    for name, config in ((n, c) for n, c in long.items() if n not in weighted | budgeted):
        assert (config.epochs, config.steps_per_epoch, config.average_epochs) == (25, 80, 5)
        seed = int(name.split("-seed")[1].removesuffix(".json")) if name in seeded else 0
        base = short[name.replace(f"-seed{seed}", "")] if seed else short[name]
        assert config.seed == seed and config.name == base.name + (f"-seed{seed}" if seed else "")
        assert config.out == (base.out.replace("runs/missing-inputs/", "runs/missing-inputs-long/")
                              + (f"-seed{seed}" if seed else ""))
        # a seeded run is its seed-0 run but for the seed: what the seeds table compares
        same = {k: v for k, v in config.to_dict().items()
                if k not in {"epochs", "steps_per_epoch", "average_epochs", "out", "description", "name", "seed"}}
        assert same == {k: v for k, v in base.to_dict().items() if k in same}
    # the seeds are trained for A's worst cells (T1, T1c alone) and for B, the tri-modal model
    assert sorted(n.removeprefix("mi-patient07-").removesuffix(".json") for n in seeded if "patient07" in n) == sorted(
        f"only-{row}-seed{s}" for s in mi.SEEDS for row in ("T1", "T1c", "T1+T1c+T2"))


@pytest.mark.parametrize("schedule", sorted(mi.SCHEDULES))
def test_committed_configs_are_what_the_generator_writes(tmp_path, schedule):
    mi.write_configs(tmp_path, log=lambda _: None, schedule=mi.SCHEDULES[schedule])
    committed = REPO / mi.SCHEDULES[schedule].configs
    assert sorted(p.name for p in committed.glob("*.json")) == sorted(p.name for p in tmp_path.glob("*.json"))
    for path in tmp_path.glob("*.json"):
        assert (committed / path.name).read_text() == path.read_text(), path.name


def _phantom_fold(root: Path, seed: int, name: str) -> None:
    subject = make_subject(root / "data" / name, seed=seed)
    write_image(subject.arrays["T1"] * 1.2 + 30.0 * subject.arrays["brain"], root / "data" / name / "T1c.nii.gz")


def _tiny_models(runs: Path, held_out: str, skip: set[str],
                 tables: tuple[str, ...] = ("IV", "V", "augmentation")) -> None:
    intensity = {"FLAIR": {"offset": 0.0, "scale": 400.0}}
    for seed, run in enumerate(mi.run_names(tables)):
        if run.name in skip:
            continue
        make_tiny_model(mi.model_folder(runs, held_out, run.name), seed=seed, inputs=list(run.inputs),
                        outputs=["FLAIR"], lesion_input=False, output_intensity=intensity)


def test_evaluation_fills_the_tables_and_counts_where_a_shared_model_is_not_worse(tmp_path):
    _phantom_fold(tmp_path, 0, "patient07")
    _phantom_fold(tmp_path, 1, "patient19")
    runs = tmp_path / "runs"
    _tiny_models(runs, "patient07", skip=set())
    _tiny_models(runs, "patient19", skip={"only-T1+T1c+T2-no-c3", "only-T1c"})
    out = tmp_path / "out"
    assert mi.main(["evaluate", "--data", str(tmp_path / "data"), "--runs", str(runs), "--out", str(out),
                    "--threads", "1"]) == 0
    results = json.loads((out / "results.json").read_text())
    p07, p19 = results["folds"]["patient07"], results["folds"]["patient19"]
    every = sorted(mi.subset_name(s) for s in mi.subsets(mi.INPUTS))
    assert sorted(p07["any-subset"]) == sorted(p07[mi.TRI_MODAL]) == sorted(p07[f"{mi.TRI_MODAL}-no-c1"]) == every
    assert sorted(p07["only-T1+T2"]) == ["T1", "T1+T2", "T2"] and list(p07["only-T2"]) == ["T2"]
    assert p19["only-T1c"] == {} and p19[f"{mi.TRI_MODAL}-no-c3"] == {}
    summary = results["summary"]
    for row in every:
        own = f"only-{row}"
        for side, run in (("B", mi.TRI_MODAL), ("B'", "any-subset")):
            expected = [f[run][row]["mse_brain"] <= f[own][row]["mse_brain"] for f in (p07, p19) if row in f[own]]
            assert summary["not_worse_than_A"][row][side] == {"folds": len(expected), "not_worse": sum(expected)}
            assert summary["table4"][row]["mse_brain"][side] == pytest.approx(
                np.mean([p07[run][row]["mse_brain"], p19[run][row]["mse_brain"]]))
        assert summary["table5"][row]["all-costs"] == pytest.approx(summary["table4"][row]["mse_brain"]["B"])
        assert summary["augmentation"][row]["all-augment"]["mse_brain"] == pytest.approx(
            summary["table4"][row]["mse_brain"]["B'"])
    # a run that is missing in one fold averages over the folds that have it
    assert summary["table4"]["T1c"]["mse_brain"]["A"] == pytest.approx(p07["only-T1c"]["T1c"]["mse_brain"])
    assert summary["table5"]["T1"]["no-c3"] == pytest.approx(p07[f"{mi.TRI_MODAL}-no-c3"]["T1"]["mse_brain"])
    assert summary["augmentation"]["T2"]["no-augment"]["ssim_brain"] == pytest.approx(
        np.mean([p07["any-subset-no-augment"]["T2"]["ssim_brain"], p19["any-subset-no-augment"]["T2"]["ssim_brain"]]))
    text = (out / "results.md").read_text()
    assert "## Table IV" in text and "## Table V" in text and "## Augmentation" in text
    assert "| T1c | " in text and "/1 |" in text

    # metrics are reused while the weights are the same, recomputed when a run is trained again
    cache = mi.model_folder(runs, "patient07", "only-T2").parent / mi.CACHE
    stored = json.loads(cache.read_text())
    stored["metrics"]["T2"]["mse_brain"] = 123.0
    cache.write_text(json.dumps(stored))
    again = mi.run_evaluation([str(tmp_path / "data")], runs, None, log=lambda _: None)
    assert again["folds"]["patient07"]["only-T2"]["T2"]["mse_brain"] == 123.0
    shutil.rmtree(mi.model_folder(runs, "patient07", "only-T2"))
    make_tiny_model(mi.model_folder(runs, "patient07", "only-T2"), seed=99, inputs=["T2"], outputs=["FLAIR"],
                    lesion_input=False, output_intensity={"FLAIR": {"offset": 0.0, "scale": 400.0}})
    again = mi.run_evaluation([str(tmp_path / "data")], runs, None, log=lambda _: None)
    assert again["folds"]["patient07"]["only-T2"]["T2"]["mse_brain"] != 123.0


def test_evaluation_names_a_missing_held_out_subject(tmp_path):
    _phantom_fold(tmp_path, 0, "patient07")
    with pytest.raises(ValueError, match="patient19"):
        mi.run_evaluation([str(tmp_path / "data")], tmp_path / "runs", None, log=lambda _: None)


def test_the_long_schedule_evaluates_table_iv_and_augmentation_only(tmp_path):
    _phantom_fold(tmp_path, 0, "patient07")
    _phantom_fold(tmp_path, 1, "patient19")
    runs = tmp_path / "runs"
    every = ("IV", "V", "augmentation", "seeds", "weights", "budget")  # Table V's other runs exist, are not read
    _tiny_models(runs, "patient07", skip={"only-T1c-x2"}, tables=every)
    _tiny_models(runs, "patient19", skip={"only-T1c-seed2", "only-T1+T1c+T2-seed1", "only-T1+T1c+T2-seed2",
                                          "only-T1+T1c+T2-c1x2", "only-T1+T1c+T2-x2"}, tables=every)
    out = tmp_path / "out"
    assert mi.main(["evaluate", "--schedule", "long", "--data", str(tmp_path / "data"), "--runs", str(runs),
                    "--out", str(out), "--threads", "1"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert sorted(results["folds"]["patient07"]) == sorted(
        r.name for r in mi.run_names(("IV", "augmentation", "seeds", "weights", "budget")))
    assert f"{mi.TRI_MODAL}-no-c1" not in results["folds"]["patient07"]
    assert results["schedule"] == {"epochs": 25, "steps_per_epoch": 80, "batch_size": 16, "average_epochs": 5,
                                   "tables": ["IV", "augmentation", "seeds", "weights", "budget"]}
    seeds = results["summary"]["seeds"]
    # patient19 has one tri-modal seed: no spread for B, so no row; patient07 has three a side for T1, T1c
    # the tri-modal row is left out: there A is B
    assert list(seeds) == ["patient07"] and sorted(seeds["patient07"]) == sorted(
        mi.subset_name(s) for s in mi.subsets(mi.INPUTS) if len(s) < len(mi.INPUTS))
    p07 = results["folds"]["patient07"]
    t1c = seeds["patient07"]["T1c"]
    assert t1c["A"] == [p07[n]["T1c"]["mse_brain"] for n in ("only-T1c", "only-T1c-seed1", "only-T1c-seed2")]
    assert t1c["B"] == [p07[mi.seeded(mi.TRI_MODAL, s)]["T1c"]["mse_brain"] for s in (0, 1, 2)]
    assert t1c["welch_p"] is not None and seeds["patient07"]["T2"]["welch_p"] is None  # one A seed for T2
    text = (out / "results.md").read_text()
    assert "## Table IV" in text and "## Table V" not in text and "## Augmentation" in text
    assert "## Seeds" in text and "| patient07 | T1c | " in text
    weights = results["summary"]["weights"]
    assert sorted(weights["cells"]) == ["patient07", "patient19"] and len(weights["cells"]["patient19"]) == 7
    c = weights["cells"]["patient19"]["T1c"]  # one A seed there (seed 2 not trained), one B seed
    assert (c["A_seeds"], c["B_seeds"]) == (2, 1)
    assert "c1x2" not in c  # not trained there: the row shows the variants that are
    assert c["no-c2"]["mse_brain"] == results["folds"]["patient19"][f"{mi.TRI_MODAL}-no-c2"]["T1c"]["mse_brain"]
    c = weights["cells"]["patient07"]["T1c"]
    assert c["c1x2"]["mse_brain"] == results["folds"]["patient07"][f"{mi.TRI_MODAL}-c1x2"]["T1c"]["mse_brain"]
    assert "## Cost weights" in text and "c1x2 = 2/1/1, no-c2 = 1/0/1" in text
    assert "| patient19 | T1c | " in text.split("## Cost weights")[1]
    assert "25 x 80 steps of batch 16 per run, the weights averaged over the last 5 epochs" in text
    budget = results["summary"]["budget"]
    # patient19 has no long tri-modal run: no row; on patient07 the long T1c model is missing
    assert budget["budget"] == 2 and list(budget["cells"]) == ["patient07"]
    t1, t1c = budget["cells"]["patient07"]["T1"], budget["cells"]["patient07"]["T1c"]
    assert t1["B_long"] == p07["only-T1+T1c+T2-x2"]["T1"]["mse_brain"] and t1["A_long"] == p07["only-T1-x2"]["T1"][
        "mse_brain"]
    assert t1["gap_long_percent"] == pytest.approx(100 * (t1["B_long"] - t1["A_long"]) / t1["A_long"])
    assert t1c["A_long"] is None and t1c["gap_long_percent"] is None
    assert t1c["A"] == pytest.approx(np.mean([p07[n]["T1c"]["mse_brain"] for n in ("only-T1c", "only-T1c-seed1",
                                                                                     "only-T1c-seed2")]))
    assert t1c["gap_to_A_percent"] == pytest.approx(100 * (t1c["B_long"] - t1c["A"]) / t1c["A"])
    assert "## Budget: does training 2 x as long close B's gap?" in text
    section = text.split("## Budget")[1].split("## Per held-out subject")[0]
    assert "| patient07 | T1c | " in section and "| patient19 |" not in section


def test_seed_spread_compares_b_with_a_over_the_seeds_with_welch():
    from scipy.stats import ttest_ind

    def cell(mse):
        return {"T1": {"mse_brain": mse}}

    fold = {"only-T1": cell(0.060), "only-T1-seed1": cell(0.062), "only-T1-seed2": cell(0.061),
            mi.TRI_MODAL: cell(0.066), f"{mi.TRI_MODAL}-seed1": cell(0.064), f"{mi.TRI_MODAL}-seed2": {}}
    spread = mi.seed_spread({"patient07": fold, "patient19": {"only-T1": cell(0.05), mi.TRI_MODAL: cell(0.06)}})
    assert list(spread) == ["patient07"]  # a single B seed has no spread to compare with
    t1 = spread["patient07"]["T1"]
    assert t1["A"] == [0.060, 0.062, 0.061] and t1["B"] == [0.066, 0.064]  # a seed not trained is left out
    assert t1["gap"] == pytest.approx(0.065 - 0.061) and t1["gap_percent"] == pytest.approx(100 * 0.004 / 0.061)
    assert t1["gap_over_spread"] == pytest.approx(0.004 / np.std([0.066, 0.064], ddof=1))
    assert t1["welch_p"] == pytest.approx(ttest_ind([0.066, 0.064], [0.060, 0.062, 0.061], equal_var=False).pvalue)


def test_weight_variants_compare_with_the_seed_means_and_count_cells_short_of_all_inputs():
    def cells(**mse):
        return {row.replace("_", "+"): {"mse_brain": v} for row, v in mse.items()}

    tri = mi.TRI_MODAL
    fold = {"only-T1": cells(T1=0.060), "only-T1-seed1": cells(T1=0.064),
            tri: cells(T1=0.066, T1_T1c_T2=0.050), f"{tri}-seed1": cells(T1=0.064, T1_T1c_T2=0.052),
            f"{tri}-c1x2": cells(T1=0.061, T1_T1c_T2=0.049), f"{tri}-no-c2": cells(T1=0.062, T1_T1c_T2=0.055)}
    result = mi.weight_variants({"patient07": fold, "patient19": {"only-T1": cells(T1=0.05)}})
    assert list(result["cells"]) == ["patient07"]  # no variant trained on patient19
    t1 = result["cells"]["patient07"]["T1"]
    assert t1["A"] == pytest.approx(0.062) and (t1["A_seeds"], t1["B_seeds"]) == (2, 2)
    assert t1["B"]["mse_brain"] == pytest.approx(0.065) and t1["B"]["gap_percent"] == pytest.approx(100 * 3 / 62)
    assert t1["c1x2"]["gap_percent"] == pytest.approx(-100 / 62) and t1["no-c2"]["gap_percent"] == pytest.approx(0)
    # all inputs: A is the tri-modal model itself; listed (what a variant pays there) but not counted
    every = result["cells"]["patient07"]["T1+T1c+T2"]
    assert every["A"] == pytest.approx(0.051) and every["no-c2"]["mse_brain"] == 0.055
    assert result["not_worse_than_A"] == {"B": {"cells": 1, "not_worse": 0}, "c1x2": {"cells": 1, "not_worse": 1},
                                          "no-c2": {"cells": 1, "not_worse": 1}}


def test_train_skips_finished_runs_resumes_interrupted_ones_and_counts_failures(tmp_path, monkeypatch):
    """The queue with a stand-in for ``python``: it records its arguments and finishes (or fails) the run."""
    monkeypatch.chdir(tmp_path)  # the configs' "out" is relative to the working directory
    schedule = mi.SCHEDULES["long"]
    configs = mi.write_configs(tmp_path / "configs", log=lambda _: None, schedule=schedule)
    finished, interrupted, failing = (load_config(configs[i]) for i in (1, 2, 3))
    (Path(finished.out) / finished.name).mkdir(parents=True)
    (Path(finished.out) / finished.name / "card.json").write_text("{}")
    Path(interrupted.out).mkdir(parents=True)
    (Path(interrupted.out) / "checkpoint.safetensors").write_text("")
    stand_in = tmp_path / "python"
    stand_in.write_text(f"""#!/bin/sh
echo "$@" >> {tmp_path / 'calls.txt'}
case "$*" in *{failing.name}.json*) echo boom; exit 3;; esac
""")
    stand_in.chmod(0o755)
    logged = []
    assert mi.train_all(schedule, jobs=2, folder=tmp_path / "configs", python=str(stand_in), log=logged.append) == 1
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert len(calls) == len(configs) - 1 and not any(f"{finished.name}.json" in c for c in calls)
    assert [c.endswith("--resume") for c in calls if f"{interrupted.name}.json" in c] == [True]
    assert sum(c.endswith("--resume") for c in calls) == 1
    assert all(c.startswith("-m training.train --config ") for c in calls)
    assert "boom" in (Path(failing.out) / "train.log").read_text()
    assert f"{finished.name}: finished, skipped" in logged
    assert any(m.startswith(f"{failing.name}: failed (exit 3)") for m in logged)
    with pytest.raises(ValueError, match="no config"):
        mi.train_all(schedule, folder=tmp_path / "nowhere", python=str(stand_in), log=logged.append)


def test_train_queue_goes_run_by_run_across_the_folds(tmp_path, monkeypatch):
    """An interrupted queue leaves whole rows (both folds of a run), most important run first."""
    monkeypatch.chdir(tmp_path)
    schedule = mi.SCHEDULES["long"]
    mi.write_configs(tmp_path / "configs", log=lambda _: None, schedule=schedule)
    stand_in = tmp_path / "python"
    stand_in.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'calls.txt'}\n")
    stand_in.chmod(0o755)
    assert mi.train_all(schedule, jobs=1, folder=tmp_path / "configs", python=str(stand_in), log=lambda _: None) == 0
    names = [Path(c.split("--config ")[1]).stem for c in (tmp_path / "calls.txt").read_text().splitlines()]
    expected = [f"mi-{fold}-{run.name}" for run in mi.run_names(schedule.tables) for fold in mi.MS_FOLDS]
    assert names == expected and names[:2] == ["mi-patient07-any-subset", "mi-patient19-any-subset"]
