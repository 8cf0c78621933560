"""Random crops with geometric and intensity augmentation, one training sample at a time.

Every random number comes from a ``numpy.random.Generator`` the caller passes in, so a
sample is a pure function of its seed: the batch of a step is the same whatever the
number of processes that build it, and whether or not the run was resumed.

Crop, flips, rotation and scaling are one resampling: a sampling grid of the crop's size,
centred on a brain pixel of the slice, is flipped, rotated and scaled about that pixel and
read with ``grid_sample`` (bilinear for images, nearest for the lesion mask). Without
rotation or scaling the crop is cut by indexing instead: an exact copy of the pixels.

Thick slices make an input look like a clinical 2D acquisition (a 5 mm axial T2 beside a 1 mm
3D T1) resampled onto the other inputs' grid, as the product does with ``--resample-to``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import AdjustContrast, RandBiasField
from monai.utils import convert_to_tensor

from .config import AugmentConfig


@dataclass(frozen=True)
class ThickSlices:
    """An input as if acquired in slices ``thickness`` voxels thick along ``axis`` of its (slices, rows,
    columns) volume, centred at ``offset`` plus whole multiples of ``thickness`` (voxels), then resampled
    back linearly."""

    axis: int
    thickness: float
    offset: float


def draw_thick_slices(rng: np.random.Generator, voxel_mm: tuple[float, float, float],
                      config: AugmentConfig) -> ThickSlices | None:
    """With ``config.thick_slice_probability``, slices along a random axis, from 2 voxels up to
    ``config.thick_slice_mm`` thick, at a random offset; None when the input stays as it is.

    Every axis is equally likely: the 2D network slices axially, so a thick axial acquisition (the
    clinical T2 or FLAIR) is blurred across its slices, a thick coronal or sagittal one within them."""
    if not config.thick_slice_mm or rng.random() >= config.thick_slice_probability:
        return None
    axis = int(rng.integers(3))
    most = config.thick_slice_mm / voxel_mm[axis]
    if most <= 2:
        return None
    thickness = float(rng.uniform(2, most))
    return ThickSlices(axis, thickness, float(rng.uniform(0, thickness)))


def thick_slice_operator(n: int, thickness: float, offset: float) -> np.ndarray:
    """The (n, n) matrix taking n samples along an axis to slices ``thickness`` samples thick (a boxcar
    slice profile over the voxels it overlaps) centred at ``offset + k * thickness``, read back at the n
    sample positions by linear interpolation between slice centres (beyond the outer centres: the outer
    slice), as resampling a 2D acquisition onto a fine grid does."""
    first = offset - thickness * np.ceil((offset + 0.5 + thickness / 2) / thickness)
    centres = np.arange(first, n - 0.5 + thickness / 2, thickness)
    edges = np.arange(n + 1) - 0.5  # voxel j spans [j - 0.5, j + 0.5]
    low = np.maximum(edges[None, :-1], (centres - thickness / 2)[:, None])
    high = np.minimum(edges[None, 1:], (centres + thickness / 2)[:, None])
    overlap = np.clip(high - low, 0, None)
    keep = overlap.sum(1) > 0
    centres, overlap = centres[keep], overlap[keep]
    acquire = overlap / overlap.sum(1, keepdims=True)
    positions = np.arange(n, dtype=np.float64)
    interpolate = np.stack([np.interp(positions, centres, column) for column in np.eye(len(centres))], 1)
    return interpolate @ acquire


def thick_slice(volume: np.ndarray, z: int, thick: ThickSlices) -> np.ndarray:
    """Slice ``z`` of the (slices, rows, columns) ``volume`` as acquired with ``thick`` and resampled back."""
    operator = thick_slice_operator(volume.shape[thick.axis], thick.thickness, thick.offset)
    if thick.axis == 0:
        weights = operator[z]
        used = np.flatnonzero(weights)
        return np.tensordot(weights[used], volume[used], axes=1).astype(np.float32)
    if thick.axis == 1:
        return (operator @ volume[z]).astype(np.float32)
    return (volume[z] @ operator.T).astype(np.float32)


@dataclass(frozen=True)
class Geometry2D:
    """How a crop's sampling grid maps onto its slice: flips, then scaling and rotation about ``centre``."""

    centre: tuple[int, int]  # (row, column) of a brain pixel
    flip_rows: bool = False
    flip_columns: bool = False
    angle: float = 0.0  # radians
    zoom: float = 1.0  # > 1 magnifies


def draw_geometry(rng: np.random.Generator, brain_slice: np.ndarray, config: AugmentConfig | None,
                  centre: tuple[int, int] | None = None) -> Geometry2D:
    """A crop centred on ``centre`` or on a random brain pixel and, with ``config``, random flips/rotation/zoom."""
    if centre is None:
        rows, columns = np.nonzero(brain_slice)
        pick = int(rng.integers(len(rows)))
        centre = (int(rows[pick]), int(columns[pick]))
    if config is None:
        return Geometry2D(centre)
    flips = rng.random(2) < 0.5 if config.flip else (False, False)
    angle = zoom = None
    if config.rotate_degrees and rng.random() < config.probability:
        angle = math.radians(rng.uniform(-config.rotate_degrees, config.rotate_degrees))
    if config.scale and rng.random() < config.probability:
        zoom = rng.uniform(1 - config.scale, 1 + config.scale)
    return Geometry2D(centre, bool(flips[0]), bool(flips[1]), angle or 0.0, zoom or 1.0)


def sampling_grid(geometry: Geometry2D, size: int, shape: tuple[int, int]) -> torch.Tensor:
    """The (1, size, size, 2) grid for ``grid_sample(align_corners=True)`` on a slice of ``shape``."""
    offsets = torch.arange(size, dtype=torch.float64) - size // 2  # the offsets `_window` uses
    dr, dc = torch.meshgrid(offsets, offsets, indexing="ij")
    if geometry.flip_rows:
        dr = -dr
    if geometry.flip_columns:
        dc = -dc
    cos, sin = math.cos(geometry.angle) / geometry.zoom, math.sin(geometry.angle) / geometry.zoom
    rows = geometry.centre[0] + cos * dr - sin * dc
    columns = geometry.centre[1] + sin * dr + cos * dc
    height, width = shape
    grid = torch.stack([2 * columns / max(width - 1, 1) - 1, 2 * rows / max(height - 1, 1) - 1], -1)
    return grid[None].float()


def _window(stack: np.ndarray, geometry: Geometry2D, size: int) -> torch.Tensor:
    """The crop by indexing (exact, and cheaper than resampling) when there is no rotation or zoom."""
    offsets = np.arange(size) - size // 2
    rows = geometry.centre[0] + (-offsets if geometry.flip_rows else offsets)
    columns = geometry.centre[1] + (-offsets if geometry.flip_columns else offsets)
    inside_rows = (rows >= 0) & (rows < stack.shape[-2])
    inside_columns = (columns >= 0) & (columns < stack.shape[-1])
    out = np.zeros(stack.shape[:-2] + (size, size), np.float32)
    target = np.ix_(inside_rows, inside_columns)
    source = np.ix_(rows[inside_rows], columns[inside_columns])
    out[..., target[0], target[1]] = stack[..., source[0], source[1]]
    return torch.from_numpy(out)


def crop(images: Mapping[str, np.ndarray], masks: np.ndarray, geometry: Geometry2D,
         size: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Resample every (H, W) image and the (H, W) or (k, H, W) masks on the same grid.

    Images come back as (1, size, size) tensors (bilinear), the masks as one (k, size, size)
    tensor (nearest, so they stay binary). Outside the slice the crop is 0, the normalised
    background value and "no mask".
    """
    names = list(images)
    masks = masks[None] if masks.ndim == 2 else masks
    stack = np.concatenate([np.stack([images[n] for n in names]), masks]).astype(np.float32, copy=False)
    k = len(masks)
    if geometry.angle == 0 and geometry.zoom == 1:
        window = _window(stack, geometry, size)
        out, mask = window[:-k], window[-k:]
    else:
        tensor = torch.from_numpy(stack)[None]
        grid = sampling_grid(geometry, size, stack.shape[-2:])
        out = F.grid_sample(tensor[:, :-k], grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
        mask = F.grid_sample(tensor[:, -k:], grid, mode="nearest", padding_mode="zeros", align_corners=True)[0]
    return {n: out[i:i + 1] for i, n in enumerate(names)}, mask


def jitter_intensity(image: torch.Tensor, rng: np.random.Generator, config: AugmentConfig) -> torch.Tensor:
    """Gamma (MONAI ``AdjustContrast``), global scale and a smooth multiplicative bias field
    (MONAI ``RandBiasField``) on one (1, H, W) input crop; 0 (background) stays 0."""
    out = image
    if config.gamma and rng.random() < config.probability and float(out.max()) > 0:
        out = AdjustContrast(gamma=float(math.exp(rng.uniform(-config.gamma, config.gamma))))(out)
    if config.intensity_scale and rng.random() < config.probability:
        out = out * float(rng.uniform(1 - config.intensity_scale, 1 + config.intensity_scale))
    if config.bias_field and rng.random() < config.probability:
        field = RandBiasField(degree=3, coeff_range=(0.0, config.bias_field), prob=1.0)
        field.set_random_state(state=np.random.RandomState(int(rng.integers(2**31))))
        out = field(out)
    return convert_to_tensor(out, dtype=torch.float32, track_meta=False)
