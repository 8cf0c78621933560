"""Qu et al. training (training/qu): config, real-slice loading, both stages for every lesion scheme, model folders."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import make_subject
from MRSynthesisLib.errors import InputError
from MRSynthesisLib.models.qu_layers import DISCRIMINATOR_STD
from MRSynthesisLib.models.qu_segmentors import SCHEMES
from training.qu import generation_check
from training.qu import train_generator as tg
from training.qu import train_structure as ts
from training.qu.config import GENERATOR_WEIGHTS, QuConfig, load_config
from training.qu.data import LabelTransform, draw_label, label_bank, load_subject_slices
from training.qu.folders import (
    GENERATOR,
    STRUCTURE,
    generator_networks,
    load_folder,
    save_folder,
)

TINY = {"size": 16, "slice_range": [0.0, 1.0], "min_brain_fraction": 0.05, "batch_size": 2, "log_every": 1,
        "structure_width": 4, "structure_code_channels": 2, "mask_width": 4, "generator_width": 4,
        "generator_code_channels": 4, "discriminator_width": 4, "segmentor_width": 4, "threads": 1,
        "modalities": ["T1", "T2", "FLAIR"]}


def tiny_config(tmp_path, **changes) -> QuConfig:
    a, b = make_subject(tmp_path / "a", seed=0), make_subject(tmp_path / "b", seed=1)
    data = {"name": "tiny", "sources": [{"folder": str(a.folder)}, {"folder": str(b.folder), "labelled": False}],
            "out": str(tmp_path / "run"), "structure_steps": 2, "generator_steps": 2, **TINY, **changes}
    return QuConfig.from_dict(data)


def test_config_errors_name_the_file_and_the_key(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"name": "x", "sources": ["s"], "shceme": "single"}))
    with pytest.raises(InputError, match=r"c\.json.*unknown config keys \['shceme'\]"):
        load_config(path)
    path.write_text(json.dumps({"name": "x", "sources": ["s"], "scheme": "two"}))
    with pytest.raises(InputError, match="scheme must be one of"):
        load_config(path)
    path.write_text(json.dumps({"name": "x", "sources": ["s"], "generator_weights": {"lesoin": 2}}))
    with pytest.raises(InputError, match="unknown generator_weights"):
        load_config(path)
    path.write_text(json.dumps({"name": "x", "sources": ["s"], "size": 20}))
    with pytest.raises(InputError, match="multiple of 8"):
        load_config(path)
    with pytest.raises(InputError, match="no such config"):
        load_config(tmp_path / "missing.json")
    path.write_text(json.dumps({"name": "x", "sources": ["sub"], "generator_weights": {"lesion": 2.0}}))
    config = load_config(path)
    assert config.sources[0].folder == str((tmp_path / "sub").resolve())  # relative to the config file
    assert config.generator_weights == {**GENERATOR_WEIGHTS, "lesion": 2.0}


def test_shipped_configs_parse():
    from conftest import REPO

    for path in sorted((REPO / "training" / "configs" / "qu").glob("*.json")):
        assert load_config(path).name == path.stem


def test_load_subject_slices(tmp_path):
    subject = make_subject(tmp_path / "s")
    slices = load_subject_slices(subject.folder, ["T1", "FLAIR"], 16, [0.0, 1.0], 0.05, labelled=True)
    assert slices.images.shape[:2] == (2, len(slices)) and slices.images.shape[2:] == (16, 16)
    assert slices.images.min() == 0.0 and slices.images.max() <= 1.0
    assert slices.labels.max() == 1 and slices.labelled.all()
    assert not np.any(slices.labels & (slices.brain == 0))  # labels only inside the brain
    assert len(label_bank(slices)) == int((slices.labels.reshape(len(slices), -1).max(1) > 0).sum())
    with pytest.raises(InputError, match="no T1c image"):
        load_subject_slices(subject.folder, ["T1c"], 16, [0, 1], 0.05, labelled=False)
    with pytest.raises(InputError, match="no such subject folder"):
        load_subject_slices(tmp_path / "nope", ["T1"], 16, [0, 1], 0.05, labelled=False)
    (subject.folder / "lesion_mask.nii.gz").unlink()
    with pytest.raises(InputError, match="no lesion_mask"):
        load_subject_slices(subject.folder, ["T1"], 16, [0, 1], 0.05, labelled=True)


def test_label_transform_and_draw_keep_labels_inside_the_brain():
    rng = np.random.default_rng(0)
    label = np.zeros((16, 16), np.uint8)
    label[6:9, 6:10] = 1
    moved = [LabelTransform()(label, rng) for _ in range(20)]
    assert any(not np.array_equal(m, label) for m in moved)
    assert all(set(np.unique(m)) <= {0, 1} for m in moved)
    background = np.ones((16, 16), np.float32)
    background[4:12, 4:12] = 0
    for _ in range(20):
        drawn = draw_label(label[None], background, rng, LabelTransform(), 10)
        assert drawn is None or not np.any((drawn > 0) & (background > 0))
    assert draw_label(label[None], np.ones((16, 16)), rng, LabelTransform(), 3) is None  # no brain, no label


def test_structure_stage_runs_every_loss_and_saves_a_loadable_folder(tmp_path):
    config = tiny_config(tmp_path)
    nets, history = ts.train_structure(config, ts.load_sources(config), log=lambda _: None)
    assert len(history) == 2
    for key in ("loss_D_f+FD_f", "loss_G_f", "loss_normal", "loss_sv", "loss_mask"):
        assert math.isfinite(history[-1][key])
    folder = tmp_path / "run" / "structure"
    save_folder(folder, STRUCTURE, config, nets, {"log": history})
    loaded_config, loaded, manifest = load_folder(folder, STRUCTURE)
    assert loaded_config.to_dict() == config.to_dict() and manifest["log"] == history
    for name, net in nets.items():
        for key, value in net.state_dict().items():
            torch.testing.assert_close(loaded[name].state_dict()[key], value)
    assert not list(tmp_path.glob("run/.*partial"))
    with pytest.raises(InputError, match="is a 'qu-structure' folder"):
        load_folder(folder, GENERATOR)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_generator_stage_runs_every_loss_for_every_scheme(tmp_path, scheme):
    config = tiny_config(tmp_path, scheme=scheme)
    slices = ts.load_sources(config)
    nets, history, bank = tg.train_generator(config, slices, log=lambda _: None)
    assert set(nets) == {"generator", "lesion", "discriminator", "code_discriminator"} and len(bank) > 0
    last = history[-1]
    for key in [*GENERATOR_WEIGHTS, "loss_D_total", "loss_CD_total", "loss_lesion_real"]:
        assert math.isfinite(last[key]), key
    assert last["loss_lesion_real"] > 0 and last["cycle_consistency"] > 0  # three modalities: every term is live
    # one more run from the same seed changes nothing: training is reproducible
    _, history_again, _ = tg.train_generator(config, slices, log=lambda _: None)
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in history] == \
           [{k: v for k, v in row.items() if k != "seconds"} for row in history_again]


def test_generator_step_leaves_the_lesion_components_to_real_data(tmp_path, monkeypatch):
    """Sec. 2.6: the lesion components guide generation but learn from real slices only."""
    config = tiny_config(tmp_path, generator_steps=1, lesion_loss="soft_dice")
    slices = ts.load_sources(config)
    calls, kinds = [], []
    original, original_generated = tg.L.loss_lesion, tg.L.loss_generated_lesion

    def spy(lesion, images, labels, labelled, kind):
        calls.append([x.detach().clone() for x in images])
        kinds.append(kind)
        return original(lesion, images, labels, labelled, kind)

    def spy_generated(lesion, generation, kind):
        kinds.append(kind)
        return original_generated(lesion, generation, kind)

    monkeypatch.setattr(tg.L, "loss_lesion", spy)
    monkeypatch.setattr(tg.L, "loss_generated_lesion", spy_generated)
    tg.train_generator(config, slices, log=lambda _: None)
    assert len(calls) == 1 and kinds == ["soft_dice", "soft_dice"]  # the config's cost, both places
    real = torch.from_numpy(slices.images)
    for batch in calls[0]:  # every image the lesion components learnt from is a real slice
        for image in batch:
            assert any(torch.equal(image[0], r) for r in real.reshape(-1, *real.shape[2:]))


def test_command_lines_write_model_folders_and_refuse_to_overwrite(tmp_path, capsys):
    config = tiny_config(tmp_path)
    path = tmp_path / "c.json"
    path.write_text(json.dumps({**config.to_dict(), "sources": [s.__dict__ for s in config.sources]}))
    assert ts.main([str(path)]) == 0
    assert tg.main([str(path), "--scheme", "shared_encoder"]) == 0
    _, _, manifest = load_folder(tmp_path / "run" / "generator", GENERATOR)
    assert manifest["config"]["scheme"] == "shared_encoder"
    assert set(manifest["generation_check"]) == {"T1", "T2", "FLAIR"}
    assert (tmp_path / "run" / "generator" / "samples.png").stat().st_size > 1000
    capsys.readouterr()
    assert generation_check.main([str(tmp_path / "run" / "generator"), "--config", str(path)]) == 0
    assert json.loads(capsys.readouterr().out) == manifest["generation_check"]  # same slices, same networks
    assert ts.main([str(path)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert ts.main([str(path), "--overwrite", "--steps", "1"]) == 0
    before = (tmp_path / "run" / "structure" / "structure_vae.safetensors").read_bytes()
    broken = json.loads(path.read_text())
    broken["sources"] = [{"folder": str(tmp_path / "gone"), "labelled": False}]
    path.write_text(json.dumps(broken))
    assert ts.main([str(path), "--overwrite"]) == 2  # a failed --overwrite run keeps the old model
    assert "gone: no such subject folder" in capsys.readouterr().err
    assert (tmp_path / "run" / "structure" / "structure_vae.safetensors").read_bytes() == before
    (tmp_path / "run" / "structure" / "mask_generator.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(InputError, match="mask_generator.safetensors"):
        load_folder(tmp_path / "run" / "structure", STRUCTURE)


def test_generator_step_trains_the_code_discriminator_and_initialises_as_sec_3_4(tmp_path, monkeypatch):
    """One smoke step: CD (Sec. 2.4, Fig. 5) is updated by its own optimiser; Sec. 3.4's mean
    filter initialises the generator components only, the lesion components get N(0, 0.2)."""
    config = tiny_config(tmp_path, generator_steps=1)
    initial = {}
    original = tg.adam

    def spy(config, module):  # the optimisers are built right after the initialisation
        initial[id(module)] = {k: v.detach().clone() for k, v in module.state_dict().items()}
        return original(config, module)

    monkeypatch.setattr(tg, "adam", spy)
    nets, history, _ = tg.train_generator(config, ts.load_sources(config), log=lambda _: None)
    assert {id(net) for net in nets.values()} == set(initial)  # one optimiser per network, CD's included
    assert math.isfinite(history[-1]["loss_CD_total"]) and history[-1]["loss_CD_total"] > 0
    assert history[-1]["code_adversarial"] > 0
    cd = nets["code_discriminator"]
    start = initial[id(cd)]
    assert all(not torch.equal(start[k], v) for k, v in cd.state_dict().items() if k.endswith("weight"))

    def conv_weights(net):
        state = initial[id(net)]
        return torch.cat([v.flatten() for k, v in state.items() if k.endswith("weight")])

    lesion = conv_weights(nets["lesion"])
    assert lesion.std().item() == pytest.approx(DISCRIMINATOR_STD, rel=0.15)
    assert (lesion < 0).any()  # a mean-filter kernel is all positive
    assert all(not v.any() for k, v in initial[id(nets["lesion"])].items() if k.endswith("bias"))
    assert (conv_weights(nets["generator"]) > 0).all()  # the generator components are mean filters
    assert conv_weights(cd).std().item() == pytest.approx(DISCRIMINATOR_STD, rel=0.15)


def test_generator_folder_round_trips_with_the_code_discriminator(tmp_path):
    config = tiny_config(tmp_path, generator_steps=1)
    nets, history, bank = tg.train_generator(config, ts.load_sources(config), log=lambda _: None)
    folder = tmp_path / "run" / "generator"
    save_folder(folder, GENERATOR, config, nets, {"log": history, "label_bank_size": len(bank)})
    assert (folder / "code_discriminator.safetensors").is_file()
    loaded_config, loaded, manifest = load_folder(folder, GENERATOR)
    assert loaded_config.to_dict() == config.to_dict() and set(loaded) == set(nets)
    for name, net in nets.items():
        for key, value in net.state_dict().items():
            torch.testing.assert_close(loaded[name].state_dict()[key], value)
    # a folder that lists CD must have its weights
    (folder / "code_discriminator.safetensors").unlink()
    with pytest.raises(InputError, match="code_discriminator.safetensors: no such file"):
        load_folder(folder, GENERATOR)
    # a folder written before CD existed (not listed, old config without its weight) still loads, without it
    manifest["weights"].pop("code_discriminator")
    manifest["config"]["generator_weights"].pop("code_adversarial")
    (folder / "qu_model.json").write_text(json.dumps(manifest))
    old_config, old, _ = load_folder(folder, GENERATOR)
    assert set(old) == {"generator", "lesion", "discriminator"}
    assert old_config.generator_weights["code_adversarial"] == GENERATOR_WEIGHTS["code_adversarial"]


def test_generation_check_tells_a_blank_generator(tmp_path):
    """The failure the check exists for: a generator that decodes every code to 0 scores 0 / 0 / 1."""
    config = tiny_config(tmp_path)
    slices = ts.load_sources(config)
    generator = generator_networks(config)["generator"]
    for parameter in generator.decoder.parameters():
        torch.nn.init.zeros_(parameter)
    figure = tmp_path / "samples.png"
    result = generation_check.generation_check(generator, slices, config, count=4, figure=figure)
    for figures in result.values():
        assert {k: figures[k] for k in ("brain_mean_ratio", "correlation", "mae_over_blank")} == {
            "brain_mean_ratio": 0.0, "correlation": 0.0, "mae_over_blank": 1.0}
        # the structure cost of a blank image, and the real slices' own maps fit them far better
        assert figures["structure_cost"] == figures["structure_cost_blank"]
        assert figures["structure_cost_real"] < 0.5 * figures["structure_cost_blank"]
        assert figures["structure_cost_real"] < figures["structure_cost_other_anatomy"]
    assert figure.stat().st_size > 1000
    picked = generation_check.pick_slices(slices, 4, 0)
    has_lesion = slices.labels.reshape(len(slices), -1).max(axis=1) > 0
    assert has_lesion[picked].sum() == min(4, (has_lesion & slices.labelled).sum())  # lesion slices first


def test_gradient_clipping_bounds_the_generator_update(tmp_path):
    """grad_clip clips EC_R/EC/DC's global norm before Adam: a clip of 1e-12 leaves the update to
    Adam's eps (no visible step), no clip moves weights by ~lr. The unclipped norm is logged."""
    from MRSynthesisLib.models.qu_layers import mean_filter_init_

    config = tiny_config(tmp_path, generator_steps=1)
    slices = ts.load_sources(config)
    initial = generator_networks(config)["generator"]
    mean_filter_init_(initial, torch.Generator().manual_seed(config.seed))  # as train_generator starts
    free, free_log, _ = tg.train_generator(config, slices, log=lambda _: None)
    clipped_config = tiny_config(tmp_path, generator_steps=1, grad_clip=1e-12)
    clipped, clipped_log, _ = tg.train_generator(clipped_config, slices, log=lambda _: None)
    assert free_log[0]["grad_norm_generator"] > 0
    assert clipped_log[0]["grad_norm_generator"] == pytest.approx(free_log[0]["grad_norm_generator"])
    start = initial.state_dict()
    moved = max((free["generator"].state_dict()[k] - v).abs().max().item() for k, v in start.items())
    held = max((clipped["generator"].state_dict()[k] - v).abs().max().item() for k, v in start.items())
    assert moved > 0.5 * config.learning_rate and held < 1e-3 * config.learning_rate
    with pytest.raises(ValueError, match="grad_clip must be > 0"):
        tiny_config(tmp_path, grad_clip=0.0)


def test_balanced_structure_cost_reaches_training_and_the_check(tmp_path, monkeypatch):
    """structure_loss "balanced" is what the generator step optimises and what the check reports."""
    config = tiny_config(tmp_path, generator_steps=1, structure_loss="balanced")
    slices = ts.load_sources(config)
    kinds = []
    original = tg.L.loss_structure_consistency

    def spy(generation, beta, kind):
        kinds.append(kind)
        return original(generation, beta, kind)

    monkeypatch.setattr(tg.L, "loss_structure_consistency", spy)
    nets, history, _ = tg.train_generator(config, slices, log=lambda _: None)
    assert kinds == ["balanced"] and math.isfinite(history[-1]["structure"])
    figures = generation_check.generation_check(nets["generator"], slices, config, count=4)
    for f in figures.values():  # a blank image costs half on the balanced scale, whatever the map's density
        assert f["structure_cost_blank"] == pytest.approx(0.5, abs=0.02)
        assert f["structure_cost_real"] < 0.5 * f["structure_cost_blank"]
    with pytest.raises(ValueError, match="structure_loss must be one of"):
        tiny_config(tmp_path, structure_loss="dice")
