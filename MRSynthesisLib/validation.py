"""Checks on an input set before any model sees it.

Inputs on different grids are never mixed silently: either the user asked for
resampling onto a named reference, or the error names both files and how they differ.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import TypeVar

import numpy as np

from .errors import InputError
from .spikes import remove_spikes
from .volume import Volume, reoriented_onto, resample_to

K = TypeVar("K")


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


def nan_as_no_data(volume: Volume) -> tuple[Volume, str | None]:
    """``volume`` with its NaN voxels set to 0, and a note saying how many (None and the volume itself when it has
    none). NaN means "no value": SPM's reslicing, for one, writes it outside an image's field of view; as 0 such a
    region is what the rest of the pipeline takes for no data (``coverage``). Infinite voxels are not so
    explained and stay refused (``check_values``), as does an image that is NaN throughout."""
    missing = np.isnan(volume.array)
    count = int(np.count_nonzero(missing))
    if not count:
        return volume, None
    if count == missing.size:
        raise InputError(f"{volume.source}: every voxel is NaN (no value)")
    share = 100.0 * count / missing.size
    return (volume.with_array(np.where(missing, np.float32(0), volume.array)),
            f"{volume.source}: {count} voxels ({share:.2g} % of the image) are NaN (no value), as some tools (SPM's "
            "reslicing, for one) write where an image holds no data; taken as 0, no data")


# MR magnitude images are 0 or above, but resampling rings below 0 at sharp edges: a little (0.1-1.0 % of
# the non-zero voxels of the shared MS scans, registered to MNI space), or a lot after a B-spline or
# windowed-sinc interpolation (elastix's default, ANTs' and Slicer's options): 12-42 % of the non-zero
# voxels of the shared scans resampled so (a small rigid motion) are negative, most of them by 1e-7 of the
# range. What tells shifted intensities (z-scored, centred, scaled to [-1, 1]) from ringing is how much of
# the signal lies below 0: the negative voxels' magnitudes summed against the positive voxels' sum, 0.14-0.49 %
# after that resampling, 100 % or more for the shifted images (measured on all five shared scans). Shifted
# intensities neither the brain mask (a threshold above 0) nor the card's normalisation (e.g. divide by the
# brain's mean) can take.
NEGATIVE_LIMIT = 0.05


def negative_share(array: np.ndarray) -> float:
    """The magnitude summed over the negative voxels, as a fraction of the sum over the positive ones."""
    positive = float(array[array > 0].sum(dtype=np.float64))
    negative = -float(array[array < 0].sum(dtype=np.float64))
    return negative / positive if positive > 0 else (np.inf if negative > 0 else 0.0)


def check_magnitude(volume: Volume) -> None:
    """Refuse an image whose negative voxels hold more than ``NEGATIVE_LIMIT`` of its signal."""
    share = negative_share(volume.array)
    if share > NEGATIVE_LIMIT:
        problem = ("has no voxel above 0" if np.isinf(share) else
                   f"its negative voxels sum to {100 * share:.0f} % of its positive ones")
        raise InputError(f"{volume.source}: {problem}; the models take MR intensities as acquired or bias-corrected "
                         "(0 and above), not z-scored or shifted ones: give the image before that normalisation "
                         "(a little below 0 at edges, as resampling leaves, is accepted)")


def checked_image(volume: Volume) -> tuple[Volume, list[str]]:
    """``volume`` checked as an MR image, inference's and training's alike: NaN taken as no data
    (``nan_as_no_data``), infinite, empty or constant images refused (``check_values``), spikes replaced
    (``spikes.remove_spikes``), shifted intensities refused after that (``check_magnitude``: a few hugely negative
    voxels are spikes, not a shifted image); with the notes of what was changed."""
    volume, nan = nan_as_no_data(volume)
    check_values(volume)
    volume, spikes = remove_spikes(volume)
    check_magnitude(volume)
    return volume, [n for n in (nan, spikes) if n]


def voxel_digest(array: np.ndarray) -> str:
    """A digest of an image's voxels and shape: the same scan under another name, in another file or
    format, re-saved with another header, has the same one."""
    digest = hashlib.blake2b(str(array.shape).encode(), digest_size=16)
    digest.update(np.ascontiguousarray(array, np.float32).data)
    return digest.hexdigest()


def repeated_scan(digests: Iterable[tuple[K, str]]) -> tuple[K, K] | None:
    """The first key whose ``voxel_digest`` an earlier key has, with that earlier key; None when all differ."""
    seen: dict[str, K] = {}
    for key, digest in digests:
        if digest in seen:
            return key, seen[digest]
        seen[digest] = key
    return None


def check_distinct(volumes: Mapping[str, Volume]) -> None:
    """Refuse one scan given as two modalities (a file copied under another name): the model would take
    one contrast for another without a word. ``volumes``: modality -> volume."""
    repeated = repeated_scan((m, voxel_digest(v.array)) for m, v in volumes.items())
    if repeated:
        modality, first = repeated
        raise InputError(f"{volumes[modality].source} (given as {modality}) holds the same voxels as "
                         f"{volumes[first].source} (given as {first}): one of them is the wrong file")


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


def check_reference(inputs: Mapping[str, Volume], reference: str) -> None:
    """Refuse a reference (``--resample-to``) that names no input: registration and resampling both need its grid."""
    if reference not in inputs:
        raise InputError(f"reference modality {reference!r} is not among the inputs ({', '.join(inputs)})")


def align(inputs: Mapping[str, Volume], reference: str, *, resample: bool = False,
          masks: Mapping[str, Volume] | None = None) -> tuple[dict[str, Volume], dict[str, Volume]]:
    """Put every input (and mask) on the grid of ``inputs[reference]``.

    Without ``resample`` a grid mismatch is an ``InputError`` naming both files and the
    differences; with it, images are resampled linearly and masks by nearest neighbour.
    """
    check_reference(inputs, reference)
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
