"""The Qu et al. networks and every cost in losses_qu, on tiny random tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from MRSynthesisLib import structure_maps as sm
from MRSynthesisLib.models import losses_qu as L
from MRSynthesisLib.models.qu_discriminators import (
    CodeDiscriminator,
    MRICodeDiscriminator,
    MRIDiscriminator,
    PatchDiscriminator,
)
from MRSynthesisLib.models.qu_layers import (
    DISCRIMINATOR_STD,
    mean_filter_init_,
    normal_init_,
)
from MRSynthesisLib.models.qu_mask_generator import MaskGenerator
from MRSynthesisLib.models.qu_multimodal_generator import (
    MultimodalGenerator,
    fuse,
    modality_vector,
    one_hot_label,
)
from MRSynthesisLib.models.qu_segmentors import (
    SCHEMES,
    LesionComponents,
    LesionSegmentor,
)
from MRSynthesisLib.models.qu_structure_vaegan import StructureVAE

N, M, S = 2, 3, 16  # batch, modalities, image size


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)
    torch.set_num_threads(1)  # tiny tensors: extra threads only add contention (conftest restores the count)


def binary(*shape) -> torch.Tensor:
    return (torch.rand(*shape) > 0.7).float()


def labels() -> torch.Tensor:
    label = torch.zeros(N, S, S, dtype=torch.long)
    label[:, 5:9, 6:10] = 1
    return label


def test_shapes_of_every_network():
    vae = StructureVAE(width=4, code_channels=3)
    f = binary(N, 1, S, S)
    f_r, code, mean, logvar = vae(f)
    assert f_r.shape == f.shape and code.shape == mean.shape == logvar.shape == (N, 3, S // 8, S // 8)
    assert vae.code_shape(S, S) == (3, 2, 2)
    assert MaskGenerator(4)(f).shape == f.shape
    assert PatchDiscriminator(4)(f).shape == (N, 1, 2, 2)
    assert CodeDiscriminator(3, 8)(code).shape == (N, 1, 2, 2)
    d, c = MRIDiscriminator(M, 4)(f)
    assert d.shape == (N, 1, 2, 2) and c.shape == (N, M)
    gen = MultimodalGenerator(M, 2, width=4, code_channels=5)
    code_g = gen.encode_fused(f, labels())
    assert code_g.shape == (N, 5, S // 4, S // 4) == gen.encode(f).shape
    assert MRICodeDiscriminator(5, 8)(code_g).shape == (N, 1, S // 4, S // 4)
    with pytest.raises(ValueError, match="MRI code discriminator"):
        MRICodeDiscriminator(5, 8)(code_g[0])
    assert gen.decode(code_g, 1).shape == (N, 1, S, S)
    out = gen.eval().generate(f, labels())
    assert out.shape == (N, M, S, S) and out.min() >= 0 and out.max() <= 1
    assert LesionSegmentor(2, 4)(f).shape == (N, 2, S, S)
    with pytest.raises(ValueError, match="multiples of 8"):
        vae.encode(torch.zeros(1, 1, 12, 12))


def test_fusion_weights_make_every_structure_and_class_pair_distinct():
    f = torch.tensor([[[[0.0, 1.0, 0.0, 1.0, 0.0, 1.0]]]])
    label = torch.tensor([[[0, 0, 1, 1, 2, 2]]])
    fused = fuse(f, label, 3)
    assert fused.flatten().tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert one_hot_label(label, 3).shape == (1, 3, 1, 6)
    with pytest.raises(ValueError, match="label values"):
        one_hot_label(label, 2)


def test_modality_vector():
    assert modality_vector(1, 3, 2).tolist() == [[0, 1, 0], [0, 1, 0]]
    assert modality_vector([0, 2], 3, 2).tolist() == [[1, 0, 0], [0, 0, 1]]
    with pytest.raises(ValueError, match="modality index"):
        modality_vector(3, 3, 1)


def test_generation_decodes_every_modality_from_one_code():
    """The modalities are registered by construction: one code, one decoder, only the condition differs."""
    gen = MultimodalGenerator(M, 2, width=4, code_channels=4).eval()
    f = binary(1, 1, S, S)
    empty = torch.zeros(1, S, S, dtype=torch.long)
    with_lesion = empty.clone()
    with_lesion[0, 0:4, 0:4] = 1
    a = gen.generate(f, with_lesion)
    code = gen.encode_fused(f, with_lesion)
    for i in range(M):
        torch.testing.assert_close(a[:, i:i + 1], gen.decode(code, i).clamp(0, 1))
    changed = ((a - gen.generate(f, empty)).abs() > 1e-6).flatten(2).any(-1)
    assert changed.all()  # the label reaches every modality


@pytest.mark.parametrize("scheme", SCHEMES)
def test_lesion_schemes_route_modalities_to_their_components(scheme):
    lesion = LesionComponents(scheme, M, 2, width=4)
    x = torch.rand(N, 1, S, S)
    outputs = [lesion(x, i) for i in range(M)]
    for out in outputs:
        assert out.shape == (N, 2, S, S)
        torch.testing.assert_close(out.sum(1), torch.ones(N, S, S))
    lesion.eval()
    outputs = [lesion(x, i) for i in range(M)]
    same = [torch.equal(outputs[0], o) for o in outputs[1:]]
    assert all(same) == (scheme == "single")
    if scheme == "shared_encoder":
        assert len(lesion.decoders) == M and not hasattr(lesion, "segmentors")
    if scheme == "per_modality":
        assert len(lesion.segmentors) == M
    with pytest.raises(ValueError, match="modality index"):
        lesion(x, M)
    with pytest.raises(ValueError, match="unknown lesion scheme"):
        LesionComponents("two", M)


def test_paper_initialisations():
    gen = mean_filter_init_(MultimodalGenerator(M, 2, width=4, code_channels=4), torch.Generator().manual_seed(0))
    conv = gen.decoder.out
    value = 1.0 / (3 * 3 * conv.in_channels)
    assert torch.allclose(conv.weight, torch.full_like(conv.weight, value), rtol=0.05)
    assert not torch.equal(conv.weight[0, 0], conv.weight[0, 1])  # the jitter breaks the symmetry
    assert not conv.bias.any()
    disc = normal_init_(MRIDiscriminator(M, 8), torch.Generator().manual_seed(0))
    weights = torch.cat([p.flatten() for n, p in disc.named_parameters() if n.endswith("weight")])
    assert weights.std().item() == pytest.approx(DISCRIMINATOR_STD, rel=0.1)
    assert abs(weights.mean().item()) < 0.02


def test_soft_structure_map_matches_algorithm_1_and_has_gradient():
    x = torch.zeros(1, 1, S, S)
    x[..., 4:12, 3:10] = 0.8
    x[..., 6:8, 5:7] = 0.3
    hard = L.structure_map_soft(x, 0.5, exact=True)[0, 0].numpy()
    np.testing.assert_array_equal(hard, sm.structure_map(x[0, 0].numpy(), 0.5))
    soft = L.structure_map_soft(x.requires_grad_(), 0.5, temperature=0.01)
    np.testing.assert_allclose(soft[0, 0].detach().numpy(), hard, atol=1e-3)
    L.structure_map_soft(x, 0.5).sum().backward()
    assert x.grad.abs().sum() > 0
    # the default width scales with beta: the same image, responses and beta scaled together, same map
    np.testing.assert_allclose(L.structure_map_soft(3 * x.detach(), 1.5).numpy(),
                               L.structure_map_soft(x.detach(), 0.5).numpy(), atol=1e-6)


def test_balanced_structure_cost_does_not_reward_an_image_without_edges():
    x = torch.zeros(1, 1, S, S)
    x[..., 4:12, 3:10] = 0.8
    target = L.structure_map_soft(x, 0.5, exact=True)
    blank, everywhere = torch.zeros_like(target), torch.ones_like(target)
    # the paper's L2: a blank image costs the map's density, below "edges everywhere"
    assert L.structure_map_cost(target, blank).item() == pytest.approx(target.mean().item())
    assert L.structure_map_cost(target, blank).item() < L.structure_map_cost(target, everywhere).item()
    # balanced: no edges and edges everywhere cost 0.5 whatever the density; following the map 0
    assert L.structure_map_cost(target, blank, "balanced").item() == pytest.approx(0.5)
    assert L.structure_map_cost(target, everywhere, "balanced").item() == pytest.approx(0.5)
    assert L.structure_map_cost(target, target, "balanced").item() == 0.0
    half = target.clone()
    half[..., : S // 2, :] = 0  # half the structure missed
    assert 0 < L.structure_map_cost(target, half, "balanced").item() < 0.5
    image = (0.9 * x).requires_grad_()
    L.structure_map_cost(target, L.structure_map_soft(image, 0.5), "balanced").backward()
    assert image.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="structure loss"):
        L.structure_map_cost(target, blank, "dice")


def test_structure_stage_losses_as_written():
    ones, zeros = torch.ones(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    assert L.loss_code_discriminator(ones, zeros).item() == 0.0  # noise judged real, codes fake
    assert L.loss_code_discriminator(zeros, ones).item() == 2.0
    assert L.loss_structure_discriminator(ones, zeros).item() == 0.0
    assert L.loss_structure_adversarial(ones, ones).item() == 0.0
    assert L.loss_structure_adversarial(zeros, zeros).item() == 2.0
    assert L.loss_normal(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3)).item() == 0.0
    assert L.loss_normal(torch.ones(1, 2, 3, 3), torch.zeros(1, 2, 3, 3)).item() == pytest.approx(1.0)
    f = binary(2, 1, 4, 4)
    background = torch.zeros_like(f)
    background[..., 0] = 1
    f_in = f * (1 - background)
    assert L.loss_structure_reconstruction(f_in, f_in, background).item() == 0.0
    assert L.loss_structure_reconstruction(f_in, f_in + background, background).item() > 0
    assert L.loss_mask(background, background, f_in, f_in, f_in, background).item() == 0.0
    assert L.loss_mask(background, 1 - background, f_in, f_in, f_in, background).item() > 0


def _stage_two(scheme: str):
    gen = MultimodalGenerator(M, 2, width=4, code_channels=4)
    disc = MRIDiscriminator(M, 4)
    lesion = LesionComponents(scheme, M, 2, width=4)
    real = [torch.rand(N, 1, S, S) for _ in range(M)]
    return gen, disc, lesion, real


def test_assist_pass_naming_and_losses():
    gen, disc, _, real = _stage_two("single")
    p = L.assist_pass(gen, real)
    assert set(p.translations) == {(i, j) for i in range(M) for j in range(M) if i != j}
    assert set(p.cycles) == set(p.translations)
    for value in (L.loss_assist_discriminator(disc, p), L.loss_assist_adversarial(disc, p), L.loss_reconstruction(p),
                  L.loss_cycle(p), L.loss_cycle_consistency(p), L.loss_code_consistency(p)):
        assert value.dim() == 0 and torch.isfinite(value) and value.item() > 0
    # a perfect autoencoder has no reconstruction cost
    p.reconstructions = list(p.images)
    assert L.loss_reconstruction(p).item() == 0.0
    with pytest.raises(ValueError, match="one batch per modality"):
        L.assist_pass(gen, real[:2])


def test_cycle_consistency_needs_three_modalities():
    gen = MultimodalGenerator(2, 2, width=4, code_channels=4)
    assert L.loss_cycle_consistency(L.assist_pass(gen, [torch.rand(1, 1, S, S)] * 2)).item() == 0.0


def test_lesion_loss_ignores_unlabelled_samples():
    _, _, lesion, real = _stage_two("per_modality")
    label = [labels() for _ in range(M)]
    none = [torch.zeros(N, dtype=torch.bool) for _ in range(M)]
    assert L.loss_lesion(lesion, real, label, none).item() == 0.0
    some = [torch.tensor([True, False]) for _ in range(M)]
    assert L.loss_lesion(lesion, real, label, some).item() > 0


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_generation_loss_reaches_the_generator(scheme):
    gen, disc, lesion, real = _stage_two(scheme)
    g = L.generation_pass(gen, binary(N, 1, S, S), labels())
    assert len(g.generated) == M and set(g.translations) == {(j, i) for i in range(M) for j in range(M) if i != j}
    d_adv, d_class = L.loss_generation_discriminator(disc, real, g)
    (d_adv + d_class).backward()
    assert all(p.grad is None for p in gen.parameters())  # the discriminator's cost does not train G
    g_adv, g_class = L.loss_generation_adversarial(disc, g)
    for value in (g_adv, g_class, L.loss_structure_consistency(g), L.loss_generated_lesion(lesion, g),
                  L.loss_registration(g), L.loss_semantic_consistency(g)):
        gen.zero_grad()
        assert torch.isfinite(value) and value.item() > 0
        value.backward(retain_graph=True)
        grads = [p.grad.abs().sum().item() for p in gen.parameters() if p.grad is not None]
        assert grads and sum(grads) > 0


class _Constant(torch.nn.Module):
    """A critic that scores every code cell ``value``, whatever the code."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return torch.full((code.shape[0], 1, *code.shape[-2:]), self.value)


def test_mri_code_discriminator_losses():
    """Sec. 2.4 / Fig. 5: CD learns EC(x_real) as real and EC_R(fuse(f, label)) as fake (least squares)."""
    gen, _, _, real = _stage_two("single")
    cd = normal_init_(MRICodeDiscriminator(4, 8), torch.Generator().manual_seed(0))
    a, g = L.assist_pass(gen, real), L.generation_pass(gen, binary(N, 1, S, S), labels())
    # ||CD(code_real) - 1||^2 + ||CD(code_g)||^2 and ||CD(code_g) - 1||^2, as written
    assert L.loss_mri_code_discriminator(_Constant(1.0), a, g).item() == pytest.approx(1.0)  # fake judged real
    assert L.loss_mri_code_discriminator(_Constant(0.0), a, g).item() == pytest.approx(1.0)  # real judged fake
    assert L.loss_mri_code_discriminator(_Constant(0.5), a, g).item() == pytest.approx(0.5)
    assert L.loss_mri_code_adversarial(_Constant(1.0), g).item() == 0.0
    assert L.loss_mri_code_adversarial(_Constant(0.0), g).item() == pytest.approx(1.0)
    expected = L.sq(cd(torch.cat(a.codes)) - 1) + L.sq(cd(g.code))
    loss_cd = L.loss_mri_code_discriminator(cd, a, g)
    torch.testing.assert_close(loss_cd, expected)
    # the discriminator's cost trains CD only (both codes detached)
    loss_cd.backward()
    assert all(p.grad is None for p in gen.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in cd.parameters())
    # the generator term reaches EC_R (the fusion encoder), whose codes it judges, and nothing else
    cd.zero_grad()
    L.loss_mri_code_adversarial(cd, g).backward()
    assert sum(p.grad.abs().sum().item() for p in gen.fusion_encoder.parameters()) > 0
    assert all(p.grad is None for p in [*gen.mri_encoder.parameters(), *gen.decoder.parameters()])


def test_label_costs():
    label = torch.zeros(1, 4, 4, dtype=torch.int64)
    label[:, :2] = 1
    exact = L.one_hot_label(label, 2)
    assert L.label_cost(exact, label, "soft_dice").item() == pytest.approx(0.0)
    assert L.label_cost(exact.flip(1), label, "soft_dice").item() == pytest.approx(1 - 1 / 17)
    assert L.label_cost(exact, label, "l2").item() == 0.0
    assert L.label_cost(exact.flip(1), label, "l2").item() == pytest.approx(1.0)
    # the rare-class case that defeats L2: predicting "no lesion" everywhere costs L2 almost
    # nothing when 4 of 256 pixels are lesion, and costs soft Dice almost everything
    rare = torch.zeros(1, 16, 16, dtype=torch.int64)
    rare[0, 3:5, 3:5] = 1
    nothing = L.one_hot_label(torch.zeros_like(rare), 2)
    assert L.label_cost(nothing, rare, "l2").item() == pytest.approx(4 / 256)
    assert L.label_cost(nothing, rare, "soft_dice").item() == pytest.approx(1 - 1 / 5)
    with pytest.raises(ValueError, match="unknown lesion loss"):
        L.label_cost(exact, label, "focal")
