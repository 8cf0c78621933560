"""Lesion segmentors and the three lesion-label generation schemes of Qu et al. Sec. 2.7.

A segmentor is a two-level U-Net (the paper shows none; a U-Net is the standard 2D lesion
segmenter) with a softmax over ``n_classes`` (background first). ``LesionComponents``
arranges segmentors as one of the paper's schemes:

- ``"single"`` (1SEG): one complete segmentor shared by every modality;
- ``"shared_encoder"`` (1ECL+4DCL): one lesion encoder, one lesion decoder per modality;
- ``"per_modality"`` (4SEG): one complete segmentor per modality (the paper's best, Table 1).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .qu_layers import INPUT_DROPOUT, DownStack, Up, act, check_size, conv

SCHEMES: tuple[str, ...] = ("single", "shared_encoder", "per_modality")


class SegmentorEncoder(nn.Module):
    DEPTH = 2

    def __init__(self, width: int) -> None:
        super().__init__()
        self.dropout = nn.Dropout(INPUT_DROPOUT)
        self.down = DownStack(1, width, self.DEPTH)

    def forward(self, x: Tensor) -> list[Tensor]:
        check_size(x, 2 ** self.DEPTH, "segmentor input")
        return self.down(self.dropout(x))


class SegmentorDecoder(nn.Module):
    def __init__(self, width: int, n_classes: int) -> None:
        super().__init__()
        depth = SegmentorEncoder.DEPTH
        self.ups = nn.ModuleList(Up(width * 2 ** (k + 1), width * 2 ** k) for k in reversed(range(depth)))
        self.merges = nn.ModuleList(conv(width * 2 ** (k + 1), width * 2 ** k) for k in reversed(range(depth)))
        self.out = conv(width, n_classes)

    def forward(self, levels: list[Tensor]) -> Tensor:
        h = levels[-1]
        for up, merge, skip in zip(self.ups, self.merges, reversed(levels[:-1])):
            h = act(merge(torch.cat([up(h), skip], 1)))
        return torch.softmax(self.out(h), dim=1)


class LesionSegmentor(nn.Module):
    """(N, 1, H, W) MRI -> (N, n_classes, H, W) class probabilities."""

    SIZE_MULTIPLE = 2 ** SegmentorEncoder.DEPTH

    def __init__(self, n_classes: int = 2, width: int = 16) -> None:
        super().__init__()
        self.encoder = SegmentorEncoder(width)
        self.decoder = SegmentorDecoder(width, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


class LesionComponents(nn.Module):
    """The lesion label generation components for ``n_modalities`` modalities, arranged by ``scheme``."""

    def __init__(self, scheme: str, n_modalities: int, n_classes: int = 2, width: int = 16) -> None:
        super().__init__()
        if scheme not in SCHEMES:
            raise ValueError(f"unknown lesion scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
        self.scheme, self.n_modalities = scheme, n_modalities
        if scheme == "single":
            self.segmentors = nn.ModuleList([LesionSegmentor(n_classes, width)])
        elif scheme == "per_modality":
            self.segmentors = nn.ModuleList(LesionSegmentor(n_classes, width) for _ in range(n_modalities))
        else:
            self.encoder = SegmentorEncoder(width)
            self.decoders = nn.ModuleList(SegmentorDecoder(width, n_classes) for _ in range(n_modalities))

    def forward(self, x: Tensor, modality: int) -> Tensor:
        """Class probabilities of the lesion in ``x``, an MRI of modality index ``modality``."""
        if not 0 <= modality < self.n_modalities:
            raise ValueError(f"modality index must be in [0, {self.n_modalities - 1}], got {modality}")
        if self.scheme == "single":
            return self.segmentors[0](x)
        if self.scheme == "per_modality":
            return self.segmentors[modality](x)
        return self.decoders[modality](self.encoder(x))
