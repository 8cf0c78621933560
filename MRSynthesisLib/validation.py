"""Checks on an input set before any model sees it.

Inputs on different grids are never mixed silently: either the user asked for
resampling onto a named reference, or the error names both files and how they differ.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .errors import InputError
from .volume import Volume, reoriented_onto, resample_to


def check_values(volume: Volume, *, allow_empty: bool = False) -> None:
    """Reject NaN/Inf and (unless ``allow_empty``) all-zero or constant images."""
    array = volume.array
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(array.size - np.count_nonzero(finite))
        raise InputError(f"{volume.source}: contains {bad} NaN or infinite voxels")
    if allow_empty:
        return
    low, high = float(array.min()), float(array.max())
    if low == high == 0.0:
        raise InputError(f"{volume.source}: is empty (every voxel is 0)")
    if low == high:
        raise InputError(f"{volume.source}: is constant (every voxel is {low:g}); it carries no contrast")


# MR magnitude images are 0 or above; registration and resampling ring a little below 0 at sharp edges
# (0.1-1.0 % of the non-zero voxels of the shared MS scans, registered to MNI space; none in the BraTS
# case). Far more means shifted intensities (z-scored, centred), which neither the brain mask (a
# threshold above 0) nor the card's normalisation (e.g. divide by the brain's mean) can take.
NEGATIVE_LIMIT = 0.05


def check_magnitude(volume: Volume) -> None:
    """Refuse an image of which more than ``NEGATIVE_LIMIT`` of the non-zero voxels are negative."""
    nonzero = np.count_nonzero(volume.array)
    share = np.count_nonzero(volume.array < 0) / nonzero if nonzero else 0.0
    if share > NEGATIVE_LIMIT:
        raise InputError(f"{volume.source}: {100 * share:.0f} % of its non-zero voxels are negative; the models take "
                         "MR intensities as acquired or bias-corrected (0 and above), not z-scored or shifted ones: "
                         "give the image before that normalisation")


def check_mask(volume: Volume) -> np.ndarray:
    """A lesion or brain mask: 0 outside, one whole positive value inside; returns it as a bool array.

    The inside value may be any whole number (1, 255 as many tools write, a label's own number):
    a two-valued file is a mask whatever its number. Two or more positive values (a label map) or
    fractions (a soft or resampled mask) are refused, since which voxels are "inside" would be a guess."""
    check_values(volume, allow_empty=True)
    values = np.unique(volume.array)
    inside = values[values != 0]
    if inside.size > 1 or (inside.size == 1 and (inside[0] < 1 or inside[0] != np.round(inside[0]))):
        shown = ", ".join(f"{v:g}" for v in values[:8]) + (" ..." if values.size > 8 else "")
        raise InputError(f"{volume.source}: a mask must hold 0 and one whole positive value (1, or 255 as some "
                         f"tools write), found values {shown}")
    return volume.array != 0


def align(inputs: Mapping[str, Volume], reference: str, *, resample: bool = False,
          masks: Mapping[str, Volume] | None = None) -> tuple[dict[str, Volume], dict[str, Volume]]:
    """Put every input (and mask) on the grid of ``inputs[reference]``.

    Without ``resample`` a grid mismatch is an ``InputError`` naming both files and the
    differences; with it, images are resampled linearly and masks by nearest neighbour.
    """
    if reference not in inputs:
        raise InputError(f"reference modality {reference!r} is not among the inputs ({', '.join(inputs)})")
    grid = inputs[reference].geometry
    source = inputs[reference].source

    def onto(volume: Volume, nearest: bool) -> Volume:
        reordered = reoriented_onto(volume, grid)
        if reordered is not None:
            return reordered
        differences = volume.geometry.differences(grid)
        if not resample:
            raise InputError(f"{volume.source} and {source} are on different grids ({'; '.join(differences)}); "
                             f"register them first, or pass --resample-to {reference} to resample onto {source}")
        return resample_to(volume, grid, nearest=nearest)

    aligned = {name: onto(volume, nearest=False) for name, volume in inputs.items()}
    aligned_masks = {name: onto(volume, nearest=True) for name, volume in (masks or {}).items()}
    return aligned, aligned_masks
