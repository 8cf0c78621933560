"""The 3D trainer on an incomplete cohort (``incomplete_subjects``), as the 2D one: each subject serves the steps
whose inputs it holds, the cost skips the outputs it lacks, and a complete cohort trains exactly as before."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from MRSynthesisLib.cards import load_model
from MRSynthesisLib.errors import InputError
from test_training3d import log_rows, run
from test_training_data import write_dataset, write_ms_subject
from training.config3d import Train3DConfig
from training.loop import CHECKPOINT
from training.loop3d import SubsetSamplers, train_loss, validate
from training.patches3d import Patch, cut_batch
from training.volumes3d import Volume3D

SHAPE = (12, 12, 12)


def without(folder, *names: str):
    for name in names:
        (folder / f"{name}.nii.gz").unlink()
    return folder


def volume(name: str, value: float, sequences: tuple[str, ...]) -> Volume3D:
    brain = np.zeros(SHAPE, bool)
    brain[3:9, 3:9, 3:9] = True
    return Volume3D(name, {m: np.full(SHAPE, value, np.float32) for m in sequences}, np.zeros(SHAPE, np.float32),
                    brain, "zeros")


def config(**changes) -> Train3DConfig:
    values = {"name": "t", "architecture": "wei2019_fcn3d", "data": ["x"], "inputs": ["T1", "T2"],
              "outputs": ["FLAIR", "T1c"], "optimiser": "sgd", "learning_rate": 0.01, "batch_size": 8,
              "patch_size": 8, "loss": "mse", "epochs": 1, "steps_per_epoch": 1,
              "params": {"filters": 2, "layers": 2}, "input_dropout": True, "incomplete_subjects": True}
    return Train3DConfig.from_dict({**values, **changes})


@pytest.mark.parametrize("architecture", ["wei2019_fcn3d", "klingelhoefer_ae3d"])
def test_a_complete_cohort_trains_bit_identically_with_the_key_on(tmp_path, architecture):
    sources = write_dataset(tmp_path / "data")
    run(sources, tmp_path / "off", architecture=architecture, input_dropout=True, inputs=["T1", "T2", "T1c"])
    run(sources, tmp_path / "on", architecture=architecture, input_dropout=True, inputs=["T1", "T2", "T1c"],
        incomplete_subjects=True)
    off, on = load_file(str(tmp_path / "off" / CHECKPOINT)), load_file(str(tmp_path / "on" / CHECKPOINT))
    assert set(on) == set(off) and all(torch.equal(on[k], off[k]) for k in off)
    assert log_rows(tmp_path / "on") == log_rows(tmp_path / "off")


def test_steps_draw_only_the_volumes_that_hold_their_inputs_and_an_output():
    volumes = [volume("complete", 1.0, ("T1", "T2", "FLAIR", "T1c")), volume("no_t2", 2.0, ("T1", "FLAIR")),
               volume("no_flair", 3.0, ("T1", "T2", "T1c"))]
    samplers = SubsetSamplers(config(), volumes)
    drawn = {subset: {samplers(subset)(k).volume for k in range(200)} for subset in (("T1",), ("T2",), ("T1", "T2"))}
    assert drawn == {("T1",): {0, 1, 2}, ("T2",): {0, 2}, ("T1", "T2"): {0, 2}}
    # the same subset gives the same draws (a pure function of the count, so resuming draws them again)
    assert [samplers(("T2",))(k) for k in range(20)] == [SubsetSamplers(config(), volumes)(("T2",))(k)
                                                        for k in range(20)]


def test_the_cost_leaves_out_the_outputs_a_sample_lacks():
    volumes = [volume("complete", 1.0, ("T1", "T2", "FLAIR", "T1c")), volume("no_t1c", 2.0, ("T1", "T2", "FLAIR"))]
    patches = [Patch(0, (2, 2, 2)), Patch(1, (2, 2, 2)), Patch(1, (3, 3, 3))]
    cfg = config()
    batch = cut_batch(volumes, patches, size=8, margin=cfg.margin, inputs=("T1",), outputs=cfg.outputs,
                      lesion_input=False)
    assert batch.present.tolist() == [[1, 1], [1, 0], [1, 0]]
    assert not batch.targets["T1c"][1:].any() and batch.targets["T1c"][0].all()
    torch.manual_seed(0)
    network = cfg.build_network()
    with torch.no_grad():
        predictions = network(batch.inputs)
        loss = float(train_loss(network, batch, "mse"))
    crop = cfg.margin
    errors = [float(((predictions[m][i, 0, crop:-crop, crop:-crop, crop:-crop] - batch.targets[m][i, 0]) ** 2).mean())
              for i, m in ((0, "FLAIR"), (0, "T1c"), (1, "FLAIR"), (2, "FLAIR"))]  # the four targets held
    assert loss == pytest.approx(np.mean(errors), rel=1e-5)
    with pytest.raises(ValueError, match="no_t1c lack some of the inputs"):
        cut_batch(volumes, patches, size=8, margin=crop, inputs=("T1c",), outputs=["FLAIR"], lesion_input=False)


def test_validation_gives_each_subject_the_inputs_it_holds_and_scores_the_outputs_it_has():
    cfg = config()
    volumes = [volume("complete", 1.0, ("T1", "T2", "FLAIR", "T1c")), volume("no_t2_t1c", 2.0, ("T1", "FLAIR"))]
    torch.manual_seed(0)
    network = cfg.build_network()
    patches = [Patch(0, (2, 2, 2)), Patch(1, (2, 2, 2))]
    figures = validate(network, volumes, patches, cfg, None, torch.device("cpu"))
    crop, expected = cfg.margin, []
    with torch.no_grad():
        for patch, given, held in ((patches[0], ("T1", "T2"), ("FLAIR", "T1c")), (patches[1], ("T1",), ("FLAIR",))):
            batch = cut_batch(volumes, [patch], size=8, margin=crop, inputs=given, outputs=cfg.outputs,
                              lesion_input=False)
            out = network(batch.inputs)
            expected += [(out[m][0, 0, crop:-crop, crop:-crop, crop:-crop] - batch.targets[m][0, 0]).square().flatten()
                         for m in held]
    assert figures["val_mse"] == pytest.approx(float(torch.cat(expected).mean()), rel=1e-5)


def test_an_incomplete_cohort_trains_a_model_whose_card_says_what_each_subject_lacked(tmp_path, capsys):
    write_ms_subject(tmp_path / "ms", "patient01", 1)
    without(write_ms_subject(tmp_path / "ms", "patient02", 2), "T2")
    without(write_ms_subject(tmp_path / "ms", "patient03", 3), "T1POST")
    folder = run([str(tmp_path / "ms")], tmp_path / "run", input_dropout=True, incomplete_subjects=True,
                 outputs=["FLAIR", "T1c"], validation_subjects=["patient03"])
    printed = capsys.readouterr().out
    assert "patient02: " in printed and "without T2" in printed
    card = load_model(folder).card
    subjects = card.training["subjects"]
    assert {s["subject"]: s.get("without") for s in subjects["training"]} == {"patient01": None, "patient02": ["T2"]}
    assert subjects["validation"] == [{"subject": "patient03", "lesion_channel": "none", "without": ["T1c"]}]
    assert np.isfinite(card.metrics["val_mse"]) and set(card.output_intensity) == {"FLAIR", "T1c"}


def test_what_an_incomplete_cohort_cannot_teach_is_refused_by_name(tmp_path):
    write_ms_subject(tmp_path / "ms", "patient01", 1)
    without(write_ms_subject(tmp_path / "ms", "patient02", 2), "T2")
    sources = [str(tmp_path / "ms")]
    with pytest.raises(InputError, match="patient02 has no T2 image;.*\"incomplete_subjects\": true"):
        run(sources, tmp_path / "a", validation_subjects=[])
    with pytest.raises(InputError, match="patient02 has no T2 image; this network takes every input.*input_dropout"):
        run(sources, tmp_path / "b", validation_subjects=[], incomplete_subjects=True)
    without(tmp_path / "ms" / "patient01", "T1POST")
    without(tmp_path / "ms" / "patient02", "T1POST")
    with pytest.raises(InputError, match="no training subject holds the output\\(s\\) T1c"):
        run(sources, tmp_path / "c", validation_subjects=[], incomplete_subjects=True, input_dropout=True,
            outputs=["FLAIR", "T1c"])


def test_input_subsets_no_subject_holds_together_are_named(tmp_path, capsys):
    without(write_ms_subject(tmp_path / "ms", "patient01", 1), "T2")
    without(write_ms_subject(tmp_path / "ms", "patient02", 2), "T1")
    run([str(tmp_path / "ms")], tmp_path / "run", validation_subjects=[], input_dropout=True,
        incomplete_subjects=True)
    assert "warning: no training subject holds the inputs T1+T2 together" in capsys.readouterr().out
