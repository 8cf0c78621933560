"""Data-parallel training across processes (``torchrun``), gloo on CPU and nccl on CUDA.

Each step has one global batch of ``batch_size`` samples, built from per-sample seeds
(``batches``); rank r builds and runs its contiguous share, and the gradients are
averaged over ranks before Adam steps. Because the loss is a mean over samples, the mean
of the ranks' gradients is the gradient of the global batch: N processes take the same
step one process would, up to floating-point summation order. Where the cost is a weighted
mean (lesion pixels weighted, pixels ignored, samples lacking an output in an incomplete
cohort), each rank's share holds a different total weight, so the cost divides by the
ranks' mean of it (``pool``), which keeps that equality.

The gradients are all-reduced here rather than by wrapping the network in
``DistributedDataParallel``: the Chartsias cost calls ``encode``/``fuse``/``decode``, not
``forward``, and with random input subsets whole encoders are unused in a step, which
DDP only tolerates with ``find_unused_parameters`` (a graph walk every step). All ranks
use the same subset, so the set of parameters with a gradient is the same on every rank
and one flat all-reduce of those gradients is exact; parameters without a gradient keep
``grad=None`` on every rank, so Adam leaves them alone as it does in a single process.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


@dataclass(frozen=True)
class Context:
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, batch_size: int) -> range:
        """The indices of the global batch that this rank builds and runs."""
        if batch_size % self.world:
            raise ValueError(f"batch_size {batch_size} must be divisible by the number of processes {self.world}")
        per_rank = batch_size // self.world
        return range(self.rank * per_rank, (self.rank + 1) * per_rank)


def setup() -> Context:
    """Join the process group that ``torchrun`` (or a test) describes in the environment, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    return Context(rank, world, device)


def shutdown(context: Context) -> None:
    """Leave the group together, once every rank has finished: a rank that finished its steps waits for rank 0's
    validation and export first. Left alone, it tore the group down while rank 0 still worked, and gloo aborted it
    now and then ("terminate called without an active exception", SIGABRT, seen once in CI)."""
    if context.world > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def broadcast_parameters(model: nn.Module, context: Context) -> None:
    """Start every rank from rank 0's weights (seeding alone already agrees; this makes sure)."""
    if context.world > 1:
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, 0)


def average_gradients(model: nn.Module, context: Context) -> None:
    """Replace each existing gradient by its mean over ranks, in one all-reduce."""
    if context.world == 1:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= context.world
    for grad, averaged in zip(grads, _unflatten_dense_tensors(flat, grads)):
        grad.copy_(averaged)


def pool(context: Context) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The mean over ranks of a tensor (no gradient), for the weighted means of
    ``losses_chartsias.chartsias_loss``; None in one process, where there is nothing to pool."""
    if context.world == 1:
        return None

    def mean(tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.detach().clone()
        dist.all_reduce(total)
        return total / context.world

    return mean


def mean_over_ranks(values: list[float], context: Context) -> list[float]:
    if context.world == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=context.device)
    dist.all_reduce(tensor)
    return (tensor / context.world).tolist()


def from_main(flag: bool, context: Context) -> bool:
    """Rank 0's decision (stop or go on), the same on every rank."""
    if context.world == 1:
        return flag
    tensor = torch.tensor([int(flag)], device=context.device)
    dist.broadcast(tensor, 0)
    return bool(tensor.item())
