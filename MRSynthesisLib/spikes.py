"""Isolated voxels far outside an image's range (spikes), found and replaced before a model sees them.

A handful of voxels orders of magnitude brighter than the rest (a conversion or reconstruction error,
a corrupted copy) do two kinds of harm: the card's normalisation divides by the brain's mean, which
they raise, and the network spreads each one over its receptive field. Measured ad hoc (bundled model,
patient07 T1 + T2 -> FLAIR, SSIM in the brain against the real FLAIR; 0.692 with the clean T2): 200
random T2 brain voxels (0.013 % of the brain) set to 5 / 10 / 30 / 100 times its 99.9th percentile
gave 0.672 / 0.654 / 0.591 / 0.454, 20 voxels at 1000 times 0.585, 2000 at 10 times 0.441.

What is a spike: a voxel whose magnitude exceeds ``SPIKE_FACTOR`` times the 99th percentile of the
image's positive voxels. Every shared scan (12: MS T1, T1c, T2, FLAIR; BraTS t1n, t1c, t2w, t2f) peaks at
1.25-3.83 times that percentile (the T1s' brightest fat and vessels), the MNI template at 1.10, so 6 leaves
real tissue alone with a margin; that is 3.2-5.5 times their 99.9th percentile, below which the harm
measured above is small. The 99th, not the 99.9th: 2000 spikes (0.13 % of the brain) lift the 99.9th
percentile among themselves and would hide. Magnitudes count on both sides so that a few
hugely negative voxels are repaired rather than read as a z-scored image (``validation.check_magnitude``).

A spike is replaced by the median of the voxels around it (``NEIGHBOURHOOD`` voxels wide) that are not
spikes: the value its surroundings say it should have. Where a spike has no such neighbour, the voxels
far outside the range form a block (a fill value outside a field of view such as -32768, burned-in
text), which is not noise to smooth over: the image is refused, naming it.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError
from .volume import Volume

SPIKE_FACTOR = 6.0
SPIKE_PERCENTILE = 99.0
NEIGHBOURHOOD = 5  # voxels: the cube around a spike whose other voxels give its value
CHUNK = 4096  # spikes whose neighbourhoods are gathered at once (4096 x 125 neighbours: ~16 MB)


def spike_voxels(array: np.ndarray) -> tuple[np.ndarray, float]:
    """Where ``|array|`` exceeds ``SPIKE_FACTOR`` times the ``SPIKE_PERCENTILE`` of its positive voxels,
    and that limit (inf when the image has no positive voxel: nothing is a spike then)."""
    positive = array[array > 0]
    if positive.size == 0:
        return np.zeros(array.shape, bool), float("inf")
    limit = SPIKE_FACTOR * float(np.percentile(positive, SPIKE_PERCENTILE))
    return (array > limit) | (array < -limit), limit  # no float temporary of the image's size (np.abs)


def _neighbour_medians(array: np.ndarray, spikes: np.ndarray) -> np.ndarray | None:
    """Per spike (``np.argwhere`` order), the median of the non-spike voxels in the ``NEIGHBOURHOOD`` cube around
    it; None as soon as one spike has none. In chunks of ``CHUNK`` spikes: a fill value over a million voxels
    would otherwise gather gigabytes of neighbours."""
    half = NEIGHBOURHOOD // 2
    steps = np.arange(-half, half + 1)
    offsets = np.stack(np.meshgrid(steps, steps, steps, indexing="ij"), -1).reshape(-1, 3)
    shape = np.array(array.shape)
    points = np.argwhere(spikes)
    medians = np.empty(len(points))
    for start in range(0, len(points), CHUNK):
        around = points[start:start + CHUNK, None, :] + offsets[None, :, :]  # (spikes, neighbours, 3)
        inside = ((around >= 0) & (around < shape)).all(-1)
        index = tuple(np.clip(around, 0, shape - 1)[..., k] for k in range(3))
        values = np.where(inside & ~spikes[index], array[index], np.nan)
        if np.isnan(values).all(1).any():
            return None
        medians[start:start + CHUNK] = np.nanmedian(values, axis=1)
    return medians


def remove_spikes(volume: Volume) -> tuple[Volume, str | None]:
    """``volume`` with its spikes replaced by their neighbours' median, and a note saying so (None and the
    volume itself when it has none). Raises ``InputError`` when they form a block (see the module)."""
    spikes, limit = spike_voxels(volume.array)
    count = int(np.count_nonzero(spikes))
    if not count:
        return volume, None
    array = volume.array
    medians = _neighbour_medians(array, spikes)
    if medians is None:
        raise InputError(f"{volume.source}: {count} voxels lie beyond {SPIKE_FACTOR:g} times its "
                         f"{SPIKE_PERCENTILE:g}th percentile (|value| above {limit:.4g}, up to "
                         f"{float(np.abs(array[spikes]).max()):.4g}), some in a block at least {NEIGHBOURHOOD} "
                         "voxels wide: a fill value or a mark, not MR signal; give the image without it")
    repaired = array.copy()
    repaired[spikes] = medians.astype(array.dtype)
    peak = float(np.abs(array[spikes]).max()) / (limit / SPIKE_FACTOR)
    several = count > 1
    note = (f"{volume.source}: {count} isolated voxel{'s' if several else ''} far outside its range (up to "
            f"{peak:.3g} times its {SPIKE_PERCENTILE:g}th percentile, where tissue stays below {SPIKE_FACTOR:g} times "
            f"it) {'were' if several else 'was'} replaced by the median of {'their' if several else 'its'} "
            "neighbours: spikes would skew its normalisation and the synthesis around them")
    return volume.with_array(repaired), note
