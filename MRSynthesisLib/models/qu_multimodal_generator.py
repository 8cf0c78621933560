"""The conditional multimodal MRI generator of Qu et al. Sec. 2.4-2.6.

Three parts share one latent space, the "semantic feature map" (``code``):

- EC_R, the fusion encoder: a structure map fused with a lesion label -> code;
- EC, the MRI encoder: a real or generated MRI of any modality -> code;
- DC, the MRI decoder: code + a one-hot modality vector -> an MRI of that modality.

Generation is DC(EC_R(fuse(f, label)), e_i) for every modality i; because every modality is
decoded from the same code, the outputs are registered by construction. The discriminator is
``qu_discriminators.MRIDiscriminator``, the lesion components ``qu_segmentors``, the costs
``losses_qu``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .qu_layers import INPUT_DROPOUT, DownStack, Up, act, check_size, conv


def one_hot_label(label: Tensor, n_classes: int) -> Tensor:
    """(N, H, W) integer label -> (N, n_classes, H, W) float one-hot (channel 0 = background)."""
    if label.dim() != 3:
        raise ValueError(f"label must be (N, H, W), got shape {tuple(label.shape)}")
    if label.numel() and (int(label.min()) < 0 or int(label.max()) >= n_classes):
        raise ValueError(f"label values must be in [0, {n_classes - 1}], got [{int(label.min())}, {int(label.max())}]")
    return F.one_hot(label.long(), n_classes).permute(0, 3, 1, 2).float()


def fuse(structure: Tensor, label: Tensor, n_classes: int) -> Tensor:
    """Sec. 2.5: the weighted sum of a structure map and the channels of a one-hot lesion label.

    The paper gives no weights. Channel k (k >= 1; background gets 0) is weighted 2k, so each
    fused value f + 2k names one (structure on/off, class) pair: with weights 1 a lesion pixel
    without an edge would read the same as an edge pixel without a lesion. (N, 1, H, W) in,
    (N, 1, H, W) out.
    """
    onehot = one_hot_label(label, n_classes)
    weights = 2.0 * torch.arange(n_classes, dtype=onehot.dtype, device=onehot.device).view(1, -1, 1, 1)
    return structure + (onehot * weights).sum(dim=1, keepdim=True)


def modality_vector(index: int | Sequence[int] | Tensor, n_modalities: int, batch: int) -> Tensor:
    """One-hot condition vectors (N, n_modalities) for one modality index or one per sample."""
    indices = torch.as_tensor(index, dtype=torch.long)
    if indices.dim() == 0:
        indices = indices.expand(batch)
    if indices.shape != (batch,) or int(indices.min()) < 0 or int(indices.max()) >= n_modalities:
        raise ValueError(f"modality index must be in [0, {n_modalities - 1}], one per sample; got {indices.tolist()}")
    return F.one_hot(indices, n_modalities).float()


class _Encoder(nn.Module):
    """(N, 1, H, W) -> (N, code_channels, H/4, W/4); input dropout 0.1 (Sec. 3.4)."""

    def __init__(self, width: int, depth: int, code_channels: int) -> None:
        super().__init__()
        self.dropout = nn.Dropout(INPUT_DROPOUT)
        self.down = DownStack(1, width, depth)
        self.mid = conv(self.down.channels(depth), self.down.channels(depth))
        self.code = conv(self.down.channels(depth), code_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.code(act(self.mid(self.down(self.dropout(x))[-1])))


class _Decoder(nn.Module):
    """code (N, C, h, w) + one-hot modality (N, M), tiled over the code's pixels -> MRI.

    Linear output (the training images are in [0, 1], ``training.qu.data``): a sigmoid
    saturates at the background's 0 under the L2 costs and stops learning, as measured for
    DC_f (``StructureVAE.decode``); ``MultimodalGenerator.generate`` clips to [0, 1].
    """

    def __init__(self, width: int, depth: int, code_channels: int, n_modalities: int) -> None:
        super().__init__()
        deepest = width * 2 ** depth
        self.start = conv(code_channels + n_modalities, deepest)
        self.mid = conv(deepest, deepest)
        self.ups = nn.ModuleList(Up(width * 2 ** (k + 1), width * 2 ** k) for k in reversed(range(depth)))
        self.out = conv(width, 1)

    def forward(self, code: Tensor, condition: Tensor) -> Tensor:
        tiled = condition[:, :, None, None].expand(-1, -1, *code.shape[-2:])
        h = act(self.mid(act(self.start(torch.cat([code, tiled], 1)))))
        for up in self.ups:
            h = up(h)
        return self.out(h)


class MultimodalGenerator(nn.Module):
    """EC_R, EC and DC for ``n_modalities`` modalities and ``n_classes`` label classes (incl. background)."""

    DEPTH = 2
    SIZE_MULTIPLE = 2 ** DEPTH

    def __init__(self, n_modalities: int, n_classes: int = 2, width: int = 16, code_channels: int = 32) -> None:
        super().__init__()
        if n_modalities < 1 or n_classes < 2:
            raise ValueError(f"need >= 1 modality and >= 2 label classes, got {n_modalities}, {n_classes}")
        self.n_modalities, self.n_classes = n_modalities, n_classes
        self.fusion_encoder = _Encoder(width, self.DEPTH, code_channels)
        self.mri_encoder = _Encoder(width, self.DEPTH, code_channels)
        self.decoder = _Decoder(width, self.DEPTH, code_channels, n_modalities)

    def encode_fused(self, structure: Tensor, label: Tensor) -> Tensor:
        """EC_R(fuse(f, label)): the semantic feature map ``code_g``."""
        check_size(structure, self.SIZE_MULTIPLE, "structure map")
        return self.fusion_encoder(fuse(structure, label, self.n_classes))

    def encode(self, x: Tensor) -> Tensor:
        """EC(x): the semantic feature map of an MRI of any modality."""
        check_size(x, self.SIZE_MULTIPLE, "MRI")
        return self.mri_encoder(x)

    def decode(self, code: Tensor, modality: int | Sequence[int] | Tensor) -> Tensor:
        """DC(code, e_modality)."""
        return self.decoder(code, modality_vector(modality, self.n_modalities, code.shape[0]).to(code))

    @torch.no_grad()
    def generate(self, structure: Tensor, label: Tensor) -> Tensor:
        """All modalities for each (structure map, label) pair: (N, n_modalities, H, W) in [0, 1], registered by
        construction."""
        code = self.encode_fused(structure, label)
        return torch.cat([self.decode(code, i) for i in range(self.n_modalities)], 1).clamp(0.0, 1.0)
