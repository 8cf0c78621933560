"""Input handling shared by the channel-stacking 3D models (Wei's FCN, Klingelhoefer's AE).

Both papers feed every available sequence as one channel of a single network input. Unlike
Chartsias' per-input encoders, such a network has no natural way to skip an absent input,
so the model declares how it was trained: either every input is required (an absent one is
refused, never zero-filled silently), or it was trained with random input dropout and sees
one presence-flag channel per input, so a zero-filled channel is one the network was told
(and trained) to treat as missing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor


def validated_names(names: Sequence[str], what: str) -> tuple[str, ...]:
    out = tuple(names)
    if not out or len(set(out)) != len(out) or not all(isinstance(n, str) and n and "." not in n for n in out):
        raise ValueError(f"{what} must be distinct, non-empty modality names without '.', got {list(out)}")
    return out


def input_channels(inputs: Sequence[str], lesion_input: bool, input_dropout: bool) -> int:
    """Channels of the stacked input: one per modality, its presence flags, the lesion mask."""
    return len(inputs) * (2 if input_dropout else 1) + int(lesion_input)


def stack_inputs(inputs: Mapping[str, Tensor], names: Sequence[str], *, lesion: Tensor | None,
                 lesion_input: bool, input_dropout: bool) -> Tensor:
    """(N, C, D, H, W) network input from (N, 1, D, H, W) tensors named by modality.

    Channel order is ``names`` (the card's inputs), then presence flags, then the lesion
    mask. Without ``lesion`` a lesion-channel model gets zeros: the scan is taken as healthy.
    """
    unknown = [m for m in inputs if m not in names]
    if unknown:
        raise ValueError(f"unknown input modalities {unknown}; this model takes {list(names)}")
    missing = [m for m in names if m not in inputs]
    if not inputs:
        raise ValueError("no input given")
    if missing and not input_dropout:
        raise ValueError(f"inputs {missing} are missing; this model was trained with every input "
                         f"({', '.join(names)}) and cannot replace an absent one")
    reference = next(iter(inputs.values()))
    if reference.dim() != 5 or reference.shape[1] != 1:
        raise ValueError(f"inputs must be (N, 1, D, H, W), got {tuple(reference.shape)}")
    if any(t.shape != reference.shape for t in inputs.values()):
        raise ValueError(f"inputs differ in shape: {[tuple(t.shape) for t in inputs.values()]}")
    zeros = torch.zeros_like(reference)
    channels = [inputs.get(m, zeros) for m in names]
    if input_dropout:
        channels += [torch.full_like(reference, float(m in inputs)) for m in names]
    if lesion_input:
        if lesion is not None and lesion.shape != reference.shape:
            raise ValueError(f"lesion mask shape {tuple(lesion.shape)} differs from the inputs' "
                             f"{tuple(reference.shape)}")
        channels.append(zeros if lesion is None else lesion.to(reference.dtype))
    elif lesion is not None:
        raise ValueError("this model has no lesion channel")
    return torch.cat(channels, 1)


def selected(outputs: Sequence[str], targets: Sequence[str] | None) -> list[int]:
    """Indices of ``targets`` among the model's output channels (all when ``targets`` is None)."""
    if targets is None:
        return list(range(len(outputs)))
    unknown = [t for t in targets if t not in outputs]
    if not targets or unknown:
        raise ValueError(f"unknown or no target modalities {unknown}; this model outputs {list(outputs)}")
    return [list(outputs).index(t) for t in targets]
