"""Wei et al.'s 3D fully convolutional network for FLAIR synthesis ("wei2019_fcn3d").

W. Wei, E. Poirion, B. Bodini, S. Durrleman, O. Colliot, B. Stankoff, N. Ayache, "Fluid-
attenuated inversion recovery MRI synthesis from multisequence MRI using three-dimensional
fully convolutional networks for multiple sclerosis", J. Med. Imaging 6(1):014005, 2019.

Every available sequence is one input channel; three 3x3x3 convolutions of ``filters``
(64) channels, each followed by ReLU (Sec. 2.1, eq. 1-2), map them to the target. No
pooling, so the output has the input's size and each output voxel sees a 7x7x7 input
neighbourhood: ``HALO`` = ``layers`` voxels each side, which the exact tiler uses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from .stacked_inputs import input_channels, selected, stack_inputs, validated_names


class WeiFCN3D(nn.Module):
    """3D FCN; one output channel per target modality.

    Choices where the paper is silent:
    - Output head: the paper lists three 64-filter layers with ReLU and a single-channel
      prediction, so the 64 features are mapped to the target(s) by a 1x1x1 linear
      convolution. Linear because z-scored targets are negative below the mean; a ReLU there
      would clip them. The 1x1x1 head adds no receptive field (HALO stays ``layers``).
    - Padding: zeros ('same'), the Keras default the paper's Theano/Keras code would have had;
      the output has the input's size (the paper predicts whole 208x256x40 images).
    - Initialisation: Glorot-uniform weights, zero biases (Keras defaults).
    - ``input_dropout``: the paper trains on all five sequences. With ``input_dropout`` the
      model also takes one presence flag per input (see ``stacked_inputs``) and training drops
      inputs at random, so the card can declare that missing inputs are handled; without it a
      missing input is refused.
    """

    ARCHITECTURE = "wei2019_fcn3d"
    SPATIAL_DIMS = 3
    SIZE_MULTIPLE = 1
    CROP = 0  # output voxels lost per side (same padding: none)

    def __init__(self, inputs: Sequence[str], outputs: Sequence[str], lesion_input: bool = False,
                 filters: int = 64, layers: int = 3, input_dropout: bool = False) -> None:
        super().__init__()
        if filters < 1 or layers < 1:
            raise ValueError(f"filters and layers must be positive, got {filters}, {layers}")
        self.inputs = validated_names(inputs, "inputs")
        self.outputs = validated_names(outputs, "outputs")
        self.lesion_input, self.input_dropout = bool(lesion_input), bool(input_dropout)
        self.HALO = int(layers)
        widths = [input_channels(self.inputs, self.lesion_input, self.input_dropout)] + [int(filters)] * layers
        self.features = nn.Sequential(*[m for a, b in zip(widths, widths[1:])
                                        for m in (nn.Conv3d(a, b, 3, padding=1), nn.ReLU(inplace=True))])
        self.head = nn.Conv3d(filters, len(self.outputs), 1)
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, inputs: Mapping[str, Tensor], lesion: Tensor | None = None,
                targets: Sequence[str] | None = None) -> dict[str, Tensor]:
        x = stack_inputs(inputs, self.inputs, lesion=lesion, lesion_input=self.lesion_input,
                         input_dropout=self.input_dropout)
        y = self.head(self.features(x))
        names = list(self.outputs) if targets is None else list(targets)
        return {n: y[:, i:i + 1] for n, i in zip(names, selected(self.outputs, targets))}
