"""Where the 3D models' training patches are cut, and how input and target line up.

A sample is an input window of ``size``^3 voxels and, as target, its central crop of
``size - 2 * margin`` voxels: the output voxels whose whole receptive field lies in the
window. Windows are cut from the normalised volume in the file's (z, y, x) order, the order
the inference tiler (``MRSynthesisLib.tiling``) feeds the network, and may reach past the
volume's edge, where they read 0: the background value of normalised images, and the value
the tiler pads with, so a window at the border sees what inference sees there.

Klingelhoefer & Rousseau (Sec. 3.2), ``margin`` = CROP = 11, 38^3 in, 16^3 out: patches "with
a step of 16", kept when their centre voxel is in the brain mask, the target being the 16^3
patch centred on the same point. The paper does not place the grid; here the target blocks
start at voxel 0 and every ``step`` voxels, so with step 16 = the target size they tile the
volume without overlap, like the tiler's output cores. The centre voxel is index
``target // 2`` of the block (= ``size // 2`` of the window: 19 of 38; the paper's
"(16,16,16)" names no voxel of a 38^3 patch that is its centre).

Wei et al. train on whole 208x256x40 images; a whole 182x218x182 volume through 64-filter
convolutions does not fit one CPU step, so the FCN is trained on random windows whose centre
is a random brain voxel (every brain voxel equally likely, which weights subjects by brain
size as whole-image training does). The FCN is 'same'-padded: its output has the window's
size, but within ``margin`` = HALO voxels of the window's edge an output voxel sees the zero
padding where the whole-volume pass (the one inference computes, exactly, with its tiler)
sees tissue. Training those voxels would fit a function inference never evaluates, so the
loss covers only the central crop, exactly as for the autoencoder; at the volume's own
border the window reads zeros there too, which is what the whole-volume pass pads with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .volumes3d import Volume3D

Start = tuple[int, int, int]


@dataclass(frozen=True)
class Patch:
    """An input window: which volume, and its first voxel (may be negative: outside is 0)."""

    volume: int
    start: Start


def window(array: np.ndarray, start: Sequence[int], size: int) -> np.ndarray:
    """``array[start : start + size]`` on each axis as a new float32 array, 0 outside ``array``."""
    out = np.zeros((size,) * array.ndim, np.float32)
    source, target = [], []
    for begin, length in zip(start, array.shape):
        low, high = max(begin, 0), min(begin + size, length)
        if high <= low:
            return out
        source.append(slice(low, high))
        target.append(slice(low - begin, high - begin))
    out[tuple(target)] = array[tuple(source)]
    return out


@dataclass(frozen=True)
class Geometry3D:
    """Where a window's voxels are read: offsets from its centre flipped along ``flips``, then mapped by
    ``matrix`` (rotation divided by zoom), in the volume's (z, y, x) voxel axes (``augment3d`` draws them)."""

    flips: tuple[bool, bool, bool]
    matrix: tuple[tuple[float, ...], ...]

    @property
    def resamples(self) -> bool:
        return not np.allclose(self.matrix, np.eye(3))


def window_through(array: np.ndarray, start: Sequence[int], size: int, geometry: Geometry3D,
                   nearest: bool = False) -> np.ndarray:
    """The ``size``^3 window at ``start`` read through ``geometry`` about the window's centre; 0 outside
    ``array``. Flips alone are exact (indexing)."""
    if not geometry.resamples:
        flipped = [axis for axis, flip in enumerate(geometry.flips) if flip]
        return np.ascontiguousarray(np.flip(window(array, start, size), flipped))
    offsets = np.arange(size) - (size - 1) / 2
    grid = np.stack(np.meshgrid(offsets, offsets, offsets, indexing="ij"), -1) * np.where(geometry.flips, -1.0, 1.0)
    positions = np.asarray(start, float) + (size - 1) / 2 + grid @ np.asarray(geometry.matrix).T
    normalised = 2 * positions / np.maximum(np.asarray(array.shape) - 1, 1) - 1
    points = torch.from_numpy(normalised[..., ::-1].copy()).float()[None]  # grid_sample takes (x, y, z)
    out = F.grid_sample(torch.from_numpy(array)[None, None].float(), points, mode="nearest" if nearest else "bilinear",
                        padding_mode="zeros", align_corners=True)
    return out[0, 0].numpy()


def grid_patches(brain: np.ndarray, size: int, margin: int, step: int, volume: int = 0) -> list[Patch]:
    """Klingelhoefer's grid: target blocks every ``step`` voxels from voxel 0, kept when the
    block's centre voxel is in ``brain``; returns their input windows (block grown by ``margin``)."""
    target = size - 2 * margin
    centre = target // 2
    ranges = [range(0, n - centre, step) for n in brain.shape]  # the centre voxel must lie in the volume
    return [Patch(volume, (z - margin, y - margin, x - margin))
            for z in ranges[0] for y in ranges[1] for x in ranges[2]
            if brain[z + centre, y + centre, x + centre]]


def centred_patch(centre: Sequence[int], size: int, margin: int, volume: int = 0) -> Patch:
    """The window whose target block has its centre voxel (index ``target // 2``) at ``centre``."""
    half = (size - 2 * margin) // 2 + margin
    return Patch(volume, tuple(int(c) - half for c in centre))  # type: ignore[arg-type]


class GridSampler:
    """Klingelhoefer's patches, pooled over the training volumes, shuffled anew for each pass.

    Sample ``k`` (counted over the whole run) is entry ``k mod N`` of the permutation drawn
    for pass ``k // N`` from (seed, stream, pass): each pass sees every patch once, as the
    paper's shuffled epochs do, and the sample is a pure function of k, so a resumed run
    draws exactly what an uninterrupted one would.
    """

    def __init__(self, patches: Sequence[Patch], seed: int, stream: int) -> None:
        if not patches:
            raise ValueError("no grid patch has its centre voxel in a brain mask")
        self.patches, self.seed, self.stream = list(patches), seed, stream
        self._shuffle: tuple[int, np.ndarray] | None = None  # the current pass's order, drawn once

    def _order(self, shuffle: int) -> np.ndarray:
        if self._shuffle is None or self._shuffle[0] != shuffle:
            order = np.random.default_rng([self.seed, self.stream, shuffle]).permutation(len(self.patches))
            self._shuffle = (shuffle, order)
        return self._shuffle[1]

    def __call__(self, k: int) -> Patch:
        return self.patches[int(self._order(k // len(self.patches))[k % len(self.patches)])]

    def fixed(self, count: int) -> list[Patch]:
        """``count`` patches evenly spread over the grid (in volume and scan order): a validation set."""
        index = np.unique(np.linspace(0, len(self.patches) - 1, min(count, len(self.patches))).round().astype(int))
        return [self.patches[i] for i in index]


class RandomCropSampler:
    """Wei's windows: sample ``k`` is a uniformly drawn brain voxel of all the volumes, from (seed, stream, k).

    ``volumes``: the index each of ``brains`` has in the run's volume list (default 0, 1, ...), for a
    sampler over some of the volumes only (those holding a step's inputs, ``incomplete_subjects``).
    """

    def __init__(self, brains: Sequence[np.ndarray], size: int, margin: int, seed: int, stream: int,
                 volumes: Sequence[int] | None = None) -> None:
        self.voxels = [np.flatnonzero(b) for b in brains]
        if not all(len(v) for v in self.voxels):
            raise ValueError("a volume has an empty brain mask")
        self.shapes = [b.shape for b in brains]
        self.bounds = np.cumsum([len(v) for v in self.voxels])
        self.volumes = list(range(len(brains))) if volumes is None else list(volumes)
        self.size, self.margin, self.seed, self.stream = size, margin, seed, stream

    def __call__(self, k: int) -> Patch:
        pick = int(np.random.default_rng([self.seed, self.stream, k]).integers(self.bounds[-1]))
        volume = int(np.searchsorted(self.bounds, pick, side="right"))
        offset = pick - (int(self.bounds[volume - 1]) if volume else 0)
        centre = np.unravel_index(self.voxels[volume][offset], self.shapes[volume])
        return centred_patch(centre, self.size, self.margin, self.volumes[volume])

    def fixed(self, count: int) -> list[Patch]:
        """The first ``count`` samples of this sampler's stream: a fixed validation set."""
        return [self(k) for k in range(count)]


@dataclass
class PatchBatch:
    """Network inputs (n, 1, S, S, S) by modality, targets (n, 1, T, T, T), the lesion windows, and
    ``present`` (n, outputs): 1 where the sample's subject holds that output, else its target is 0 and
    unseen by the cost (``incomplete_subjects``); None when every sample holds every output."""

    inputs: dict[str, torch.Tensor]
    targets: dict[str, torch.Tensor]
    lesion: torch.Tensor | None
    present: torch.Tensor | None = None

    def to(self, device: torch.device) -> PatchBatch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return PatchBatch({k: move(v) for k, v in self.inputs.items()}, {k: move(v) for k, v in self.targets.items()},
                          move(self.lesion), move(self.present))


def cut_batch(volumes: Sequence[Volume3D], patches: Sequence[Patch], *, size: int, margin: int,
              inputs: Sequence[str], outputs: Sequence[str], lesion_input: bool,
              geometries: Sequence[Geometry3D | None] | None = None) -> PatchBatch:
    """Cut ``patches``: ``inputs`` (and the lesion mask) over the window, ``outputs`` over its central crop.
    Every patch's volume must hold ``inputs``; an output it lacks is a zero target marked in ``present``.
    ``geometries``: per patch, None or how to read its window (``window_through``; the target is then the
    central crop of the window so read)."""
    target = size - 2 * margin
    lacking = sorted({volumes[p.volume].name for p in patches
                      if not all(m in volumes[p.volume].images for m in inputs)})
    if lacking:
        raise ValueError(f"{', '.join(lacking)} lack some of the inputs {list(inputs)}")

    def stack(name: str | None, inner: bool) -> torch.Tensor:
        arrays = []
        for index, patch in enumerate(patches):
            volume = volumes[patch.volume]
            start = [s + margin for s in patch.start] if inner else patch.start
            if name is not None and name not in volume.images:  # an output it lacks
                arrays.append(np.zeros((target if inner else size,) * 3, np.float32))
                continue
            array = volume.lesion if name is None else volume.images[name]
            geometry = geometries[index] if geometries is not None else None
            if geometry is None:
                arrays.append(window(array, start, target if inner else size))
            else:
                read = window_through(array, patch.start, size, geometry, nearest=name is None)
                arrays.append(read[margin:size - margin, margin:size - margin, margin:size - margin] if inner else read)
        return torch.from_numpy(np.stack(arrays)[:, None])

    present = [[m in volumes[p.volume].images for m in outputs] for p in patches]
    return PatchBatch({m: stack(m, False) for m in inputs}, {m: stack(m, True) for m in outputs},
                      stack(None, False) if lesion_input else None,
                      None if all(map(all, present)) else torch.tensor(present, dtype=torch.float32))
