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

from MRSynthesisLib.errors import InputError

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
    # output -> (n,) 1 where the sample's subject holds that output (else its reference is 0 and unseen);
    # None: every sample holds every output
    present: dict[str, torch.Tensor] | None = None

    def to(self, device: torch.device, channels_last: bool) -> "Batch":
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        move = lambda t: None if t is None else t.to(device).contiguous(memory_format=fmt)  # noqa: E731
        present = None if self.present is None else {k: v.to(device) for k, v in self.present.items()}
        return Batch({k: move(v) for k, v in self.inputs.items()}, {k: move(v) for k, v in self.references.items()},
                     move(self.lesion), move(self.weight), present)


def all_subsets(names: Sequence[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset, in a fixed order (singles first)."""
    return [s for r in range(1, len(names) + 1) for s in itertools.combinations(names, r)]


def trains(subject: Subject, subset: Sequence[str], outputs: Sequence[str]) -> bool:
    """Whether a sample of ``subject`` can serve a step given ``subset``: it holds those inputs and an output."""
    return all(m in subject.images for m in subset) and any(m in subject.images for m in outputs)


def trainable_subsets(subjects: Sequence[Subject], inputs: Sequence[str], outputs: Sequence[str],
                      mode: str) -> list[tuple[str, ...]]:
    """The input subsets the steps draw from, in ``all_subsets`` order: each one some subject ``trains``.

    In a complete cohort that is every subset (``mode`` "random") or all inputs ("all"); a subject
    lacking a sequence (``incomplete_subjects``) serves only the subsets it holds, and a subset no
    subject holds is never drawn, so the draw stays uniform over the subsets the data can teach.
    """
    subsets = [tuple(inputs)] if mode == "all" else all_subsets(inputs)
    found = [s for s in subsets if any(trains(subject, s, outputs) for subject in subjects)]
    if not found:
        raise InputError(f"no training subject holds all of the inputs {', '.join(inputs)} (input_subsets "
                         "\"all\" gives each step every input); use input_subsets \"random\" or other subjects")
    return found


def step_subset(subsets: Sequence[tuple[str, ...]], seed: int, step: int) -> tuple[str, ...]:
    """The inputs given to the network at ``step``: one of ``subsets`` (``trainable_subsets``), uniformly.

    One subset per step (not per sample) because a batch must share its inputs, and the
    same on every rank because it depends on the step only.
    """
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
    its contrast from. Only subjects that hold the ``subset`` and an output are drawn (``trains``);
    an output a drawn subject lacks is marked in ``Batch.present``. With ``augment.thick_slice_mm`` an
    input of a sample may be made a thick-slice acquisition (the targets never are). The batch carries
    cost weights when a subject has an ``ignore`` region (weight 0) or when ``lesion_weight`` is not 1
    (the lesion channel's pixels weigh that much; masks are resampled nearest-neighbour, so weights stay
    0, 1 and ``lesion_weight``).
    """
    inputs: dict[str, list[torch.Tensor]] = {m: [] for m in subset}
    references: dict[str, list[torch.Tensor]] = {m: [] for m in outputs}
    present: dict[str, list[bool]] = {m: [] for m in outputs}
    lesions, weights = [], []
    weighted = any(s.ignore is not None for s in subjects) or lesion_weight != 1
    eligible = [s for s in subjects if trains(s, subset, outputs)]  # all of them in a complete cohort
    if not eligible:
        raise ValueError(f"no subject holds the inputs {subset} and one of the outputs {list(outputs)}")
    for index in indices:
        rng = np.random.default_rng([seed, stream, step, index])
        subject = eligible[int(rng.integers(len(eligible)))]
        needed = [m for m in dict.fromkeys([*subset, *outputs]) if m in subject.images]
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
        for m in outputs:  # an output the subject lacks: zeros that the cost does not see (``present``)
            references[m].append(images[m] if m in images else torch.zeros_like(images[subset[0]]))
            present[m].append(m in images)
        if weighted:
            weights.append((1 - cropped[1:]) * (1 + (lesion_weight - 1) * cropped[:1]))
        lesions.append(cropped[:1])
    complete = all(all(v) for v in present.values())
    return Batch({m: torch.stack(v) for m, v in inputs.items()}, {m: torch.stack(v) for m, v in references.items()},
                 torch.stack(lesions) if lesion_input else None, torch.stack(weights) if weighted else None,
                 None if complete else {m: torch.tensor(v, dtype=torch.float32) for m, v in present.items()})
