"""Tests for MRSynthesisLib.metrics: hand-worked cases, scikit-image as an independent reference."""

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from MRSynthesisLib import metrics as m

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def smooth_volume(shape, seed, sigma=2.0):
    """Smooth random test image with values of order 1."""
    rng = np.random.default_rng(seed)
    return ndi.gaussian_filter(rng.normal(size=shape), sigma) * 10 + 5


def skimage_ssim(synthetic, reference, data_range):
    return structural_similarity(
        synthetic,
        reference,
        data_range=data_range,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        full=True,
    )


# --- MSE / MAE / PSNR / data range -------------------------------------------------------


def test_mse_mae_hand_worked():
    synthetic = np.array([1.0, 2.0, 3.0, 4.0])
    reference = np.ones(4)
    assert m.mse(synthetic, reference) == pytest.approx(14 / 4)  # errors 0, 1, 2, 3
    assert m.mae(synthetic, reference) == pytest.approx(6 / 4)
    mask = np.array([False, True, True, False])
    assert m.mse(synthetic, reference, mask) == pytest.approx((1 + 4) / 2)
    assert m.mae(synthetic, reference, mask) == pytest.approx((1 + 2) / 2)


def test_psnr_hand_worked_and_whole_volume_range():
    reference = np.zeros((4, 4, 4))
    reference[0, 0, 0] = 10.0  # range 10
    synthetic = reference + 1.0  # MSE 1 everywhere
    assert m.data_range_of(reference) == 10.0
    assert m.psnr(synthetic, reference) == pytest.approx(20.0)
    assert m.psnr(synthetic, reference, data_range=100.0) == pytest.approx(40.0)
    # In-mask PSNR keeps the whole-volume range even where the masked reference is constant.
    mask = np.zeros_like(reference, dtype=bool)
    mask[2:, 2:, 2:] = True
    assert m.psnr(synthetic, reference, mask) == pytest.approx(20.0)
    assert m.data_range_of(reference, mask=~mask) == 10.0
    assert m.psnr(reference, reference) == math.inf


def test_mse_psnr_match_skimage():
    reference = smooth_volume((12, 14, 16), seed=0)
    synthetic = reference + np.random.default_rng(1).normal(scale=0.3, size=reference.shape)
    data_range = m.data_range_of(reference)
    assert m.mse(synthetic, reference) == pytest.approx(mean_squared_error(reference, synthetic))
    expected = peak_signal_noise_ratio(reference, synthetic, data_range=data_range)
    assert m.psnr(synthetic, reference) == pytest.approx(expected)


# --- SSIM ------------------------------------------------------------------------------


def test_ssim_hand_worked_constant_images():
    # Zero variances: SSIM reduces to the luminance term (2ab + C1) / (a^2 + b^2 + C1).
    synthetic, reference = np.full((6, 6, 6), 0.5), np.full((6, 6, 6), 0.25)
    c1 = (0.01 * 1.0) ** 2
    expected = (2 * 0.5 * 0.25 + c1) / (0.5**2 + 0.25**2 + c1)
    np.testing.assert_allclose(m.ssim_map(synthetic, reference, 1.0), expected)
    assert m.ssim(synthetic, reference, data_range=1.0) == pytest.approx(expected)
    volume = smooth_volume((8, 8, 8), seed=2)
    assert m.ssim(volume, volume) == pytest.approx(1.0)


@pytest.mark.parametrize("shape", [(40, 36), (20, 24, 22)])
def test_ssim_matches_skimage(shape):
    reference = smooth_volume(shape, seed=3)
    synthetic = 0.9 * reference + np.random.default_rng(4).normal(scale=0.5, size=shape)
    data_range = m.data_range_of(reference)
    expected_mean, expected_map = skimage_ssim(synthetic, reference, data_range)
    ours = m.ssim_map(synthetic, reference, data_range)
    # Same 'reflect' borders, so the maps agree everywhere, not only in the interior.
    np.testing.assert_allclose(ours, expected_map, rtol=0, atol=1e-10)
    pad = 5  # skimage crops the 11-voxel window radius before averaging
    assert ours[(slice(pad, -pad),) * len(shape)].mean() == pytest.approx(expected_mean, abs=1e-10)
    assert m.ssim(synthetic, reference) == pytest.approx(ours.mean())


def test_ssim_mask_averages_the_full_map():
    reference = smooth_volume((16, 16, 16), seed=5)
    synthetic = reference + np.random.default_rng(6).normal(size=reference.shape)
    mask = np.zeros(reference.shape, dtype=bool)
    mask[4:12, 3:9, 5:15] = True
    full = m.ssim_map(synthetic, reference, m.data_range_of(reference))
    assert m.ssim(synthetic, reference, mask) == pytest.approx(full[mask].mean())


# --- SNR -------------------------------------------------------------------------------


def test_snr_hand_worked():
    reference = np.array([2.0, 4.0, 0.0, 0.0])
    synthetic = reference + np.array([1.0, -1.0, 5.0, 5.0])
    brain = reference > 0
    # Reference mean over the brain is 3 and MSE over the brain is 1: 10 log10(9).
    assert m.snr(synthetic, reference, brain) == pytest.approx(10 * math.log10(9))
    # Whole volume: mean 1.5, MSE (1 + 1 + 25 + 25) / 4 = 13.
    assert m.snr(synthetic, reference) == pytest.approx(10 * math.log10(1.5**2 / 13))
    # Scale invariant, as the paper stresses.
    assert m.snr(7 * synthetic, 7 * reference, brain) == pytest.approx(10 * math.log10(9))
    assert m.snr(reference, reference, brain) == math.inf


# --- lesion ratios and white matter ----------------------------------------------------


def lesion_phantom():
    """Single-voxel lesion (3) in a 21^3 NAWM cube: ring within 5 voxels = 2, rest = 1."""
    image = np.full((31, 31, 31), 100.0)  # outside NAWM: must not matter
    nawm = np.zeros(image.shape, dtype=bool)
    nawm[5:26, 5:26, 5:26] = True
    image[nawm] = 1.0
    z, y, x = np.indices(image.shape) - 15
    image[(z**2 + y**2 + x**2 <= 25) & nawm] = 2.0
    lesion = np.zeros(image.shape, dtype=bool)
    lesion[15, 15, 15] = True
    image[lesion] = 3.0
    return image, lesion, nawm


def test_lesion_ratios_hand_worked():
    image, lesion, nawm = lesion_phantom()
    ratios = m.lesion_ratios(image, lesion, nawm)
    # A radius-5 Euclidean ball holds 515 voxels (514 besides the lesion; a 6-connected
    # diamond would hold 231), and NAWM is the 21^3 cube minus the lesion voxel.
    n_nawm, n_ring = 21**3 - 1, 514
    nawm_mean = (2 * n_ring + 1 * (n_nawm - n_ring)) / n_nawm
    assert ratios["ratio1"] == pytest.approx(3 / nawm_mean)
    assert ratios["ratio2"] == pytest.approx(3 / 2)


def test_lesion_ratios_errors():
    image, lesion, nawm = lesion_phantom()
    with pytest.raises(ValueError, match="lesion_mask is empty"):
        m.lesion_ratios(image, np.zeros_like(lesion), nawm)
    with pytest.raises(ValueError, match="NAWM is empty"):
        m.lesion_ratios(image, lesion, lesion)
    far = np.zeros_like(lesion)
    far[0, 0, 0] = True
    with pytest.raises(ValueError, match="no NAWM within 5 voxels"):
        m.lesion_ratios(image, far, nawm)
    with pytest.raises(ValueError, match="shape"):
        m.lesion_ratios(image[1:], lesion, nawm)
    with pytest.raises(ValueError, match="surround_voxels"):
        m.lesion_ratios(image, lesion, nawm, surround_voxels=0)


def test_white_matter_mask_three_class_phantom():
    rng = np.random.default_rng(7)
    shape = (30, 32, 32)
    z, y, x = np.indices(shape)
    brain = (z - 15) ** 2 + (y - 16) ** 2 + (x - 16) ** 2 <= 13**2
    wm = brain & (z >= 20)
    gm = brain & (z >= 10) & ~wm
    t1 = np.zeros(shape)  # background 0 must not count as a class
    t1[brain] = 20.0  # CSF
    t1[gm] = 60.0
    t1[wm] = 100.0
    t1[brain] += rng.normal(scale=3.0, size=int(brain.sum()))
    result = m.white_matter_mask(t1, brain)
    assert result.dtype == bool
    np.testing.assert_array_equal(result, wm)


# --- off-plane consistency -------------------------------------------------------------


def parabola_volumes(slice_axis):
    """reference = k^2 along slice_axis; synthetic adds slice-wise jitter (-1)^k."""
    k = np.arange(10.0).reshape(-1, 1, 1)
    reference = np.broadcast_to(k**2, (10, 6, 7)).copy()
    synthetic = reference + (-1.0) ** k
    return np.moveaxis(synthetic, 0, slice_axis), np.moveaxis(reference, 0, slice_axis)


@pytest.mark.parametrize("slice_axis", [0, 1, 2])
def test_off_plane_hand_worked_roughness_and_profile(slice_axis):
    synthetic, reference = parabola_volumes(slice_axis)
    result = m.off_plane_consistency(synthetic, reference, slice_axis=slice_axis)
    others = [a for a in range(3) if a != slice_axis]
    assert set(result) == {f"ssim_axis{a}" for a in others} | {
        "profile_correlation",
        "profile_mae",
        "roughness_ratio",
    }
    # Second differences: reference 2 everywhere, synthetic 2 - 4(-1)^k = 6, -2, 6, ... -> mean 4.
    assert result["roughness_ratio"] == pytest.approx(2.0)
    k = np.arange(10.0)
    assert result["profile_mae"] == pytest.approx(1.0)
    expected = np.corrcoef(k**2 + (-1.0) ** k, k**2)[0, 1]
    assert result["profile_correlation"] == pytest.approx(expected)


def test_off_plane_identical_and_offset():
    reference = smooth_volume((12, 14, 16), seed=8)
    same = m.off_plane_consistency(reference, reference)
    assert same["ssim_axis1"] == pytest.approx(1.0)
    assert same["ssim_axis2"] == pytest.approx(1.0)
    assert same["profile_correlation"] == pytest.approx(1.0)
    assert same["profile_mae"] == 0.0
    assert same["roughness_ratio"] == pytest.approx(1.0)
    shifted = m.off_plane_consistency(reference + 5.0, reference)
    assert shifted["profile_correlation"] == pytest.approx(1.0)
    assert shifted["profile_mae"] == pytest.approx(5.0)
    assert shifted["roughness_ratio"] == pytest.approx(1.0)


def test_off_plane_striped_vs_smooth_and_skimage_slices():
    reference = smooth_volume((16, 24, 20), seed=9)
    k = np.arange(16.0).reshape(-1, 1, 1)
    striped = reference + 0.5 * reference.std() * (-1.0) ** k  # slice-wise jitter along axis 0
    smooth_error = reference + 0.5 * reference.std()  # same MSE, no stripes
    assert m.mse(striped, reference) == pytest.approx(m.mse(smooth_error, reference))
    s = m.off_plane_consistency(striped, reference, slice_axis=0)
    c = m.off_plane_consistency(smooth_error, reference, slice_axis=0)
    assert s["roughness_ratio"] > 2.0 and c["roughness_ratio"] == pytest.approx(1.0)
    assert s["ssim_axis1"] < c["ssim_axis1"] and s["ssim_axis2"] < c["ssim_axis2"]
    # Each off-plane score is the mean of skimage's 2D maps over all slices of that plane.
    data_range = m.data_range_of(reference)
    for axis in (1, 2):
        maps = [
            skimage_ssim(np.take(striped, i, axis), np.take(reference, i, axis), data_range)[1]
            for i in range(reference.shape[axis])
        ]
        assert s[f"ssim_axis{axis}"] == pytest.approx(np.mean(maps), abs=1e-10)


def test_off_plane_mask_skips_empty_slices():
    synthetic, reference = parabola_volumes(0)
    mask = np.zeros(reference.shape, dtype=bool)
    mask[2:8, 1:5, 1:6] = True
    result = m.off_plane_consistency(synthetic, reference, mask)
    assert result["profile_mae"] == pytest.approx(1.0)  # slices 2..7 only
    assert result["roughness_ratio"] == pytest.approx(2.0)  # k = 3..6: 2 each of 6 and 2


def test_off_plane_errors():
    reference = smooth_volume((6, 8, 8), seed=10)
    with pytest.raises(ValueError, match="3D"):
        m.off_plane_consistency(reference[0], reference[0])
    with pytest.raises(ValueError, match="slice_axis"):
        m.off_plane_consistency(reference, reference, slice_axis=3)
    with pytest.raises(ValueError, match="at least 3 slices"):
        m.off_plane_consistency(reference[:2], reference[:2])
    flat = np.broadcast_to(np.arange(6.0).reshape(-1, 1, 1), reference.shape)
    with pytest.raises(ValueError, match="zero second difference"):
        m.off_plane_consistency(reference, flat)


# --- validation, compute_all, table ----------------------------------------------------


def test_input_errors():
    a = np.ones((4, 4, 4))
    with pytest.raises(ValueError, match="shape mismatch"):
        m.mse(a, np.ones((4, 4, 5)))
    with pytest.raises(ValueError, match="mask is empty"):
        m.mae(a, a, np.zeros(a.shape, dtype=bool))
    with pytest.raises(ValueError, match="mask shape"):
        m.ssim(a, a, np.ones((4, 4), dtype=bool))
    with pytest.raises(ValueError, match="data range is zero"):
        m.psnr(a + 1, a)
    with pytest.raises(ValueError, match="data_range must be positive"):
        m.ssim(a, a, data_range=0.0)
    with pytest.raises(ValueError, match="empty"):
        m.mse(np.array([]), np.array([]))


def test_compute_all_keys_and_values():
    image, lesion, nawm = lesion_phantom()
    reference = image + smooth_volume(image.shape, seed=11)
    synthetic = reference + np.random.default_rng(12).normal(scale=0.5, size=image.shape)
    brain = np.zeros(image.shape, dtype=bool)
    brain[3:28, 3:28, 3:28] = True
    basic = m.compute_all(synthetic, reference)
    assert set(basic) == {"mse", "mae", "psnr", "ssim"}
    full = m.compute_all(synthetic, reference, brain, lesion, nawm, slice_axis=0)
    assert full["ssim_brain"] == pytest.approx(m.ssim(synthetic, reference, brain))
    assert full["psnr_brain"] == pytest.approx(m.psnr(synthetic, reference, brain))
    assert full["snr_brain"] == pytest.approx(m.snr(synthetic, reference, brain))
    assert full["mae"] == pytest.approx(m.mae(synthetic, reference))
    assert full["lesion_ratio2_reference"] == pytest.approx(
        m.lesion_ratios(reference, lesion, nawm)["ratio2"]
    )
    offplane = m.off_plane_consistency(synthetic, reference, brain, slice_axis=0)
    assert full["offplane_roughness_ratio"] == pytest.approx(offplane["roughness_ratio"])
    assert set(full) == set(basic) | {
        "mse_brain", "mae_brain", "psnr_brain", "ssim_brain", "snr_brain",
        "lesion_ratio1_synthetic", "lesion_ratio2_synthetic",
        "lesion_ratio1_reference", "lesion_ratio2_reference",
        "offplane_ssim_axis1", "offplane_ssim_axis2", "offplane_profile_correlation",
        "offplane_profile_mae", "offplane_roughness_ratio",
    }  # fmt: skip
    with pytest.raises(ValueError, match="both lesion_mask and nawm_mask"):
        m.compute_all(synthetic, reference, lesion_mask=lesion)


def test_format_table():
    table = m.format_table({"psnr": 31.6123456, "snr_brain": 16.55})
    assert table.splitlines() == [
        "metric     value",
        "---------  -------",
        "psnr       31.6123",
        "snr_brain  16.55",
    ]


@pytest.mark.skipif(not DATA.is_dir(), reason=f"real data folder {DATA} is not available")
def test_compute_all_on_real_ms_case():
    sitk = pytest.importorskip("SimpleITK")
    case = DATA / "ms" / "patient07"

    def read(name):
        return sitk.GetArrayFromImage(sitk.ReadImage(str(case / f"{name}.nii.gz"))).astype(float)

    t2, flair, t1 = read("T2"), read("FLAIR"), read("T1")
    lesion = read("lesion_mask") > 0
    brain = flair > 0
    nawm = m.white_matter_mask(t1, brain)
    result = m.compute_all(t2, flair, brain, lesion, nawm, slice_axis=0)
    assert all(np.isfinite(value) for value in result.values()), m.format_table(result)
    assert 0 < result["ssim"] < 1 and 0 < result["ssim_brain"] < 1
    assert result["lesion_ratio1_reference"] > 1  # MS lesions are hyperintense on FLAIR
