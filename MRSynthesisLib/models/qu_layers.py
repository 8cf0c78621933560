"""Layers and initialisers shared by the Qu et al. networks (``qu_*`` files).

The paper (Sec. 3.4) fixes only the initialisation, the input dropout and the optimiser; it
gives no layer counts, widths or kernel sizes. Our choices, the same in every Qu network so
that one ``width`` scales them all: 3x3 convolutions, Leaky ReLU (slope 0.2, the usual GAN
choice), stride-2 convolutions to go down and nearest-neighbour x2 + convolution to go up
(no transposed convolutions, whose checkerboard artefacts would show in Algorithm 1's edges),
no normalisation layers (batch size 1 in the paper makes batch norm meaningless).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NEGATIVE_SLOPE = 0.2
# Sec. 3.4: "perform a Dropout of 0.1 on the input layer".
INPUT_DROPOUT = 0.1
# Sec. 3.4: discriminator weights ~ N(0, 0.2), biases 0.
DISCRIMINATOR_STD = 0.2
# Sec. 3.4 sets every generator kernel to the mean filter 1/(k*k*f). Identical kernels make
# every channel of a layer compute the same thing and receive the same gradient, so the
# channels could never differ; a perturbation of 1% of that value breaks the tie while
# keeping the paper's start (an averaging, smoothing network).
MEAN_INIT_JITTER = 0.01


def act(x: Tensor) -> Tensor:
    return F.leaky_relu(x, NEGATIVE_SLOPE)


def conv(in_channels: int, out_channels: int, stride: int = 1, kernel_size: int = 3) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)


class Up(nn.Module):
    """Nearest-neighbour x2 then a 3x3 convolution and Leaky ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = conv(in_channels, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return act(self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest")))


class DownStack(nn.Module):
    """A 3x3 convolution at full size, then ``depth`` stride-2 convolutions doubling the width.

    ``forward`` returns every level's output (full size first), so U-Nets can take skips.
    """

    def __init__(self, in_channels: int, width: int, depth: int) -> None:
        super().__init__()
        self.first = conv(in_channels, width)
        self.downs = nn.ModuleList(conv(width * 2 ** k, width * 2 ** (k + 1), stride=2) for k in range(depth))

    def channels(self, level: int) -> int:
        return self.first.out_channels * 2 ** level

    def forward(self, x: Tensor) -> list[Tensor]:
        levels = [act(self.first(x))]
        for down in self.downs:
            levels.append(act(down(levels[-1])))
        return levels


@torch.no_grad()
def mean_filter_init_(module: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Sec. 3.4 generator initialisation: every k x k x f kernel = 1/(k*k*f) (+ 1% jitter), bias 0."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            _, in_channels, kh, kw = layer.weight.shape
            value = 1.0 / (kh * kw * in_channels)
            noise = torch.randn(layer.weight.shape, generator=generator)
            layer.weight.copy_(value * (1.0 + MEAN_INIT_JITTER * noise))
            if layer.bias is not None:
                layer.bias.zero_()
    return module


@torch.no_grad()
def normal_init_(module: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Sec. 3.4 discriminator initialisation: weights ~ N(0, 0.2), bias 0."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            layer.weight.copy_(DISCRIMINATOR_STD * torch.randn(layer.weight.shape, generator=generator))
            if layer.bias is not None:
                layer.bias.zero_()
    return module


def check_size(x: Tensor, multiple: int, what: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{what}: expected (N, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[-1] % multiple or x.shape[-2] % multiple:
        raise ValueError(f"{what}: H and W must be multiples of {multiple}, got {tuple(x.shape[-2:])}")
