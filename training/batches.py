"""Training and validation batches, each sample a pure function of (seed, stream, step, index).

Counter-based seeding instead of one running generator is what makes three promises
cheap to keep: a resumed run draws the same samples as an uninterrupted one (no sampler
state to save), two runs with one seed are identical, and a global batch split over
several processes is the batch one process would build.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .augment import crop, draw_geometry, draw_thick_slices, jitter_intensity, thick_slice
from .config import AugmentConfig
from .datasets import Subject

TRAIN_STREAM, SUBSET_STREAM, VALIDATION_STREAM = 0, 1, 2


@dataclass
class Batch:
    inputs: dict[str, torch.Tensor]  # (n, 1, S, S)
    references: dict[str, torch.Tensor]
    lesion: torch.Tensor | None
    weight: torch.Tensor | None = None  # (n, 1, S, S) each pixel's weight in the cost (0 = unseen); None = all 1

    def to(self, device: torch.device, channels_last: bool) -> "Batch":
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        move = lambda t: None if t is None else t.to(device).contiguous(memory_format=fmt)  # noqa: E731
        return Batch({k: move(v) for k, v in self.inputs.items()}, {k: move(v) for k, v in self.references.items()},
                     move(self.lesion), move(self.weight))


def all_subsets(names: Sequence[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset, in a fixed order (singles first)."""
    return [s for r in range(1, len(names) + 1) for s in itertools.combinations(names, r)]


def step_subset(inputs: Sequence[str], mode: str, seed: int, step: int) -> tuple[str, ...]:
    """The inputs given to the network at ``step``: all of them, or a uniformly drawn non-empty subset.

    One subset per step (not per sample) because a batch must share its inputs, and the
    same on every rank because it depends on the step only.
    """
    if mode == "all":
        return tuple(inputs)
    subsets = all_subsets(inputs)
    return subsets[int(np.random.default_rng([seed, SUBSET_STREAM, step]).integers(len(subsets)))]


def build_batch(subjects: Sequence[Subject], indices: Sequence[int], *, seed: int, stream: int, step: int,
                subset: Sequence[str], outputs: Sequence[str], crop_size: int, lesion_input: bool,
                augment: AugmentConfig | None, lesion_crop_fraction: float = 0.0, lesion_weight: float = 1.0) -> Batch:
    """Samples ``indices`` of the batch of ``step``: a random subject (uniform, so a large
    scan does not outweigh a small one), a random brain slice of it, a crop centred on a
    brain pixel; augmented when ``augment`` is given.

    With ``lesion_crop_fraction`` that fraction of the crops of a subject with an expert
    lesion mask is centred on one of its lesion voxels instead (uniform over the voxels), so
    a light lesion load (1,300 voxels in the shared patient07) is seen often enough to learn
    its contrast from. With ``augment.thick_slice_mm`` an input of a sample may be made a thick-slice
    acquisition (the targets never are). The batch carries cost weights when a subject has an ``ignore`` region
    (weight 0) or when ``lesion_weight`` is not 1 (the lesion channel's pixels weigh that
    much; masks are resampled nearest-neighbour, so weights stay 0, 1 and ``lesion_weight``).
    """
    inputs: dict[str, list[torch.Tensor]] = {m: [] for m in subset}
    references: dict[str, list[torch.Tensor]] = {m: [] for m in outputs}
    lesions, weights = [], []
    needed = list(dict.fromkeys([*subset, *outputs]))
    weighted = any(s.ignore is not None for s in subjects) or lesion_weight != 1
    for index in indices:
        rng = np.random.default_rng([seed, stream, step, index])
        subject = subjects[int(rng.integers(len(subjects)))]
        centre = None
        points = subject.lesion_points if lesion_crop_fraction else ()
        if len(points) and rng.random() < lesion_crop_fraction:
            z, *centre = (int(v) for v in points[int(rng.integers(len(points)))])
        else:
            z = int(subject.slices[int(rng.integers(len(subject.slices)))])
        geometry = draw_geometry(rng, subject.brain[z], augment, None if centre is None else tuple(centre))
        masks = [subject.lesion[z]]
        if weighted:
            masks.append(np.zeros_like(subject.lesion[z]) if subject.ignore is None else subject.ignore[z])
        slices = {m: subject.images[m][z] for m in needed}
        for m in subset if augment is not None else ():
            thick = draw_thick_slices(rng, subject.voxel_mm, augment)
            if thick is not None:  # under its own key: an input that is also a target stays sharp as the target
                slices[f"{m} thick"] = thick_slice(subject.images[m], z, thick)
        images, cropped = crop(slices, np.stack(masks), geometry, crop_size)
        for m in subset:
            image = images.get(f"{m} thick", images[m])
            inputs[m].append(jitter_intensity(image, rng, augment) if augment is not None else image)
        for m in outputs:
            references[m].append(images[m])
        lesions.append(cropped[:1])
        if weighted:
            weights.append((1 - cropped[1:]) * (1 + (lesion_weight - 1) * cropped[:1]))
    return Batch({m: torch.stack(v) for m, v in inputs.items()}, {m: torch.stack(v) for m, v in references.items()},
                 torch.stack(lesions) if lesion_input else None, torch.stack(weights) if weighted else None)
