"""Whole-volume inference for 3D networks in tiles that reproduce the single-window result.

Why not MONAI's ``sliding_window_inference``: it blends overlapping windows with constant or
Gaussian weights. A convolutional network's output near a window's edge is computed from
padding instead of the neighbouring voxels, so blending averages wrong values into the
result: seams are attenuated, not removed, and the usual 25 % overlap doubles the work of a
64^3 window. A network whose receptive field reaches ``HALO`` voxels gives the exact
whole-volume value at every voxel whose ``HALO``-neighbourhood lies inside its window. So
tiles here overlap by exactly that halo and every output voxel is taken from the one tile
whose core holds it: the result equals one pass over the whole volume (to floating-point
summation order), with no blending and little wasted work. Valid-convolution networks
(Klingelhoefer: 38^3 in, 16^3 out) also return less than they take, which
``sliding_window_inference`` does not model (it assumes an output window the size of the
input window, or a zoom of it).

The network declares ``HALO`` (input voxels each side an output voxel depends on),
``CROP`` (voxels each side its output is smaller than its input: 0 for 'same' padding) and
``SIZE_MULTIPLE`` (pooling grid: tile cores start on multiples of it, so every tile pools on
the whole volume's grid). A 'same'-padded network (``CROP`` 0) needs ``HALO`` voxels of
context around a tile's core, and is run on windows clipped at the volume's border, where
its own padding then matches the whole-volume pass. A valid network computes each output
from exactly the window it is given, so a tile reads its core grown by ``CROP``; it runs on
the volume zero-padded by ``CROP`` (the background value of normalised inputs).

P3S saliency is computed tile by tile: each tile's objective covers only its core, so the
objectives sum to the whole-volume objective and the input gradients, accumulated with
their signs over the overlapping halos before the absolute value is taken, equal the
whole-volume gradient. Cost: one forward and one backward pass per tile and target.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .inference import (
    RunSettings,
    SaliencyResult,
    _run_in_batches,
    input_gradients_only,
)


@dataclass(frozen=True)
class Receptive:
    """What a 3D network needs around an output voxel; read from the network's attributes."""

    halo: int
    crop: int
    multiple: int

    @classmethod
    def of(cls, network: nn.Module) -> Receptive:
        halo, crop, multiple = (int(getattr(network, a, d))
                                for a, d in (("HALO", -1), ("CROP", 0), ("SIZE_MULTIPLE", 1)))
        if halo < crop or crop < 0 or multiple < 1:
            raise ValueError(f"{type(network).__name__} must declare HALO >= CROP >= 0 and SIZE_MULTIPLE >= 1 "
                             f"to be tiled exactly (got HALO={halo}, CROP={crop}, SIZE_MULTIPLE={multiple})")
        receptive = cls(halo, crop, multiple)
        if receptive.context % multiple:
            raise ValueError(f"{type(network).__name__}: a 'same'-padded network's HALO must be a multiple of "
                             "SIZE_MULTIPLE, or its tiles would pool on another grid")
        return receptive

    @property
    def context(self) -> int:
        """Input voxels a tile reads beyond its core and the network's own crop."""
        return self.halo if self.crop == 0 else 0


@dataclass(frozen=True)
class Tile:
    core: tuple[slice, ...]  # output voxels this tile owns, in the (padded-to-multiple) output grid
    window: tuple[slice, ...]  # input voxels it reads, in the CROP-padded input grid
    offset: tuple[int, ...]  # where ``core`` starts inside the tile's output


def plan_tiles(shape: Sequence[int], core: Sequence[int], receptive: Receptive) -> list[Tile]:
    """Tiles covering an output grid of ``shape`` (already a multiple of ``receptive.multiple``)."""
    extra = receptive.context
    axes = []
    for length, size in zip(shape, core):
        size = max(receptive.multiple, size - size % receptive.multiple)
        spans = []
        for start in range(0, length, size):
            stop = min(length, start + size)
            first, last = max(0, start - extra), min(length, stop + extra)
            spans.append((slice(start, stop), slice(first, last + 2 * receptive.crop), start - first))
        axes.append(spans)
    return [Tile(tuple(s[0] for s in combo), tuple(s[1] for s in combo), tuple(s[2] for s in combo))
            for combo in itertools.product(*axes)]


def run_tiled(network: nn.Module, inputs: Mapping[str, np.ndarray], targets: Sequence[str], *,
              settings: RunSettings, mask: np.ndarray, tile: Sequence[int] = (96, 96, 96),
              lesion: np.ndarray | None = None, saliency: bool = False,
              saliency_references: Mapping[str, np.ndarray] | None = None) -> SaliencyResult:
    """Synthesise ``targets`` from normalised (z, y, x) ``inputs`` with a 3D network, tile by tile.

    ``tile`` is each tile's core (output) size. Work is limited to the bounding box of
    ``mask`` grown by the receptive field (its start aligned to the pooling grid), and tiles
    whose core holds no ``mask`` voxel are skipped: every ``mask`` voxel still sees exactly
    the context it sees in a whole-volume pass, so the result is exact wherever ``mask`` is
    set (outside the box it is 0). With ``saliency``, also returns per-input |gradient| maps
    (see ``SaliencyResult``); input voxels outside the box are farther than the receptive
    field from every ``mask`` voxel, so their gradient is exactly 0.
    """
    receptive = Receptive.of(network)
    box = _working_box(mask, receptive)
    if any(b.start > 0 or b.stop < s for b, s in zip(box, mask.shape)):
        inner = run_tiled(network, {n: a[box] for n, a in inputs.items()}, targets, settings=settings,
                          mask=mask[box], tile=tile, lesion=None if lesion is None else lesion[box],
                          saliency=saliency,
                          saliency_references={t: r[box] for t, r in (saliency_references or {}).items()})

        def paste(part: np.ndarray) -> np.ndarray:
            whole = np.zeros(mask.shape, np.float32)
            whole[box] = part
            return whole

        return SaliencyResult({t: paste(a) for t, a in inner.outputs.items()},
                              {t: {n: paste(a) for n, a in per.items()} for t, per in inner.saliency.items()},
                              inner.squared_error)
    names = list(inputs)
    shape = mask.shape
    grid = tuple(math.ceil(s / receptive.multiple) * receptive.multiple for s in shape)
    pad = [(receptive.crop, receptive.crop + g - s) for s, g in zip(shape, grid)]
    padded = {n: np.pad(np.asarray(a, np.float32), pad) for n, a in inputs.items()}
    padded_lesion = None if lesion is None else np.pad(lesion.astype(np.float32), pad)
    out_pad = [(0, g - s) for s, g in zip(shape, grid)]
    grid_mask = np.pad(mask.astype(bool), out_pad)
    references = {t: np.pad(np.asarray(r, np.float32), out_pad) for t, r in (saliency_references or {}).items()}
    tiles = [t for t in plan_tiles(grid, tile, receptive) if grid_mask[t.core].any()]
    # tiles of one shape can share a batch; sorting keeps shapes together
    tiles.sort(key=lambda t: tuple(s.stop - s.start for s in t.window))

    outputs = {t: np.zeros(grid, np.float32) for t in targets}
    gradients = {t: {n: np.zeros(padded[n].shape, np.float32) for n in names} for t in targets} if saliency else {}
    squared = {t: 0.0 for t in references}

    def tensor(array: np.ndarray, picked: Sequence[Tile], region: str) -> torch.Tensor:
        stack = np.stack([array[getattr(t, region)] for t in picked])[:, None]
        return torch.from_numpy(np.ascontiguousarray(stack)).to(settings.device)

    def run_group(picked: list[Tile], added: list[tuple[np.ndarray, tuple[slice, ...], np.ndarray]],
                  added_squared: dict[str, float]) -> None:
        """Outputs set in place; gradient windows and squared errors into ``added``/``added_squared``."""
        x = {n: tensor(padded[n], picked, "window") for n in names}
        les = None if padded_lesion is None else tensor(padded_lesion, picked, "window")
        if not saliency:
            with torch.inference_mode(), settings.autocast():
                result = network(x, lesion=les, targets=list(targets))
            for t in targets:
                prediction = result[t][:, 0].float().cpu().numpy()
                for k, item in enumerate(picked):
                    outputs[t][item.core] = prediction[k][_core_in_tile(item)]
            return
        for value in x.values():
            value.requires_grad_(True)
        with torch.enable_grad(), settings.autocast():
            result = network(x, lesion=les, targets=list(targets))
        owned = torch.zeros(result[targets[0]].shape, dtype=torch.float32, device=settings.device)
        for k, item in enumerate(picked):  # each tile's objective covers its core's brain voxels only
            owned[(k, 0, *_core_in_tile(item))] = torch.from_numpy(grid_mask[item.core].astype(np.float32))
        for i, t in enumerate(targets):
            prediction = result[t].float()
            for k, item in enumerate(picked):
                outputs[t][item.core] = prediction[k, 0][_core_in_tile(item)].detach().cpu().numpy()
            if t in references:
                reference = torch.zeros_like(prediction)
                for k, item in enumerate(picked):
                    reference[(k, 0, *_core_in_tile(item))] = torch.from_numpy(references[t][item.core]).to(reference)
                objective = ((prediction - reference) ** 2 * owned).sum()
                added_squared[t] = added_squared.get(t, 0.0) + float(objective.detach())
            else:
                objective = (prediction * owned).sum()
            grads = torch.autograd.grad(objective, [x[n] for n in names], retain_graph=i < len(targets) - 1,
                                        allow_unused=True)
            for n, g in zip(names, grads):
                if g is None:
                    continue
                g = g[:, 0].float().cpu().numpy()
                added.extend((gradients[t][n], item.window, g[k]) for k, item in enumerate(picked))

    def run_batch(index: list[int]) -> Callable[[], None]:
        """The batch's tiles, group by group; its sums are added only once all of it ran (``_run_in_batches``:
        a batch that runs out of memory part way is run again)."""
        picked = [tiles[i] for i in index]
        added: list[tuple[np.ndarray, tuple[slice, ...], np.ndarray]] = []
        added_squared: dict[str, float] = {}
        for _, group in itertools.groupby(picked, key=lambda t: tuple(s.stop - s.start for s in t.window)):
            settings.check_cancel()
            run_group(list(group), added, added_squared)

        def commit() -> None:
            for whole, window, part in added:
                whole[window] += part
            for t, value in added_squared.items():
                squared[t] += value

        return commit

    with input_gradients_only(network):
        _run_in_batches(network, list(range(len(tiles))), run_batch, settings, "tiles", channels_last=False)

    inside = tuple(slice(0, s) for s in shape)
    unpadded = tuple(slice(receptive.crop, receptive.crop + s) for s in shape)
    maps = {t: {n: np.abs(g[unpadded]) for n, g in per.items()} for t, per in gradients.items()}
    return SaliencyResult({t: a[inside] for t, a in outputs.items()}, maps, squared)


def _working_box(mask: np.ndarray, receptive: Receptive) -> tuple[slice, ...]:
    """Bounding box of ``mask`` grown by the halo, its start on the pooling grid (whole volume if empty)."""
    if not mask.any():
        return tuple(slice(0, s) for s in mask.shape)
    found = np.argwhere(mask)
    low = np.maximum(found.min(0) - receptive.halo, 0)
    low -= low % receptive.multiple
    high = np.minimum(found.max(0) + 1 + receptive.halo, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high))


def _core_in_tile(item: Tile) -> tuple[slice, ...]:
    return tuple(slice(o, o + c.stop - c.start) for o, c in zip(item.offset, item.core))
