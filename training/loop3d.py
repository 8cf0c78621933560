"""The 3D training loop: epochs of fixed step counts on patches, validation, UP_p early stopping.

The run folder (``config.out``) holds what ``training.loop``'s does: ``checkpoint.safetensors``
(model, optimiser and RNG states, rewritten atomically after every epoch), ``best.safetensors``
(the lowest-validation-error epoch's weights; the last epoch's without validation),
``metrics.csv`` (one row per epoch, rewritten from the checkpoint's log), ``config.json``,
TensorBoard events when ``tensorboard`` is installed, and at the end the model folder
``<out>/<name>``. Samples and input subsets are pure functions of (seed, stream, step), so a
seeded run is reproducible and a resumed run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from MRSynthesisLib.atomic import write_json
from MRSynthesisLib.errors import InputError

from .augment3d import augmented_batch
from .batches import TRAIN_STREAM, VALIDATION_STREAM, all_subsets, step_subset, trainable_subsets, trains
from .checkpoint import checkpoint_state, load_checkpoint, load_weights, save_checkpoint, save_weights
from .config3d import RESUMABLE_CHANGES, Train3DConfig
from .datasets import check_distinct_scans, check_same_data, data_record, discover, patients, split_subjects
from .early_stopping import up_stops
from .export import output_intensity, spacing_outliers, training_spacing
from .export3d import write_model_folder
from .loop import autocast_dtype, card_subjects, check_cohort, said_resumed
from .patches3d import (
    GridSampler,
    Patch,
    PatchBatch,
    RandomCropSampler,
    cut_batch,
    grid_patches,
)
from .run_folder import BEST, CHECKPOINT, CONFIG, METRICS, tidy_resumed, write_csv
from .tensorboard_log import TensorBoardLog
from .volumes3d import Volume3D, load_volumes


def training_device() -> torch.device:
    """CUDA when present (as the 2D loop), else the CPU. One process: data-parallel runs are 2D-only.

    Patches are cut on the CPU from the numpy volumes and moved per batch; the networks are
    small enough that the copy is a fraction of a step on a GPU.
    """
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def make_sampler(config: Train3DConfig, volumes: Sequence[Volume3D], stream: int,
                 chosen: Sequence[int] | None = None) -> GridSampler | RandomCropSampler:
    """The paper's sampling: Klingelhoefer's brain-centred grid, or random brain-centred windows for Wei;
    over the volumes ``chosen`` (indices into ``volumes``; default all)."""
    chosen = range(len(volumes)) if chosen is None else chosen
    if config.patch_step is not None:
        patches = [p for i in chosen
                   for p in grid_patches(volumes[i].brain, config.patch_size, config.margin, config.patch_step, i)]
        return GridSampler(patches, config.seed, stream)
    return RandomCropSampler([volumes[i].brain for i in chosen], config.patch_size, config.margin, config.seed, stream,
                             list(chosen))


class SubsetSamplers:
    """The training sampler of a step's input subset: over the volumes that hold the subset and an output
    (``batches.trains``), as the 2D steps draw their subjects. In a complete cohort that is every volume for
    every subset, so one sampler serves all steps, as before ``incomplete_subjects``. A sampler's sample is
    still a pure function of (seed, stream, k), so a resumed run draws what an uninterrupted one would."""

    def __init__(self, config: Train3DConfig, volumes: Sequence[Volume3D]) -> None:
        self.config, self.volumes = config, volumes
        self.every = make_sampler(config, volumes, TRAIN_STREAM)
        self._made = {tuple(range(len(volumes))): self.every}

    def __call__(self, subset: Sequence[str]) -> GridSampler | RandomCropSampler:
        chosen = tuple(i for i, v in enumerate(self.volumes) if trains(v, subset, self.config.outputs))
        if chosen not in self._made:
            self._made[chosen] = make_sampler(self.config, self.volumes, TRAIN_STREAM, chosen)
        return self._made[chosen]


def make_optimiser(config: Train3DConfig, model: nn.Module) -> torch.optim.Optimizer:
    # Wei: "standard SGD" (no momentum, no weight decay); Klingelhoefer: Adam, Keras' defaults
    # (betas 0.9/0.999, eps as torch's 1e-8: Keras' 1e-7 changes nothing visible at these scales).
    if config.optimiser == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.learning_rate)
    return torch.optim.Adam(model.parameters(), lr=config.learning_rate)


def patch_errors(model: nn.Module, batch: PatchBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared and absolute errors (float32, one map per output stacked on dim 1) over the target crops.

    A same-padded network returns the whole window; only its central crop is compared, the
    voxels whose receptive field the window holds (see ``training.patches3d``).
    """
    predictions = model(batch.inputs, lesion=batch.lesion)
    differences = []
    for name, target in batch.targets.items():
        prediction = predictions[name].float()
        crop = (prediction.shape[-1] - target.shape[-1]) // 2
        if crop:
            prediction = prediction[..., crop:-crop, crop:-crop, crop:-crop]
        differences.append(prediction - target)
    difference = torch.cat(differences, 1)
    return difference.square(), difference.abs()


def held_errors(errors: torch.Tensor, batch: PatchBatch) -> tuple[torch.Tensor, int]:
    """``errors`` (from ``patch_errors``) with the targets a sample's subject lacks set to 0, and how many voxels
    are left: an output a subject lacks adds nothing to the cost (``PatchBatch.present``)."""
    if batch.present is None:
        return errors, errors.numel()
    held = batch.present[:, :, None, None, None]
    return errors * held, int(batch.present.sum()) * errors[0, 0].numel()


def train_loss(model: nn.Module, batch: PatchBatch, loss: str) -> torch.Tensor:
    squared, absolute = patch_errors(model, batch)
    errors = squared if loss == "mse" else absolute
    if batch.present is None:
        return errors.mean()
    errors, count = held_errors(errors, batch)
    return errors.sum() / count


@torch.no_grad()
def validate(model: nn.Module, volumes: Sequence[Volume3D], patches: Sequence[Patch], config: Train3DConfig,
             dtype: torch.dtype | None, device: torch.device) -> dict[str, float]:
    """MSE and MAE (normalised scale) over the target crops of the fixed validation patches, every input a
    patch's subject holds given (all of them in a complete cohort) and the outputs it holds scored."""
    model.eval()
    squared = absolute = 0.0
    count = 0
    groups: dict[tuple[str, ...], list[Patch]] = {}  # one group, in the patches' order, in a complete cohort
    for patch in patches:
        groups.setdefault(tuple(m for m in config.inputs if m in volumes[patch.volume].images), []).append(patch)
    for given, group in groups.items():
        for first in range(0, len(group), config.batch_size):
            batch = cut_batch(volumes, group[first:first + config.batch_size], size=config.patch_size,
                              margin=config.margin, inputs=given, outputs=config.outputs,
                              lesion_input=config.lesion_input).to(device)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                sq, ab = patch_errors(model, batch)
            (sq, voxels), (ab, _) = held_errors(sq, batch), held_errors(ab, batch)
            squared, absolute, count = squared + float(sq.sum()), absolute + float(ab.sum()), count + voxels
    model.train()
    return {"val_mse": squared / count, "val_mae": absolute / count}


def _check_resumable(saved: dict[str, Any], config: Train3DConfig) -> None:
    current = config.to_dict()
    changed = sorted(k for k in set(saved) | set(current)
                     if saved.get(k) != current.get(k) and k not in RESUMABLE_CHANGES)
    if changed:
        raise InputError(f"the config differs from the checkpoint's in {changed}; only {list(RESUMABLE_CHANGES)} "
                         "may change on --resume (start a new run in another --out for anything else)")


def _stop_reason(config: Train3DConfig, state: dict[str, Any], validating: bool) -> str | None:
    """Why no further epoch should run, decided from the log and the current config (never stored,
    so a run resumed with more epochs or minutes goes on as if it had had them from the start)."""
    last = state["log"][-1]["epoch_seconds"] if state["log"] else 0.0
    if config.max_minutes and state["seconds"] + last > 60 * config.max_minutes:
        return f"time budget of {config.max_minutes} min reached: another epoch would not fit"
    if validating and config.strips and up_stops([row["val_mse"] for row in state["log"]], config.strip_length,
                                                 config.strips):
        return (f"early stopping (UP_{config.strips}): the validation MSE rose in {config.strips} successive "
                f"strips of {config.strip_length} epochs")
    return None


def train3d(config: Train3DConfig, *, resume: bool = False, command: str = "") -> Path:
    """Train as ``config`` says; returns the model folder."""
    if config.threads:
        torch.set_num_threads(config.threads)
    out = Path(config.out)
    if (out / CHECKPOINT).exists() and not resume:
        raise InputError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if resume and not (out / CHECKPOINT).exists():
        raise InputError(f"--resume: {out / CHECKPOINT} does not exist")
    size, margin = config.patch_size, config.margin
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)

    files = {s.subject: s for s in discover(config.data)}
    train_names, val_names = split_subjects(list(files), config.validation_subjects, 0.0, 0,
                                            patients(files))
    data = data_record(files, train_names, val_names)
    if resume:  # before any volume is loaded
        check_same_data(checkpoint_state(out / CHECKPOINT).get("data"), data)
    print(f"training subjects: {', '.join(train_names)}\nvalidation subjects: {', '.join(val_names) or 'none'}",
          flush=True)
    volumes, raws, brains = load_volumes(config, train_names, files, True)
    for line in spacing_outliers(train_names, [v.spacing_mm for v in volumes]):
        print(f"warning: {line}", flush=True)
    check_cohort(volumes, config)
    # Input dropout: each step gives a uniformly drawn non-empty subset of the inputs (the others absent:
    # zero channels, presence flags 0), one subset per step as in the 2D training; in an incomplete cohort
    # among the subsets some subject holds with an output.
    subsets = trainable_subsets(volumes, config.inputs, config.outputs, "random" if config.input_dropout else "all")
    untrained = [s for s in all_subsets(config.inputs) if s not in subsets] if config.input_dropout else []
    if untrained:
        print(f"warning: no training subject holds the inputs {'; '.join('+'.join(s) for s in untrained)} together "
              "(with an output): no step gives the network them alone, though the model will accept them", flush=True)
    intensity = output_intensity(raws, brains, config.outputs, config.normalisation)
    del raws, brains
    val_volumes = load_volumes(config, val_names, files, True)[0]
    check_distinct_scans({v.name: v.scans for v in [*volumes, *val_volumes]})
    samplers = SubsetSamplers(config, volumes)
    val_patches = make_sampler(config, val_volumes, VALIDATION_STREAM).fixed(config.validation_patches) \
        if val_volumes else []
    if isinstance(samplers.every, GridSampler):
        print(f"{len(samplers.every.patches)} grid patches ({size}^3 in, {config.target_size}^3 target) in the "
              f"training volumes; {config.steps_per_epoch * config.batch_size} per epoch", flush=True)

    device = training_device()
    model = config.build_network().to(device)
    optimiser = make_optimiser(config, model)
    state: dict[str, Any] = {"epoch": 0, "best": None, "best_epoch": None, "seconds": 0.0, "log": [],
                             "config": config.to_dict(), "data": data}
    if resume:
        saved = load_checkpoint(out / CHECKPOINT, model, optimiser)
        _check_resumable(saved["config"], config)
        state = {**saved, "config": config.to_dict(), "data": data}
        print(f"resumed after epoch {state['epoch']} from {out / CHECKPOINT}", flush=True)
    dtype = autocast_dtype(config.precision, device)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / CONFIG, config.to_dict())
    if resume:
        said_resumed(tidy_resumed(out, state["log"]))
    writer = TensorBoardLog(out, state["log"] if resume else None)
    print(f"{config.architecture}: device {device.type}, precision {dtype or 'fp32'}, "
          f"{torch.get_num_threads()} thread(s), "
          f"{sum(p.numel() for p in model.parameters())} parameters", flush=True)

    model.train()
    reason = f"{config.epochs} epochs done"
    for epoch in range(state["epoch"], config.epochs):
        stop = _stop_reason(config, state, bool(val_volumes))
        if stop:
            reason = stop
            break
        started = time.perf_counter()
        total = 0.0
        steps = tqdm(range(config.steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", file=sys.stderr,
                     mininterval=30, dynamic_ncols=True)
        for i in steps:
            step = epoch * config.steps_per_epoch + i
            subset = step_subset(subsets, config.seed, step)
            sampler = samplers(subset)
            patches = [sampler(step * config.batch_size + j) for j in range(config.batch_size)]
            cut = dict(size=size, margin=margin, inputs=subset, outputs=config.outputs,
                       lesion_input=config.lesion_input)
            batch = (cut_batch(volumes, patches, **cut) if config.augment is None else
                     augmented_batch(volumes, patches, config.augment, seed=config.seed, step=step, **cut)).to(device)
            optimiser.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = train_loss(model, batch, config.loss)
            loss.backward()
            optimiser.step()
            value = float(loss.detach())
            total += value
            writer.step(f"train/{config.loss}", value, step)
            steps.set_postfix(loss=f"{value:.4f}", refresh=False)
        steps.close()
        row: dict[str, Any] = {"epoch": epoch + 1, "steps": (epoch + 1) * config.steps_per_epoch,
                               f"train_{config.loss}": total / config.steps_per_epoch}
        if val_volumes:
            row.update(validate(model, val_volumes, val_patches, config, dtype, device))
            if state["best"] is None or row["val_mse"] < state["best"]:
                state.update(best=row["val_mse"], best_epoch=epoch + 1)
                save_weights(model, out / BEST)
        else:
            state.update(best_epoch=epoch + 1)
            save_weights(model, out / BEST)
        row["epoch_seconds"] = time.perf_counter() - started
        state["seconds"] += row["epoch_seconds"]
        row["seconds"] = state["seconds"]
        state["log"].append(row)
        state["epoch"] = epoch + 1
        save_checkpoint(out / CHECKPOINT, model, optimiser, state)
        write_csv(out / METRICS, state["log"])
        writer.epoch(row)
        summary = "  ".join(f"{k} {row[k]:.4g}" for k in (f"train_{config.loss}", "val_mse", "val_mae") if k in row)
        print(f"epoch {epoch + 1}: {summary}  ({row['epoch_seconds']:.0f} s)", flush=True)
    print(reason, flush=True)
    # Prechelt (and loop.py): the model returned is the epoch of lowest validation error.
    load_weights(out / BEST, model)
    best_row = next(r for r in state["log"] if r["epoch"] == state["best_epoch"])
    metrics = {"validation_subjects": val_names, "best_epoch": state["best_epoch"], "epochs_run": state["epoch"],
               "steps_run": state["epoch"] * config.steps_per_epoch, "training_seconds": round(state["seconds"]),
               "stopped": reason,
               "normalised_scale": f"MSE/MAE on {config.normalisation.scheme}-normalised images over the "
                                   f"{config.target_size}^3 target crops of {len(val_patches)} fixed validation "
                                   "patches, background included",
               **{k: v for k, v in best_row.items() if k.startswith("val_")}}
    subjects = card_subjects(volumes, val_volumes, config)
    folder = write_model_folder(model, config, out / config.name, intensity=intensity, subjects=subjects,
                                metrics=metrics, command=command,
                                spacing_mm=training_spacing([v.spacing_mm for v in volumes]))
    print(f"model folder: {folder}", flush=True)
    writer.close()
    return folder
