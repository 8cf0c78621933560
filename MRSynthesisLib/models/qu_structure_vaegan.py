"""The structure-map VAE of Qu et al. Sec. 2.3: encoder EC_f and decoder DC_f.

EC_f encodes a binary structure map f to ``code_mean`` and ``code_logvar`` matrices; the code
is ``mean + exp(0.5 * logvar) * noise``; DC_f decodes a code (or pure N(0, 1) noise) to a
structure map. Its two discriminators are in ``qu_discriminators`` and its costs in
``losses_qu``. The paper calls the code a "matrix" and gives no size: ours is
``code_channels`` x H/8 x W/8 (three stride-2 levels), small enough that N(0, 1) samples
decode to whole brains and large enough to carry the outline's layout.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .qu_layers import INPUT_DROPOUT, DownStack, Up, check_size, conv


class StructureVAE(nn.Module):
    """EC_f and DC_f; structure maps are (N, 1, H, W) of 0/1, H and W multiples of ``SIZE_MULTIPLE``."""

    DEPTH = 3
    SIZE_MULTIPLE = 2 ** DEPTH

    def __init__(self, width: int = 16, code_channels: int = 4) -> None:
        super().__init__()
        self.code_channels = code_channels
        self.dropout = nn.Dropout(INPUT_DROPOUT)
        self.down = DownStack(1, width, self.DEPTH)
        deepest = self.down.channels(self.DEPTH)
        self.mean = conv(deepest, code_channels)
        self.logvar = conv(deepest, code_channels)
        self.start = conv(code_channels, deepest)
        self.ups = nn.ModuleList(Up(width * 2 ** (k + 1), width * 2 ** k) for k in reversed(range(self.DEPTH)))
        self.out = conv(width, 1)

    def code_shape(self, height: int, width: int) -> tuple[int, int, int]:
        return self.code_channels, height // self.SIZE_MULTIPLE, width // self.SIZE_MULTIPLE

    def encode(self, f: Tensor) -> tuple[Tensor, Tensor]:
        """EC_f: (code_mean, code_logvar)."""
        check_size(f, self.SIZE_MULTIPLE, "structure map")
        h = self.down(self.dropout(f))[-1]
        return self.mean(h), self.logvar(h)

    @staticmethod
    def sample_code(mean: Tensor, logvar: Tensor, noise: Tensor | None = None) -> Tensor:
        """``code_f = code_mean + exp(0.5 * code_logvar) * code_n`` with code_n ~ N(0, 1)."""
        noise = torch.randn_like(mean) if noise is None else noise
        return mean + torch.exp(0.5 * logvar) * noise

    def decode(self, code: Tensor) -> Tensor:
        """DC_f: a structure map; binarise at 0.5 to get Algorithm 1's 0/1 map.

        The output is linear: with a sigmoid, the L2 cost on maps that are ~75% zeros drove
        every pixel to a saturated 0 within 100 steps, where the gradient vanishes (measured
        on the MS slices at 64 pixels, with both the paper's and PyTorch's initialisation).
        """
        h = self.start(code)
        for up in self.ups:
            h = up(h)
        return self.out(h)

    def forward(self, f: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(f_r, code_f, code_mean, code_logvar) for a batch of real structure maps."""
        mean, logvar = self.encode(f)
        code = self.sample_code(mean, logvar)
        return self.decode(code), code, mean, logvar
