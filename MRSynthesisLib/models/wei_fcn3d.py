"""Wei et al.'s 3D fully convolutional network for FLAIR synthesis ("wei2019_fcn3d").

W. Wei, E. Poirion, B. Bodini, S. Durrleman, O. Colliot, B. Stankoff, N. Ayache, "Fluid-
attenuated inversion recovery MRI synthesis from multisequence MRI using three-dimensional
fully convolutional networks for multiple sclerosis", J. Med. Imaging 6(1):014005, 2019.

Every available sequence is one input channel; three 3x3x3 convolutions of ``filters``
(64) channels, each followed by ReLU (Sec. 2.1, eq. 1-2), then a 3x3x3 convolution to the
target. No pooling, so the output has the input's size and each output voxel sees a 9x9x9
input neighbourhood: ``HALO`` = ``layers`` + ``head_kernel // 2`` voxels each side, which the
exact tiler uses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from .stacked_inputs import input_channels, selected, stack_inputs, validated_names


class WeiFCN3D(nn.Module):
    """3D FCN; one output channel per target modality.

    The output head, which the text does not describe, is a 3x3x3 convolution: the paper's
    parameter counts (Table 1: 60.6 K, 213.7 K, 513.5 K for 32, 64, 96 filters on 5 inputs) are
    three 3x3x3 layers plus a 3x3x3 head to one channel exactly (60,577 and 513,505; 64 filters
    give 231,745, the table's 213.7 K with two digits swapped), where a 1x1x1 head gives 59.7 K
    and 511.0 K. This project's head was 1x1x1 until that was worked out; ``head_kernel=1``
    keeps it for the recipes and model cards made with it (``LEGACY_CARD_PARAMS``).

    Choices where the paper is silent:
    - The head is linear: z-scored targets are negative below the mean, which a ReLU would clip.
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
    # What a model card written before a parameter existed was trained with (cards.build_network).
    LEGACY_CARD_PARAMS = {"head_kernel": 1}

    def __init__(self, inputs: Sequence[str], outputs: Sequence[str], lesion_input: bool = False,
                 filters: int = 64, layers: int = 3, input_dropout: bool = False, head_kernel: int = 3) -> None:
        super().__init__()
        if filters < 1 or layers < 1:
            raise ValueError(f"filters and layers must be positive, got {filters}, {layers}")
        if head_kernel < 1 or head_kernel % 2 == 0:
            raise ValueError(f"head_kernel must be a positive odd size (3: the paper's, 1: a voxel-wise head), "
                             f"got {head_kernel}")
        self.inputs = validated_names(inputs, "inputs")
        self.outputs = validated_names(outputs, "outputs")
        self.lesion_input, self.input_dropout = bool(lesion_input), bool(input_dropout)
        self.head_kernel = int(head_kernel)
        self.HALO = int(layers) + int(head_kernel) // 2
        widths = [input_channels(self.inputs, self.lesion_input, self.input_dropout)] + [int(filters)] * layers
        self.features = nn.Sequential(*[m for a, b in zip(widths, widths[1:])
                                        for m in (nn.Conv3d(a, b, 3, padding=1), nn.ReLU(inplace=True))])
        self.head = nn.Conv3d(filters, len(self.outputs), head_kernel, padding=head_kernel // 2)
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
