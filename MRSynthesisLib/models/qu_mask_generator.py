"""MASK of Qu et al. Sec. 2.3: a structure map -> the region outside the brain (Algorithm 2's mask).

It lets the data-set builder find the brain of a *generated* structure map, which has no MRI
for Algorithm 2 to read: the brain outline bounds where a random lesion label may go and
where the generated MRI may be non-zero. A two-level U-Net (the paper gives no design):
the outline is a long-range shape, the skips keep it pixel-accurate.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .qu_layers import DownStack, Up, act, check_size, conv


class MaskGenerator(nn.Module):
    """(N, 1, H, W) structure map -> (N, 1, H, W) probability of "outside the brain"."""

    DEPTH = 2
    SIZE_MULTIPLE = 2 ** DEPTH

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.down = DownStack(1, width, self.DEPTH)
        self.ups = nn.ModuleList(Up(width * 2 ** (k + 1), width * 2 ** k) for k in reversed(range(self.DEPTH)))
        self.merges = nn.ModuleList(conv(width * 2 ** (k + 1), width * 2 ** k) for k in reversed(range(self.DEPTH)))
        self.out = conv(width, 1)

    def forward(self, f: Tensor) -> Tensor:
        check_size(f, self.SIZE_MULTIPLE, "structure map")
        levels = self.down(f)
        h = levels[-1]
        for up, merge, skip in zip(self.ups, self.merges, reversed(levels[:-1])):
            h = act(merge(torch.cat([up(h), skip], 1)))
        return torch.sigmoid(self.out(h))
