"""Image-quality metrics for synthetic MRI volumes.

Arrays are numpy arrays in (z, y, x) order (as returned by
``SimpleITK.GetArrayFromImage``); masks are arrays of the same shape whose
non-zero voxels are "inside".  Every function is pure and computes in float64.

Conventions shared by all metrics:

* ``synthetic`` is the prediction, ``reference`` the acquired ground truth.
* A ``mask`` restricts the average to its voxels; ``None`` means the whole
  volume.
* The data range used by PSNR and SSIM is fixed per reference volume by
  :func:`data_range_of` (max - min of the reference over the whole volume), so
  whole-volume and in-brain scores of one case share a single range and stay
  comparable between methods evaluated on the same reference.
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

SSIM_K1 = 0.01
SSIM_K2 = 0.03
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # radius int(3.5 * 1.5 + 0.5) = 5: an 11-voxel window, as Wang et al. 2004


def _as_float(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array, dtype=np.float64)
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    return array


def _pair(synthetic: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    synthetic = _as_float(synthetic, "synthetic")
    reference = _as_float(reference, "reference")
    if synthetic.shape != reference.shape:
        raise ValueError(
            f"shape mismatch: synthetic {synthetic.shape} vs reference {reference.shape}"
        )
    return synthetic, reference


def _mask(mask: np.ndarray | None, shape: tuple[int, ...], name: str = "mask") -> np.ndarray:
    """Boolean mask of ``shape``; ``None`` selects every voxel."""
    if mask is None:
        return np.ones(shape, dtype=bool)
    mask = np.asarray(mask) != 0
    if mask.shape != shape:
        raise ValueError(f"{name} shape {mask.shape} does not match image shape {shape}")
    if not mask.any():
        raise ValueError(f"{name} is empty (no non-zero voxels)")
    return mask


def mse(synthetic: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean squared error, averaged over the mask voxels (whole volume if None)."""
    synthetic, reference = _pair(synthetic, reference)
    mask = _mask(mask, reference.shape)
    return float(np.mean((synthetic[mask] - reference[mask]) ** 2))


def mae(synthetic: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute error, averaged over the mask voxels (whole volume if None)."""
    synthetic, reference = _pair(synthetic, reference)
    mask = _mask(mask, reference.shape)
    return float(np.mean(np.abs(synthetic[mask] - reference[mask])))


def data_range_of(reference: np.ndarray, mask: np.ndarray | None = None) -> float:
    """max - min of the reference (over the mask if given; whole volume by default).

    This is the project's fixed data range for PSNR and SSIM.  It comes from
    the reference only, so a prediction cannot change its own score's scale,
    and by default it is taken over the whole volume so that in-brain and
    whole-volume scores of one case use the same range.  Raises ValueError
    for a constant reference (PSNR/SSIM would be undefined).
    """
    reference = _as_float(reference, "reference")
    values = reference[_mask(mask, reference.shape)]
    value_range = float(values.max() - values.min())
    if not value_range > 0:
        raise ValueError("reference is constant: its data range is zero")
    return value_range


def _data_range(reference: np.ndarray, data_range: float | None) -> float:
    if data_range is None:
        return data_range_of(reference)
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    return float(data_range)


def psnr(
    synthetic: np.ndarray,
    reference: np.ndarray,
    mask: np.ndarray | None = None,
    data_range: float | None = None,
) -> float:
    """Peak signal-to-noise ratio in dB: 10 log10(data_range^2 / MSE over the mask).

    ``data_range`` defaults to :func:`data_range_of` (reference, whole volume),
    which plays the role of MAX_I in Chartsias et al.  Returns ``inf`` when the
    images are identical on the mask.
    """
    data_range = _data_range(reference, data_range)
    error = mse(synthetic, reference, mask)
    return math.inf if error == 0 else float(10 * np.log10(data_range**2 / error))


def _ssim_map(
    synthetic: np.ndarray, reference: np.ndarray, data_range: float, sigma: list[float]
) -> np.ndarray:
    """SSIM map with a per-axis Gaussian sigma (0 = no smoothing along that axis)."""

    def smooth(image: np.ndarray) -> np.ndarray:
        return ndi.gaussian_filter(image, sigma, mode="reflect", truncate=SSIM_TRUNCATE)

    mu_s, mu_r = smooth(synthetic), smooth(reference)
    var_s = smooth(synthetic * synthetic) - mu_s * mu_s
    var_r = smooth(reference * reference) - mu_r * mu_r
    cov = smooth(synthetic * reference) - mu_s * mu_r
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    return ((2 * mu_s * mu_r + c1) * (2 * cov + c2)) / (
        (mu_s * mu_s + mu_r * mu_r + c1) * (var_s + var_r + c2)
    )


def ssim_map(
    synthetic: np.ndarray, reference: np.ndarray, data_range: float | None = None
) -> np.ndarray:
    """Local SSIM map (Wang et al. 2004) of 2D or 3D images.

    K1 = 0.01, K2 = 0.03, isotropic Gaussian window sigma = 1.5 voxels truncated
    at 3.5 sigma (11 voxels wide), population (co)variances.  Borders use
    scipy's 'reflect' mode, exactly as scikit-image's ``structural_similarity``
    with ``gaussian_weights=True, use_sample_covariance=False``, so the two
    maps agree everywhere.  ``data_range`` defaults to :func:`data_range_of`.
    """
    synthetic, reference = _pair(synthetic, reference)
    data_range = _data_range(reference, data_range)
    return _ssim_map(synthetic, reference, data_range, [SSIM_SIGMA] * reference.ndim)


def ssim(
    synthetic: np.ndarray,
    reference: np.ndarray,
    mask: np.ndarray | None = None,
    data_range: float | None = None,
) -> float:
    """Mean of :func:`ssim_map` over the mask (whole volume if None).

    The map is computed on the full images and only then averaged inside the
    mask, so windows at the brain edge see the real neighbourhood rather than
    an artificial mask edge.  Unlike scikit-image, the border strip (5 voxels)
    is not cropped before averaging: it is handled by 'reflect' padding and
    counted like any other voxel.  ``data_range`` defaults to
    :func:`data_range_of`.
    """
    synthetic, reference = _pair(synthetic, reference)
    mask = _mask(mask, reference.shape)
    return float(ssim_map(synthetic, reference, data_range)[mask].mean())


def snr(synthetic: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None) -> float:
    """SNR in dB as Klingelhoefer & Rousseau eq. (10): 10 log10(mean^2 / MSE).

    ``mean`` is the mean of the *reference* over the mask and MSE is taken
    over the same mask.  The paper leaves "mean" unnamed; the reference is the
    choice that keeps the signal term independent of the prediction and it
    reproduces their Table 1 (ground truth normalised to mean 1/3, MSE 0.0026
    -> about 16.3 dB vs 16.6 reported as an average).  The paper evaluates
    inside the brain (non-zero voxels): pass the brain mask.  The ratio is
    scale invariant.  Returns ``inf`` for a perfect prediction.
    """
    synthetic, reference = _pair(synthetic, reference)
    mask = _mask(mask, reference.shape)
    error = mse(synthetic, reference, mask)
    signal = float(reference[mask].mean()) ** 2
    return math.inf if error == 0 else float(10 * np.log10(signal / error))


def _ball(radius: int, ndim: int) -> np.ndarray:
    """Euclidean ball structuring element: offsets with |offset| <= radius."""
    grid = np.indices((2 * radius + 1,) * ndim) - radius
    return (grid**2).sum(axis=0) <= radius**2


def _lesion_regions(
    lesion_mask: np.ndarray, nawm_mask: np.ndarray, surround_voxels: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lesion, NAWM, surrounding NAWM) masks as defined in :func:`lesion_ratios`."""
    lesion_mask = np.asarray(lesion_mask)
    if surround_voxels < 1:
        raise ValueError(f"surround_voxels must be >= 1, got {surround_voxels}")
    lesion = _mask(lesion_mask, lesion_mask.shape, "lesion_mask")
    nawm = _mask(nawm_mask, lesion.shape, "nawm_mask") & ~lesion
    if not nawm.any():
        raise ValueError("NAWM is empty once lesion voxels are removed")
    surround = ndi.binary_dilation(lesion, structure=_ball(surround_voxels, lesion.ndim)) & nawm
    if not surround.any():
        raise ValueError(f"no NAWM within {surround_voxels} voxels of the lesions")
    return lesion, nawm, surround


def _region_ratios(
    image: np.ndarray, regions: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> dict[str, float]:
    image = _as_float(image, "image")
    lesion, nawm, surround = regions
    if image.shape != lesion.shape:
        raise ValueError(f"image shape {image.shape} does not match mask shape {lesion.shape}")
    lesion_mean, nawm_mean, surround_mean = (float(image[r].mean()) for r in regions)
    if nawm_mean == 0 or surround_mean == 0:
        raise ValueError("mean NAWM intensity is zero: lesion ratios undefined")
    return {"ratio1": lesion_mean / nawm_mean, "ratio2": lesion_mean / surround_mean}


def lesion_ratios(
    image: np.ndarray,
    lesion_mask: np.ndarray,
    nawm_mask: np.ndarray,
    surround_voxels: int = 5,
) -> dict[str, float]:
    """Lesion contrast of Wei et al. 2019, eq. (4), for one subject.

    ratio1 = mean(image in lesions) / mean(image in NAWM);
    ratio2 = mean(image in lesions) / mean(image in surrounding NAWM).
    NAWM = ``nawm_mask`` minus lesion voxels.  Surrounding NAWM = (lesions
    dilated by ``surround_voxels`` minus lesions) intersected with NAWM; the
    dilation uses a Euclidean ball of that radius in voxels (every voxel
    within that distance of a lesion, isotropic for the 1 mm grids used
    here; 6-connectivity iterated would give a diamond instead).  The paper
    averages these per-subject ratios over subjects.  Raises ValueError if a
    region is empty.
    """
    return _region_ratios(image, _lesion_regions(lesion_mask, nawm_mask, surround_voxels))


def white_matter_mask(t1: np.ndarray, brain_mask: np.ndarray) -> np.ndarray:
    """NAWM candidates without a segmentation: brightest 3-class Otsu class of T1.

    Three-class multi-Otsu (SimpleITK ``OtsuMultipleThresholds``, 2 thresholds,
    128 histogram bins) on the T1 intensities inside the brain only (so the
    background does not form a class); on T1 white matter is the brightest
    tissue (CSF < GM < WM), so voxels above the upper threshold are returned.
    Remove lesions before using it as NAWM (:func:`lesion_ratios` does).
    """
    t1 = _as_float(t1, "t1")
    brain = _mask(brain_mask, t1.shape, "brain_mask")
    values = sitk.GetImageFromArray(t1[brain].reshape(1, -1))
    otsu = sitk.OtsuMultipleThresholdsImageFilter()
    otsu.SetNumberOfThresholds(2)
    otsu.SetNumberOfHistogramBins(128)
    otsu.Execute(values)
    return brain & (t1 > otsu.GetThresholds()[-1])


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; NaN when either series is constant."""
    a, b = a - a.mean(), b - b.mean()
    norm = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / norm) if norm > 0 else math.nan


def off_plane_consistency(
    synthetic: np.ndarray,
    reference: np.ndarray,
    mask: np.ndarray | None = None,
    slice_axis: int = 0,
    data_range: float | None = None,
) -> dict[str, float]:
    """Consistency across slices of a volume synthesised slice by slice along ``slice_axis``.

    Keys (``a`` runs over the two axes other than ``slice_axis``; with
    SimpleITK (z, y, x) arrays of an axial stack, axis 1 gives coronal and
    axis 2 sagittal slices):

    * ``ssim_axis{a}``: 2D SSIM of the slices perpendicular to axis ``a`` (the
      off-plane views where slice-wise artefacts show as stripes), each slice's
      2D map (same window and constants as :func:`ssim_map`) averaged over all
      mask voxels of all those slices (voxel-weighted).
    * ``profile_correlation`` / ``profile_mae``: Pearson correlation and mean
      absolute difference between the inter-slice intensity profiles, i.e. the
      per-slice mean inside the mask along ``slice_axis`` (slices without mask
      voxels skipped).  Correlation is NaN if a profile is constant.
    * ``roughness_ratio``: mean |second difference along slice_axis| of the
      synthetic over that of the reference, on voxels whose two neighbours
      along the axis are also in the mask.  1 = as smooth as the reference,
      > 1 = slice-to-slice jitter.
    """
    synthetic, reference = _pair(synthetic, reference)
    if reference.ndim != 3:
        raise ValueError(f"off-plane consistency needs 3D volumes, got {reference.ndim}D")
    if slice_axis not in (0, 1, 2):
        raise ValueError(f"slice_axis must be 0, 1 or 2, got {slice_axis}")
    if reference.shape[slice_axis] < 3:
        raise ValueError("need at least 3 slices along slice_axis")
    mask = _mask(mask, reference.shape)
    data_range = _data_range(reference, data_range)
    other = tuple(a for a in range(3) if a != slice_axis)
    result = {}
    for axis in other:
        sigma = [0.0 if a == axis else SSIM_SIGMA for a in range(3)]
        result[f"ssim_axis{axis}"] = float(
            _ssim_map(synthetic, reference, data_range, sigma)[mask].mean()
        )

    counts = mask.sum(axis=other)
    used = counts > 0
    if used.sum() < 2:
        raise ValueError("mask covers fewer than 2 slices along slice_axis")
    profile_s = (synthetic * mask).sum(axis=other)[used] / counts[used]
    profile_r = (reference * mask).sum(axis=other)[used] / counts[used]
    result["profile_correlation"] = _pearson(profile_s, profile_r)
    result["profile_mae"] = float(np.mean(np.abs(profile_s - profile_r)))

    def second_difference(volume: np.ndarray) -> np.ndarray:
        return np.abs(np.diff(volume, n=2, axis=slice_axis))

    inner = np.moveaxis(mask, slice_axis, 0)
    inner = np.moveaxis(inner[:-2] & inner[1:-1] & inner[2:], 0, slice_axis)
    if not inner.any():
        raise ValueError("no mask voxel has both neighbours along slice_axis in the mask")
    rough_r = float(second_difference(reference)[inner].mean())
    if rough_r == 0:
        raise ValueError("reference has zero second difference along slice_axis")
    result["roughness_ratio"] = float(second_difference(synthetic)[inner].mean()) / rough_r
    return result


def compute_all(
    synthetic: np.ndarray,
    reference: np.ndarray,
    brain_mask: np.ndarray | None = None,
    lesion_mask: np.ndarray | None = None,
    nawm_mask: np.ndarray | None = None,
    slice_axis: int | None = None,
    data_range: float | None = None,
    valid_mask: np.ndarray | None = None,
) -> dict[str, float]:
    """Every applicable metric in one flat dict.

    ``valid_mask``: the voxels where both images hold a value (NaN, "no value", set to 0 in both
    elsewhere): the whole-volume figures and the lesion and NAWM regions are taken over these only,
    since 0 against 0 there would score as a perfect match; pass a ``brain_mask`` within it.
    Always: ``mse, mae, psnr, ssim`` (whole volume).  With ``brain_mask``:
    ``mse_brain, mae_brain, psnr_brain, ssim_brain, snr_brain``.  With
    ``lesion_mask`` and ``nawm_mask`` (both or neither):
    ``lesion_ratio{1,2}_{synthetic,reference}``.  With ``slice_axis``: the
    :func:`off_plane_consistency` keys prefixed ``offplane_`` (inside the brain
    mask when given).  One data range (default :func:`data_range_of`) serves
    every PSNR/SSIM value.
    """
    synthetic, reference = _pair(synthetic, reference)
    data_range = _data_range(reference, data_range)
    ssim_values = ssim_map(synthetic, reference, data_range)
    valid = _mask(valid_mask, reference.shape, "valid_mask")
    result = {
        "mse": mse(synthetic, reference, valid),
        "mae": mae(synthetic, reference, valid),
        "psnr": psnr(synthetic, reference, valid, data_range),
        "ssim": float(ssim_values[valid].mean()),
    }
    if brain_mask is not None:
        brain = _mask(brain_mask, reference.shape, "brain_mask")
        result.update(
            mse_brain=mse(synthetic, reference, brain),
            mae_brain=mae(synthetic, reference, brain),
            psnr_brain=psnr(synthetic, reference, brain, data_range),
            ssim_brain=float(ssim_values[brain].mean()),
            snr_brain=snr(synthetic, reference, brain),
        )
    if (lesion_mask is None) != (nawm_mask is None):
        raise ValueError("lesion ratios need both lesion_mask and nawm_mask")
    if lesion_mask is not None:
        regions = _lesion_regions((np.asarray(lesion_mask) != 0) & valid, (np.asarray(nawm_mask) != 0) & valid,
                                  surround_voxels=5)
        for name, image in (("synthetic", synthetic), ("reference", reference)):
            for key, value in _region_ratios(image, regions).items():
                result[f"lesion_{key}_{name}"] = value
    if slice_axis is not None:
        offplane = off_plane_consistency(synthetic, reference, brain_mask, slice_axis, data_range)
        result.update({f"offplane_{key}": value for key, value in offplane.items()})
    return result


def format_table(metrics: dict[str, float]) -> str:
    """Plain two-column text table (name, value with 6 significant digits)."""
    rows = [("metric", "value")] + [(name, f"{value:.6g}") for name, value in metrics.items()]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    lines.insert(1, "-" * width + "  " + "-" * max(len(value) for _, value in rows))
    return "\n".join(lines)
