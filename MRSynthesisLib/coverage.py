"""Inputs that hold data over part of the brain only: a slab, a smaller field of view, a tighter skull-stripping mask.

Resampled onto another input's grid (``--resample-to``, the panel's resample box) or acquired
as a slab, an input is exactly zero where it was not measured. Fed to a network as it is,
those zeros read as a black brain: FLAIR from T1 and T2 with T2 zeroed over the top third of
patient07's brain came out with SSIM 0.13 there, against 0.78 from T1 alone
(``training/experiments/partial_coverage.py``, docs/results/partial_coverage). A model that
takes any subset of its inputs can instead leave an input out wherever it holds no data;
``ChartsiasMIMO.fuse`` does that pixel by pixel from the masks made here.

Exact zeros inside the brain are the mark of "not measured": skull-stripped scans hold
positive values throughout the brain (at most 0.013 % of the shared data's brain voxels are 0,
single voxels of a contrast-enhanced T1). But an input whose intensities were clipped at a low
percentile and shifted to 0 holds zeros in its darkest tissue too, scattered through sulci and
ventricles: taken for missing data, 1 % of patient07's T1 clipped that way would have left T1 out
of 14 % of the brain. So the missing region is zeros that form a solid block (they survive an
opening by ``SOLID_VOXELS``) reaching the edge of the brain and fill most of the brain around them
(``MIN_FILL``), as everything beyond a slab's or a field of view's limit does; an input is partial
when that region exceeds ``PARTIAL_FRACTION`` of the brain. A plane of the grid in which an input is 0
over all of the brain, beside planes in which it holds data, counts whatever its size
(``empty_sections``): no scan is 0 over a whole brain section, but a slab
that misses the top few millimetres of the brain leaves too few voxels for the rules above (6 mm of
patient07's vertex, 0.3 % of its brain, came out with SSIM 0.27 there, against 0.82 from T1 alone: the
bundled model, T1 + T2 -> FLAIR, measured ad hoc).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

PARTIAL_FRACTION = 0.01
SOLID_VOXELS = 2  # the opening's iterations (3 x 3 x 3 cube): zero regions thinner than 5 voxels are tissue
# Of the brain in its bounding box, a region beyond a slab's or field of view's limit fills 1.00 (an
# axis-aligned third cut: patient07, patient19, BraTS) or 0.45-0.54 (cut obliquely at 45 degrees); the
# zeros of T2 clipped at its 5th or 10th percentile, connected through the dark white matter, 0.02-0.10
# (measured once on those subjects when the rule was set; docs/results/partial_coverage shows what the
# rule then finds).
MIN_FILL = 0.25
# A brain section next to a slab's limit holds data throughout (0.013 % of the shared scans' brain voxels are
# 0); one next to the outer sections of an image clipped at a low percentile is 0 in 27 % of its brain or more.
HELD_SECTION_ZEROS = 0.05
# Where an input's data end, its encoder sees zeros within its receptive field: it is left out this
# many voxels (in the slice plane of a 2D model) before its data end wherever another input covers.
# Measured where the limit crosses the slice plane (docs/results/partial_coverage: the field of view
# and oblique cuts of three subjects), in the 8 voxels of kept brain next to the cut, mean over the
# six: MSE with 0 / 4 / 8 / 16 voxels 0.0620 / 0.0610 / 0.0632 / 0.0634, SSIM 0.617 / 0.641 / 0.642 /
# 0.640. 4 has the lowest MSE (best in 4 of the 6), SSIM within 0.001 of the best.
EDGE_VOXELS = 4
# An input skull-stripped with a tighter mask than the brain (the other inputs' foreground, or a given brain mask) is
# 0 in a shell around the brain's edge, and fed so the network reads it as a dark rim: patient07 / patient19 / BraTS
# with T1 stripped 2 voxels tighter than T2, FLAIR from T1 + T2 scored SSIM 0.639 / 0.589 / 0.545 in the brain
# against 0.692 / 0.620 / 0.559 with the T1 as given; left out there, 0.681 / 0.610 / 0.543 (ad hoc, the bundled
# model). Taken as such when the input is 0 over this share of the brain's outermost voxel layer: 1.00 for masks 1
# or 2 voxels tighter; 0.00 for the shared scans as given; at most 0.60 for images clipped at their 3rd-10th
# percentile (dark CSF on the surface), which are data. Masks tighter on one side only (0.3-0.4 of the layer) are
# not taken: locally they look like clipped CSF. A local rule (surface patches 0 over 90 % of a 7-voxel window)
# that took them changed SSIM by -0.001 to +0.008 there, but also took clipped CSF and lost up to 0.012 (ad hoc).
TIGHTER_MASK_EDGE = 0.9
# Lost sections are the whole brain outline over their planes (1.0); a band of them carried through a registration
# tilts by a fraction of a voxel and still covers nearly all of it. Lesser shares, e.g. a notch in the brain's side,
# are said as beyond a field of view.
THROUGH_THE_BRAIN = 0.9


@dataclass
class Coverage:
    """Which inputs to use where; empty dicts when every input covers the whole brain."""

    used: dict[str, np.ndarray] = field(default_factory=dict)  # partial input -> voxels it is used in
    held: dict[str, np.ndarray] = field(default_factory=dict)  # partial input -> voxels it holds data in
    uncovered: np.ndarray | None = None  # brain voxels that no input holds data in (None: there are none)
    notes: list[str] = field(default_factory=list)

    @property
    def partial(self) -> bool:
        return bool(self.used)


def empty_sections(zeros: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """The brain voxels of the grid's planes (along any axis) in which every brain voxel is in ``zeros``, where
    each run of such planes borders only on planes that hold data (``HELD_SECTION_ZEROS``): at a slab's limit
    the next section is whole, while the outermost sections of an image clipped at a low percentile are 0
    throughout too, and the sections next to them 0 in 27-99 % of their brain (the shared scans clipped at
    their 3rd, 5th or 10th percentile)."""
    found = np.zeros_like(brain)
    for axis in range(3):
        others = tuple(k for k in range(3) if k != axis)
        brain_count = np.count_nonzero(brain, axis=others)
        zero_count = np.count_nonzero(zeros, axis=others)
        empty = (brain_count > 0) & (zero_count == brain_count)
        held = (brain_count > 0) & (zero_count <= HELD_SECTION_ZEROS * brain_count)
        runs, count = ndi.label(empty)
        for run in range(1, count + 1):
            planes = np.flatnonzero(runs == run)
            beside = [k for k in (planes[0] - 1, planes[-1] + 1) if 0 <= k < len(empty) and brain_count[k] > 0]
            if beside and all(held[k] for k in beside):
                section = np.zeros(len(empty), bool)
                section[planes] = True
                found |= brain & np.expand_dims(section, others)
    return found


def brain_edge(brain: np.ndarray) -> np.ndarray:
    """The brain's outermost layer of voxels (a face neighbour outside it)."""
    return brain & ~ndi.binary_erosion(brain, border_value=0)


def outside_own_mask(image: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """The brain voxels outside ``image``'s own skull-stripping mask (its non-zero voxels, holes filled), when that
    mask is tighter than ``brain`` all around: ``image`` is 0 on ``TIGHTER_MASK_EDGE`` of ``brain_edge``."""
    edge = brain_edge(brain)
    if np.count_nonzero(edge & (image == 0)) < TIGHTER_MASK_EDGE * np.count_nonzero(edge):
        return np.zeros_like(brain)
    return brain & ~ndi.binary_fill_holes(image != 0)


def not_measured(image: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """The brain voxels ``image`` was not measured in: each connected region of its zeros that holds a solid
    block reaching the edge of ``brain`` and fills at least ``MIN_FILL`` of the brain in its bounding box
    (thin parts of such a region, a gyrus cut by a slab, belong to it too), when there are more than
    ``PARTIAL_FRACTION`` of the brain of them, the brain sections in which it is 0 throughout, and the brain beyond
    its own skull-stripping mask where that is tighter than the brain's (``outside_own_mask``)."""
    zeros = brain & (image == 0)
    sections = empty_sections(zeros, brain) | outside_own_mask(image, brain)
    if np.count_nonzero(zeros) <= PARTIAL_FRACTION * np.count_nonzero(brain):
        return sections
    solid = ndi.binary_opening(zeros, np.ones((3, 3, 3), bool), iterations=SOLID_VOXELS)
    edge = brain & ~ndi.binary_erosion(brain, border_value=0)
    labels, _ = ndi.label(zeros)
    reaching = np.unique(labels[edge & solid])
    boxes = ndi.find_objects(labels)
    kept = [r for r in reaching[reaching > 0]
            if np.count_nonzero(labels[boxes[r - 1]] == r) >= MIN_FILL * np.count_nonzero(brain[boxes[r - 1]])]
    region = np.isin(labels, kept)
    if np.count_nonzero(region) <= PARTIAL_FRACTION * np.count_nonzero(brain):
        region[:] = False
    return region | sections


def _held_around_the_brain(held: Mapping[str, np.ndarray], brain: np.ndarray, slice_axis: int | None
                           ) -> dict[str, np.ndarray]:
    """``held`` (inside the brain) extended outside it: there an input holds data where the nearest brain voxel,
    in the slice plane of a 2D model, does. Everything outside the brain is 0, measured or not; the decoders see
    it around the brain's edge, so an input is left out of the background beyond its limit and kept in its own."""
    if slice_axis is None:
        index = ndi.distance_transform_edt(~brain, return_distances=False, return_indices=True)
        return {n: h[tuple(index)] for n, h in held.items()}
    around = {n: np.moveaxis(h.copy(), slice_axis, 0) for n, h in held.items()}  # slice by slice: little memory
    for k, section in enumerate(np.moveaxis(brain, slice_axis, 0)):
        if section.any():  # (a slice without brain is not synthesised)
            index = tuple(ndi.distance_transform_edt(~section, return_distances=False, return_indices=True))
            for h in around.values():
                h[k] = h[k][index]
    return {n: np.moveaxis(h, 0, slice_axis) for n, h in around.items()}


def partial_inputs(inputs: Mapping[str, np.ndarray], brain: np.ndarray,
                   known: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The inputs not measured in part of ``brain``, with where (``not_measured``, and ``known``: regions found
    before the input was resampled, e.g. by ``registration``)."""
    known = known or {}
    regions = {n: not_measured(a, brain) | (brain & known[n] if n in known else False) for n, a in inputs.items()}
    return {n: r for n, r in regions.items() if r.any()}


def percent(fraction: float) -> str:
    """A share of the brain as the notes give it: whole percents, and a decimal below 1 %."""
    value = 100.0 * fraction
    return f"{value:.0f} %" if value >= 1 else f"{value:.1g} %"


def _between_held_sections(region: np.ndarray, brain: np.ndarray) -> bool:
    """Whether ``region`` cuts through the brain along some axis (it covers ``THROUGH_THE_BRAIN`` of the brain's
    outline over its sections) without reaching the brain's first or last section there: slices lost from a 2D
    acquisition (``empty_sections``; after ``--register`` a band across the grid's sections), rather than what
    lies beyond a field of view or a slab, which reaches the brain's first or last section."""
    for axis in range(3):
        others = tuple(k for k in range(3) if k != axis)
        planes = np.flatnonzero(np.any(region, axis=others))
        extent = np.flatnonzero(np.any(brain, axis=others))
        if not planes.size or planes[0] <= extent[0] or planes[-1] >= extent[-1]:
            continue
        span = slice(planes[0], planes[-1] + 1)
        outline = np.count_nonzero(np.moveaxis(brain, axis, 0)[span].any(axis=0))
        if np.count_nonzero(np.moveaxis(region, axis, 0)[span].any(axis=0)) >= THROUGH_THE_BRAIN * outline:
            return True
    return False


def input_coverage(inputs: Mapping[str, np.ndarray], brain: np.ndarray, sources: Mapping[str, str], *,
                   slice_axis: int | None, edge: int = EDGE_VOXELS,
                   known: Mapping[str, np.ndarray] | None = None) -> Coverage:
    """Coverage of each of ``inputs`` ((z, y, x) arrays) inside ``brain``; ``sources`` names them in notes.

    ``slice_axis``: the array axis a 2D model slices along (its encoders see nothing across it, so
    the edge margin stays in the slice plane); None for a 3D model. ``known``: per input, voxels already known
    to hold no data (``partial_inputs``)."""
    brain_voxels = int(np.count_nonzero(brain))
    beyond = partial_inputs(inputs, brain, known)
    partial = list(beyond)
    if not partial:
        return Coverage()
    holds = _held_around_the_brain({n: brain & ~beyond[n] for n in partial}, brain, slice_axis)
    outer = brain_edge(brain)
    structure = ndi.generate_binary_structure(3, 1)
    if slice_axis is not None:
        np.moveaxis(structure, slice_axis, 0)[[0, 2]] = False  # no growth across slices
    coverage = Coverage()
    for n in partial:
        near = ndi.binary_dilation(~holds[n], structure, iterations=edge) if edge > 0 else ~holds[n]
        coverage.held[n] = holds[n]
        coverage.used[n] = holds[n] & ~near
        share = percent(np.count_nonzero(beyond[n]) / brain_voxels)
        others = [m for m in inputs if m != n]
        rest = "+".join(others)
        where = " alone" if len(partial) < len(inputs) else (  # every input partial: the others not everywhere
            " where it holds data" if len(others) == 1 else " where they hold data")
        if np.count_nonzero(beyond[n] & outer) >= TIGHTER_MASK_EDGE * np.count_nonzero(outer):
            place = ("in a shell around its edge, as if skull-stripped with a tighter mask than the brain taken "
                     "(the other inputs' foreground, or the brain mask given)")
        elif _between_held_sections(beyond[n], brain):
            place = "in sections lost between sections that hold data"
        else:
            place = "outside its field of view or slab"
        coverage.notes.append(f"{sources[n]}: holds no data (zeros) in {share} of the brain, {place}; "
                              + (f"synthesised there from {rest}{where}" if rest else "nothing is synthesised there"))
    if len(partial) == len(inputs):  # no input covers the whole brain
        held_by_any = np.logical_or.reduce([holds[n] for n in partial])
        lost = held_by_any & ~np.logical_or.reduce([coverage.used[n] for n in partial])
        for n in partial:  # where the margin took every input away, those holding data are used after all
            coverage.used[n] |= holds[n] & lost
        uncovered = brain & ~held_by_any
        if uncovered.any():
            coverage.uncovered = uncovered
            if len(inputs) > 1:
                share = 100.0 * np.count_nonzero(uncovered) / brain_voxels
                coverage.notes.append(f"{share:.1f} % of the brain holds data in no input: the outputs are 0 there")
    return coverage
