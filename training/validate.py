"""Validation on held-out subjects: the training cost on fixed crops, and full-slice synthesis.

The cost is the one training minimises, lesion pixels weighted as ``lesion_loss_weight`` says, so
``monitor: "val_loss"`` stops on what is trained.

Synthesis runs through ``MRSynthesisLib.inference.run_slicewise``, the code path the
command line and Slicer use (brain bounding box, padding to a multiple of 4, batching,
precision), on every ``val_slice_stride``-th brain slice. It is scored with the core
metrics, in the brain, on the normalised scale, for the situations the model is for: each
input alone (3 targets each) and every input but one (the missing one as target).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from MRSynthesisLib import metrics
from MRSynthesisLib.inference import RunSettings, run_slicewise
from MRSynthesisLib.models.losses_chartsias import chartsias_loss

from .batches import VALIDATION_STREAM, build_batch, trainable_subsets
from .config import TrainConfig
from .datasets import Subject


def validation_tasks(inputs: Sequence[str], outputs: Sequence[str]) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """(given inputs, targets) pairs: every input alone, and every input but one (when there are > 2)."""
    tasks = []
    for m in inputs:
        targets = tuple(t for t in outputs if t != m)
        if targets:
            tasks.append(((m,), targets))
    if len(inputs) > 2:
        for m in inputs:
            if m in outputs:
                tasks.append((tuple(i for i in inputs if i != m), (m,)))
    return tasks


def subject_tasks(subject: Subject, inputs: Sequence[str],
                  outputs: Sequence[str]) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """The ``validation_tasks`` a subject holds the sequences of (given inputs, and the targets it has)."""
    tasks = []
    for given, targets in validation_tasks(inputs, outputs):
        held = tuple(t for t in targets if t in subject.images)
        if held and all(m in subject.images for m in given):
            tasks.append((given, held))
    return tasks


def _slice_ssim(synthetic: np.ndarray, reference: np.ndarray, brain: np.ndarray) -> float:
    """Mean 2D SSIM over the brain pixels of a stack of (non-adjacent) slices; one data range for the stack."""
    data_range = metrics.data_range_of(reference)
    values = [metrics.ssim_map(s, r, data_range)[b] for s, r, b in zip(synthetic, reference, brain) if b.any()]
    return float(np.concatenate(values).mean())


def validate(model: nn.Module, subjects: Sequence[Subject], config: TrainConfig, device: torch.device,
             dtype: torch.dtype | None) -> dict[str, float]:
    """Validation figures, flat: ``val_c1..val_total``, ``val_mse``, ``val_ssim`` and per-task
    ``mse[...]``/``ssim[...]``."""
    model.eval()
    settings = RunSettings(device, dtype, batch_size=config.batch_size)
    parts: dict[str, list[float]] = {}
    # every input; in an incomplete cohort the largest set of inputs a validation subject holds
    subset = max(trainable_subsets(subjects, config.inputs, config.outputs, "random"), key=len)
    for step in range(config.val_loss_batches):
        batch = build_batch(subjects, range(config.batch_size), seed=config.seed, stream=VALIDATION_STREAM, step=step,
                            subset=subset, outputs=config.outputs, crop_size=config.crop_size,
                            lesion_input=config.lesion_input, augment=None,
                            lesion_weight=config.lesion_loss_weight).to(device, config.channels_last)
        with torch.no_grad(), settings.autocast():
            _, values = chartsias_loss(model, batch.inputs, batch.references, batch.lesion,
                                       tuple(config.loss_weights), mask=batch.weight, present=batch.present)
        for k, v in values.items():
            parts.setdefault(k, []).append(v)
    result = {f"val_{k}": float(np.mean(v)) for k, v in parts.items()}

    per_task = task_scores(model, subjects, config.inputs, config.outputs, lesion_input=config.lesion_input,
                           stride=config.val_slice_stride, settings=settings)
    result["val_mse"] = float(np.mean([v for k, v in per_task.items() if k.startswith("mse[")]))
    result["val_ssim"] = float(np.mean([v for k, v in per_task.items() if k.startswith("ssim[")]))
    result.update(per_task)
    if not config.channels_last:  # run_slicewise moved the network to channels_last; training asked otherwise
        model.to(memory_format=torch.contiguous_format)
    model.train()
    return result


def task_scores(model: nn.Module, subjects: Sequence[Subject], inputs: Sequence[str], outputs: Sequence[str], *,
                lesion_input: bool, stride: int, settings: RunSettings) -> dict[str, float]:
    """``mse[given->target]`` and ``ssim[given->target]`` for every ``validation_tasks`` task, means over subjects.

    Every ``stride``-th training slice of each subject is synthesised whole through ``run_slicewise``
    (the product's path) and scored in its supervised brain pixels on the normalised scale; the
    subject's lesion channel is given when the model has one. A subject lacking a sequence
    (``incomplete_subjects``) scores the tasks and targets it holds.
    """
    scores: dict[str, list[float]] = {}
    for subject in subjects:
        index = subject.slices[::stride]
        brain = subject.brain[index]
        scored = subject.supervised(index)
        lesion = subject.lesion[index] > 0.5 if lesion_input else None
        for given, targets in subject_tasks(subject, inputs, outputs):
            out = run_slicewise(model, {m: subject.images[m][index] for m in given}, targets, axis=0, mask=brain,
                                settings=settings, lesion=lesion).outputs
            for t in targets:
                task = f"{'+'.join(given)}->{t}"
                scores.setdefault(f"mse[{task}]", []).append(metrics.mse(out[t], subject.images[t][index], scored))
                scores.setdefault(f"ssim[{task}]", []).append(_slice_ssim(out[t], subject.images[t][index], scored))
    return {k: float(np.mean(v)) for k, v in scores.items()}
