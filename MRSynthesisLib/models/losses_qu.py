"""The training costs of Qu et al., Sec. 2.3 (structure maps) and 2.4-2.6 (multimodal generator).

Every ``||a - b||_2^2`` of the paper is taken here as the *mean* of the squared differences
over batch, channels and pixels (the paper's sum would tie the loss scale, and so every
weight omega, to the image size). Modality classes ``i`` in ``||c - i||^2`` are one-hot
vectors (see ``MRIDiscriminator``); lesion labels are compared as one-hot maps with the
segmentors' softmax. Sums over modalities i and pairs j != i are written as in the paper.

Algorithm 1 has a hard threshold, which passes no gradient; ``loss_sv,f`` (a generated MRI's
structure map should be its input's) therefore uses ``structure_map_soft``, the same
computation with each step function replaced by a sigmoid of width ``SOFT_WIDTH`` x beta.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from MRSynthesisLib.structure_maps import DEFAULT_BETA

from .qu_discriminators import MRICodeDiscriminator, MRIDiscriminator
from .qu_multimodal_generator import MultimodalGenerator, modality_vector, one_hot_label
from .qu_segmentors import LesionComponents

# Width of the soft step as a fraction of beta: 0.1 in Sobel-response units at the default
# beta 0.5 (a unit intensity step gives 4), which turns responses 0.3 below / above beta into
# 0.05 / 0.95, close to the hard map yet with gradient. Relative, so that a higher beta (a
# sparser map, e.g. at low resolution) keeps both the closeness and the reach of the gradient:
# a fixed 0.1 at beta 1.5 would leave a blank image's responses 15 widths below the step,
# where the sigmoid's slope is ~3e-7.
SOFT_WIDTH = 0.2
_SOBEL = torch.tensor([[-1.0, -2.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]])


def sq(x: Tensor) -> Tensor:
    """The paper's ||x||_2^2 as a mean over elements."""
    return (x ** 2).mean()


# The lesion label cost: "l2" is the paper's ||label - label_r||^2 between the one-hot label and
# the softmax; "soft_dice" is 1 - soft Dice of the lesion classes. On MS slices (~1% lesion
# pixels) the L2 cost drives every lesion probability to a saturated 0 and stays there
# (measured: Dice 0 even on the training subject after 2000 steps), so the Dice filter of
# Sec. 2.8 then rejects every candidate; Dice weighs the rare class by its own size.
LESION_LOSSES = ("l2", "soft_dice")


def soft_dice_loss(probabilities: Tensor, onehot: Tensor) -> Tensor:
    """1 - soft Dice of the lesion channels (1:), pooled over the batch, smoothed by 1."""
    p, y = probabilities[:, 1:], onehot[:, 1:]
    return 1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)


def label_cost(probabilities: Tensor, label: Tensor, kind: str = "l2") -> Tensor:
    """The cost of segmentor ``probabilities`` (N, C, H, W) against an integer ``label`` (N, H, W)."""
    onehot = one_hot_label(label, probabilities.shape[1])
    if kind == "l2":
        return sq(onehot - probabilities)
    if kind == "soft_dice":
        return soft_dice_loss(probabilities, onehot)
    raise ValueError(f"unknown lesion loss {kind!r}; choose one of {LESION_LOSSES}")


def sobel_torch(x: Tensor) -> Tensor:
    """(N, 1, H, W) -> (N, 2, H, W): the vertical and horizontal Sobel responses (mirror borders)."""
    kernels = torch.stack([_SOBEL, _SOBEL.t()])[:, None].to(x)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), kernels)


def structure_map_soft(x: Tensor, beta: float = DEFAULT_BETA, temperature: float | None = None, *,
                       exact: bool = False) -> Tensor:
    """Algorithm 1 on a batch (N, 1, H, W): soft steps of width ``temperature`` (default
    ``SOFT_WIDTH`` x beta), or with ``exact`` the binary map itself.

    The final "f1 + f2 > 0" becomes the soft OR 1 - (1 - f1)(1 - f2).
    """
    edges = sobel_torch(x)
    f1 = edges.amin(dim=1, keepdim=True)
    f2 = edges.amax(dim=1, keepdim=True)
    f1 = f1.mean(dim=(2, 3), keepdim=True) - f1
    f2 = f2 - f2.mean(dim=(2, 3), keepdim=True)
    if exact:
        return ((f1 > beta) | (f2 > beta)).to(x.dtype)
    temperature = SOFT_WIDTH * beta if temperature is None else temperature
    s1, s2 = torch.sigmoid((f1 - beta) / temperature), torch.sigmoid((f2 - beta) / temperature)
    return 1.0 - (1.0 - s1) * (1.0 - s2)


# --- Sec. 2.3: random structure maps ----------------------------------------------------------

def loss_code_discriminator(fd_noise: Tensor, fd_code: Tensor) -> Tensor:
    """loss_FD_f = ||FD_f(code_f,g) - 1||^2 + ||FD_f(code_f)||^2 (noise is real, codes are fake)."""
    return sq(fd_noise - 1) + sq(fd_code)


def loss_structure_discriminator(d_real: Tensor, d_generated: Tensor) -> Tensor:
    """loss_D_f = ||D_f(f) - 1||^2 + ||D_f(f_g)||^2."""
    return sq(d_real - 1) + sq(d_generated)


def loss_structure_adversarial(fd_code: Tensor, d_generated: Tensor) -> Tensor:
    """loss_G_f = ||FD_f(code_f) - 1||^2 + ||D_f(f_g) - 1||^2."""
    return sq(fd_code - 1) + sq(d_generated - 1)


def loss_normal(code_mean: Tensor, code_logvar: Tensor) -> Tensor:
    """loss_normal = ||mean(code_mean)||^2 + ||mean(exp(0.5 logvar)) - 1||^2 (the L2 distribution supervision)."""
    return code_mean.mean() ** 2 + (torch.exp(0.5 * code_logvar).mean() - 1) ** 2


def loss_structure_reconstruction(f: Tensor, f_r: Tensor, background: Tensor) -> Tensor:
    """loss_sv = ||f - f_r||^2 + ||f_r * mask||^2 (no structure outside the real brain)."""
    return sq(f - f_r) + sq(f_r * background)


def loss_mask(background: Tensor, mask_r: Tensor, f: Tensor, f_r: Tensor, f_g: Tensor, mask_g: Tensor) -> Tensor:
    """loss_mask = ||mask - mask_r||^2 + ||f * mask_r||^2 + ||f_r * mask_r||^2 + ||f_g * mask_g||^2.

    ``mask_r`` = MASK(f) and ``mask_g`` = MASK(f_g). The caller passes f_r and f_g detached:
    this cost trains MASK to put no brain-outside where there is structure; letting it also
    reach DC_f would teach the decoder to erase structure under a wrong mask.
    """
    return sq(background - mask_r) + sq(f * mask_r) + sq(f_r * mask_r) + sq(f_g * mask_g)


# --- Sec. 2.4: reconstruction and translation of real MRI -------------------------------------

@dataclass
class AssistPass:
    """Everything Sec. 2.4 computes from one real batch per modality (index = modality i)."""

    images: list[Tensor]  # x_i
    codes: list[Tensor]  # code_i = EC(x_i)
    reconstructions: list[Tensor]  # x_r,i = DC(code_i, i)
    translations: dict[tuple[int, int], Tensor]  # (i, j): x_t,i,j = DC(code_i, j), x_i translated to j
    translation_codes: dict[tuple[int, int], Tensor]  # (i, j): code_t,i,j = EC(x_t,i,j)
    cycles: dict[tuple[int, int], Tensor]  # (j, i): x_cr,j,i = DC(code_t,i,j, i), i -> j -> i


def assist_pass(generator: MultimodalGenerator, images: list[Tensor]) -> AssistPass:
    n = len(images)
    if n != generator.n_modalities:
        raise ValueError(f"need one batch per modality ({generator.n_modalities}), got {n}")
    codes = [generator.encode(x) for x in images]
    reconstructions = [generator.decode(c, i) for i, c in enumerate(codes)]
    translations, translation_codes, cycles = {}, {}, {}
    for i in range(n):
        for j in range(n):
            if j != i:
                translations[i, j] = generator.decode(codes[i], j)
                translation_codes[i, j] = generator.encode(translations[i, j])
                cycles[j, i] = generator.decode(translation_codes[i, j], i)
    return AssistPass(images, codes, reconstructions, translations, translation_codes, cycles)


def _class_target(discriminator: MRIDiscriminator, index: int, like: Tensor) -> Tensor:
    return modality_vector(index, discriminator.modality.out_channels, like.shape[0]).to(like)


def loss_assist_discriminator(discriminator: MRIDiscriminator, p: AssistPass) -> Tensor:
    """loss_D,assist = sum_i sum_{j != i} ||d_t,j,i||^2 + ||c_t,j,i - i||^2 (translations to i are fake)."""
    total = p.images[0].new_zeros(())
    for (j, i), x in p.translations.items():
        d, c = discriminator(x.detach())
        total = total + sq(d) + sq(c - _class_target(discriminator, i, c))
    return total


def loss_assist_adversarial(discriminator: MRIDiscriminator, p: AssistPass) -> Tensor:
    """loss_G,assist = sum_i sum_{j != i} ||d_t,j,i - 1||^2 + ||c_t,j,i - i||^2."""
    total = p.images[0].new_zeros(())
    for (j, i), x in p.translations.items():
        d, c = discriminator(x)
        total = total + sq(d - 1) + sq(c - _class_target(discriminator, i, c))
    return total


def loss_reconstruction(p: AssistPass) -> Tensor:
    """loss_sv = sum_i ||x_i - x_r,i||^2."""
    return sum(sq(x - r) for x, r in zip(p.images, p.reconstructions))


def loss_cycle(p: AssistPass) -> Tensor:
    """loss_cycle = sum_i sum_{j != i} ||x_i - x_cr,j,i||^2."""
    return sum(sq(p.images[i] - x) for (j, i), x in p.cycles.items())


def loss_cycle_consistency(p: AssistPass) -> Tensor:
    """loss_cycle,consistency = sum_i sum_{j != i} sum_{k != i, j} ||x_cr,j,i - x_cr,k,i||^2 (0 with < 3 modalities)."""
    total = p.images[0].new_zeros(())
    for (j, i), x in p.cycles.items():
        for (k, i2), y in p.cycles.items():
            if i2 == i and k != j:
                total = total + sq(x - y)
    return total


def loss_code_consistency(p: AssistPass) -> Tensor:
    """loss_code,consistency = sum_i sum_{j != i} ||code_i - code_t,i,j||^2."""
    return sum(sq(p.codes[i] - c) for (i, j), c in p.translation_codes.items())


def loss_lesion(lesion: LesionComponents, images: list[Tensor], labels: list[Tensor], labelled: list[Tensor],
                kind: str = "l2") -> Tensor:
    """loss_sv,l = sum_i ||label_i - label_r,i||^2 (or ``kind``) over the samples that have a lesion label.

    ``labelled[i]`` is an (N,) bool tensor: slices from a scan without a lesion annotation
    (e.g. BraTS here) must not teach the segmentors that their tumour is background.
    """
    total = images[0].new_zeros(())
    for i, (x, label, keep) in enumerate(zip(images, labels, labelled)):
        if keep.any():
            total = total + label_cost(lesion(x[keep], i), label[keep], kind)
    return total


# --- Sec. 2.6: generation from a structure map and a lesion label -----------------------------

@dataclass
class GenerationPass:
    structure: Tensor  # f, the input structure map
    label: Tensor  # the input lesion label (N, H, W)
    code: Tensor  # code_g = EC_R(fuse(f, label))
    generated: list[Tensor]  # x_g,i = DC(code_g, i)
    codes: list[Tensor]  # code_g,i = EC(x_g,i)
    translations: dict[tuple[int, int], Tensor]  # (j, i): x_gt,j,i = DC(code_g,j, i)


def generation_pass(generator: MultimodalGenerator, structure: Tensor, label: Tensor) -> GenerationPass:
    code = generator.encode_fused(structure, label)
    n = generator.n_modalities
    generated = [generator.decode(code, i) for i in range(n)]
    codes = [generator.encode(x) for x in generated]
    translations = {(j, i): generator.decode(codes[j], i) for i in range(n) for j in range(n) if j != i}
    return GenerationPass(structure, label, code, generated, codes, translations)


def loss_generation_discriminator(discriminator: MRIDiscriminator, real: list[Tensor],
                                  g: GenerationPass) -> tuple[Tensor, Tensor]:
    """(loss_D, loss_D,class): sum_i ||d_i - 1||^2 + ||d_g,i||^2 and sum_i ||c_i - i||^2 + ||c_g,i - i||^2."""
    adversarial = class_loss = g.code.new_zeros(())
    for i, (x, x_g) in enumerate(zip(real, g.generated)):
        d, c = discriminator(x)
        d_g, c_g = discriminator(x_g.detach())
        target = _class_target(discriminator, i, c)
        adversarial = adversarial + sq(d - 1) + sq(d_g)
        class_loss = class_loss + sq(c - target) + sq(c_g - _class_target(discriminator, i, c_g))
    return adversarial, class_loss


def loss_generation_adversarial(discriminator: MRIDiscriminator, g: GenerationPass) -> tuple[Tensor, Tensor]:
    """(loss_G, loss_G,class): sum_i ||d_g,i - 1||^2 and sum_i ||c_g,i - i||^2."""
    adversarial = class_loss = g.code.new_zeros(())
    for i, x_g in enumerate(g.generated):
        d_g, c_g = discriminator(x_g)
        adversarial = adversarial + sq(d_g - 1)
        class_loss = class_loss + sq(c_g - _class_target(discriminator, i, c_g))
    return adversarial, class_loss


# The structure-consistency cost: "l2" is the paper's ||f - f_g||^2. On a sparse map (at 64
# pixels and beta 1.5 Algorithm 1 marks 11-29 % of the brain) it is nearly met by an image with
# no edges at all: a blank image's cost is the map's density, and measured CPU runs converged to
# edge-free blobs whose cost equalled a blank image's (training/qu/README.md). "balanced" weighs
# the map's structure and non-structure pixels equally (half the cost each), so "no edges" and
# "edges everywhere" both cost 0.5 at any density and only following the map goes below.
STRUCTURE_LOSSES = ("l2", "balanced")


def structure_map_cost(target: Tensor, generated_map: Tensor, kind: str = "l2") -> Tensor:
    """The cost of a generated image's soft structure map against the ``target`` map (both N, 1, H, W).

    "balanced" takes a soft target's value as the pixel's structure weight and 1 - value as its
    non-structure weight (for a binary map: class-balanced L2), pooled over the batch.
    """
    if kind == "l2":
        return sq(target - generated_map)
    if kind == "balanced":
        on, off = target, 1 - target
        missed = (on * (1 - generated_map) ** 2).sum() / on.sum().clamp_min(1e-6)
        spurious = (off * generated_map ** 2).sum() / off.sum().clamp_min(1e-6)
        return 0.5 * (missed + spurious)
    raise ValueError(f"unknown structure loss {kind!r}; choose one of {STRUCTURE_LOSSES}")


def loss_structure_consistency(g: GenerationPass, beta: float = DEFAULT_BETA, kind: str = "l2") -> Tensor:
    """loss_sv,f = sum_i ||f - f_g,i||^2 (or ``kind``), f_g,i = Algorithm 1 (soft) on x_g,i."""
    return sum(structure_map_cost(g.structure, structure_map_soft(x, beta), kind) for x in g.generated)


def loss_generated_lesion(lesion: LesionComponents, g: GenerationPass, kind: str = "l2") -> Tensor:
    """loss_sv,l = sum_i ||label - label_g,i||^2 (or ``kind``); the lesion components only pass gradient here
    (Sec. 2.6)."""
    total = g.code.new_zeros(())
    for i, x in enumerate(g.generated):
        total = total + label_cost(lesion(x, i), g.label, kind)
    return total


def loss_registration(g: GenerationPass) -> Tensor:
    """loss_trans = sum_i sum_{j != i} ||x_g,i - x_gt,j,i||^2."""
    return sum(sq(g.generated[i] - x) for (j, i), x in g.translations.items())


def loss_semantic_consistency(g: GenerationPass) -> Tensor:
    """loss_trans,code = sum_i ||code_g - code_g,i||^2 + sum_i sum_{j != i} ||code_g,i - code_g,j||^2."""
    n = len(g.codes)
    total = sum(sq(g.code - c) for c in g.codes)
    return total + sum(sq(g.codes[i] - g.codes[j]) for i in range(n) for j in range(n) if j != i)


# --- Sec. 2.4 / Fig. 5: the MRI code discriminator ties the two passes together --------------

def loss_mri_code_discriminator(code_discriminator: MRICodeDiscriminator, a: AssistPass,
                                g: GenerationPass) -> Tensor:
    """loss_CD = ||CD(code_real) - 1||^2 + ||CD(code_g)||^2, both codes detached.

    ``code_real`` are the MRI encoder's codes of the real MRIs of every modality (EC(x_i), the
    codes DC learns to decode in Sec. 2.4), taken together as one batch; ``code_g`` =
    EC_R(fuse(f, label)) of Sec. 2.6. The paper gives the discriminator (Fig. 5), not its
    cost; this is the least-squares form of every other discriminator here.
    """
    real = torch.cat([c.detach() for c in a.codes])
    return sq(code_discriminator(real) - 1) + sq(code_discriminator(g.code.detach()))


def loss_mri_code_adversarial(code_discriminator: MRICodeDiscriminator, g: GenerationPass) -> Tensor:
    """||CD(code_g) - 1||^2: EC_R's codes should pass for EC's codes of real MRIs."""
    return sq(code_discriminator(g.code) - 1)
