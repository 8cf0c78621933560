"""Klingelhoefer & Rousseau's 3D convolutional autoencoder ("klingelhoefer_ae3d").

F. Klingelhoefer, F. Rousseau, "MRI contrast synthesis with a convolutional auto-encoder"
(report, IMT Atlantique). Three valid (unpadded) 3x3x3 convolutions, a 2x2x2 max-pool, three
more, a x2 up-sampling and two more (Sec. 3.1, Fig. 8), 32 filters, batch normalisation
before every hidden convolution and He initialisation (Sec. 3.3). A 38^3 patch gives a
16^3 output centred on it (Sec. 3.2): 11 voxels are lost on each side (``CROP``), and the
pooling ties outputs to a grid of 2 (``SIZE_MULTIPLE``), which also widens the receptive
field to 12 voxels on one side (``HALO``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .stacked_inputs import input_channels, selected, stack_inputs, validated_names


class KlingelhoeferAE3D(nn.Module):
    """Convolutional autoencoder, valid convolutions; one output channel per target.

    Layer order, read from the paper's parameter count: 168,289 learnable parameters for
    T1 -> T2 with 32 filters equals seven 32-filter 3x3x3 convolutions, a final 3x3x3
    convolution with one filter (the "two more convolutions" after up-sampling are 32 and
    then 1 filter) and seven batch normalisations of 32 channels (gamma and beta), one before
    every convolution but the first. Choices where the paper is silent:
    - ReLU after every hidden convolution, sigmoid on the output ("the sigmoid function only
      to normalize the output, on the last layer", Sec. 2.1.1); inputs and targets are
      divided by 3x their mean non-zero intensity, so the brain lies well inside (0, 1).
    - Up-sampling by nearest-neighbour repetition (Keras ``UpSampling3D``).
    - He-normal weights N(0, sqrt(2 / fan_in)) (Sec. 3.3), zero biases.
    """

    ARCHITECTURE = "klingelhoefer_ae3d"
    SPATIAL_DIMS = 3
    SIZE_MULTIPLE = 2
    CROP = 11
    # Receptive field: 12 voxels on one side, 11 on the other, the side depending on the
    # voxel's parity on the pooling grid (measured with impulses in the tests).
    HALO = 12

    def __init__(self, inputs: Sequence[str], outputs: Sequence[str], lesion_input: bool = False,
                 filters: int = 32, input_dropout: bool = False) -> None:
        super().__init__()
        if filters < 1:
            raise ValueError(f"filters must be positive, got {filters}")
        self.inputs = validated_names(inputs, "inputs")
        self.outputs = validated_names(outputs, "outputs")
        self.lesion_input, self.input_dropout = bool(lesion_input), bool(input_dropout)
        f = int(filters)

        def hidden(first: int | None = None) -> nn.Sequential:
            if first is not None:  # the first convolution has no normalisation before it
                return nn.Sequential(nn.Conv3d(first, f, 3), nn.ReLU(inplace=True))
            return nn.Sequential(nn.BatchNorm3d(f), nn.Conv3d(f, f, 3), nn.ReLU(inplace=True))

        channels = input_channels(self.inputs, self.lesion_input, self.input_dropout)
        self.encoder = nn.Sequential(hidden(channels), hidden(), hidden())
        self.bottleneck = nn.Sequential(hidden(), hidden(), hidden())
        self.decoder = nn.Sequential(hidden(), nn.BatchNorm3d(f), nn.Conv3d(f, len(self.outputs), 3))
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    @classmethod
    def output_size(cls, size: int) -> int:
        """Output length for an input length (38 -> 16); raises if the pooling does not fit."""
        if size < 2 * cls.CROP + 2 or (size - 6) % 2:
            raise ValueError(f"input length {size} does not fit: it must be >= {2 * cls.CROP + 2} and even")
        return size - 2 * cls.CROP

    def forward(self, inputs: Mapping[str, Tensor], lesion: Tensor | None = None,
                targets: Sequence[str] | None = None) -> dict[str, Tensor]:
        x = stack_inputs(inputs, self.inputs, lesion=lesion, lesion_input=self.lesion_input,
                         input_dropout=self.input_dropout)
        for size in x.shape[2:]:
            self.output_size(size)
        h = self.encoder(x)
        h = self.bottleneck(F.max_pool3d(h, 2))
        y = self.decoder(F.interpolate(h, scale_factor=2, mode="nearest")).sigmoid()
        names = list(self.outputs) if targets is None else list(targets)
        return {n: y[:, i:i + 1] for n, i in zip(names, selected(self.outputs, targets))}

