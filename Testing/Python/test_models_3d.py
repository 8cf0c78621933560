"""The 3D models (Wei's FCN, Klingelhoefer's autoencoder), exact tiling, and 3D P3S saliency."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import LAS, make_subject, phantom
from MRSynthesisLib.cards import ModelCard, load_model, save_model
from MRSynthesisLib.errors import InputError
from MRSynthesisLib.inference import RunSettings
from MRSynthesisLib.logic import SynthesisLogic, SynthesisRequest
from MRSynthesisLib.models import build
from MRSynthesisLib.models.klingelhoefer_ae3d import KlingelhoeferAE3D
from MRSynthesisLib.models.wei_fcn3d import WeiFCN3D
from MRSynthesisLib.tiling import Receptive, plan_tiles, run_tiled
from MRSynthesisLib.volume import Geometry, Volume, read_volume

ARCHITECTURES = ("wei2019_fcn3d", "klingelhoefer_ae3d")
SHAPE = (21, 26, 23)  # odd and unequal edges: tiles of every size, padding to the AE's pooling grid


def settings() -> RunSettings:
    return RunSettings(torch.device("cpu"), None, 4)


def data(seed: int = 0):
    rng = np.random.default_rng(seed)
    inputs = {n: rng.standard_normal(SHAPE).astype(np.float32) for n in ("T1", "T2")}
    mask = np.zeros(SHAPE, bool)
    mask[2:19, 3:24, 2:21] = True
    return inputs, mask, {"FLAIR": rng.standard_normal(SHAPE).astype(np.float32)}


def network(name: str, **params) -> torch.nn.Module:
    """A narrow (8-filter) network: tiling and receptive fields do not depend on the width."""
    torch.manual_seed(0)
    net = build(name, ["T1", "T2"], ["FLAIR", "T1c"], False, {"filters": 8, **params}).eval()
    if name == "klingelhoefer_ae3d":  # non-trivial normalisation statistics, as after training
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return net


def test_autoencoder_matches_the_paper():
    """Sec. 3.2/3.4: a 38^3 patch gives 16^3; T1 -> T2 with 32 filters has 168,289 parameters."""
    net = KlingelhoeferAE3D(["T1"], ["T2"]).eval()
    assert sum(p.numel() for p in net.parameters()) == 168_289
    out = net({"T1": torch.rand(2, 1, 38, 38, 38)})["T2"]
    assert out.shape == (2, 1, 16, 16, 16) and ((out > 0) & (out < 1)).all()
    with pytest.raises(ValueError, match="does not fit"):
        net({"T1": torch.rand(1, 1, 37, 38, 38)})


@pytest.mark.parametrize("head_kernel, halo", [(3, 4), (1, 3)])
def test_fcn_shape_and_receptive_field(head_kernel, halo):
    net = WeiFCN3D(["T1", "T2"], ["FLAIR"], head_kernel=head_kernel).eval()
    assert net.HALO == halo and sum(isinstance(m, torch.nn.Conv3d) for m in net.modules()) == 4  # 3 + the head
    x = torch.zeros(1, 1, 15, 15, 15)
    x2 = x.clone()
    x2[0, 0, 7, 7, 7] = 1.0  # an impulse reaches exactly HALO voxels each way
    a = net({"T1": x, "T2": x})["FLAIR"]
    b = net({"T1": x2, "T2": x})["FLAIR"]
    changed = (a != b)[0, 0].nonzero()
    assert changed.min(0).values.tolist() == [7 - halo] * 3 and changed.max(0).values.tolist() == [7 + halo] * 3


def test_fcn_has_the_papers_parameter_counts():
    """Wei et al. Table 1, five input sequences: 60.6 K (32 filters) and 513.5 K (96) are three 3x3x3 layers and a
    3x3x3 head to one channel; its 213.7 K for 64 filters is 231.7 K with two digits swapped."""
    counts = {f: sum(p.numel() for p in WeiFCN3D([f"S{i}" for i in range(5)], ["FLAIR"], filters=f).parameters())
              for f in (32, 64, 96)}
    assert counts == {32: 60_577, 64: 231_745, 96: 513_505}
    with pytest.raises(ValueError, match="head_kernel must be a positive odd size"):
        WeiFCN3D(["T1"], ["FLAIR"], head_kernel=2)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_declared_halo_is_the_receptive_field(name):
    """Impulses along one axis: the farthest input that changes an output is exactly HALO away."""
    net = network(name).double()
    depth, side = 40, 2 * net.CROP + 2
    x = torch.rand(1, 1, depth, side, side, dtype=torch.float64)
    bumped = x.repeat(depth + 1, 1, 1, 1, 1)  # item i has an impulse at depth i; the last none
    bumped[torch.arange(depth), 0, torch.arange(depth)] += 1.0
    y = net({"T1": bumped, "T2": x.expand_as(bumped)}, targets=["FLAIR"])["FLAIR"][:, 0, :, 1, 1]
    changed = ((y[:-1] - y[-1:]).abs() > 0).nonzero().tolist()  # (impulse depth, output index)
    assert max(abs(i - (o + net.CROP)) for i, o in changed) == net.HALO


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_a_missing_input_is_refused_unless_trained_with_dropout(name):
    x = torch.rand(1, 1, 38, 38, 38)
    with pytest.raises(ValueError, match=r"T2'\] are missing"):
        network(name)({"T1": x})
    with_flags = network(name, input_dropout=True)
    assert with_flags.features[0].in_channels == 4 if name == "wei2019_fcn3d" else True
    only_t1 = with_flags({"T1": x})["FLAIR"]
    zero_t2 = with_flags({"T1": x, "T2": torch.zeros_like(x)})["FLAIR"]
    assert not torch.equal(only_t1, zero_t2)  # "absent" is told apart from "present and zero" by the flags


def test_tiles_cover_the_grid_once():
    receptive = Receptive(halo=3, crop=0, multiple=1)
    tiles = plan_tiles((21, 26, 23), (8, 6, 10), receptive)
    owned = np.zeros((21, 26, 23), int)
    for tile in tiles:
        owned[tile.core] += 1
        for core, window in zip(tile.core, tile.window):
            assert window.start == max(0, core.start - 3)
    assert (owned == 1).all()


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_tiled_equals_one_window_outputs_and_saliency(name):
    """No seams: small tiles give the single-window result, outputs and P3S gradients alike."""
    inputs, mask, references = data()
    net = network(name)
    whole = run_tiled(net, inputs, ["FLAIR"], settings=settings(), mask=mask, tile=(64, 64, 64), saliency=True,
                      saliency_references=references)
    tiled = run_tiled(net, inputs, ["FLAIR"], settings=settings(), mask=mask, tile=(10, 12, 12), saliency=True,
                      saliency_references=references)
    np.testing.assert_allclose(tiled.outputs["FLAIR"][mask], whole.outputs["FLAIR"][mask], rtol=1e-5, atol=1e-5)
    for n in inputs:
        assert whole.saliency["FLAIR"][n].any()
        np.testing.assert_allclose(tiled.saliency["FLAIR"][n], whole.saliency["FLAIR"][n], rtol=1e-4, atol=1e-5)
    assert tiled.squared_error["FLAIR"] == pytest.approx(whole.squared_error["FLAIR"], rel=1e-5)
    plain = run_tiled(net, inputs, ["FLAIR", "T1c"], settings=settings(), mask=mask, tile=(10, 12, 12))
    np.testing.assert_allclose(plain.outputs["FLAIR"][mask], whole.outputs["FLAIR"][mask], rtol=1e-5, atol=1e-5)
    assert plain.saliency == {} and plain.outputs["T1c"][mask].std() > 0


def test_tiled_saliency_is_the_whole_volume_gradient():
    """The accumulated tile gradients equal autograd through one whole-volume pass (eq. 3 before scaling)."""
    inputs, mask, references = data(1)
    net = network("wei2019_fcn3d")
    tiled = run_tiled(net, inputs, ["FLAIR"], settings=settings(), mask=mask, tile=(7, 9, 8), saliency=True,
                      saliency_references=references)
    x = {n: torch.from_numpy(a)[None, None].requires_grad_(True) for n, a in inputs.items()}
    y = net(x, targets=["FLAIR"])["FLAIR"][0, 0]
    objective = (((y - torch.from_numpy(references["FLAIR"])) ** 2) * torch.from_numpy(mask.astype(np.float32))).sum()
    grads = torch.autograd.grad(objective, [x["T1"], x["T2"]])
    for n, g in zip(("T1", "T2"), grads):
        np.testing.assert_allclose(tiled.saliency["FLAIR"][n], g[0, 0].abs().numpy(), rtol=1e-4, atol=1e-5)


def save_3d_model(folder, name: str, **card_changes):
    card = dict(name=f"tiny-{name}", architecture=name, inputs=["T1", "T2"], outputs=["FLAIR"], spatial_dims=3,
                plane=None, missing_inputs="all_required", patch_size=[38, 38, 38] if "ae" in name else None,
                normalisation={"scheme": "zscore" if name == "wei2019_fcn3d" else "three_mean_nonzero"},
                params={"filters": 8}, output_intensity={"FLAIR": {"offset": 0.0, "scale": 400.0}})
    card.update(card_changes)
    card = ModelCard(**card)
    torch.manual_seed(0)
    return load_model(save_model(card, build(name, card.inputs, card.outputs, card.lesion_input, card.params),
                                 folder / card.name))


def test_a_card_written_before_the_fcn_head_was_a_parameter_loads_its_1x1x1_head(tmp_path):
    """Cards name the head now (save_model writes it from the network); one without it was trained with the
    1x1x1 head this project's FCN had before the paper's parameter counts showed a 3x3x3 one."""
    model = save_3d_model(tmp_path, "wei2019_fcn3d")
    assert model.card.params["head_kernel"] == 3 and model.network.HALO == 4
    old = save_3d_model(tmp_path / "before", "wei2019_fcn3d", params={"filters": 8, "head_kernel": 1})
    card = json.loads((old.folder / "card.json").read_text())
    del card["params"]["head_kernel"]
    (old.folder / "card.json").write_text(json.dumps(card))
    loaded = load_model(old.folder)
    assert loaded.network.head.weight.shape[2:] == (1, 1, 1) and loaded.network.HALO == 3


def volumes():
    p = phantom()
    geometry = Geometry((p["T1"].shape[2], p["T1"].shape[1], p["T1"].shape[0]), (1.0, 1.0, 1.5), (0.0, 0.0, 0.0), LAS)
    return {k: Volume(p[k].astype(np.float32), geometry, f"/data/{k}.nii.gz") for k in ("T1", "T2", "FLAIR")}, p


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_logic_runs_3d_models_with_saliency_and_a_region(tmp_path, name):
    model = save_3d_model(tmp_path, name)
    vols, p = volumes()
    brain, lesion = p["brain"] > 0, p["lesion"] > 0
    request = SynthesisRequest({"T1": vols["T1"], "T2": vols["T2"]}, ["FLAIR"], saliency=True, tile=8,
                               saliency_region=vols["T1"].with_array(lesion.astype(np.float32), "/data/lesion.nii.gz"))
    result = SynthesisLogic(model).run(request)
    out = result.outputs["FLAIR"].array
    assert out.shape == brain.shape and out[brain].std() > 0 and not out[~brain].any()
    assert "target-free" in result.saliency_objective
    for share in (result.contributions["FLAIR"], result.region_contributions["FLAIR"]):
        assert sum(share.values()) == pytest.approx(1.0)
    assert set(result.saliency_means["FLAIR"]["T1"]) == {"brain", "region"}
    # one tile over the whole volume gives the same volume: no seams through the logic either
    whole = SynthesisLogic(model).run(SynthesisRequest({"T1": vols["T1"], "T2": vols["T2"]}, ["FLAIR"], tile=64,
                                                       plane="sagittal"))
    np.testing.assert_allclose(whole.outputs["FLAIR"].array, out, rtol=1e-4, atol=1e-3)
    assert any("plane sagittal ignored" in note for note in whole.notes)  # said, not silently dropped


def test_logic_refuses_a_missing_input_the_3d_card_requires(tmp_path):
    model = save_3d_model(tmp_path, "wei2019_fcn3d")
    vols, _ = volumes()
    with pytest.raises(InputError, match="needs every input"):
        SynthesisLogic(model).run(SynthesisRequest({"T1": vols["T1"]}, ["FLAIR"]))


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_work_is_limited_to_the_mask_box_without_changing_masked_voxels(name):
    """A small mask far from the edges: only its box is computed, and its voxels equal a whole-volume pass."""
    rng = np.random.default_rng(2)
    shape = (40, 44, 42)
    inputs = {n: rng.standard_normal(shape).astype(np.float32) for n in ("T1", "T2")}
    small = np.zeros(shape, bool)
    small[15:22, 17:25, 13:20] = True
    net = network(name)
    cropped = run_tiled(net, inputs, ["FLAIR"], settings=settings(), mask=small, tile=(6, 6, 6), saliency=True)
    whole = run_tiled(net, inputs, ["FLAIR"], settings=settings(), mask=np.ones(shape, bool), tile=(64, 64, 64))
    np.testing.assert_allclose(cropped.outputs["FLAIR"][small], whole.outputs["FLAIR"][small], rtol=1e-5, atol=1e-5)
    halo = net.HALO
    assert not cropped.outputs["FLAIR"][:15 - halo - 2].any()  # nothing computed far outside the box
    x = {n: torch.from_numpy(a)[None, None].requires_grad_(True) for n, a in inputs.items()}
    crop, multiple = net.CROP, net.SIZE_MULTIPLE
    widths = [v for s in reversed(shape) for v in (crop, crop + (-s) % multiple)]  # F.pad: last axis first
    padded = {n: torch.nn.functional.pad(t, widths) for n, t in x.items()}
    y = net(padded, targets=["FLAIR"])["FLAIR"][0, 0][:shape[0], :shape[1], :shape[2]]
    grads = torch.autograd.grad((y * torch.from_numpy(small.astype(np.float32))).sum(), [x["T1"], x["T2"]])
    for n, g in zip(("T1", "T2"), grads):
        np.testing.assert_allclose(cropped.saliency["FLAIR"][n], g[0, 0].abs().numpy(), rtol=1e-4, atol=1e-5)


def test_cli_synthesises_with_a_3d_model_and_writes_saliency(tmp_path, run_cli):
    """The command line end to end with a 3D model: output on the input grid, maps, Fig. 6 PNG, region shares."""
    subject = make_subject(tmp_path / "subject")
    model = save_3d_model(tmp_path / "models", "klingelhoefer_ae3d")
    out, maps = tmp_path / "out", tmp_path / "maps"
    result = run_cli("synthesize", "--model", model.folder, "--input", f"T1={subject['T1']}",
                     "--input", f"T2={subject['T2']}", "--target", "FLAIR", "--out", out, "--tile", "8",
                     "--saliency-out", maps, "--saliency-region", subject["lesion_mask"])
    assert result.returncode == 0, result.stderr
    synthetic = read_volume(out / "FLAIR_synthetic.nii.gz")
    assert synthetic.geometry.differences(read_volume(subject["T1"]).geometry, 1e-5) == []
    summary = json.loads((maps / "contributions.json").read_text())
    assert summary["region"] == str(subject["lesion_mask"])
    assert sum(summary["contributions_in_region"]["FLAIR"].values()) == pytest.approx(1.0)
    assert (maps / "P3S_FLAIR.png").read_bytes()[:4] == b"\x89PNG"
    for name in ("T1", "T2"):
        assert read_volume(maps / f"P3S_FLAIR_from_{name}.nii.gz").array.any()


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_a_3d_model_runs_coarse_inputs_on_its_own_spacing(tmp_path, name):
    """Voxels of 1 x 1 x 1.5 mm for a model trained on 1 mm: every axis of a 3D model counts, so the slice axis
    is resampled too, and the result, saliency maps included, comes back on the input grid."""
    model = save_3d_model(tmp_path, name, spacing_mm=[1.0, 1.0, 1.0])
    vols, p = volumes()
    brain = p["brain"] > 0
    result = SynthesisLogic(model).run(SynthesisRequest({"T1": vols["T1"], "T2": vols["T2"]}, ["FLAIR"],
                                                        saliency=True, tile=16))
    assert any("synthesised on voxels of 1 x 1 x 1 mm and resampled back" in n for n in result.notes), result.notes
    out = result.outputs["FLAIR"]
    assert out.geometry == vols["T1"].geometry and out.array[brain].std() > 0 and not out.array[~brain].any()
    assert result.saliency["FLAIR"]["T1"].geometry == vols["T1"].geometry
    assert sum(result.contributions["FLAIR"].values()) == pytest.approx(1.0)
