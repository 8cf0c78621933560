"""Tests of the Chartsias et al. 2018 network and its three-part cost (tiny sizes, CPU)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from MRSynthesisLib.models.chartsias import FUSIONS, ChartsiasMIMO
from MRSynthesisLib.models.losses_chartsias import chartsias_loss

INPUTS = ("T1", "T2", "DWI")
OUTPUTS = ("FLAIR", "T2")
TINY = dict(latent_channels=4, filters=(4, 8, 8))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny convolutions gain nothing from threads, and on a loaded machine OpenMP threads
    waiting on each other made the overfit test 30x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(fusion: str = "max", lesion_input: bool = False, outputs=OUTPUTS) -> ChartsiasMIMO:
    torch.manual_seed(0)
    return ChartsiasMIMO(INPUTS, outputs, lesion_input=lesion_input, fusion=fusion, **TINY)


def images(names=INPUTS, n: int = 2, size: int = 32, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {m: torch.rand(n, 1, size, size, generator=g) for m in names}


def subsets(names=INPUTS):
    return [s for r in range(1, len(names) + 1) for s in itertools.combinations(names, r)]


@pytest.mark.parametrize("fusion", FUSIONS)
def test_every_subset_gives_every_output(fusion):
    model = make(fusion)
    x = images()
    for subset in subsets():
        out = model({m: x[m] for m in subset})
        assert list(out) == list(OUTPUTS)
        assert all(y.shape == (2, 1, 32, 32) and torch.isfinite(y).all() for y in out.values())
    assert list(model(x, targets=["T2"])) == ["T2"]
    assert model.fuse(model.encode({"T1": x["T1"]})).shape[1] == TINY["latent_channels"]


def test_bad_names_shapes_and_options_raise():
    model = make()
    x = images()
    with pytest.raises(ValueError, match="PD"):
        model({"T1": x["T1"], "PD": x["T1"]})
    with pytest.raises(ValueError, match="no input"):
        model({})
    with pytest.raises(ValueError, match="PD"):
        model(x, targets=["PD"])
    with pytest.raises(ValueError, match="multiples of 4"):
        model({"T1": torch.rand(1, 1, 30, 32)})
    with pytest.raises(ValueError, match="lesion_input"):
        model(x, lesion=torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="max, mean, hemis, output_mean"):
        ChartsiasMIMO(INPUTS, OUTPUTS, fusion="sum")
    with pytest.raises(ValueError, match="even"):
        ChartsiasMIMO(INPUTS, OUTPUTS, latent_channels=5, fusion="hemis")


def test_lesion_channel_changes_output_and_defaults_to_healthy():
    model = make(lesion_input=True)
    x = images()
    lesion = torch.zeros(2, 1, 32, 32)
    lesion[:, :, 8:16, 8:16] = 1
    with torch.no_grad():
        healthy = model(x)["FLAIR"]
        assert torch.equal(healthy, model(x, lesion=torch.zeros_like(lesion))["FLAIR"])
        assert not torch.allclose(healthy, model(x, lesion=lesion)["FLAIR"])


@pytest.mark.parametrize("fusion", FUSIONS)
def test_one_input_is_that_inputs_own_decode(fusion):
    model = make(fusion)
    x = images(["T2"])
    with torch.no_grad():
        z = model.encode(x)["T2"]
        if fusion == "hemis":  # mean = z, variance = 0
            z = torch.cat([z, torch.zeros_like(z)], 1)
        expected = model.decode(z)
        for t, y in model(x).items():
            assert torch.equal(y, expected[t])


def test_max_fusion_is_pixelwise_max():
    model = make()
    with torch.no_grad():
        latents = model.encode(images())
        assert torch.equal(model.fuse(latents), torch.maximum(torch.maximum(*list(latents.values())[:2]),
                                                              latents["DWI"]))


@pytest.mark.parametrize("fusion", FUSIONS)
def test_loss_parts_and_gradients(fusion):
    model = make(fusion)
    x = images(["T1", "DWI"])
    refs = images(["FLAIR"], seed=2)
    total, parts = chartsias_loss(model, x, refs)
    assert set(parts) == {"c1", "c2", "c3", "total", "active[FLAIR]"}  # T2 has no reference: not decoded
    assert all(math.isfinite(v) for v in parts.values()) and 0 < parts["active[FLAIR]"] <= 1
    assert parts["total"] == pytest.approx(parts["c1"] + parts["c2"] + parts["c3"], rel=1e-5)
    total.backward()
    for m, encoder in model.encoders.items():
        grads = [p.grad for p in encoder.parameters()]
        if m in x:
            assert all(g is not None and g.abs().sum() > 0 for g in grads), m
        else:
            assert all(g is None for g in grads), m
    assert all(p.grad is None for p in model.decoders["T2"].parameters())  # no reference, not decoded


def test_loss_terms_follow_the_paper():
    model = make("mean")
    x = images(["T1", "T2"])
    refs = images(OUTPUTS, seed=2)
    with torch.no_grad():
        _, parts = chartsias_loss(model, x, refs)
        latents = model.encode(x)
        c1 = sum((model.decode(z)[t] - refs[t]).abs().mean() for z in latents.values() for t in OUTPUTS) / 2
        fused = model(x)
        c3 = sum((fused[t] - refs[t]).abs().mean() for t in OUTPUTS) / 2
        c2 = torch.stack(list(latents.values())).var(0, correction=0).mean()
    assert parts["c1"] == pytest.approx(c1.item(), rel=1e-5)
    assert parts["c2"] == pytest.approx(c2.item(), rel=1e-5)
    assert parts["c3"] == pytest.approx(c3.item(), rel=1e-5)


def test_c2_is_zero_with_one_input_and_weights_ablate_terms():
    model = make()
    refs = images(["FLAIR"], seed=2)
    _, parts = chartsias_loss(model, images(["T1"]), refs)
    assert parts["c2"] == 0.0
    total, parts = chartsias_loss(model, images(), refs, weights=(0.0, 1.0, 2.0))
    assert set(parts) == {"c2", "c3", "total", "active[FLAIR]"}
    assert total.item() == pytest.approx(parts["c2"] + 2 * parts["c3"], rel=1e-5)
    with pytest.raises(ValueError, match="PD"):
        chartsias_loss(model, images(), {"PD": refs["FLAIR"]})


def test_mask_restricts_the_loss():
    model = make()
    x, refs = images(), images(["FLAIR"], seed=2)
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, :16] = 1
    changed = {"FLAIR": refs["FLAIR"].clone()}
    changed["FLAIR"][:, :, 16:] += 5.0  # only outside the mask
    with torch.no_grad():
        _, a = chartsias_loss(model, x, refs, mask=mask)
        _, b = chartsias_loss(model, x, changed, mask=mask)
    assert a == pytest.approx(b)


def kill(model: ChartsiasMIMO, output: str) -> None:
    """Make ``output``'s final 1x1 convolution negative everywhere: a dead ReLU output."""
    with torch.no_grad():
        model.decoders[output].out.bias.fill_(-1e3)


def test_pass_through_changes_gradients_not_values():
    relu, through = make(), make()
    through.output_gradient = "pass_through"
    x = images()
    for mode in (True, False):
        relu.train(mode), through.train(mode)
        a, b = relu(x), through(x)
        assert all(torch.equal(a[t], b[t]) for t in OUTPUTS)  # bit-identical, in training mode too
    assert relu.state_dict().keys() == through.state_dict().keys()
    with pytest.raises(ValueError, match="leaky"):
        ChartsiasMIMO(INPUTS, OUTPUTS, output_gradient="leaky", **TINY)
    with pytest.raises(ValueError, match="leaky"):
        relu.output_gradient = "leaky"
    assert through.add_output("DWI").output_gradient == "pass_through"


@pytest.mark.parametrize("kind", ["relu", "pass_through"])
def test_a_dead_output_is_reported_and_only_pass_through_revives_it(kind):
    model = make(outputs=["FLAIR"])
    model.output_gradient = kind
    kill(model, "FLAIR")
    x, refs = images(["T1", "T2"]), images(["FLAIR"], seed=2)
    total, parts = chartsias_loss(model, x, refs)
    assert parts["active[FLAIR]"] == 0.0
    total.backward()
    grad = model.decoders["FLAIR"].out.bias.grad
    assert (grad.abs().item() > 0) == (kind == "pass_through")
    optimiser = torch.optim.SGD(model.decoders.parameters(), lr=1e3 / abs(grad.item()) if grad.item() else 1.0)
    optimiser.step()
    assert (chartsias_loss(model, x, refs)[1]["active[FLAIR]"] > 0) == (kind == "pass_through")


def test_pass_through_does_not_push_a_zero_background_further_down():
    """Where the output is clamped to 0 and the target is 0, the L1 terms give no gradient."""
    model = make(outputs=["FLAIR"])
    model.output_gradient = "pass_through"
    kill(model, "FLAIR")
    x = images(["T1", "T2"])
    total, _ = chartsias_loss(model, x, {"FLAIR": torch.zeros_like(x["T1"])})
    total.backward()
    assert all(p.grad is None or not p.grad.any() for p in model.decoders.parameters())


def test_added_output_trains_alone_against_a_frozen_model():
    model = make(outputs=["FLAIR"])
    decoder = model.add_output("DWI")
    assert model.outputs == ("FLAIR", "DWI")
    model.freeze_all_but(["DWI"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    total, _ = chartsias_loss(model, images(["T1", "T2"]), images(["DWI"], seed=2))
    total.backward()
    optimiser.step()
    after = model.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]) != k.startswith("decoders.DWI."), k
    assert all(p.requires_grad for p in decoder.parameters())
    with pytest.raises(ValueError, match="FLAIR"):
        model.add_output("FLAIR")


def test_channels_last_bfloat16_autocast():
    model = make().to(memory_format=torch.channels_last)
    x = {m: v.to(memory_format=torch.channels_last) for m, v in images().items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        total, parts = chartsias_loss(model, x, images(OUTPUTS, seed=2))
    assert all(y.dtype == torch.bfloat16 and y.shape == (2, 1, 32, 32) for y in out.values())
    assert total.dtype == torch.float32 and math.isfinite(parts["total"])
    total.backward()


def test_state_dict_keys_are_plain_and_named_by_modality():
    model = make("hemis", lesion_input=True)
    keys = list(model.state_dict())
    assert all(isinstance(k, str) for k in keys)
    assert {k.split(".")[1] for k in keys if k.startswith("encoders.")} == set(INPUTS)
    assert {k.split(".")[1] for k in keys if k.startswith("decoders.")} == set(OUTPUTS)
    assert all(k.split(".")[0] in ("encoders", "decoders") for k in keys)
    assert "encoders.T1.conv0a.weight" in keys and "decoders.FLAIR.out.bias" in keys
    assert model.state_dict()["encoders.T1.conv0a.weight"].shape[1] == 2  # image + lesion mask


def test_tiny_overfit():
    torch.manual_seed(0)
    model = ChartsiasMIMO(["T1", "T2"], ["FLAIR"], **TINY)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    t1 = (1 - xx**2 - yy**2).clamp_min(0)[None, None] + 0.1 * torch.sin(6 * xx)
    x = {"T1": t1, "T2": 1.5 - t1}
    refs = {"FLAIR": (t1**2) * 2}
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(300):
        optimiser.zero_grad()
        total, parts = chartsias_loss(model, x, refs)
        total.backward()
        optimiser.step()
        first = first or parts["total"]
    assert parts["total"] < first / 8


def test_padding_stays_in_the_activations_dtype_under_autocast(monkeypatch):
    """Autocast would run replication_pad2d in fp32 (cast up, pad, cast down: 1.4-2x slower,
    Testing/Benchmarks/benchmark_autocast_padding.py); padded in bf16 the output is the same."""
    from MRSynthesisLib.models import chartsias

    model = make().eval()
    x = images()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        reference = model(x)["FLAIR"]
    padded: list[tuple[torch.dtype, torch.dtype]] = []
    pad = chartsias.F.pad

    def recording_pad(tensor, *args, **kwargs):
        out = pad(tensor, *args, **kwargs)
        padded.append((tensor.dtype, out.dtype))
        return out

    monkeypatch.setattr(chartsias.F, "pad", recording_pad)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        result = model(x)["FLAIR"]
    assert padded and all(before == after for before, after in padded)
    assert sum(before == torch.bfloat16 for before, _ in padded) > len(padded) // 2  # all but the first layers
    assert torch.equal(result, reference)


# --- an input that holds data over part of the image (coverage) -----------------------------

FAR = 20  # columns from the coverage edge beyond which the decoder cannot see across it


@pytest.mark.parametrize("fusion", FUSIONS)
def test_coverage_leaves_an_input_out_where_it_holds_no_data(fusion):
    """T2 covers the left half: far right of the edge the result is T1 + DWI's, far left all three's."""
    model = make(fusion).eval()
    x = images(size=64)
    half = torch.zeros(2, 1, 64, 64, dtype=torch.bool)
    half[..., :32] = True
    with torch.no_grad():
        partial = model(x, coverage={"T2": half})
        everything = model(x)
        without = model({m: x[m] for m in ("T1", "DWI")})
        whole = model(x, coverage={"T2": torch.ones_like(half), "T1": torch.ones_like(half)})
    for t in OUTPUTS:
        torch.testing.assert_close(partial[t][..., 32 + FAR:], without[t][..., 32 + FAR:])
        torch.testing.assert_close(partial[t][..., :32 - FAR], everything[t][..., :32 - FAR])
        torch.testing.assert_close(whole[t], everything[t])  # covering everything changes nothing


@pytest.mark.parametrize("fusion", FUSIONS)
def test_a_pixel_no_input_covers_gets_a_zero_latent(fusion):
    model = make(fusion).eval()
    x = images(("T1", "T2"))
    latents = model.encode(x)
    nothing = torch.zeros(2, 1, 32, 32, dtype=torch.bool)
    some = nothing.clone()
    some[:, :, 5, 7] = True
    fused = model.fuse(latents, {"T1": nothing, "T2": some}) if fusion != "output_mean" else \
        model.fuse({"T1": latents["T1"]}, {"T1": some})
    assert fused[:, :, 5, 7].abs().sum() > 0
    keep = torch.ones_like(fused, dtype=torch.bool)
    keep[:, :, 5, 7] = False
    assert not fused[keep].any()


def test_coverage_keeps_gradients_finite_under_autocast():
    """The max over covered latents masks with the dtype's lowest value, not -inf: inf * 0 would be NaN."""
    model = make().to(memory_format=torch.channels_last)
    x = {m: v.requires_grad_(True) for m, v in images(size=32).items()}
    top = torch.zeros(2, 1, 32, 32, dtype=torch.bool)
    top[:, :, :10] = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, coverage={"T2": top, "DWI": ~top})
    out["FLAIR"].float().sum().backward()
    assert all(torch.isfinite(v.grad).all() for v in x.values())
    assert x["T2"].grad[:, :, 20:].abs().sum() < x["T2"].grad[:, :, :10].abs().sum()


def test_bad_coverage_raises():
    model = make()
    x = images(("T1", "T2"))
    with pytest.raises(ValueError, match="coverage given for \\['DWI'\\]"):
        model(x, coverage={"DWI": torch.ones(2, 1, 32, 32, dtype=torch.bool)})
    with pytest.raises(ValueError, match="coverage of T2 must be"):
        model(x, coverage={"T2": torch.ones(2, 1, 16, 32, dtype=torch.bool)})


def _gradients(model: ChartsiasMIMO, inputs, refs, mask, present, pool=None) -> torch.Tensor:
    model.zero_grad()
    loss, _ = chartsias_loss(model, inputs, refs, mask=mask, present=present, pool=pool)
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_pooled_denominators_make_two_shares_average_to_the_whole_batch():
    """Data-parallel ranks average their gradients: with weighted pixels (lesions weighted, pixels ignored) and
    samples lacking an output, that equals the whole batch's gradient only when each share divides by the mean
    over shares of its denominators (``pool``), not by its own."""
    model = make()
    x, refs = images(n=4), images(["FLAIR", "T2"], n=4, seed=2)
    mask = torch.ones(4, 1, 32, 32)
    mask[0, :, :8] = 5.0  # a lesion in the first sample only
    mask[3, :, 20:] = 0.0  # ignored pixels in the last
    present = {"FLAIR": torch.tensor([1.0, 1.0, 1.0, 0.0]), "T2": torch.tensor([0.0, 0.0, 1.0, 1.0])}
    whole = _gradients(model, x, refs, mask, present)
    shares = [slice(0, 2), slice(2, 4)]
    part = [({m: v[s] for m, v in x.items()}, {m: v[s] for m, v in refs.items()}, mask[s],
             {m: v[s] for m, v in present.items()}) for s in shares]

    recorded: list[list[torch.Tensor]] = [[], []]
    for share, record in zip(part, recorded):  # each share's denominators, in the order the cost asks for them
        _gradients(model, *share, pool=lambda d, record=record: record.append(d.clone()) or d)
    pooled = []
    for index, share in enumerate(part):
        other = iter(recorded[1 - index])
        pooled.append(_gradients(model, *share, pool=lambda d, other=other: (d + next(other)) / 2))
    unpooled = [_gradients(model, *share) for share in part]
    assert torch.allclose((pooled[0] + pooled[1]) / 2, whole, rtol=1e-4, atol=1e-7)
    assert not torch.allclose((unpooled[0] + unpooled[1]) / 2, whole, rtol=1e-2, atol=1e-5)
