"""Real 2D training slices for Qu et al., the lesion-label set, and random label transforms.

Slices: every volume of a subject is put in LPS voxel order (so that LAS and LPS collections
give the same picture), its axial slices within ``slice_range`` are padded to a square about
the centre and resampled to ``size`` x ``size`` (linear for images, nearest for labels), and
intensities are divided by the volume's 99.5th brain percentile and clipped to [0, 1]: the
background stays exactly 0, which Algorithm 2 (``x > 0``) needs, and the generator's sigmoid
output has the same range. The paper "standardized each image" (Sec. 3.1) without details;
a z-score would make the background non-zero and break Algorithm 2.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from MRSynthesisLib.errors import InputError
from MRSynthesisLib.structure_maps import (
    background_mask,
    label_inside_brain,
    remove_lesion,
    structure_map,
)
from MRSynthesisLib.volume import Volume, read_volume, reoriented_onto
from training.datasets import _folder_subject

PERCENTILE = 99.5


@dataclass
class SliceSet:
    """Co-registered slices of several subjects: ``images`` (M, N, H, W) in modality order.

    ``labels`` (N, H, W) uint8 lesion classes (0 where unlabelled), ``labelled`` (N,) bool,
    ``brain`` (N, H, W) 1 inside the union of the modalities' non-zero voxels.
    """

    modalities: list[str]
    images: np.ndarray
    labels: np.ndarray
    labelled: np.ndarray
    brain: np.ndarray

    def __len__(self) -> int:
        return self.images.shape[1]


def _lps(volume: Volume) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.DICOMOrient(volume.to_sitk(), "LPS")).astype(np.float32)


def _square(slice_: np.ndarray, size: int, order: int) -> np.ndarray:
    side = max(slice_.shape)
    padded = np.zeros((side, side), slice_.dtype)
    top, left = (side - slice_.shape[0]) // 2, (side - slice_.shape[1]) // 2
    padded[top:top + slice_.shape[0], left:left + slice_.shape[1]] = slice_
    out = ndimage.zoom(padded, size / side, order=order, mode="grid-constant", cval=0.0, grid_mode=True)
    return out[:size, :size]


def resample_slices(volume: np.ndarray, size: int, order: int) -> np.ndarray:
    """(Z, H, W) -> (Z, size, size), each slice padded to a centred square then resampled."""
    if not len(volume):
        return np.zeros((0, size, size), volume.dtype)
    return np.stack([_square(s, size, order) for s in volume])


def scale_intensities(volume: np.ndarray, source: str) -> np.ndarray:
    """Divide by the 99.5th percentile of the non-zero voxels, clip to [0, 1] (background stays 0)."""
    if not np.isfinite(volume).all():
        raise InputError(f"{source}: has NaN or infinite voxels")
    inside = volume[volume > 0]
    if inside.size == 0:
        raise InputError(f"{source}: has no positive voxel; a skull-stripped scan with a 0 background is expected")
    return np.clip(volume / np.percentile(inside, PERCENTILE), 0.0, 1.0).astype(np.float32)


def load_subject_slices(folder: str | Path, modality_names: Sequence[str], size: int, slice_range: Sequence[float],
                        min_brain_fraction: float, labelled: bool) -> SliceSet:
    """The axial slices of one subject folder (BraTS or MS naming), see the module docstring."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such subject folder")
    try:
        files = _folder_subject(folder)
    except ValueError as error:
        raise InputError(str(error)) from None
    found = files.images if files else {}
    missing = [m for m in modality_names if m not in found]
    if missing:
        raise InputError(f"{folder}: no {', '.join(missing)} image (found {', '.join(sorted(found)) or 'none'})")
    if labelled and (files is None or files.lesion is None):
        raise InputError(f"{folder}: marked labelled but holds no lesion_mask file")
    volumes = [read_volume(found[m]) for m in modality_names]
    lesion = read_volume(files.lesion) if labelled else None

    def on_first_grid(other: Volume) -> Volume:
        """The same grid stored in any voxel order, as inference and the other trainers take it."""
        reordered = reoriented_onto(other, volumes[0].geometry)
        if reordered is None:
            differences = "; ".join(volumes[0].geometry.differences(other.geometry))
            raise InputError(f"{other.source} is not on the grid of {volumes[0].source}: {differences}")
        return reordered

    volumes[1:] = [on_first_grid(v) for v in volumes[1:]]
    lesion = on_first_grid(lesion) if lesion is not None else None
    arrays = [scale_intensities(_lps(v), v.source) for v in volumes]
    depth = arrays[0].shape[0]
    keep = np.arange(int(slice_range[0] * depth), max(int(slice_range[1] * depth), int(slice_range[0] * depth) + 1))
    images = np.stack([resample_slices(a[keep], size, 1) for a in arrays])
    brain = (images > 0).any(axis=0)
    if lesion is not None:
        values = _lps(lesion)
        if not np.array_equal(values, np.round(values)) or values.min() < 0:
            raise InputError(f"{lesion.source}: lesion labels must be non-negative integers")
        labels = resample_slices(values[keep].astype(np.uint8), size, 0) * brain
    else:
        labels = np.zeros(brain.shape, np.uint8)
    good = brain.mean(axis=(1, 2)) >= min_brain_fraction
    return SliceSet(list(modality_names), images[:, good], labels[good].astype(np.uint8),
                    np.full(int(good.sum()), labelled), brain[good].astype(np.uint8))


def concatenate(sets: Sequence[SliceSet]) -> SliceSet:
    return SliceSet(sets[0].modalities, np.concatenate([s.images for s in sets], 1),
                    np.concatenate([s.labels for s in sets]), np.concatenate([s.labelled for s in sets]),
                    np.concatenate([s.brain for s in sets]))


def structure_maps_of(images: np.ndarray, labels: np.ndarray, beta: float,
                      expand: int) -> tuple[np.ndarray, np.ndarray]:
    """Algorithm 1 with the slice's own lesion removed (Sec. 2.5), and Algorithm 2's mask, for (N, H, W) slices."""
    maps = np.stack([remove_lesion(structure_map(x, beta), lab) for x, lab in zip(images, labels)])
    masks = np.stack([background_mask(x, expand) for x in images])
    return maps.astype(np.float32), masks.astype(np.float32)


def label_bank(slices: SliceSet) -> np.ndarray:
    """The real lesion labels (N, H, W) to draw from: labelled slices with at least one lesion pixel."""
    keep = slices.labelled & (slices.labels.reshape(len(slices), -1).max(axis=1) > 0)
    return slices.labels[keep]


@dataclass(frozen=True)
class LabelTransform:
    """Sec. 2.8's "random scaling, rotation, translation, flipping" of real labels; ranges are ours.

    Zoom uniform in [1 - scale, 1 + scale], rotation uniform in [-degrees, degrees], shift
    uniform up to ``shift`` of the image side on each axis, each axis flipped with probability 1/2.
    """

    scale: float = 0.2
    degrees: float = 30.0
    shift: float = 0.15
    flip: bool = True

    def __call__(self, label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = label.shape
        zoom = rng.uniform(1 - self.scale, 1 + self.scale)
        angle = np.deg2rad(rng.uniform(-self.degrees, self.degrees))
        shift = rng.uniform(-self.shift, self.shift, 2) * np.array([h, w])
        flips = rng.random(2) < 0.5 if self.flip else np.zeros(2, bool)
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        matrix = rotation @ np.diag(np.where(flips, -1.0, 1.0)) / zoom  # output -> input coordinates
        centre = np.array([(h - 1) / 2, (w - 1) / 2])
        offset = centre - matrix @ (centre + shift)
        return ndimage.affine_transform(label, matrix, offset, order=0, mode="constant", cval=0).astype(label.dtype)


def draw_label(bank: np.ndarray, background: np.ndarray, rng: np.random.Generator, transform: LabelTransform,
               attempts: int) -> np.ndarray | None:
    """A transformed real label lying inside the brain (``label * mask == 0``), or None after ``attempts`` draws."""
    for _ in range(attempts):
        label = transform(bank[rng.integers(len(bank))], rng)
        if label.any() and label_inside_brain(label, background):
            return label
    return None
