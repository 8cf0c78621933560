"""The thick-slice experiment: its recipes differ only in the thick-slice augmentation and hold the fold's
subject out; a thick input is blurred across its slices only and lands on the other input's grid; the
table renders."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from conftest import make_tiny_model
from MRSynthesisLib.volume import Geometry, Volume
from training.config import TrainConfig
from training.experiments import thick_slices as ts

LAS = (-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)


def test_the_two_arms_differ_only_in_the_thick_slice_augmentation_and_hold_the_subject_out():
    for held_out in ts.FOLDS:
        configs = {arm: TrainConfig.from_dict(ts.recipe(arm, held_out)) for arm in ts.ARMS}
        varied = {"name", "description", "out", "augment"}
        same = [{k: v for k, v in c.to_dict().items() if k not in varied} for c in configs.values()]
        assert same[0] == same[1]
        plain, thick = (configs[arm].augment for arm in ("plain", "thick"))
        assert plain.thick_slice_mm == 0 and thick.thick_slice_mm == ts.THICK["thick_slice_mm"]
        assert {**vars(thick), **{k: getattr(plain, k) for k in ts.THICK}} == vars(plain)
        for config in configs.values():
            assert not any(held_out in source for source in config.data) and len(config.data) == 2
            assert config.input_subsets == "random" and config.validation_subjects == []
    assert TrainConfig.from_dict(ts.recipe("thick", "patient07", seed=1)).out.endswith("thick-patient07-seed1")


def test_a_thick_input_is_blurred_across_its_slices_only_and_put_on_the_other_inputs_grid():
    grid = Geometry((24, 20, 30), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), LAS)  # ITK x, y, z; z runs inferior-superior
    z, y, x = np.indices(grid.shape)
    stripes = (1 + (z // 2) % 2 + (y // 2) % 2 + (x // 2) % 2).astype(np.float32)  # 2-voxel stripes along each axis
    volume = Volume(stripes, grid, "t2.nii.gz")
    axial = ts.thick(volume, "axial", 6.0, volume)
    assert axial.geometry == grid  # back on the given grid
    blur = lambda a, axis: float(np.abs(np.diff(a.array[4:-4, 4:-4, 4:-4], axis=axis)).mean())  # noqa: E731
    assert blur(axial, 0) < 0.25 * blur(volume, 0)  # across the axial slices (numpy axis 0 = z)
    assert blur(axial, 1) > 0.6 * blur(volume, 1) and blur(axial, 2) > 0.6 * blur(volume, 2)  # within them
    coronal = ts.thick(volume, "coronal", 6.0, volume)
    assert blur(coronal, 1) < 0.25 * blur(volume, 1) and blur(coronal, 0) > 0.6 * blur(volume, 0)


def test_the_table_pairs_the_arms_per_fold_and_averages_them():
    scores = {label: {"ssim_brain": 0.6, "mse_brain": 0.05, "lesion_ratio1_synthetic": 1.2,
                      "lesion_ratio1_reference": 1.4} for label, *_ in ts.CONDITIONS}
    thick = {label: {**s, "ssim_brain": 0.65} for label, s in scores.items()}
    runs = [{"arm": "plain", "held_out": "patient07", "seed": 0, "scores": scores},
            {"arm": "thick", "held_out": "patient07", "seed": 0, "scores": thick}]
    results = {"runs": runs, "versions": {"torch": "x"}, "bundled": {"model": "m", "scores": {"patient19": thick}},
               "means": {arm: {label: ts.means(runs, arm, label) for label, *_ in ts.CONDITIONS} for arm in ts.ARMS}}
    text = ts.markdown(results, "python -m x")
    assert "| patient07 | 0 | T1 + T2 axial 5 mm | 0.6000 | 0.6500 | 0.0500 | 0.0500 | 1.200 / 1.200 / 1.400 |" in text
    assert "| T1 alone | 0.6000 | 0.6500 | 0.0500 | 0.0500 |" in text
    assert results["means"]["thick"]["T2 alone"]["ssim_brain"] == pytest.approx(0.65)
    assert "| condition | patient19 |" in text and "| T1 + T2 coronal 5 mm | 0.6500 / 0.0500 |" in text


def test_scores_are_kept_for_the_weights_they_were_made_with(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(ts, "score_conditions", lambda folder, held_out: calls.append(folder) or {"T1 alone": {}})
    first = make_tiny_model(tmp_path / "run" / "model", seed=0)
    assert ts.cached_scores(first, "patient07") == {"T1 alone": {}} and len(calls) == 1
    assert ts.cached_scores(first, "patient07") == {"T1 alone": {}} and len(calls) == 1  # from scores.json
    shutil.rmtree(first)
    retrained = make_tiny_model(tmp_path / "run" / "model", seed=1)  # trained again: other weights
    ts.cached_scores(retrained, "patient07")
    assert len(calls) == 2


def test_a_degraded_copy_is_taken_only_for_one_of_the_inputs(tmp_path):
    """A degraded copy of a modality that is not among the inputs used to be dropped without a word, leaving
    that condition unmeasured; it is refused, and a copy of an input is what the model sees."""
    from conftest import make_subject
    from MRSynthesisLib.volume import read_volume
    from training.datasets import SubjectFiles
    from training.experiments.loso import Case, model_predict

    subject = make_subject(tmp_path / "s")
    case = Case("s", SubjectFiles("s", {"T1": subject["T1"], "T2": subject["T2"]}), {}, None, None, None, None)
    folder = make_tiny_model(tmp_path / "model")
    t2 = read_volume(subject["T2"])
    with pytest.raises(ValueError, match="replaced T2: not among the inputs T1"):
        model_predict(folder, case, ["T1"], "FLAIR", False, replaced={"T2": t2})
    plain = model_predict(folder, case, ["T1", "T2"], "FLAIR", False)
    assert np.array_equal(model_predict(folder, case, ["T1", "T2"], "FLAIR", False, replaced={"T2": t2}), plain)
    darker = t2.with_array(np.sqrt(t2.array))  # another contrast in the T2 slot: another result
    assert not np.allclose(model_predict(folder, case, ["T1", "T2"], "FLAIR", False, replaced={"T2": darker}), plain)
