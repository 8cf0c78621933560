"""Intensity normalisation, brain masks and network-friendly crop/pad.

Arrays are numpy arrays in (z, y, x) order (as ``SimpleITK.GetArrayFromImage`` returns);
intensity results are float32, masks are bool.

Normalisation follows the seed papers, with the deviations below chosen so that a single
subject can be normalised at inference time exactly as the training data were:

* ``mean_in_brain`` (Chartsias et al. 2018): divide by the mean intensity inside the
  brain mask. The paper divides "by the volume's average intensity" over its trimmed
  volume, background included; that value depends on how much background the field of
  view holds, so we average over the brain only. As in the paper the result is
  positive with the brain at mean 1 and the background at 0.
* ``three_mean_nonzero`` (Klingelhoefer & Rousseau): divide by three times the mean of
  the non-zero voxels (the paper's brain definition on skull-stripped data), taken
  inside the brain mask; the brain mean becomes 1/3.
* ``zscore`` (Wei et al. 2019): ``(x - mean) / std``. The paper computes mean and std
  "over all the voxels of all the images in each sequence", i.e. over a whole data set,
  background included; we compute them per volume inside the brain mask, which removes
  per-scan scale differences and does not depend on the amount of background.
* ``none``: intensities are kept (offset 0, scale 1).

Optional percentile clipping is applied first, with percentiles computed inside the
brain mask. For every scheme the voxels outside the brain mask are set to 0 after
normalisation, so a network always sees background at one fixed value (for ``zscore``
this is the convention of nnU-Net's non-zero-mask z-scoring; 0 is then the brain mean,
which the network distinguishes from background by context).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .errors import InputError

__all__ = [
    "SCHEMES",
    "PAD_MODES",
    "NormalisationSpec",
    "IntensityStats",
    "normalise",
    "denormalise",
    "reference_stats",
    "foreground_mask",
    "validate_mask",
    "bounding_box",
    "CropPad",
    "plan_crop_pad",
]

SCHEMES = {
    "mean_in_brain": "x / mean(x in brain) (Chartsias et al. 2018)",
    "three_mean_nonzero": "x / (3 * mean(non-zero x in brain)) (Klingelhoefer & Rousseau)",
    "zscore": "(x - mean(x in brain)) / std(x in brain) (Wei et al. 2019)",
    "none": "x unchanged",
}
PAD_MODES = ("constant", "edge")
_SPEC_KEYS = ("scheme", "clip_percentiles")
_STATS_KEYS = ("offset", "scale", "clip")


def _number_pair(value: Any, name: str) -> tuple[float, float]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"{name} must be a pair [low, high], got {value!r}")
    try:
        low, high = float(value[0]), float(value[1])
    except (TypeError, ValueError):
        raise ValueError(f"{name} must hold two numbers, got {value!r}") from None
    return low, high


def _check_keys(data: Any, valid: Sequence[str], required: Sequence[str], what: str) -> None:
    if not isinstance(data, Mapping):
        raise ValueError(f"{what} must be a mapping with keys {', '.join(valid)}; got {type(data).__name__}")
    unknown = sorted(str(key) for key in data if key not in valid)
    if unknown:
        raise ValueError(f"{what}: unknown key(s) {', '.join(unknown)}; valid keys are {', '.join(valid)}")
    missing = [key for key in required if key not in data]
    if missing:
        raise ValueError(f"{what}: missing key(s) {', '.join(missing)}")


@dataclass(frozen=True)
class NormalisationSpec:
    """How a model's inputs and outputs were normalised; stored in its model card.

    ``clip_percentiles=(lo, hi)`` clips intensities to those percentiles of the brain
    voxels before normalising (``0 <= lo < hi <= 100``); ``None`` does not clip.
    """

    scheme: str
    clip_percentiles: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.scheme, str) or self.scheme not in SCHEMES:
            raise ValueError(f"unknown normalisation scheme {self.scheme!r}; valid schemes are {', '.join(SCHEMES)}")
        if self.clip_percentiles is not None:
            low, high = _number_pair(self.clip_percentiles, "clip_percentiles")
            if not 0.0 <= low < high <= 100.0:
                raise ValueError(f"clip_percentiles must satisfy 0 <= low < high <= 100, got ({low:g}, {high:g})")
            object.__setattr__(self, "clip_percentiles", (low, high))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``{"scheme": ..., "clip_percentiles": [lo, hi] or None}``."""
        clip = None if self.clip_percentiles is None else list(self.clip_percentiles)
        return {"scheme": self.scheme, "clip_percentiles": clip}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NormalisationSpec:
        """Parse :meth:`to_dict`'s form; unknown keys or schemes raise ``ValueError``."""
        _check_keys(data, _SPEC_KEYS, ("scheme",), "normalisation")
        return cls(scheme=data["scheme"], clip_percentiles=data.get("clip_percentiles"))


@dataclass(frozen=True)
class IntensityStats:
    """The affine map a normalisation applied: ``normalised = (clipped - offset) / scale``.

    ``clip`` holds the intensity bounds the input was clipped to (``None``: no clipping);
    it documents the normalisation but is not used to invert it, as clipping is lossy.
    A model card stores these per output modality (median over its training volumes, see
    :func:`reference_stats`) to map a synthetic output back to an intensity scale.
    """

    offset: float
    scale: float
    clip: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        offset, scale = float(self.offset), float(self.scale)
        if not math.isfinite(offset):
            raise ValueError(f"offset must be finite, got {offset}")
        if not (math.isfinite(scale) and scale > 0.0):
            raise ValueError(f"scale must be finite and > 0, got {scale}")
        object.__setattr__(self, "offset", offset)
        object.__setattr__(self, "scale", scale)
        if self.clip is not None:
            low, high = _number_pair(self.clip, "clip")
            if not low <= high:
                raise ValueError(f"clip must satisfy low <= high, got ({low:g}, {high:g})")
            object.__setattr__(self, "clip", (low, high))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``{"offset": ..., "scale": ..., "clip": [lo, hi] or None}``."""
        return {"offset": self.offset, "scale": self.scale,
                "clip": None if self.clip is None else list(self.clip)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IntensityStats:
        """Parse :meth:`to_dict`'s form; ``clip`` may be omitted (e.g. ``{"offset": 0, "scale": 412.3}``)."""
        _check_keys(data, _STATS_KEYS, ("offset", "scale"), "intensity statistics")
        try:
            offset, scale = float(data["offset"]), float(data["scale"])
        except (TypeError, ValueError):
            raise ValueError(f"offset and scale must be numbers, "
                             f"got {data['offset']!r} and {data['scale']!r}") from None
        return cls(offset=offset, scale=scale, clip=data.get("clip"))


def _image_and_mask(image: np.ndarray, brain_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(image)
    if image.size == 0 or not np.issubdtype(image.dtype, np.number) or np.iscomplexobj(image):
        raise ValueError(f"image must be a non-empty real numeric array, "
                         f"got dtype {image.dtype} and shape {image.shape}")
    mask = validate_mask(brain_mask, image.shape, "brain_mask")
    values = image.astype(np.float64)
    if not np.isfinite(values[mask]).all():
        raise ValueError("image contains NaN or infinite values inside the brain mask")
    return values, mask


def normalise(image: np.ndarray, spec: NormalisationSpec,
              brain_mask: np.ndarray) -> tuple[np.ndarray, IntensityStats]:
    """Normalise ``image`` by ``spec`` using the voxels in ``brain_mask``; see the module docstring.

    Returns the float32 normalised image (0 outside the mask) and the statistics that
    :func:`denormalise` needs to map it back.
    """
    if not isinstance(spec, NormalisationSpec):
        raise ValueError(f"spec must be a NormalisationSpec, got {type(spec).__name__}")
    values, mask = _image_and_mask(image, brain_mask)
    clip = None
    if spec.clip_percentiles is not None:
        low, high = np.percentile(values[mask], spec.clip_percentiles)
        clip = (float(low), float(high))
        clipped = np.clip(values, clip[0], clip[1])
    else:
        clipped = values
    brain = clipped[mask]
    if spec.scheme == "mean_in_brain":
        offset, scale = 0.0, float(brain.mean())
        what = "the mean intensity inside the brain mask"
    elif spec.scheme == "three_mean_nonzero":
        # "Non-zero" is judged on the unclipped image: zero marks voxels without signal.
        nonzero = clipped[mask & (values != 0)]
        if nonzero.size == 0:
            raise ValueError("image has no non-zero voxels inside the brain mask")
        offset, scale = 0.0, 3.0 * float(nonzero.mean())
        what = "3 x the mean of the non-zero voxels inside the brain mask"
    elif spec.scheme == "zscore":
        offset, scale = float(brain.mean()), float(brain.std())
        what = "the standard deviation inside the brain mask"
    else:
        offset, scale = 0.0, 1.0
        what = ""
    if not (math.isfinite(scale) and scale > 0.0):
        raise ValueError(f"cannot normalise with scheme {spec.scheme!r}: {what} is {scale:g}, it must be > 0")
    stats = IntensityStats(offset=offset, scale=scale, clip=clip)
    normalised = (clipped - offset) / scale
    normalised[~mask] = 0.0
    return normalised.astype(np.float32), stats


def denormalise(normalised: np.ndarray, stats: IntensityStats, mask: np.ndarray | None = None) -> np.ndarray:
    """Map ``normalised`` back to intensities: ``normalised * scale + offset`` (float32).

    With ``mask``, voxels outside it are set to 0 so that a synthetic output keeps a zero
    background whatever the scheme's offset. ``normalise`` followed by ``denormalise``
    with the same mask gives the (clipped) input inside the mask and 0 outside.
    """
    if not isinstance(stats, IntensityStats):
        raise ValueError(f"stats must be IntensityStats, got {type(stats).__name__}")
    values = np.asarray(normalised, dtype=np.float64)
    restored = values * stats.scale + stats.offset
    if mask is not None:
        restored[~validate_mask(mask, values.shape, "mask")] = 0.0
    return restored.astype(np.float32)


def reference_stats(images: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                    spec: NormalisationSpec) -> IntensityStats:
    """Typical statistics of a modality over training volumes, for a model card.

    Each field (offset, scale, clip bounds) is the median over the volumes of the
    per-volume value from :func:`normalise`: the median is robust to one odd scan,
    where a mean would be pulled by it.
    """
    if isinstance(images, np.ndarray) or isinstance(masks, np.ndarray):
        raise ValueError("images and masks must be sequences of arrays (e.g. lists), not single arrays")
    if len(images) == 0:
        raise ValueError("reference_stats needs at least one image")
    if len(images) != len(masks):
        raise ValueError(f"got {len(images)} images but {len(masks)} masks; give one mask per image")
    per_volume = [normalise(image, spec, mask)[1] for image, mask in zip(images, masks)]
    clip = None
    if spec.clip_percentiles is not None:
        clip = (float(np.median([s.clip[0] for s in per_volume])), float(np.median([s.clip[1] for s in per_volume])))
    return IntensityStats(offset=float(np.median([s.offset for s in per_volume])),
                          scale=float(np.median([s.scale for s in per_volume])), clip=clip)


def foreground_mask(images: Sequence[np.ndarray], threshold_fraction: float = 0.01) -> np.ndarray:
    """Brain mask from co-registered, skull-stripped inputs (bool, the inputs' shape).

    A voxel is foreground in an image when its intensity exceeds ``threshold_fraction``
    times the 99th percentile of that image's non-zero voxels, a robust, scale-free
    threshold that works for int16 and float data alike. The mask is the union over
    the images, reduced to its largest face-connected component, with holes filled in
    3D (cavities enclosed in 3D, such as dark voxels inside the brain). Filling is not
    done slice by slice because that would also close concavities that are open in 3D
    (the interhemispheric fissure, the space between temporal lobes and brainstem) and
    would depend on the slice orientation.

    Limitation: the inputs must have a (near-)zero background, as skull-stripped data
    do. On data that are not skull-stripped the mask covers the whole head; give a brain
    mask instead.
    """
    if isinstance(images, np.ndarray):
        raise ValueError("images must be a sequence of arrays (e.g. [image]), not a single array")
    if len(images) == 0:
        raise ValueError("foreground_mask needs at least one image")
    if not 0.0 <= threshold_fraction < 1.0:
        raise ValueError(f"threshold_fraction must be in [0, 1), got {threshold_fraction}")
    shape = np.shape(images[0])
    union = np.zeros(shape, dtype=bool)
    for index, image in enumerate(images):
        values = np.asarray(image, dtype=np.float64)
        if values.shape != shape:
            raise ValueError(f"image {index} has shape {values.shape}, image 0 has {shape}; they must match")
        if not np.isfinite(values).all():
            raise ValueError(f"image {index} contains NaN or infinite values")
        nonzero = values[values != 0]
        if nonzero.size:
            union |= values > threshold_fraction * float(np.percentile(nonzero, 99))
    if not union.any():
        raise ValueError("no foreground found: every input is zero or below its threshold")
    labels, count = ndi.label(union)
    if count > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        union = labels == int(sizes.argmax())
    return ndi.binary_fill_holes(union)


def validate_mask(mask: np.ndarray, shape: Sequence[int], name: str) -> np.ndarray:
    """Check that a user-given mask fits ``shape``, holds only 0/1 (or bool) and is non-empty.

    Returns it as a bool array; errors are ``InputError`` (a ``ValueError``) naming ``name``.
    """
    array = np.asarray(mask)
    shape = tuple(int(n) for n in shape)
    if array.shape != shape:
        raise InputError(f"{name} has shape {array.shape}, expected {shape}")
    if array.dtype != bool:
        if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
            raise InputError(f"{name} must be a bool or numeric 0/1 array, got dtype {array.dtype}")
        values = np.unique(array)
        if not np.isin(values, (0, 1)).all():
            shown = ", ".join(f"{v:g}" for v in values[:8]) + (" ..." if values.size > 8 else "")
            raise InputError(f"{name} must be binary (0 and 1 only); found values {shown}. "
                             "Give a single binary mask, not a label map")
        array = array == 1
    if not array.any():
        raise InputError(f"{name} is empty (no voxel is 1)")
    return array


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...]:
    """Smallest box holding the voxels of binary ``mask``, grown by ``margin`` per side and clipped to the array."""
    array = validate_mask(mask, np.shape(mask), "mask")
    if int(margin) != margin or margin < 0:
        raise ValueError(f"margin must be a non-negative integer, got {margin}")
    box = []
    for axis, size in enumerate(array.shape):
        occupied = np.flatnonzero(array.any(axis=tuple(a for a in range(array.ndim) if a != axis)))
        box.append(slice(max(int(occupied[0]) - margin, 0), min(int(occupied[-1]) + 1 + margin, size)))
    return tuple(box)


@dataclass(frozen=True)
class CropPad:
    """Crop an array to ``[crop_start, crop_stop)`` then pad by ``pad_before``/``pad_after`` per axis.

    Made by :func:`plan_crop_pad`. The transform acts on the trailing ``len(original_shape)``
    axes, so channel or batch axes in front pass through. ``mode`` is the padding mode:
    ``"constant"`` pads with 0, ``"edge"`` repeats the border voxel. Cropping and padding
    never change values, so arrays keep their dtype.
    """

    original_shape: tuple[int, ...]
    crop_start: tuple[int, ...]
    crop_stop: tuple[int, ...]
    pad_before: tuple[int, ...]
    pad_after: tuple[int, ...]
    mode: str = "constant"

    def __post_init__(self) -> None:
        ndim = len(self.original_shape)
        fields = (self.crop_start, self.crop_stop, self.pad_before, self.pad_after)
        if ndim == 0 or any(len(field) != ndim for field in fields):
            raise ValueError("original_shape, crop_start, crop_stop, pad_before and pad_after need one entry per axis")
        for axis in range(ndim):
            start, stop, size = self.crop_start[axis], self.crop_stop[axis], self.original_shape[axis]
            if not 0 <= start < stop <= size:
                raise ValueError(f"axis {axis}: crop [{start}, {stop}) is empty or outside [0, {size})")
            if self.pad_before[axis] < 0 or self.pad_after[axis] < 0:
                raise ValueError(f"axis {axis}: padding must be >= 0")
        if self.mode not in PAD_MODES:
            raise ValueError(f"unknown padding mode {self.mode!r}; valid modes are {', '.join(PAD_MODES)}")

    @property
    def crop(self) -> tuple[slice, ...]:
        """The cropped box as slices of the original array."""
        return tuple(slice(start, stop) for start, stop in zip(self.crop_start, self.crop_stop))

    @property
    def shape(self) -> tuple[int, ...]:
        """The network-friendly shape that :meth:`apply` produces."""
        return tuple(stop - start + before + after for start, stop, before, after
                     in zip(self.crop_start, self.crop_stop, self.pad_before, self.pad_after))

    def _check(self, array: np.ndarray, expected: tuple[int, ...], what: str) -> int:
        ndim = len(expected)
        if array.ndim < ndim or array.shape[array.ndim - ndim:] != expected:
            raise ValueError(f"{what} must end with shape {expected}, got {array.shape}")
        return array.ndim - ndim

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Crop then pad ``array`` (trailing axes of ``original_shape``) to :attr:`shape`."""
        array = np.asarray(array)
        lead = self._check(array, self.original_shape, "array")
        cropped = array[(slice(None),) * lead + self.crop]
        widths = [(0, 0)] * lead + list(zip(self.pad_before, self.pad_after))
        return np.pad(cropped, widths, mode=self.mode)

    def invert(self, array: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """Remove the padding and put the box back into an array of ``original_shape`` filled with ``fill``."""
        array = np.asarray(array)
        lead = self._check(array, self.shape, "array")
        inner = tuple(slice(before, size - after) for before, after, size
                      in zip(self.pad_before, self.pad_after, self.shape))
        restored = np.full(array.shape[:lead] + tuple(self.original_shape), fill, dtype=array.dtype)
        restored[(slice(None),) * lead + self.crop] = array[(slice(None),) * lead + inner]
        return restored


def plan_crop_pad(shape: Sequence[int], multiple: int | Sequence[int], bbox: tuple[slice, ...] | None = None,
                  margin: int = 0, mode: str = "constant") -> CropPad:
    """Plan cropping ``shape`` to ``bbox`` and padding each axis up to a multiple of ``multiple``.

    ``bbox`` is grown by ``margin`` voxels per side and clipped to the array (``margin``
    only applies to a ``bbox``). ``multiple`` is one int for all axes or one per axis
    (e.g. 4 for two 2x2 poolings, as Chartsias et al. trim to sizes divisible by 4).
    Padding is symmetric, the odd voxel going after. ``bbox=None`` keeps the whole array, so ``invert(apply(x)) == x``.
    """
    shape = tuple(int(n) for n in shape)
    ndim = len(shape)
    if ndim == 0 or any(n < 1 for n in shape):
        raise ValueError(f"shape must have at least one axis, all >= 1, got {shape}")
    multiples = (multiple,) * ndim if isinstance(multiple, (int, np.integer)) else tuple(multiple)
    if len(multiples) != ndim or any(int(m) != m or m < 1 for m in multiples):
        raise ValueError(f"multiple must be a positive integer or one per axis ({ndim}), got {multiple!r}")
    if int(margin) != margin or margin < 0:
        raise ValueError(f"margin must be a non-negative integer, got {margin}")
    if bbox is None:
        start, stop = (0,) * ndim, shape
    else:
        if len(bbox) != ndim or not all(isinstance(s, slice) for s in bbox):
            raise ValueError(f"bbox must be a tuple of {ndim} slices, got {bbox!r}")
        bounds = [s.indices(n) for s, n in zip(bbox, shape)]
        if any(step != 1 or lo >= hi for lo, hi, step in bounds):
            raise ValueError(f"bbox slices must be non-empty with step 1 inside shape {shape}, got {bbox!r}")
        start = tuple(max(lo - margin, 0) for lo, _, _ in bounds)
        stop = tuple(min(hi + margin, n) for (_, hi, _), n in zip(bounds, shape))
    totals = [-(hi - lo) % int(m) for lo, hi, m in zip(start, stop, multiples)]
    return CropPad(original_shape=shape, crop_start=tuple(start), crop_stop=tuple(stop),
                   pad_before=tuple(t // 2 for t in totals), pad_after=tuple(t - t // 2 for t in totals), mode=mode)
