"""Tests for MRSynthesisLib.preprocessing: normalisation, brain masks, crop/pad."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from MRSynthesisLib.preprocessing import (
    SCHEMES,
    CropPad,
    IntensityStats,
    NormalisationSpec,
    bounding_box,
    denormalise,
    foreground_mask,
    normalise,
    plan_crop_pad,
    reference_stats,
    validate_mask,
)

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


# --- normalisation: each scheme by hand ------------------------------------------------

def test_mean_in_brain_hand_worked():
    out, stats = normalise(np.array([0.0, 2.0, 4.0]), NormalisationSpec("mean_in_brain"), np.array([0, 1, 1]))
    np.testing.assert_allclose(out, [0.0, 2 / 3, 4 / 3], rtol=1e-6)
    assert out.dtype == np.float32
    assert stats == IntensityStats(offset=0.0, scale=3.0)


def test_mean_in_brain_zeroes_outside_mask():
    out, stats = normalise(np.array([5.0, 2.0, 4.0]), NormalisationSpec("mean_in_brain"), np.array([0, 1, 1]))
    np.testing.assert_allclose(out, [0.0, 2 / 3, 4 / 3], rtol=1e-6)
    assert stats.scale == 3.0


def test_three_mean_nonzero_hand_worked():
    # Non-zero voxels in the mask are 2 and 4 (mean 3): divide by 9.
    out, stats = normalise(np.array([0.0, 2.0, 4.0]), NormalisationSpec("three_mean_nonzero"), np.ones(3, bool))
    np.testing.assert_allclose(out, [0.0, 2 / 9, 4 / 9], rtol=1e-6)
    assert stats == IntensityStats(offset=0.0, scale=9.0)


def test_zscore_hand_worked():
    # Brain voxels 2 and 4: mean 3, population std 1; background set to 0.
    out, stats = normalise(np.array([0.0, 2.0, 4.0]), NormalisationSpec("zscore"), np.array([False, True, True]))
    np.testing.assert_allclose(out, [0.0, -1.0, 1.0], rtol=1e-6)
    assert stats == IntensityStats(offset=3.0, scale=1.0)


def test_none_keeps_brain_and_zeroes_background():
    out, stats = normalise(np.array([7.0, 2.0, 4.0]), NormalisationSpec("none"), np.array([0, 1, 1]))
    np.testing.assert_array_equal(out, [0.0, 2.0, 4.0])
    assert stats == IntensityStats(offset=0.0, scale=1.0)


def test_int16_input_gives_float32():
    image = np.array([[0, 100], [200, 300]], dtype=np.int16)
    out, stats = normalise(image, NormalisationSpec("mean_in_brain"), image > 0)
    assert out.dtype == np.float32
    assert stats.scale == 200.0
    np.testing.assert_allclose(out, [[0, 0.5], [1.0, 1.5]], rtol=1e-6)


def test_percentile_clipping_inside_mask():
    image = np.arange(101, dtype=np.float64)  # brain values 0..100; background 1000 is ignored
    image = np.concatenate([image, [1000.0]])
    mask = np.ones(image.shape, bool)
    mask[-1] = False
    out, stats = normalise(image, NormalisationSpec("none", clip_percentiles=(10, 90)), mask)
    assert stats.clip == (10.0, 90.0)
    assert out[:101].min() == 10.0 and out[:101].max() == 90.0
    assert out[-1] == 0.0


def test_clipping_before_mean():
    image = np.array([1.0, 1.0, 1.0, 1.0, 101.0])
    spec = NormalisationSpec("mean_in_brain", clip_percentiles=(0, 75))
    out, stats = normalise(image, spec, np.ones(5, bool))
    assert stats.clip == (1.0, 1.0)
    assert stats.scale == 1.0
    np.testing.assert_array_equal(out, np.ones(5))


@pytest.mark.parametrize("scheme", list(SCHEMES))
@pytest.mark.parametrize("clip", [None, (1.0, 99.0)])
def test_normalise_denormalise_round_trip(scheme, clip):
    rng = np.random.default_rng(0)
    image = rng.gamma(4.0, 100.0, size=(6, 7, 8))
    mask = np.zeros(image.shape, bool)
    mask[1:5, 1:6, 2:7] = True
    image[~mask] = 0.0
    out, stats = normalise(image, NormalisationSpec(scheme, clip), mask)
    assert np.all(out[~mask] == 0)
    back = denormalise(out, stats, mask)
    expected = image if clip is None else np.clip(image, *stats.clip)
    expected = np.where(mask, expected, 0.0)
    np.testing.assert_allclose(back, expected, rtol=1e-5, atol=1e-3)
    assert back.dtype == np.float32


def test_zscore_gives_zero_mean_unit_std_in_brain():
    rng = np.random.default_rng(1)
    image = rng.normal(300.0, 40.0, size=(10, 10, 10))
    mask = np.zeros(image.shape, bool)
    mask[2:8, 2:8, 2:8] = True
    out, _ = normalise(image, NormalisationSpec("zscore"), mask)
    assert abs(out[mask].mean()) < 1e-5
    assert abs(out[mask].std() - 1.0) < 1e-5


def test_denormalise_without_mask_keeps_offset_background():
    back = denormalise(np.zeros(3, np.float32), IntensityStats(offset=5.0, scale=2.0))
    np.testing.assert_array_equal(back, [5.0, 5.0, 5.0])
    back = denormalise(np.zeros(3, np.float32), IntensityStats(offset=5.0, scale=2.0), np.array([0, 1, 0]))
    np.testing.assert_array_equal(back, [0.0, 5.0, 0.0])


def test_normalise_errors():
    mask = np.array([0, 1, 1])
    with pytest.raises(ValueError, match="mean intensity inside the brain mask is 0"):
        normalise(np.zeros(3), NormalisationSpec("mean_in_brain"), mask)
    with pytest.raises(ValueError, match="standard deviation"):
        normalise(np.array([0.0, 2.0, 2.0]), NormalisationSpec("zscore"), mask)
    with pytest.raises(ValueError, match="no non-zero voxels"):
        normalise(np.array([1.0, 0.0, 0.0]), NormalisationSpec("three_mean_nonzero"), mask)
    with pytest.raises(ValueError, match="brain_mask has shape"):
        normalise(np.ones(4), NormalisationSpec("zscore"), mask)
    with pytest.raises(ValueError, match="NaN"):
        normalise(np.array([0.0, np.nan, 1.0]), NormalisationSpec("zscore"), mask)
    with pytest.raises(ValueError, match="NormalisationSpec"):
        normalise(np.ones(3), {"scheme": "zscore"}, mask)


# --- spec and stats dictionaries --------------------------------------------------------

def test_spec_dict_round_trip_through_json():
    for spec in (NormalisationSpec("zscore"), NormalisationSpec("mean_in_brain", (0.5, 99.5))):
        data = json.loads(json.dumps(spec.to_dict()))
        assert NormalisationSpec.from_dict(data) == spec
    assert NormalisationSpec("zscore", [1, 99]).to_dict() == {"scheme": "zscore", "clip_percentiles": [1.0, 99.0]}
    assert NormalisationSpec("none").to_dict() == {"scheme": "none", "clip_percentiles": None}


def test_spec_from_dict_errors():
    with pytest.raises(ValueError, match="valid schemes are mean_in_brain, three_mean_nonzero, zscore, none"):
        NormalisationSpec.from_dict({"scheme": "minmax"})
    with pytest.raises(ValueError, match="unknown key.*clip.*valid keys are scheme, clip_percentiles"):
        NormalisationSpec.from_dict({"scheme": "zscore", "clip": [1, 99]})
    with pytest.raises(ValueError, match="missing key.*scheme"):
        NormalisationSpec.from_dict({"clip_percentiles": None})
    with pytest.raises(ValueError, match="0 <= low < high <= 100"):
        NormalisationSpec.from_dict({"scheme": "zscore", "clip_percentiles": [99, 1]})
    with pytest.raises(ValueError, match="pair"):
        NormalisationSpec.from_dict({"scheme": "zscore", "clip_percentiles": [1, 2, 3]})
    with pytest.raises(ValueError, match="mapping"):
        NormalisationSpec.from_dict(["zscore"])


def test_stats_dict_round_trip_and_card_form():
    stats = IntensityStats(offset=1.5, scale=412.3, clip=(0.0, 900.0))
    assert IntensityStats.from_dict(json.loads(json.dumps(stats.to_dict()))) == stats
    card = json.loads('{"FLAIR": {"offset": 0.0, "scale": 412.3}}')
    assert IntensityStats.from_dict(card["FLAIR"]) == IntensityStats(0.0, 412.3)


def test_stats_from_dict_errors():
    with pytest.raises(ValueError, match="unknown key.*mean.*valid keys are offset, scale, clip"):
        IntensityStats.from_dict({"offset": 0, "scale": 1, "mean": 2})
    with pytest.raises(ValueError, match="missing key.*scale"):
        IntensityStats.from_dict({"offset": 0})
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        IntensityStats.from_dict({"offset": 0, "scale": 0})
    with pytest.raises(ValueError, match="numbers"):
        IntensityStats.from_dict({"offset": "a", "scale": 1})


def test_reference_stats_is_median_of_volumes():
    mask = np.ones(4, bool)
    images = [np.full(4, 10.0), np.full(4, 20.0), np.full(4, 1000.0)]  # one odd scan
    stats = reference_stats(images, [mask] * 3, NormalisationSpec("mean_in_brain"))
    assert stats == IntensityStats(offset=0.0, scale=20.0)
    rng = np.random.default_rng(2)
    images = [rng.normal(m, s, 50) for m, s in ((100, 10), (200, 20), (300, 30))]
    stats = reference_stats(images, [np.ones(50, bool)] * 3, NormalisationSpec("zscore", (5, 95)))
    per = [normalise(im, NormalisationSpec("zscore", (5, 95)), np.ones(50, bool))[1] for im in images]
    assert stats.offset == pytest.approx(np.median([p.offset for p in per]))
    assert stats.scale == pytest.approx(np.median([p.scale for p in per]))
    assert stats.clip == pytest.approx((np.median([p.clip[0] for p in per]), np.median([p.clip[1] for p in per])))


def test_reference_stats_errors():
    spec = NormalisationSpec("zscore")
    with pytest.raises(ValueError, match="at least one"):
        reference_stats([], [], spec)
    with pytest.raises(ValueError, match="2 images but 1 masks"):
        reference_stats([np.arange(3.0)] * 2, [np.ones(3, bool)], spec)


# --- brain masks -----------------------------------------------------------------------

def _phantom(dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """A noisy sphere with a dark cavity, plus a separate bright speck; returns (image, expected mask)."""
    z, y, x = np.ogrid[:32, :32, :32]
    sphere = (z - 16) ** 2 + (y - 16) ** 2 + (x - 16) ** 2 <= 10 ** 2
    cavity = (z - 16) ** 2 + (y - 16) ** 2 + (x - 16) ** 2 <= 3 ** 2
    rng = np.random.default_rng(3)
    image = np.where(sphere, rng.normal(800.0, 50.0, sphere.shape), 0.0)
    image[cavity] = 0.0
    image[~sphere] = np.abs(rng.normal(0.0, 1.0, (~sphere).sum()))  # background noise well below 1 % of p99
    image[2, 2, 2] = 900.0  # a speck, not connected to the sphere
    return image.astype(dtype), sphere


def test_foreground_mask_phantom():
    image, expected = _phantom()
    mask = foreground_mask([image])
    assert mask.dtype == bool
    assert ndi.label(mask)[1] == 1
    assert not mask[2, 2, 2]
    assert mask[16, 16, 16]  # the cavity is filled
    np.testing.assert_array_equal(mask, expected)


def test_foreground_mask_int16_and_union():
    image, expected = _phantom(np.float64)
    as_int = np.round(image).astype(np.int16)
    np.testing.assert_array_equal(foreground_mask([as_int]), expected)
    half = as_int.copy()
    half[:16] = 0  # a second input that only covers half the brain leaves the union unchanged
    np.testing.assert_array_equal(foreground_mask([half, as_int]), expected)


def test_foreground_mask_2d():
    image = np.zeros((9, 9))
    image[2:7, 2:7] = 5.0
    image[4, 4] = 0.0
    expected = np.zeros((9, 9), bool)
    expected[2:7, 2:7] = True
    np.testing.assert_array_equal(foreground_mask([image]), expected)


def test_foreground_mask_errors():
    with pytest.raises(ValueError, match="sequence"):
        foreground_mask(np.ones((3, 3)))
    with pytest.raises(ValueError, match="at least one"):
        foreground_mask([])
    with pytest.raises(ValueError, match="must match"):
        foreground_mask([np.ones((3, 3)), np.ones((3, 4))])
    with pytest.raises(ValueError, match="no foreground"):
        foreground_mask([np.zeros((3, 3))])
    with pytest.raises(ValueError, match="NaN"):
        foreground_mask([np.full((3, 3), np.nan)])


def test_validate_mask():
    assert validate_mask(np.array([0, 1, 1], np.uint8), (3,), "m").tolist() == [False, True, True]
    assert validate_mask(np.array([0.0, 1.0]), (2,), "m").dtype == bool
    assert validate_mask(np.array([False, True]), (2,), "m").tolist() == [False, True]
    with pytest.raises(ValueError, match=r"brain mask has shape \(2,\), expected \(3,\)"):
        validate_mask(np.array([0, 1]), (3,), "brain mask")
    with pytest.raises(ValueError, match="lesion_mask must be binary.*0, 1, 2.*label map"):
        validate_mask(np.array([0, 1, 2]), (3,), "lesion_mask")
    with pytest.raises(ValueError, match="m must be binary.*0.5"):
        validate_mask(np.array([0, 0.5]), (2,), "m")
    with pytest.raises(ValueError, match="m is empty"):
        validate_mask(np.zeros(3), (3,), "m")
    with pytest.raises(ValueError, match="m is empty"):
        validate_mask(np.zeros(3, bool), (3,), "m")
    with pytest.raises(ValueError, match="dtype"):
        validate_mask(np.array(["0", "1"]), (2,), "m")


# --- bounding box and crop/pad ---------------------------------------------------------

def test_bounding_box():
    mask = np.zeros((10, 12), bool)
    mask[3:5, 4:9] = True
    assert bounding_box(mask) == (slice(3, 5), slice(4, 9))
    assert bounding_box(mask, margin=4) == (slice(0, 9), slice(0, 12))
    with pytest.raises(ValueError, match="margin"):
        bounding_box(mask, margin=-1)
    with pytest.raises(ValueError, match="empty"):
        bounding_box(np.zeros((3, 3)))


def test_plan_without_bbox_is_identity_round_trip():
    x = np.random.default_rng(4).normal(size=(5, 7, 9)).astype(np.float32)
    plan = plan_crop_pad(x.shape, 4)
    assert plan.shape == (8, 8, 12)
    assert plan.pad_before == (1, 0, 1) and plan.pad_after == (2, 1, 2)
    y = plan.apply(x)
    assert y.shape == plan.shape and y.dtype == x.dtype
    assert y.sum() == pytest.approx(x.sum(), rel=1e-5)  # constant padding adds zeros
    np.testing.assert_array_equal(plan.invert(y), x)


def test_plan_already_multiple_is_noop():
    x = np.arange(64.0).reshape(8, 8)
    plan = plan_crop_pad(x.shape, 8)
    np.testing.assert_array_equal(plan.apply(x), x)


def test_crop_pad_with_bbox_and_margin():
    x = np.arange(1, 1 + 11 * 13 * 6, dtype=np.float64).reshape(11, 13, 6)
    bbox = (slice(2, 7), slice(3, 4), slice(0, 6))
    plan = plan_crop_pad(x.shape, (4, 8, 1), bbox=bbox, margin=1)
    assert plan.crop == (slice(1, 8), slice(2, 5), slice(0, 6))
    assert plan.shape == (8, 8, 6)
    y = plan.apply(x)
    restored = plan.invert(y, fill=-1.0)
    inside = np.zeros(x.shape, bool)
    inside[plan.crop] = True
    np.testing.assert_array_equal(restored[inside], x[inside])
    assert np.all(restored[~inside] == -1.0)


def test_crop_pad_edge_mode_and_leading_axes():
    x = np.arange(2 * 3 * 5, dtype=np.int16).reshape(2, 3, 5)  # (channel, H, W)
    plan = plan_crop_pad((3, 5), (4, 4), mode="edge")
    y = plan.apply(x)
    assert y.shape == (2, 4, 8) and y.dtype == np.int16
    np.testing.assert_array_equal(y[:, :, 0], y[:, :, 1])  # left edge repeated
    np.testing.assert_array_equal(y[:, -1, :], y[:, -2, :])  # bottom edge repeated
    np.testing.assert_array_equal(plan.invert(y), x)


def test_crop_pad_bool_masks_round_trip():
    mask = np.zeros((7, 9), bool)
    mask[2:5, 3:7] = True
    plan = plan_crop_pad(mask.shape, 4, bbox=bounding_box(mask))
    np.testing.assert_array_equal(plan.invert(plan.apply(mask)), mask)


def test_crop_pad_random_round_trips():
    rng = np.random.default_rng(5)
    for _ in range(200):
        ndim = int(rng.integers(1, 5))
        shape = tuple(int(n) for n in rng.integers(1, 12, ndim))
        multiple = [int(m) for m in rng.integers(1, 9, ndim)]
        lo = [int(rng.integers(0, n)) for n in shape]
        bbox = tuple(slice(a, int(rng.integers(a + 1, n + 1))) for a, n in zip(lo, shape))
        _check_round_trip(shape, multiple, bbox, int(rng.integers(0, 3)), rng)


def _check_round_trip(shape, multiple, bbox, margin, rng):
    x = rng.normal(size=shape) + 10.0
    for box in (None, bbox):
        plan = plan_crop_pad(shape, multiple, bbox=box, margin=margin)
        y = plan.apply(x)
        assert all(n % m == 0 for n, m in zip(y.shape, multiple))
        restored = plan.invert(y)
        if box is None:
            np.testing.assert_array_equal(restored, x)
        else:
            inside = np.zeros(shape, bool)
            inside[plan.crop] = True
            np.testing.assert_array_equal(restored[inside], x[inside])
            assert np.all(restored[~inside] == 0)
            for s, b, n in zip(plan.crop, box, shape):
                assert s.start == max(b.start - margin, 0) and s.stop == min(b.stop + margin, n)


def test_crop_pad_round_trip_property():
    pytest.importorskip("hypothesis", reason="hypothesis is not installed in this environment")
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @st.composite
    def cases(draw):
        shape = tuple(draw(st.lists(st.integers(1, 10), min_size=1, max_size=4)))
        multiple = [draw(st.integers(1, 8)) for _ in shape]
        starts = [draw(st.integers(0, n - 1)) for n in shape]
        bbox = tuple(slice(a, draw(st.integers(a + 1, n))) for a, n in zip(starts, shape))
        return shape, multiple, bbox, draw(st.integers(0, 3)), draw(st.integers(0, 2**32 - 1))

    @settings(max_examples=200, deadline=None)
    @given(cases())
    def check(case):
        shape, multiple, bbox, margin, seed = case
        _check_round_trip(shape, multiple, bbox, margin, np.random.default_rng(seed))

    check()


def test_crop_pad_errors():
    with pytest.raises(ValueError, match="multiple"):
        plan_crop_pad((4, 4), 0)
    with pytest.raises(ValueError, match="one per axis"):
        plan_crop_pad((4, 4), (2, 2, 2))
    with pytest.raises(ValueError, match="shape"):
        plan_crop_pad((4, 0), 2)
    with pytest.raises(ValueError, match="tuple of 2 slices"):
        plan_crop_pad((4, 4), 2, bbox=(slice(0, 2),))
    with pytest.raises(ValueError, match="non-empty"):
        plan_crop_pad((4, 4), 2, bbox=(slice(2, 2), slice(0, 4)))
    with pytest.raises(ValueError, match="non-empty with step 1"):
        plan_crop_pad((4, 4), 2, bbox=(slice(0, 4, 2), slice(0, 4)))
    with pytest.raises(ValueError, match="margin"):
        plan_crop_pad((4, 4), 2, margin=-1)
    with pytest.raises(ValueError, match="valid modes are constant, edge"):
        plan_crop_pad((4, 4), 2, mode="reflect")
    plan = plan_crop_pad((3, 5), 4)
    with pytest.raises(ValueError, match=r"must end with shape \(3, 5\)"):
        plan.apply(np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"must end with shape \(4, 8\)"):
        plan.invert(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="outside"):
        CropPad((4,), (0,), (5,), (0,), (0,))


# --- real data -------------------------------------------------------------------------

@pytest.mark.skipif(not DATA.is_dir(), reason=f"real MRI data folder {DATA} is not available")
def test_real_data_masks_and_mean_in_brain():
    sitk = pytest.importorskip("SimpleITK")

    def read(relative: str) -> np.ndarray:
        return sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / relative)))

    # MS (float32, N4-corrected, background exactly 0, some negative voxels inside the brain)
    ms_t1 = read("ms/patient07/T1.nii.gz")
    ms_mask = foreground_mask([ms_t1])
    assert 1_000_000 <= ms_mask.sum() <= 1_300_000  # 1.13 M voxels of 1 mm: a plausible brain
    nonzero = ms_t1 != 0
    assert (ms_mask & nonzero).sum() >= 0.99 * nonzero.sum()
    out, stats = normalise(ms_t1, NormalisationSpec("mean_in_brain"), ms_mask)
    assert out[ms_mask].astype(np.float64).mean() == pytest.approx(1.0, abs=1e-4)
    assert np.all(out[~ms_mask] == 0)
    assert stats.scale > 0

    # BraTS (int16)
    brats_t1 = read("brats/BraTS-GLI-00001-000/t1n.nii.gz")
    assert brats_t1.dtype == np.int16
    brats_mask = foreground_mask([brats_t1])
    assert 1_400_000 <= brats_mask.sum() <= 1_900_000  # 1.64 M voxels
    assert (brats_mask & (brats_t1 != 0)).sum() >= 0.99 * (brats_t1 != 0).sum()
    out, _ = normalise(brats_t1, NormalisationSpec("mean_in_brain"), brats_mask)
    assert out[brats_mask].astype(np.float64).mean() == pytest.approx(1.0, abs=1e-4)
