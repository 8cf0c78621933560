"""The multi-input multi-output synthesis network of Chartsias et al. ("chartsias2018").

A. Chartsias, T. Joyce, M. V. Giuffrida, S. A. Tsaftaris, "Multimodal MR Synthesis via
Modality-Invariant Latent Representation", IEEE TMI 37(3):803-814, 2018. "Ref" below is the
authors' Keras code, github.com/agis85/multimodal_brain_synthesis (``model.py``), used
wherever the paper leaves a choice open.

One encoder per input modality maps a 2D slice to a latent image of the slice's size; the
latents of whichever inputs are present are fused; one decoder per output modality maps the
fused latent to that modality. The training cost is in ``losses_chartsias``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FUSIONS: tuple[str, ...] = ("max", "mean", "hemis", "output_mean")
OUTPUT_GRADIENTS: tuple[str, ...] = ("relu", "pass_through")


class _Conv(nn.Conv2d):
    """Stride-1 convolution whose input is padded by repeating its border pixels.

    Paper IV-A: "Throughout the network, we use a stride of 1, and pad the images by
    repeating the border pixels" (ref pads with zeros; we follow the paper). The padding is
    an explicit ``F.pad`` before a padding-free convolution because the project once measured
    ``Conv2d(padding_mode='replicate')`` making a training step ~3x slower.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__(in_channels, out_channels, kernel_size)
        self._pad = (kernel_size // 2,) * 4

    def reset_parameters(self) -> None:
        # Ref relies on Keras' defaults: Glorot-uniform weights, zero biases.
        nn.init.xavier_uniform_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        if self._pad[0]:
            # Outside autocast: autocast runs replication_pad2d in fp32, so a bf16 activation was
            # cast up, padded and cast back down by the convolution: a 4-slice inference batch
            # 1.59x and a training step 1.40x slower (Testing/Benchmarks/benchmark_autocast_padding.py).
            # Padding only copies values, so padding in the activation's own dtype gives the same tensor.
            with torch.autocast(x.device.type, enabled=False):
                x = F.pad(x, self._pad, mode="replicate")
        return self._conv_forward(x, self.weight, self.bias)


class _Encoder(nn.Module):
    """U-Net-like encoder with two down- and two up-sampling steps (paper IV-A, Fig. 2).

    As in ref: two 3x3 convolutions per level (widths ``filters`` = 32/64/128 in ref, no
    normalisation layers), 2x2 max-pool down, nearest-neighbour x2 up (Keras
    ``UpSampling2D``) followed by a 3x3 convolution *without* activation, concatenation of
    the skip, and a 3x3 convolution to the latent channels. Every other convolution,
    including the latent one, is followed by Leaky ReLU (paper IV-A; ref ``enc_*_conv13`` ->
    ``LeakyReLU``), so the latent is unbounded below and not sparse.
    """

    def __init__(self, in_channels: int, filters: tuple[int, int, int], latent_channels: int,
                 negative_slope: float) -> None:
        super().__init__()
        f0, f1, f2 = filters
        self.negative_slope = negative_slope
        self.conv0a, self.conv0b = _Conv(in_channels, f0), _Conv(f0, f0)
        self.conv1a, self.conv1b = _Conv(f0, f1), _Conv(f1, f1)
        self.conv2a, self.conv2b = _Conv(f1, f2), _Conv(f2, f2)
        self.up1 = _Conv(f2, f1)
        self.conv3a, self.conv3b = _Conv(2 * f1, f1), _Conv(f1, f1)
        self.up0 = _Conv(f1, f0)
        self.conv4a, self.conv4b = _Conv(2 * f0, f0), _Conv(f0, f0)
        self.latent = _Conv(f0, latent_channels)

    def _act(self, x: Tensor) -> Tensor:
        return F.leaky_relu(x, self.negative_slope)

    def _block(self, a: _Conv, b: _Conv, x: Tensor) -> Tensor:
        return self._act(b(self._act(a(x))))

    def forward(self, x: Tensor) -> Tensor:
        skip0 = self._block(self.conv0a, self.conv0b, x)
        skip1 = self._block(self.conv1a, self.conv1b, F.max_pool2d(skip0, 2))
        h = self._block(self.conv2a, self.conv2b, F.max_pool2d(skip1, 2))
        h = self.up1(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        h = self._block(self.conv3a, self.conv3b, torch.cat([skip1, h], 1))
        h = self.up0(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        h = self._block(self.conv4a, self.conv4b, torch.cat([skip0, h], 1))
        return self._act(self.latent(h))


class _Decoder(nn.Module):
    """Two residual blocks and a convolution to one channel (paper IV-C, Fig. 3).

    As in ref: each block is two 3x3 convolutions of width ``width`` (32 in ref, tied here to
    ``filters[0]``) with ReLU, and its "residual" connection concatenates the block's input
    to its output (DenseNet style) instead of adding it. The output is a 1x1 convolution
    followed by ReLU (ref ``dec_*_conv5``): the paper's targets are volumes divided by their
    mean intensity (Sec. V), so they are non-negative with a background of exactly 0, which
    ReLU can represent and a linear output could only approach.

    That ReLU can die: once the 1x1 convolution is negative at every pixel, the output is 0
    everywhere and no gradient reaches the decoder again (seen here: one LOSO run's T2
    decoder stayed all-zero for all 20 epochs; training/README.md "Dead outputs").
    ``output_gradient="pass_through"`` keeps the forward pass exactly ReLU's (so inference,
    saliency and every saved model are unchanged) but, in training mode only, passes the
    gradient through the ReLU as if it were the identity (a straight-through estimator).
    Against these targets that is safe: where the output is clamped to 0 and the target is 0
    (background), the L1 terms' gradient is 0 (d|x|/dx = 0 at 0 in torch), so nothing pushes
    the pre-activation further down; where the target is above 0 the gradient pushes it up,
    which is what revives a dead output.
    """

    def __init__(self, in_channels: int, width: int, output_gradient: str = "relu") -> None:
        super().__init__()
        self.conv1, self.conv2 = _Conv(in_channels, width), _Conv(width, width)
        self.conv3, self.conv4 = _Conv(in_channels + width, width), _Conv(width, width)
        self.out = _Conv(in_channels + 2 * width, 1, kernel_size=1)
        self.output_gradient = output_gradient

    def forward(self, z: Tensor) -> Tensor:
        h = torch.cat([z, F.relu(self.conv2(F.relu(self.conv1(z))))], 1)
        h = torch.cat([h, F.relu(self.conv4(F.relu(self.conv3(h))))], 1)
        y = self.out(h)
        if self.training and self.output_gradient == "pass_through":
            # exactly relu(y) in value (y + -y == 0 and y + 0 == y in floating point); gradient 1
            return y + (F.relu(y) - y).detach()
        return F.relu(y)


def _names(names: Sequence[str], what: str) -> tuple[str, ...]:
    out = tuple(names)
    if not out:
        raise ValueError(f"{what} must name at least one modality")
    bad = [n for n in out if not isinstance(n, str) or not n or "." in n]
    if bad:
        raise ValueError(f"{what}: modality names must be non-empty strings without '.', got {bad}")
    if len(set(out)) != len(out):
        raise ValueError(f"{what} repeat a modality: {list(out)}")
    return out


def _covered_mean(stack: Tensor, covers: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean over the first axis of ``stack`` where ``covers``, its weights and the count per pixel
    (at least 1: a pixel nothing covers gets 0)."""
    weights = covers.to(stack.dtype)
    count = weights.sum(0).clamp(min=1.0)
    return (stack * weights).sum(0) / count, weights, count


class ChartsiasMIMO(nn.Module):
    """Multi-input multi-output MR synthesis network with a modality-invariant latent space.

    ``inputs`` / ``outputs`` name the modalities that get an encoder / a decoder (they may
    overlap). ``latent_channels`` is the width of the fused latent that the decoders read
    (16 in the paper, Sec. IV-A and VI-A). ``fusion`` is one of ``FUSIONS``:

    - ``"max"``: pixel-wise maximum of the latents (paper eq. 1, the paper's model);
    - ``"mean"``: pixel-wise mean (eq. 5);
    - ``"hemis"``: concatenated mean and population variance across the inputs (eq. 6); as
      in the paper ("to achieve a 16-channel latent representation ... we generate eight
      channels with the encoder") and ref, each encoder then produces
      ``latent_channels // 2`` channels, so the decoders keep ``latent_channels`` inputs and
      ``latent_channels`` must be even. With one input the variance half is zero;
    - ``"output_mean"``: each latent is decoded on its own and the outputs averaged.

    ``output_gradient`` (one of ``OUTPUT_GRADIENTS``) is how the decoders' output ReLU passes
    gradients in training mode: ``"relu"`` as ref, or ``"pass_through"`` so that an output
    cannot die (see ``_Decoder``). It changes no forward value, so it is a training setting
    that the model card does not need; it can be changed on a built model.

    With ``lesion_input`` a binary lesion mask is appended as a second channel of every
    encoder's input (Sec. VI-H: "We provide the segmentation mask as an additional input
    channel"; ref feeds each encoder a ``channels``-deep image). Images are (N, 1, H, W) with
    H and W multiples of ``SIZE_MULTIPLE`` (two 2x2 poolings, Sec. V).
    """

    ARCHITECTURE = "chartsias2018"
    SPATIAL_DIMS = 2
    SIZE_MULTIPLE = 4
    # forward() takes ``coverage``: where an input holds data, per pixel (see ``fuse``)
    PARTIAL_COVERAGE = True

    def __init__(
        self,
        inputs: Sequence[str],
        outputs: Sequence[str],
        lesion_input: bool = False,
        latent_channels: int = 16,
        filters: Sequence[int] = (32, 64, 128),
        fusion: str = "max",
        negative_slope: float = 0.3,  # Keras' LeakyReLU() default alpha, used throughout ref
        output_gradient: str = "relu",
    ) -> None:
        super().__init__()
        self.check_shape(filters, latent_channels, fusion)
        filters = tuple(int(f) for f in filters)
        self.inputs = _names(inputs, "inputs")
        self.outputs = _names(outputs, "outputs")
        self.lesion_input = bool(lesion_input)
        self.latent_channels = int(latent_channels)
        self.filters: tuple[int, int, int] = filters  # type: ignore[assignment]
        self.fusion = fusion
        self.negative_slope = float(negative_slope)
        self._check_output_gradient(output_gradient)
        self._output_gradient = output_gradient
        encoded = self.latent_channels // 2 if fusion == "hemis" else self.latent_channels
        self.encoders = nn.ModuleDict(
            {m: _Encoder(1 + self.lesion_input, self.filters, encoded, self.negative_slope) for m in self.inputs})
        self.decoders = nn.ModuleDict({m: self._new_decoder() for m in self.outputs})

    @staticmethod
    def check_shape(filters: Sequence[int], latent_channels: int, fusion: str) -> None:
        """ValueError for widths or a fusion the network cannot be built with (a recipe checks before loading data)."""
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; choose one of: {', '.join(FUSIONS)}")
        if len(filters) != 3 or min(int(f) for f in filters) < 1:
            raise ValueError(f"filters must be 3 positive widths (one per encoder level), got {tuple(filters)}")
        if latent_channels < 1 or (fusion == "hemis" and latent_channels % 2):
            raise ValueError(f"latent_channels must be positive (and even for 'hemis'), got {latent_channels}")

    @property
    def output_gradient(self) -> str:
        return self._output_gradient

    @output_gradient.setter
    def output_gradient(self, kind: str) -> None:
        self._check_output_gradient(kind)
        self._output_gradient = kind
        for decoder in self.decoders.values():
            decoder.output_gradient = kind

    @staticmethod
    def _check_output_gradient(kind: str) -> None:
        if kind not in OUTPUT_GRADIENTS:
            raise ValueError(f"unknown output_gradient {kind!r}; choose one of: {', '.join(OUTPUT_GRADIENTS)}")

    def _new_decoder(self) -> _Decoder:
        return _Decoder(self.latent_channels, self.filters[0], self._output_gradient)

    def _targets(self, targets: Optional[Sequence[str]]) -> tuple[str, ...]:
        if targets is None:
            return self.outputs
        wanted = tuple(targets)
        unknown = [t for t in wanted if t not in self.decoders]
        if not wanted or unknown:
            raise ValueError(f"unknown or no target modalities {unknown}; this model outputs {list(self.outputs)}")
        return wanted

    def encode(self, inputs: Mapping[str, Tensor], lesion: Optional[Tensor] = None) -> dict[str, Tensor]:
        """Latent (N, C, H, W) of each given input, keyed in ``self.inputs`` order.

        Without ``lesion`` a model built with ``lesion_input`` gets an all-zero mask: the
        scan is taken to be healthy (no lesion anywhere).
        """
        unknown = [m for m in inputs if m not in self.encoders]
        if not inputs or unknown:
            raise ValueError(f"unknown or no input modalities {unknown}; this model takes any of {list(self.inputs)}")
        shapes = {tuple(x.shape) for x in inputs.values()}
        shape = next(iter(shapes))
        if len(shapes) > 1 or len(shape) != 4 or shape[1] != 1:
            raise ValueError(f"inputs must share one (N, 1, H, W) shape, got {sorted(shapes)}")
        if shape[2] % self.SIZE_MULTIPLE or shape[3] % self.SIZE_MULTIPLE:
            raise ValueError(f"H and W must be multiples of {self.SIZE_MULTIPLE}, got {shape[2:]}")
        if lesion is not None and not self.lesion_input:
            raise ValueError("this model was built without lesion_input; no lesion mask can be given")
        if lesion is not None and tuple(lesion.shape) != shape:
            raise ValueError(f"lesion must have the inputs' shape {shape}, got {tuple(lesion.shape)}")
        latents = {}
        for m in self.inputs:
            if m in inputs:
                x = inputs[m]
                if self.lesion_input:
                    x = torch.cat([x, torch.zeros_like(x) if lesion is None else lesion.to(x.dtype)], 1)
                latents[m] = self.encoders[m](x)
        return latents

    def fuse(self, latents: Mapping[str, Tensor], coverage: Optional[Mapping[str, Tensor]] = None) -> Tensor:
        """The fused latent that the decoders read; a single latent is lifted the same way.

        ``coverage`` (input -> (N, 1, H, W), true where that input holds data; an input not named
        covers everything) makes the fusion run, pixel by pixel, over the inputs that cover the pixel:
        the any-subset property applied per pixel, for an input acquired over part of the brain only
        (a slab, a smaller field of view). A pixel no input covers gets a zero latent.
        ``"output_mean"`` has no fused latent for several inputs (see ``decode_latents``).
        """
        zs = list(latents.values())
        if not zs:
            raise ValueError("no latents to fuse")
        if self.fusion == "output_mean" and len(zs) > 1:
            raise ValueError("'output_mean' fusion averages decoded outputs, not latents; use decode_latents")
        covers = self._coverage(latents, coverage)
        if covers is None:
            if len(zs) == 1 and self.fusion != "hemis":
                return zs[0]
            stack = torch.stack(zs)
            if self.fusion == "max":
                return stack.amax(0)
            if self.fusion == "mean":
                return stack.mean(0)
            return torch.cat([stack.mean(0), stack.var(0, correction=0)], 1)
        stack = torch.stack(zs)
        if self.fusion == "max":
            lowest = torch.finfo(stack.dtype).min  # not -inf: no inf * 0 = NaN in a backward pass
            return torch.where(covers.any(0), torch.where(covers, stack, lowest).amax(0), 0.0)
        mean, weights, count = _covered_mean(stack, covers)
        if self.fusion in ("mean", "output_mean"):  # output_mean: a single latent
            return mean
        return torch.cat([mean, ((stack - mean) ** 2 * weights).sum(0) / count], 1)

    @staticmethod
    def _coverage(latents: Mapping[str, Tensor], coverage: Optional[Mapping[str, Tensor]]) -> Optional[Tensor]:
        """(inputs, N, 1, H, W) bool in the order of ``latents``, or None when every input covers everything."""
        if not coverage:
            return None
        unknown = [m for m in coverage if m not in latents]
        if unknown:
            raise ValueError(f"coverage given for {unknown}, which are not among the inputs {list(latents)}")
        reference = next(iter(latents.values()))
        shape = (reference.shape[0], 1, *reference.shape[2:])
        covers = []
        for m in latents:
            mask = coverage.get(m)
            if mask is not None and tuple(mask.shape) != shape:
                raise ValueError(f"coverage of {m} must be {shape}, got {tuple(mask.shape)}")
            covers.append(torch.ones(shape, dtype=torch.bool, device=reference.device) if mask is None
                          else mask.to(device=reference.device, dtype=torch.bool))
        return torch.stack(covers)

    def decode(self, z: Tensor, targets: Optional[Sequence[str]] = None) -> dict[str, Tensor]:
        """Decode one decoder-ready latent (N, latent_channels, H, W) into each target."""
        return {t: self.decoders[t](z) for t in self._targets(targets)}

    def decode_latents(self, latents: Mapping[str, Tensor], targets: Optional[Sequence[str]] = None,
                       coverage: Optional[Mapping[str, Tensor]] = None) -> dict[str, Tensor]:
        """Fuse ``latents`` (as ``encode`` returns them) and decode the result (``coverage``: see ``fuse``)."""
        if self.fusion != "output_mean" or len(latents) == 1:
            return self.decode(self.fuse(latents, coverage), targets)
        n = len(latents)
        outs = self.decode(torch.cat(list(latents.values())), targets)  # one decoder call for all inputs
        covers = self._coverage(latents, coverage)
        if covers is None:
            return {t: y.unflatten(0, (n, -1)).mean(0) for t, y in outs.items()}
        return {t: _covered_mean(y.unflatten(0, (n, -1)), covers)[0] for t, y in outs.items()}

    def forward(self, inputs: Mapping[str, Tensor], lesion: Optional[Tensor] = None,
                targets: Optional[Sequence[str]] = None,
                coverage: Optional[Mapping[str, Tensor]] = None) -> dict[str, Tensor]:
        """Synthesise ``targets`` (default: all outputs) from any non-empty subset of inputs; ``coverage``
        restricts an input to the pixels where it holds data (see ``fuse``)."""
        return self.decode_latents(self.encode(inputs, lesion), targets, coverage)

    def add_output(self, name: str) -> nn.Module:
        """Add a freshly initialised decoder for ``name`` (Sec. VI-E) and return it."""
        self.outputs = _names((*self.outputs, name), "outputs")
        reference = next(self.parameters())
        self.decoders[name] = self._new_decoder().to(device=reference.device, dtype=reference.dtype)
        return self.decoders[name]

    def freeze_all_but(self, decoders: Sequence[str]) -> None:
        """Stop gradients to every parameter except those of the named decoders (Sec. VI-E)."""
        unknown = [d for d in decoders if d not in self.decoders]
        if unknown:
            raise ValueError(f"unknown decoders {unknown}; this model outputs {list(self.outputs)}")
        self.requires_grad_(False)
        for d in decoders:
            self.decoders[d].requires_grad_(True)
