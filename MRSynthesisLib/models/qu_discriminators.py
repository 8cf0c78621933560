"""The four discriminators of Qu et al.: D_f and FD_f (Sec. 2.3), the MRI discriminator D and
the MRI code discriminator CD (2.4-2.6).

All are least-squares critics (the paper's losses are ||D(.) - 1||^2 and ||D(.)||^2) with
linear outputs. D_f and D judge patches: a stack of stride-2 convolutions ending in a map
of scores (the paper gives no design; patch scores judge local texture and edges, which is
what distinguishes a real structure map or MRI from a generated one). FD_f judges 3x3
neighbourhoods of the code matrix: N(0, 1) noise has independent cells, and a critic that saw
one cell at a time (1x1 convolutions, our first version) could only match each cell's
marginal, leaving the encoder's codes spatially correlated; DC_f then decoded true noise to
near-empty maps (measured at 64 pixels after 4000 steps).

CD ("MRI code discriminator", Sec. 2.1/2.4 and Fig. 5) guides "the consistency of the two
training processes": it learns the MRI encoder's codes EC(x) of real MRIs as real and the
fusion encoder's codes EC_R(fuse(f, label)) as fake, so that EC_R must produce codes that DC
has learnt to decode from real MRIs. The paper gives no design; it has FD_f's form (3x3
convolutions over code neighbourhoods, a score per code cell), one layer deeper.
"""

from __future__ import annotations

from torch import Tensor, nn

from .qu_layers import DownStack, act, check_size, conv


class PatchDiscriminator(nn.Module):
    """D_f: (N, 1, H, W) -> (N, 1, H/8, W/8) real/fake scores."""

    DEPTH = 3
    SIZE_MULTIPLE = 2 ** DEPTH

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.down = DownStack(1, width, self.DEPTH)
        self.out = conv(self.down.channels(self.DEPTH), 1)

    def forward(self, x: Tensor) -> Tensor:
        check_size(x, self.SIZE_MULTIPLE, "discriminator input")
        return self.out(self.down(x)[-1])


class CodeDiscriminator(nn.Module):
    """FD_f: (N, C, h, w) code -> (N, 1, h, w) scores, "is this neighbourhood N(0, 1) noise?"."""

    def __init__(self, code_channels: int, width: int = 32) -> None:
        super().__init__()
        self.hidden1 = conv(code_channels, width)
        self.hidden2 = conv(width, width)
        self.out = conv(width, 1, kernel_size=1)

    def forward(self, code: Tensor) -> Tensor:
        return self.out(act(self.hidden2(act(self.hidden1(code)))))


class MRIDiscriminator(nn.Module):
    """D: (N, 1, H, W) MRI -> (d, c): patch real/fake scores and modality scores.

    ``c`` is an (N, n_modalities) vector, the spatial mean of a per-patch modality map; the
    paper's ``||c - i||^2`` compares it with the one-hot vector of modality i (our reading:
    a scalar index i would make the classes ordered, as if T2 were "between" T1c and FLAIR).
    """

    DEPTH = 3
    SIZE_MULTIPLE = 2 ** DEPTH

    def __init__(self, n_modalities: int, width: int = 16) -> None:
        super().__init__()
        self.down = DownStack(1, width, self.DEPTH)
        self.real = conv(self.down.channels(self.DEPTH), 1)
        self.modality = conv(self.down.channels(self.DEPTH), n_modalities)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        check_size(x, self.SIZE_MULTIPLE, "MRI discriminator input")
        h = self.down(x)[-1]
        return self.real(h), self.modality(h).mean(dim=(2, 3))


class MRICodeDiscriminator(nn.Module):
    """CD: (N, C, H/4, W/4) semantic feature map -> (N, 1, H/4, W/4) scores, "is this EC's code of a real MRI?".

    Three 3x3 convolutions (receptive field 7x7 code cells = 28x28 pixels) and a 1x1 output.
    """

    def __init__(self, code_channels: int, width: int = 32) -> None:
        super().__init__()
        self.hidden1 = conv(code_channels, width)
        self.hidden2 = conv(width, width)
        self.hidden3 = conv(width, width)
        self.out = conv(width, 1, kernel_size=1)

    def forward(self, code: Tensor) -> Tensor:
        if code.dim() != 4:
            raise ValueError(f"MRI code discriminator input: expected (N, C, h, w), got shape {tuple(code.shape)}")
        return self.out(act(self.hidden3(act(self.hidden2(act(self.hidden1(code)))))))
