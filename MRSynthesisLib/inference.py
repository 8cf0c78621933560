"""Running a network over a whole volume: device, precision, batching, progress, cancel.

2D models run slice by slice along the plane's axis (any plane: the paper's view
transfer), batched, each batch cropped to its slices' brain bounding box and padded to
the size the network needs; slices without brain are skipped. 3D models run in exact tiles
(``tiling``), through the same batching and out-of-memory fallback.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .errors import Cancelled
from .preprocessing import bounding_box, plan_crop_pad

ProgressCallback = Callable[[float, str], None]
CancelCheck = Callable[[], bool]


@dataclass
class RunSettings:
    device: torch.device
    dtype: torch.dtype | None = None
    batch_size: int = 16
    progress: ProgressCallback = lambda fraction, message: None
    cancelled: CancelCheck = lambda: False
    notes: list[str] = field(default_factory=list)  # what changed along the way (OOM fallbacks)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def check_cancel(self) -> None:
        if self.cancelled():
            raise Cancelled("cancelled")


def _is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


SALIENCY_BATCH = 4  # slices per backward pass on the CPU: bounds the memory autograd keeps (see run_slicewise)


@dataclass
class SaliencyResult:
    """Outputs and, when asked for, P3S maps of one run (2D slice-wise or 3D tiled).

    ``saliency[target][input]`` is |d objective / d input|, the objective being the sum of
    the prediction inside the brain (target-free) or, for targets in ``squared_error``, the
    sum of squared errors to the real image inside the brain, whose total is kept so that
    the caller can turn it into the paper's L2-norm gradient (``p3s_norm_scale``).
    """

    outputs: dict[str, np.ndarray]
    saliency: dict[str, dict[str, np.ndarray]]
    squared_error: dict[str, float] = field(default_factory=dict)


def p3s_norm_scale(squared_error: float) -> float:
    """d||e||/dx = (d sum(e^2)/dx) / (2 ||e||): Wei et al.'s eq. 3 from the squared-error gradient."""
    return 0.5 / math.sqrt(squared_error) if squared_error > 0 else 0.0


def run_slicewise(network: nn.Module, inputs: Mapping[str, np.ndarray], targets: Sequence[str], *,
                  axis: int, mask: np.ndarray, settings: RunSettings, lesion: np.ndarray | None = None,
                  saliency: bool = False, saliency_references: Mapping[str, np.ndarray] | None = None,
                  coverage: Mapping[str, np.ndarray] | None = None, margin: int = 8) -> SaliencyResult:
    """Synthesise ``targets`` from normalised (z, y, x) ``inputs`` with a 2D network.

    Only slices that meet ``mask`` are run, each batch cropped to its own slices' brain plus
    ``margin`` voxels of (zero) background (see ``_batch_window``); outputs and maps are
    defined inside ``mask`` and are 0 outside the batch's window.
    With ``saliency``, also returns P3S maps: the absolute gradient, per input, of the
    sum of the prediction inside the brain (target-free), or of the squared error to
    ``saliency_references[target]`` inside the brain when one is given (Wei et al.).
    ``coverage``: input -> the voxels to use it in, for inputs that hold data over part of the brain
    (``coverage.input_coverage``; the network must declare ``PARTIAL_COVERAGE``). A batch leaves out an
    input it does not use at all (its maps there stay 0), and skips its slices when it uses none.
    """
    if coverage and not getattr(network, "PARTIAL_COVERAGE", False):
        raise ValueError(f"{type(network).__name__} cannot use an input over part of the brain only")
    names = list(inputs)
    moved = {n: np.moveaxis(a, axis, 0) for n, a in inputs.items()}
    moved_mask = np.moveaxis(mask, axis, 0)
    moved_lesion = None if lesion is None else np.moveaxis(lesion, axis, 0)
    moved_refs = {t: np.moveaxis(r, axis, 0) for t, r in (saliency_references or {}).items()}
    multiple = int(getattr(network, "SIZE_MULTIPLE", 1))
    plan = plan_crop_pad(moved_mask.shape, (1, multiple, multiple), bbox=bounding_box(moved_mask, margin=margin))
    cropped = {n: plan.apply(a) for n, a in moved.items()}
    cropped_mask = plan.apply(moved_mask.astype(np.float32))
    cropped_lesion = None if moved_lesion is None else plan.apply(moved_lesion.astype(np.float32))
    cropped_refs = {t: plan.apply(r) for t, r in moved_refs.items()}
    cropped_cover = {n: plan.apply(np.moveaxis(c, axis, 0).astype(np.float32)) > 0 for n, c in (coverage or {}).items()}
    depth = cropped_mask.shape[0]
    active = [k for k in range(depth) if cropped_mask[k].any()]

    outputs = {t: np.zeros(cropped_mask.shape, np.float32) for t in targets}
    maps = {t: {n: np.zeros(cropped_mask.shape, np.float32) for n in names} for t in targets} if saliency else {}
    squared = {t: 0.0 for t in cropped_refs} if saliency else {}

    def run_batch(index: list[int]) -> Callable[[], None] | None:
        window = (index, *_batch_window(cropped_mask[index] > 0, margin, multiple))

        def tensor(array: np.ndarray) -> torch.Tensor:
            batch = torch.from_numpy(np.ascontiguousarray(array[window][:, None]))
            return batch.to(settings.device).contiguous(memory_format=torch.channels_last)

        present = [n for n in names if n not in cropped_cover or cropped_cover[n][window].any()]
        if not present:  # no input is used in these slices: their outputs stay 0
            return
        x = {n: tensor(cropped[n]) for n in present}
        covered = {n: tensor(c) for n, c in cropped_cover.items() if n in present}
        extra = {"coverage": covered} if covered else {}
        les = None if cropped_lesion is None else tensor(cropped_lesion)
        if not saliency:
            with torch.inference_mode(), settings.autocast():
                result = network(x, lesion=les, targets=list(targets), **extra)
            for t in targets:
                outputs[t][window] = result[t][:, 0].float().cpu().numpy()
            return
        for tensor_ in x.values():
            tensor_.requires_grad_(True)
        with torch.enable_grad(), settings.autocast():
            result = network(x, lesion=les, targets=list(targets), **extra)
        brain = tensor(cropped_mask)
        added: dict[str, float] = {}
        for i, t in enumerate(targets):
            prediction = result[t].float()
            outputs[t][window] = prediction[:, 0].detach().cpu().numpy()
            if t in cropped_refs:
                objective = ((prediction - tensor(cropped_refs[t])) ** 2 * brain).sum()
                added[t] = float(objective.detach())
            else:
                objective = (prediction * brain).sum()
            # allow_unused: an input the prediction does not use at all has saliency 0, not an error
            grads = torch.autograd.grad(objective, [x[n] for n in present], retain_graph=i < len(targets) - 1,
                                        allow_unused=True)
            for n, g in zip(present, grads):
                if g is not None:
                    maps[t][n][window] = g[:, 0].abs().float().cpu().numpy()

        def commit() -> None:  # outputs and maps are set, not added to: a batch run again sets them again
            for t, value in added.items():
                squared[t] += value

        return commit

    with input_gradients_only(network):
        # With saliency autograd keeps every activation of a batch for the backward pass: on the
        # CPU 16 slices of the full Chartsias network peaked at 4.7 GB RSS on patient07 (24.4 s),
        # 4 slices at 1.7 GB (13.8 s; Testing/Benchmarks/benchmark_3d_inference.py). A GPU keeps
        # its full batch (4 slices left an H100 idle: saliency took 5.5x the plain pass) and
        # halves it on out-of-memory like any other batch.
        _run_in_batches(network, active, run_batch, settings, "slices",
                        largest_batch=SALIENCY_BATCH if saliency and settings.device.type == "cpu" else None)
    restore = lambda a: np.moveaxis(plan.invert(a), 0, axis)
    return SaliencyResult({t: restore(a) for t, a in outputs.items()},
                          {t: {n: restore(a) for n, a in per.items()} for t, per in maps.items()}, squared)


def _batch_window(brain: np.ndarray, margin: int, multiple: int) -> tuple[slice, slice]:
    """In-plane window of one batch of (already cropped) slices: their brain's box plus ``margin``.

    Slices near the top of the head hold far less brain than the volume's box, so a batch's own
    box cuts a third of the work of a whole volume (patient07, 4 slices per batch: 67 % of the
    volume box's area; docs/results/benchmark_slicewise_inference.md). The window's edges snap
    outwards to the network's size multiple on the volume crop's grid, so every batch pools on the
    same grid and neighbouring slices from different batches see the same alignment.
    """
    box = bounding_box(brain, margin=margin)[1:]
    return tuple(slice(b.start // multiple * multiple, min(-(-b.stop // multiple) * multiple, size))
                 for b, size in zip(box, brain.shape[1:]))


@contextlib.contextmanager
def input_gradients_only(network: nn.Module):
    """Weights stop requiring gradients for the duration: saliency differentiates with respect to the
    inputs only, and autograd then neither computes nor keeps what weight gradients would need."""
    previous = [p.requires_grad for p in network.parameters()]
    network.requires_grad_(False)
    try:
        yield network
    finally:
        for parameter, flag in zip(network.parameters(), previous):
            parameter.requires_grad_(flag)


def _run_in_batches(network: nn.Module, items: list[int],
                    run_batch: Callable[[list[int]], Callable[[], None] | None], settings: RunSettings, unit: str,
                    channels_last: bool = True,
                    largest_batch: int | None = None) -> None:
    """Run ``items`` in batches, halving the batch on out-of-memory, then falling back to the CPU.

    A batch that ran out of memory is run again, smaller: what it adds to sums (P3S gradients, squared
    errors) must not count twice, so ``run_batch`` returns those additions as a function, called once
    the batch has run whole."""
    if channels_last:
        network.to(settings.device, memory_format=torch.channels_last)
    else:
        network.to(settings.device)
    done, batch = 0, max(1, min(settings.batch_size, largest_batch or settings.batch_size))
    settings.progress(0.0, f"synthesising {len(items)} {unit} on {settings.device.type}")
    while done < len(items):
        settings.check_cancel()
        index = items[done:done + batch]
        try:
            commit = run_batch(index)
        except (torch.OutOfMemoryError, RuntimeError) as error:
            if not _is_oom(error) or settings.device.type == "cpu":
                raise
            if settings.device.type == "cuda":
                torch.cuda.empty_cache()
            if batch > 1:
                batch //= 2
                settings.notes.append(f"out of memory on {settings.device.type}: batch size lowered to {batch}")
            else:
                settings.notes.append(f"out of memory on {settings.device.type} even one {unit[:-1]} at a time: "
                                      "continuing on the CPU")
                settings.device, settings.dtype = torch.device("cpu"), None
                network.to(settings.device)
            settings.progress(done / max(1, len(items)), settings.notes[-1])
            continue
        if commit is not None:
            commit()
        done += len(index)
        settings.progress(done / len(items), f"{done}/{len(items)} {unit}")
