"""The mixed-voxel-size experiment: its two recipes are valid, hold patient07 out and differ only in
spacing_mm; the degraded case is the BraTS case at 2 x 2 mm in-plane; the table renders."""

from __future__ import annotations

import pytest

from conftest import DATA, NO_DATA
from training.config import TrainConfig
from training.experiments import mixed_spacing as ms


def test_the_two_arms_differ_only_in_the_coarse_case_and_hold_the_subject_out(tmp_path):
    configs = {arm: TrainConfig.from_dict(ms.recipe(arm, tmp_path / arm)) for arm in ms.ARMS}
    varied = {"name", "description", "out", "data"}
    same = [{k: v for k, v in c.to_dict().items() if k not in varied} for c in configs.values()]
    assert same[0] == same[1] and same[0]["spacing_mm"] is None
    assert [c.data[1] for c in configs.values()] == [str((tmp_path / arm).resolve()) for arm in ms.ARMS]
    for config in configs.values():
        assert not any("patient07" in source for source in config.data)
        assert config.inputs == ms.INPUTS and config.outputs == [ms.TARGET] and config.validation_subjects == []
    other = TrainConfig.from_dict(ms.recipe("resampled", tmp_path / "coarse", seed=1))
    assert other.seed == 1 and other.out.endswith("resampled-seed1") and other.name != configs["resampled"].name


@pytest.mark.skipif(not DATA.is_dir(), reason=NO_DATA)
def test_the_coarse_case_is_the_brats_case_at_2_mm_in_plane_or_resampled_back(tmp_path):
    for spacing, size, grid in ((None, (120, 120, 155), (2.0, 2.0, 1.0)),
                                ([1.0, 1.0, 1.0], (240, 240, 155), (1.0, 1.0, 1.0))):
        case = ms.prepare_coarse_case(tmp_path / str(spacing), spacing)
        files = ms.discover([str(case)])[0]
        assert set(ms.BRATS_SUFFIXES) <= set(files.images)
        volume = ms.read_volume(files.images["T1"])
        assert volume.geometry.anatomical_spacing() == pytest.approx(grid)
        assert volume.geometry.size == size  # the 240 x 240 x 155 field of view kept


def test_the_table_has_a_row_per_run_and_a_mean_per_arm():
    metrics = {"ssim_brain": 0.6, "mse_brain": 0.05, "psnr_brain": 20.0, "lesion_ratio1_synthetic": 1.2,
               "lesion_ratio1_reference": 1.3}
    runs = [{"arm": arm, "seed": seed, "spacing_mm": spacing, "card_spacing_mm": [1.0, 1.0, 1.0], "metrics": metrics}
            for seed in (0, 1) for arm, spacing in ms.ARMS.items()]
    means = {arm: {"seeds": [0, 1], "ssim_brain": 0.6, "mse_brain": 0.05} for arm in ms.ARMS}
    text = ms.markdown({"runs": runs, "means": means, "versions": {"torch": "x"}}, "python -m x")
    assert "| own-voxels | None | 1 | [1.0, 1.0, 1.0] | 0.6000 | 0.0500 | 20.00 | 1.200 / 1.300 |" in text
    assert "| resampled | [0, 1] | 0.6000 | 0.0500 |" in text
