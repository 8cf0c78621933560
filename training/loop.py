"""The training loop: epochs of fixed step counts, validation, early stopping, checkpoints.

A run folder (``config.out``) holds ``checkpoint.safetensors`` (rewritten atomically after
every epoch), ``best.safetensors`` (the weights of the best validation epoch; with
``average_epochs``, from the window's first epoch on, the weight average's),
``metrics.csv`` (one row per epoch, rewritten from the checkpoint's log so that it never
holds an epoch the checkpoint lost), ``config.json``, TensorBoard events when
``tensorboard`` is installed, and at the end the model folder ``<out>/<name>``.
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
from tqdm import tqdm

from MRSynthesisLib.atomic import write_json
from MRSynthesisLib.devices import cpu_has_native_bf16
from MRSynthesisLib.errors import InputError
from MRSynthesisLib.models.chartsias import ChartsiasMIMO
from MRSynthesisLib.models.losses_chartsias import chartsias_loss

from . import averaging, distributed
from .batches import TRAIN_STREAM, all_subsets, build_batch, step_subset, trainable_subsets
from .checkpoint import checkpoint_state, load_checkpoint, load_weights, save_checkpoint, save_weights
from .config import AVERAGE_KEYS, MONITORS, RESUMABLE_CHANGES, SCHEDULE_KEYS, TrainConfig
from .datasets import (
    NORMALISATION,
    Subject,
    check_distinct_scans,
    check_same_data,
    data_record,
    discover,
    load_subject,
    patients,
    resampled,
    split_subjects,
)
from .export import output_intensity, spacing_outliers, training_spacing, write_model_folder
from .extend import load_base, working_config
from .run_folder import BEST, CHECKPOINT, CONFIG, METRICS, tidy_resumed, write_csv
from .schedule import Schedule
from .tensorboard_log import TensorBoardLog
from .validate import subject_tasks, validate


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 where the hardware does it natively, else fp32. fp16 is not offered: it would need loss scaling.

    Wider than inference's ``auto`` (bf16 on CPUs with AMX or AMD's AVX512-BF16): with Intel's
    AVX512-BF16 alone a Chartsias training step still measured 1.37x faster in bf16, though the Wei
    FCN's was 0.75x and the autoencoder's level (docs/results/benchmark_cpu_precision.md); with AMX
    both 3D steps measured 2.0-2.4x faster, on an AMD Zen 4 every step 1.7-2.8x. The Chartsias model
    is what the project trains most."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_has_native_bf16() else None


class DeadOutputError(RuntimeError):
    """An output was 0 at every pixel of a whole epoch while its ReLU passes no gradient there."""


def build_network(config: TrainConfig) -> ChartsiasMIMO:
    return ChartsiasMIMO(config.inputs, config.outputs, lesion_input=config.lesion_input,
                         latent_channels=config.latent_channels, filters=config.filters, fusion=config.fusion,
                         output_gradient=config.output_gradient)


def dead_outputs(row: dict[str, Any]) -> list[str]:
    """Outputs whose ``train_active[...]`` (fraction of decoded pixels above 0) was 0 over an epoch."""
    return [k[len("train_active["):-1] for k, v in row.items() if k.startswith("train_active[") and v == 0.0]


def check_outputs_alive(row: dict[str, Any], config: TrainConfig, out: Path, main: bool) -> None:
    """Stop a run whose output ReLU died: it can no longer learn that output.

    With ``output_gradient`` "relu" an output that is 0 on every pixel of an epoch's batches
    gets no gradient (one LOSO run's T2 stayed so for 20 epochs, loss 0.70 against 0.29), so
    the remaining epochs would be spent on a model with a blank output. The checkpoint of the
    epoch is kept; the error says how to go on. With "pass_through" the gradient still flows
    and the output can recover: a warning only.
    """
    dead = dead_outputs(row)
    if not dead:
        return
    what = (f"epoch {row['epoch']}: output(s) {', '.join(dead)} were 0 at every pixel of every training batch "
            "(the decoder's output ReLU is negative everywhere)")
    if config.output_gradient == "pass_through":
        if main:
            print(f"warning: {what}; output_gradient 'pass_through' still trains them", file=sys.stderr, flush=True)
        return
    raise DeadOutputError(f"{what}; with output_gradient 'relu' no gradient reaches those decoders, so the run is "
                          f"stopped (checkpoint of epoch {row['epoch']} kept in {out}). Start again in another --out "
                          "with \"output_gradient\": \"pass_through\" in the config, or with another --seed.")


def said_resumed(removed: list[str]) -> None:
    """Say which temporaries a killed write had left in the run folder (``run_folder.tidy_resumed``)."""
    if removed:
        print(f"removed what a killed run left half-written: {', '.join(removed)}", flush=True)


def _check_resumable(saved: dict[str, Any], config: TrainConfig, steps_done: int) -> None:
    current = config.to_dict()
    # a key the saved config lacks was added to TrainConfig since: it ran with the default
    defaults = TrainConfig(name="defaults", data=["-"], inputs=["T1"], outputs=["T2"]).to_dict()
    saved = {**defaults, **saved, "augment": {**defaults["augment"], **saved.get("augment", {})}}
    changed = sorted(k for k in set(saved) | set(current)
                     if saved.get(k) != current.get(k) and k not in RESUMABLE_CHANGES + SCHEDULE_KEYS + AVERAGE_KEYS)
    if changed:
        raise InputError(f"the config differs from the checkpoint's in {changed}; only {list(RESUMABLE_CHANGES)} "
                         "may change on --resume (start a new run in another --out for anything else)")
    # epochs and the anneal keys set the schedule: they may change only where the steps taken keep their rates
    if not Schedule.of(current).same_until(Schedule.of(saved), steps_done):
        raise InputError(f"the new epochs/{'/'.join(SCHEDULE_KEYS)} would change the learning rate of steps the "
                         f"checkpoint has already taken ({steps_done}); only the rate of later steps may change on "
                         "--resume (start a new run in another --out for anything else)")
    if not averaging.same_until(current, saved, steps_done):
        raise InputError(f"the new epochs/{'/'.join(AVERAGE_KEYS)} would move steps the checkpoint has already taken "
                         f"({steps_done}) into or out of the weight average; only later steps may change on --resume "
                         "(start a new run in another --out for anything else)")


def missing_sequences(subject: Any, config: Any) -> list[str]:
    """The recipe's inputs and outputs that ``subject`` (a ``Subject`` or a 3D ``Volume3D``) lacks
    (``incomplete_subjects``)."""
    return [m for m in dict.fromkeys([*config.inputs, *config.outputs]) if m not in subject.images]


def card_subjects(training: Sequence[Any], validation: Sequence[Any], config: Any) -> dict[str, list[dict[str, Any]]]:
    """The card's record of the subjects a model was trained and validated on: each one's lesion channel's
    source and, in an incomplete cohort, the recipe's sequences it lacked."""
    def entry(subject: Any) -> dict[str, Any]:
        lacks = missing_sequences(subject, config)
        return {"subject": subject.name, "lesion_channel": subject.lesion_source,
                **({"without": lacks} if lacks else {})}

    return {"training": [entry(s) for s in training], "validation": [entry(s) for s in validation]}


def check_cohort(subjects: Sequence[Any], config: Any) -> None:
    """Refuse an incomplete cohort in which an output or input is held by no training subject: its decoder
    or encoder (a 3D network's channel) would never be trained, yet the model folder would offer it."""
    for role, names in (("output", config.outputs), ("input", config.inputs)):
        unheld = [m for m in names if not any(m in s.images for s in subjects)]
        if unheld:
            raise InputError(f"no training subject holds the {role}(s) {', '.join(unheld)}: the network would "
                             f"never learn {'to synthesise' if role == 'output' else 'to read'} them; drop them from "
                             f"the recipe's {role}s or add subjects that hold them")


def _load(config: TrainConfig, names: list[str], files: dict, verbose: bool, normalisation=NORMALISATION
          ) -> tuple[list[Subject], list[dict[str, np.ndarray]], list[np.ndarray]]:
    subjects, raws, brains = [], [], []
    for name in names:
        subject, raw, brain = load_subject(files[name], config.inputs, config.outputs, lesion_input=config.lesion_input,
                                           lesion_fallback=config.lesion_fallback, flair_z=config.lesion_flair_z,
                                           min_voxels=config.lesion_min_voxels,
                                           min_slice_brain_fraction=config.min_slice_brain_fraction,
                                           normalisation=normalisation, spacing_mm=config.spacing_mm, plane="axial",
                                           incomplete=config.incomplete_subjects)
        subjects.append(subject)
        raws.append(raw)
        brains.append(brain)
        if verbose:
            lacks = missing_sequences(subject, config)
            print(f"  {name}: {len(subject.slices)} axial slices of {subject.brain.shape[1:]}{resampled(subject)}, "
                  f"{subject.lesion_said()}"
                  + (f", without {', '.join(lacks)}" if lacks else ""), flush=True)
            for note in subject.notes:
                print(f"warning: {note}", flush=True)
    return subjects, raws, brains


def train(config: TrainConfig, *, resume: bool = False, command: str = "") -> Path | None:
    """Train as ``config`` says; returns the model folder (on the main process; None on the others)."""
    context = distributed.setup()
    folder = _train(config, resume, command, context)
    # Only after a run that ended well: a rank that failed leaves the others waiting in a collective, which
    # torchrun ends; a barrier on the way out would meet them in the wrong one (torchtitan does the same).
    distributed.shutdown(context)
    return folder


def _train(config: TrainConfig, resume: bool, command: str, context: distributed.Context) -> Path | None:
    main = context.is_main
    if config.threads:
        torch.set_num_threads(config.threads)
    out = Path(config.out)
    if (out / CHECKPOINT).exists() and not resume:
        raise InputError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if resume and not (out / CHECKPOINT).exists():
        raise InputError(f"--resume: {out / CHECKPOINT} does not exist")
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)

    # Extending a model (config "extend", Sec. VI-E): the base folder's network with a new
    # decoder per new output, everything else frozen. ``work`` is the config the steps and the
    # validation use: the new outputs only, and c2 dropped (it is a constant of the frozen
    # encoders; see extend.working_config). The normalisation is the base card's, never
    # re-derived, so the frozen encoders see what they were trained on.
    base = load_base(config) if config.extend else None
    work = working_config(config, base) if base else config
    spec = base.normalisation if base else NORMALISATION
    if main and base:
        print(f"extending {base.folder} ({base.card.name}, outputs {', '.join(base.card.outputs)}) with "
              f"{', '.join(base.new_outputs)}: only those decoders are trained", flush=True)

    files = {s.subject: s for s in discover(config.data)}
    train_names, val_names = split_subjects(list(files), config.validation_subjects, config.validation_fraction,
                                            config.split_seed, patients(files))
    data = data_record(files, train_names, val_names)
    if resume:  # before any volume is loaded
        check_same_data(checkpoint_state(out / CHECKPOINT).get("data"), data)
    if main:
        print(f"training subjects: {', '.join(train_names)}\nvalidation subjects: {', '.join(val_names) or 'none'}",
              flush=True)
    train_subjects, raws, brains = _load(work, train_names, files, main, spec)
    if main:
        for line in spacing_outliers(train_names, [s.spacing_mm for s in train_subjects], slice_plane_only=True):
            print(f"warning: {line}", flush=True)
    check_cohort(train_subjects, work)
    subsets = trainable_subsets(train_subjects, config.inputs, work.outputs, config.input_subsets)
    untrained = [s for s in all_subsets(config.inputs) if s not in subsets] if config.input_subsets == "random" else []
    if main and untrained:
        print(f"warning: no training subject holds the inputs {'; '.join('+'.join(s) for s in untrained)} together "
              "(with an output): the steps never fuse them, though the model will accept them", flush=True)
    intensity = output_intensity(raws, brains, work.outputs, spec) if main else {}
    del raws, brains
    val_subjects = _load(work, val_names, files, main, spec)[0] if main else []
    unscored = [s.name for s in val_subjects if not subject_tasks(s, work.inputs, work.outputs)]
    if unscored:
        raise InputError(f"validation subject(s) {', '.join(unscored)} hold no input with another output to score "
                         "it against; choose other validation subjects")
    check_distinct_scans({s.name: s.scans for s in [*train_subjects, *val_subjects]})

    device = context.device
    model = (base.network if base else build_network(config)).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    distributed.broadcast_parameters(model, context)
    # Only trainable parameters: when extending, the frozen ones never reach Adam at all.
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
    average = averaging.averaged(model, config.to_dict())
    state: dict[str, Any] = {"epoch": 0, "best": None, "best_epoch": None, "stale": 0, "seconds": 0.0,
                             "log": [], "config": config.to_dict(), "data": data}
    if resume:
        saved = load_checkpoint(out / CHECKPOINT, model, optimizer, average)
        _check_resumable(saved["config"], config, saved["epoch"] * config.steps_per_epoch)
        state = {**saved, "config": config.to_dict(), "data": data}
        if main:
            print(f"resumed after epoch {state['epoch']} from {out / CHECKPOINT}", flush=True)
    dtype = autocast_dtype(config.precision, device)
    schedule = Schedule.of(config.to_dict())
    average_from = averaging.start(config.to_dict())
    weights = tuple(work.loss_weights)
    share = context.share(config.batch_size)
    pool = distributed.pool(context)
    writer: TensorBoardLog | None = None
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / CONFIG, config.to_dict())
        if resume:
            said_resumed(tidy_resumed(out, state["log"]))
        writer = TensorBoardLog(out, state["log"] if resume else None)
        print(f"device {device.type} x {context.world} process(es), precision {dtype or 'fp32'}, "
              f"channels_last {config.channels_last}, {torch.get_num_threads()} thread(s)", flush=True)

    model.train()
    reason = f"{config.epochs} epochs done"
    for epoch in range(state["epoch"], config.epochs):
        # Stopping is decided here, before an epoch, from the state and the current config, and
        # not stored: a run resumed with a larger patience or time budget goes on exactly as if
        # it had had them from the start.
        last = state["log"][-1]["epoch_seconds"] if state["log"] else 0.0
        over_time = bool(config.max_minutes) and state["seconds"] + last > 60 * config.max_minutes
        stale = bool(val_subjects) and state["stale"] >= config.patience
        if distributed.from_main(over_time or stale, context):
            reason = (f"early stopping: {config.monitor} did not improve for {config.patience} epochs" if stale else
                      f"time budget of {config.max_minutes} min reached: another epoch would not fit")
            break
        started = time.perf_counter()
        sums: dict[str, float] = {}
        steps = tqdm(range(config.steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", disable=not main,
                     file=sys.stderr, mininterval=5, dynamic_ncols=True)
        for i in steps:
            step = epoch * config.steps_per_epoch + i
            subset = step_subset(subsets, config.seed, step)
            batch = build_batch(train_subjects, share, seed=config.seed, stream=TRAIN_STREAM, step=step, subset=subset,
                                outputs=work.outputs, crop_size=config.crop_size, lesion_input=config.lesion_input,
                                augment=config.augment, lesion_crop_fraction=config.lesion_crop_fraction,
                                lesion_weight=config.lesion_loss_weight).to(device, config.channels_last)
            for group in optimizer.param_groups:
                group["lr"] = schedule.at(step)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss, parts = chartsias_loss(model, batch.inputs, batch.references, batch.lesion, weights,
                                             mask=batch.weight, present=batch.present, pool=pool)
            loss.backward()
            distributed.average_gradients(model, context)
            optimizer.step()
            if average is not None and step >= average_from:
                average.update_parameters(model)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            steps.set_postfix(loss=f"{parts['total']:.4f}", inputs="+".join(subset), refresh=False)
            if writer is not None:
                writer.step("train/total", parts["total"], step)
        steps.close()
        names = sorted(sums)
        means = distributed.mean_over_ranks([sums[k] / config.steps_per_epoch for k in names], context)
        row: dict[str, Any] = {"epoch": epoch + 1, "steps": (epoch + 1) * config.steps_per_epoch,
                               "learning_rate": schedule.at((epoch + 1) * config.steps_per_epoch - 1)}
        row.update({f"train_{k}": v for k, v in zip(names, means)})
        # Once the averaging window has begun, the average is the network this run would
        # deliver: it is what validation scores and what best.safetensors keeps.
        averaged_steps = int(average.n_averaged) if average is not None else 0
        if average is not None:
            row["averaged_steps"] = averaged_steps
        network = average.module if averaged_steps else model
        if main:
            if val_subjects:
                row.update(validate(network, val_subjects, work, device, dtype))
                value = row[MONITORS[config.monitor]]
                if state["best"] is None or value < state["best"]:
                    state.update(best=value, best_epoch=epoch + 1, stale=0)
                    save_weights(network, out / BEST)
                else:
                    state["stale"] += 1
            else:
                state.update(best_epoch=epoch + 1)
                save_weights(network, out / BEST)
            row["epoch_seconds"] = time.perf_counter() - started
            state["seconds"] += row["epoch_seconds"]
            row["seconds"] = state["seconds"]
            state["log"].append(row)
            state["epoch"] = epoch + 1
            save_checkpoint(out / CHECKPOINT, model, optimizer, state, average)
            write_csv(out / METRICS, state["log"])
            writer.epoch(row)
            summary = "  ".join(f"{k} {row[k]:.4g}" for k in ("train_total", "val_total", "val_mse", "val_ssim")
                                if k in row)
            note = f", weights averaged over {averaged_steps} steps" if averaged_steps else ""
            print(f"epoch {epoch + 1}: {summary}  ({row['epoch_seconds']:.0f} s{note})", flush=True)
        check_outputs_alive(row, config, out, main)  # every rank: the means are the same on all of them
    if not main:
        return None
    print(reason, flush=True)
    load_weights(out / BEST, model)
    best_row = next(r for r in state["log"] if r["epoch"] == state["best_epoch"])
    metrics = {"validation_subjects": val_names, "best_epoch": state["best_epoch"], "epochs_run": state["epoch"],
               "steps_run": state["epoch"] * config.steps_per_epoch, "training_seconds": round(state["seconds"]),
               "normalised_scale": "MSE/SSIM on mean_in_brain-normalised images, in the brain, every "
                                   f"{config.val_slice_stride}th axial slice",
               **{k: v for k, v in best_row.items() if k.startswith(("val_", "mse[", "ssim[", "averaged_steps"))}}
    subjects = card_subjects(train_subjects, val_subjects, work)
    folder = write_model_folder(model.to(memory_format=torch.contiguous_format), config, out / config.name,
                                intensity=intensity, subjects=subjects, metrics=metrics, command=command,
                                spacing_mm=training_spacing([s.spacing_mm for s in train_subjects]), base=base)
    print(f"model folder: {folder}", flush=True)
    if writer is not None:
        writer.close()
    return folder
