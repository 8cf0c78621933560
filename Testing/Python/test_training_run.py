"""End-to-end tests of training on phantoms: model folder + CLI, determinism, resume, torchrun/DDP.

One tiny reference run (module fixture) is compared against reruns: bit-identical for the
same seed, bit-identical after an interrupted run is resumed, and equal to tolerance when
two processes share the global batch.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from safetensors.torch import load_file

import training.loop
import training.validate
from MRSynthesisLib.cards import load_model
from MRSynthesisLib.cli import main as cli_main
from MRSynthesisLib.errors import InputError
from test_training_data import write_bids_session, write_dataset, write_ms_subject
from training.config import TrainConfig
from training.experiments.last_weights import write_last_weights
from training.loop import BEST, CHECKPOINT, METRICS, DeadOutputError, train
from training.run_folder import TENSORBOARD

REPO = Path(__file__).resolve().parents[2]
TIMING_COLUMNS = ("epoch_seconds", "seconds")


def tiny(sources: list[str], out: Path, **changes) -> dict:
    return {"name": "tiny", "data": sources, "inputs": ["T1", "T2", "FLAIR"], "outputs": ["T2", "FLAIR"],
            "out": str(out), "validation_subjects": ["patient02"], "latent_channels": 4, "filters": [4, 8, 8],
            "batch_size": 4, "crop_size": 16, "epochs": 2, "steps_per_epoch": 2, "val_slice_stride": 3,
            "val_loss_batches": 1, "precision": "fp32", "threads": 1, "seed": 3, **changes}


def run(sources: list[str], out: Path, resume: bool = False, **changes) -> Path | None:
    return train(TrainConfig.from_dict(tiny(sources, out, **changes)), resume=resume, command="test")


def tensors(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / CHECKPOINT))


def log_rows(out: Path) -> list[dict[str, str]]:
    with open(out / METRICS, newline="") as handle:
        return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in csv.DictReader(handle)]


def tensorboard_scalars(out: Path) -> dict[str, list[tuple[int, float | None]]]:
    """What TensorBoard shows of a run: (step, value) per tag, in the order it reads them (timings' values left out)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / TENSORBOARD), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, None if tag.split("/")[-1] in TIMING_COLUMNS else e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[list[str], Path, Path]:
    root = tmp_path_factory.mktemp("data")
    sources = write_dataset(root)
    out = root / "reference"
    folder = run(sources, out)
    return sources, out, folder


def test_a_recipe_spacing_puts_every_subject_on_it_and_the_card_says_so(tmp_path, capsys):
    sources = write_dataset(tmp_path)
    folder = run(sources, tmp_path / "respaced", spacing_mm=[1.25, 1.25, 2.0], epochs=1)
    said = capsys.readouterr().out
    assert load_model(folder).card.spacing_mm == pytest.approx([1.25, 1.25, 1.0])  # a 2D model keeps its slices
    for name in ("patient01", "patient02", "BraTS-X-0003"):
        assert f"  {name}: " in said
    assert said.count("resampled from 1 x 1 x 1 mm to 1.25 x 1.25 x 1 mm") == 3 and "warning" not in said
    # coarser voxels than the recipe's are kept (resampled up, a coarse case taught the network its blur)
    kept = run(sources, tmp_path / "kept", spacing_mm=[0.8, 0.8, 1.0], epochs=1)
    assert load_model(kept).card.spacing_mm == pytest.approx([1.0, 1.0, 1.0])
    assert "resampled from" not in capsys.readouterr().out


def test_a_bids_data_set_trains_with_a_patient_held_out(tmp_path, capsys):
    for subject, session, seed in (("01", "1", 1), ("01", "2", 2), ("02", None, 3)):
        write_bids_session(tmp_path / "bids", subject, session, seed)
    folder = run([str(tmp_path / "bids")], tmp_path / "run", epochs=1, validation_subjects=["sub-01"])
    assert "validation subjects: sub-01_ses-1, sub-01_ses-2" in capsys.readouterr().out
    training = load_model(folder).card.training["subjects"]
    assert [s["subject"] for s in training["training"]] == ["sub-02"]
    assert [s["subject"] for s in training["validation"]] == ["sub-01_ses-1", "sub-01_ses-2"]


def test_run_writes_a_model_folder_that_the_cli_runs(reference, tmp_path):
    sources, out, folder = reference
    assert folder == out / "tiny" and (out / BEST).is_file() and len(log_rows(out)) == 2
    model = load_model(folder)
    card = model.card
    assert (card.inputs, card.outputs, card.lesion_input, card.missing_inputs) == (
        ["T1", "T2", "FLAIR"], ["T2", "FLAIR"], True, "any_subset")
    assert card.normalisation["scheme"] == "mean_in_brain" and set(card.output_intensity) == {"T2", "FLAIR"}
    assert card.training["recipe"]["config"]["seed"] == 3
    assert card.spacing_mm == [1.0, 1.0, 1.0]  # the training files' voxels (test_training_data: anisotropic ones)
    assert [s["lesion_channel"] for s in card.training["subjects"]["training"]] == ["mask", "flair"]
    assert card.metrics["validation_subjects"] == ["patient02"] and "mse[T1->FLAIR]" in card.metrics

    subject = Path(sources[0]) / "patient02"
    code = cli_main(["synthesize", "--model", str(folder), "--input", f"T1={subject / 'T1.nii.gz'}",
                     "--input", f"t2w={subject / 'T2.nii.gz'}", "--lesion-mask", str(subject / "lesion_mask.nii.gz"),
                     "--out", str(tmp_path / "synth"), "--progress", "none"])
    assert code == 0
    result = sitk.ReadImage(str(tmp_path / "synth" / "FLAIR_synthetic.nii.gz"))
    source = sitk.ReadImage(str(subject / "T1.nii.gz"))
    assert result.GetSize() == source.GetSize() and result.GetDirection() == source.GetDirection()
    array = sitk.GetArrayFromImage(result)
    assert np.isfinite(array).all() and array.max() > 0


def test_same_seed_gives_identical_runs(reference, tmp_path):
    sources, out, _ = reference
    run(sources, tmp_path / "again")
    first, second = tensors(out), tensors(tmp_path / "again")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert log_rows(out) == log_rows(tmp_path / "again")
    run(sources, tmp_path / "other", seed=4)
    other = tensors(tmp_path / "other")
    assert not torch.equal(first["model.decoders.FLAIR.out.weight"], other["model.decoders.FLAIR.out.weight"])


def test_resume_after_an_interruption_equals_an_uninterrupted_run(reference, tmp_path, monkeypatch):
    sources, out, _ = reference
    build = training.loop.build_batch
    calls = []

    def crash_in_second_epoch(*args, **kwargs):
        calls.append(kwargs["step"])
        if kwargs["step"] == 3:  # second step of epoch 2: epoch 1 is checkpointed, epoch 2 half done
            raise KeyboardInterrupt("simulated kill")
        return build(*args, **kwargs)

    monkeypatch.setattr(training.loop, "build_batch", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        run(sources, tmp_path / "cut")
    assert calls == [0, 1, 2, 3] and len(log_rows(tmp_path / "cut")) == 1
    cut_short = tensorboard_scalars(tmp_path / "cut")
    monkeypatch.setattr(training.loop, "build_batch", build)
    with pytest.raises(ValueError, match="--resume"):
        run(sources, tmp_path / "cut")
    with pytest.raises(ValueError, match="learning_rate"):
        run(sources, tmp_path / "cut", resume=True, learning_rate=0.5)
    run(sources, tmp_path / "cut", resume=True)
    whole, resumed = tensors(out), tensors(tmp_path / "cut")
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert log_rows(out) == log_rows(tmp_path / "cut")
    assert cut_short["train/total"][-1][0] == 2  # the killed epoch's first step: TensorBoard shows it once, as the CSV
    assert tensorboard_scalars(tmp_path / "cut") == tensorboard_scalars(out)


def test_resume_after_a_kill_between_the_last_checkpoint_and_its_log_rewrites_the_log(reference, tmp_path,
                                                                                      monkeypatch, capsys):
    """The last epoch's checkpoint was written, its metrics.csv row and the model folder not, and a checkpoint
    write of before left its temporary: the resumed run has no epoch left to write the log with, so it is
    rewritten from the checkpoint on resuming, and the torn temporary goes."""
    sources, out, _ = reference
    write = training.loop.write_csv

    def killed_after_the_last_checkpoint(path, rows):
        if len(rows) == 2:
            raise KeyboardInterrupt("simulated kill")
        write(path, rows)

    monkeypatch.setattr(training.loop, "write_csv", killed_after_the_last_checkpoint)
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        run(sources, cut)
    torn = cut / ".checkpoint.safetensors.k3j2x9.partial"
    torn.write_bytes(b"half a checkpoint")
    assert len(log_rows(cut)) == 1 and not (cut / "tiny").exists()
    monkeypatch.setattr(training.loop, "write_csv", write)
    assert run(sources, cut, resume=True) == cut / "tiny"
    assert log_rows(cut) == log_rows(out) and not torn.exists()
    assert f"removed what a killed run left half-written: {torn.name}" in capsys.readouterr().out
    assert tensorboard_scalars(cut) == tensorboard_scalars(out)  # the lost row is in TensorBoard too


def test_monitor_val_loss_keeps_the_epoch_of_the_lowest_validation_cost(reference, tmp_path, monkeypatch):
    """``monitor: "val_loss"`` watches the validation crops' cost (the log's val_total), weighted as training
    weights it; it used to end the first epoch with a KeyError."""
    sources, _, _ = reference
    build, weights = training.validate.build_batch, []

    def recording(*args, **kwargs):
        weights.append(kwargs["lesion_weight"])
        return build(*args, **kwargs)

    monkeypatch.setattr(training.validate, "build_batch", recording)
    folder = run(sources, tmp_path / "run", monitor="val_loss", epochs=3, lesion_loss_weight=5.0)
    rows = log_rows(tmp_path / "run")
    best = min(rows, key=lambda r: float(r["val_total"]))
    assert load_model(folder).card.metrics["best_epoch"] == int(best["epoch"])
    assert weights == [5.0] * 3


def test_resume_refuses_data_that_changed_under_the_run(tmp_path):
    """The checkpoint records the split and each subject's files: an added subject, or other files for
    one, would continue the run on other data (and can move a validation subject into training)."""
    sources = write_dataset(tmp_path / "data")
    out = tmp_path / "run"
    run(sources, out, epochs=1)
    write_ms_subject(tmp_path / "data" / "ms", "patient04", 4)
    with pytest.raises(InputError, match=r"training subjects added: \['patient04'\]"):
        run(sources, out, resume=True)
    shutil.rmtree(tmp_path / "data" / "ms" / "patient04")
    (tmp_path / "data" / "ms" / "patient01" / "lesion_mask.nii.gz").unlink()
    with pytest.raises(InputError, match=r"other files for training subjects \['patient01'\]"):
        run(sources, out, resume=True)
    write_ms_subject(tmp_path / "data" / "ms", "patient01", 1)  # the same files again
    assert run(sources, out, resume=True) is not None
    assert len(log_rows(out)) == 2


def test_one_scan_under_two_subjects_names_is_refused_before_training(tmp_path):
    """A data set listed twice, or BraTS releases that renamed the same cases: the copy, re-saved in another
    format, would be trained on and validated on. Found by its voxels, whatever the file."""
    sources = write_dataset(tmp_path / "data")
    copy = tmp_path / "data" / "ms" / "patient09"
    shutil.copytree(tmp_path / "data" / "ms" / "patient01", copy)
    for name in ("T1", "T2", "FLAIR"):
        path = copy / f"{name}.nii.gz"
        sitk.WriteImage(sitk.ReadImage(str(path)), str(copy / f"{name}.nrrd"))  # another file, the same voxels
        path.unlink()
    with pytest.raises(InputError) as error:
        run(sources, tmp_path / "run", validation_subjects=["patient09"])
    message = str(error.value)
    assert f"{copy / 'T1.nrrd'} (subject patient09's T1) holds the same voxels as " in message
    assert "(subject patient01's T1): the same scan under two names would be trained on and validated on" in message
    assert not (tmp_path / "run" / CHECKPOINT).exists()


def test_an_anneal_resumed_from_a_constant_run_equals_the_annealed_run(reference, tmp_path):
    """A run whose last epoch is annealed equals the constant-rate run resumed with the anneal
    added (how the LOSO anneal runs were made), and differs from the same epochs at a constant rate."""
    sources, out, _ = reference
    run(sources, tmp_path / "annealed", epochs=3, lr_decay_epochs=1)
    shutil.copytree(out, tmp_path / "resumed", ignore=shutil.ignore_patterns("tiny"))
    run(sources, tmp_path / "resumed", resume=True, epochs=3, lr_decay_epochs=1, name="tiny-annealed")
    annealed, resumed = tensors(tmp_path / "annealed"), tensors(tmp_path / "resumed")
    assert all(torch.equal(annealed[k], resumed[k]) for k in annealed)
    assert [float(r["learning_rate"]) for r in log_rows(tmp_path / "annealed")] == pytest.approx([1e-3, 1e-3, 1e-5])
    assert (tmp_path / "resumed" / "tiny-annealed").is_dir()
    run(sources, tmp_path / "constant", epochs=3)
    key = "model.decoders.FLAIR.out.weight"
    assert not torch.equal(annealed[key], tensors(tmp_path / "constant")[key])


def test_weight_averaging_delivers_the_mean_of_the_window_and_changes_no_step(reference, tmp_path):
    """average_epochs 2 of 3 one-step epochs: the model folder is the mean of the weights after steps
    1 and 2, the checkpoint's trained weights are the plain run's bit for bit, last_weights exports
    those, and --resume adds averaging to a finished plain run (how the LOSO average runs were made)."""
    sources, _, _ = reference
    common = {"steps_per_epoch": 1, "validation_subjects": []}
    run(sources, tmp_path / "plain2", epochs=2, **common)
    run(sources, tmp_path / "plain3", epochs=3, **common)
    folder = run(sources, tmp_path / "avg", epochs=3, average_epochs=2, **common)
    plain2, plain3, avg = (tensors(tmp_path / n) for n in ("plain2", "plain3", "avg"))
    trained = [k for k in plain3 if k.startswith("model.")]
    assert all(torch.equal(plain3[k], avg[k]) for k in trained)
    assert int(avg["average.n_averaged"]) == 2
    assert [r["averaged_steps"] for r in log_rows(tmp_path / "avg")] == ["0", "1", "2"]
    assert load_model(folder).card.metrics["averaged_steps"] == 2
    delivered = load_file(str(folder / "model.safetensors"))
    key = "decoders.FLAIR.out.weight"
    assert not torch.equal(delivered[key], plain3[f"model.{key}"])
    for k, v in delivered.items():
        torch.testing.assert_close(v, (plain2[f"model.{k}"] + plain3[f"model.{k}"]) / 2, rtol=1e-5, atol=1e-7)

    last = write_last_weights(tmp_path / "avg")
    assert last == tmp_path / "avg" / "tiny-last" and load_model(last).card.name == "tiny-last"
    exported = load_file(str(last / "model.safetensors"))
    assert all(torch.equal(exported[k], plain3[f"model.{k}"]) for k in exported)

    shutil.copytree(tmp_path / "plain2", tmp_path / "added", ignore=shutil.ignore_patterns("tiny"))
    added = run(sources, tmp_path / "added", resume=True, epochs=3, average_epochs=1, **common)
    assert all(torch.equal(v, plain3[f"model.{k}"]) for k, v in load_file(str(added / "model.safetensors")).items())
    with pytest.raises(ValueError, match="weight average"):
        run(sources, tmp_path / "avg", resume=True, epochs=3, average_epochs=1, **common)


def test_resume_inside_the_averaging_window_equals_an_uninterrupted_run(reference, tmp_path, monkeypatch):
    sources, _, _ = reference
    common = {"steps_per_epoch": 1, "epochs": 3, "average_epochs": 2, "validation_subjects": []}
    run(sources, tmp_path / "whole", **common)
    build = training.loop.build_batch

    def crash_at_step_2(*args, **kwargs):
        if kwargs["step"] == 2:  # the average holds step 1's weights only
            raise KeyboardInterrupt("simulated kill")
        return build(*args, **kwargs)

    monkeypatch.setattr(training.loop, "build_batch", crash_at_step_2)
    with pytest.raises(KeyboardInterrupt):
        run(sources, tmp_path / "cut", **common)
    monkeypatch.setattr(training.loop, "build_batch", build)
    run(sources, tmp_path / "cut", resume=True, **common)
    whole, resumed = tensors(tmp_path / "whole"), tensors(tmp_path / "cut")
    assert any(k.startswith("average.") for k in whole)
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)


@pytest.mark.parametrize("kind", ["relu", "pass_through"])
def test_a_run_whose_output_dies_stops_unless_gradients_pass_through(reference, tmp_path, monkeypatch, capsys, kind):
    """An all-zero output over a whole epoch stops a 'relu' run after that epoch (checkpoint kept);
    with 'pass_through' the run goes on, warns, and the output comes back to life."""
    sources, _, _ = reference
    build = training.loop.build_network

    def dead_flair(config):
        model = build(config)
        with torch.no_grad():
            model.decoders["FLAIR"].out.bias.fill_(-3.0)
        return model

    monkeypatch.setattr(training.loop, "build_network", dead_flair)
    out = tmp_path / kind
    if kind == "relu":
        with pytest.raises(DeadOutputError, match=r"FLAIR.*epoch 1.*pass_through"):
            run(sources, out, output_gradient=kind, learning_rate=0.01)
        rows = log_rows(out)
        assert len(rows) == 1 and float(rows[0]["train_active[FLAIR]"]) == 0.0 and (out / CHECKPOINT).is_file()
        assert float(rows[0]["train_active[T2]"]) > 0
    else:
        run(sources, out, output_gradient=kind, learning_rate=0.01, epochs=3)
        rows = log_rows(out)
        assert float(rows[0]["train_active[FLAIR]"]) == 0.0 and float(rows[-1]["train_active[FLAIR]"]) > 0
        assert "FLAIR were 0 at every pixel" in capsys.readouterr().err


def torchrun_two_processes(config: Path) -> None:
    """``python -m training.train --config`` under torchrun, 2 CPU processes (gloo), one thread each."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    completed = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                                "-m", "training.train", "--config", str(config)],
                               cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "x 2 process(es)" in completed.stdout


def test_torchrun_two_processes_equal_one(reference, tmp_path):
    """torchrun, 2 CPU processes (gloo), each running half of every global batch: the same weights."""
    sources, out, _ = reference
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny(sources, tmp_path / "ddp")))
    torchrun_two_processes(config)
    single, double = tensors(out), tensors(tmp_path / "ddp")
    weights = [k for k in single if k.startswith("model.")]
    assert weights and all(torch.allclose(single[k], double[k], rtol=1e-4, atol=1e-6) for k in weights)


def test_torchrun_two_processes_equal_one_with_lesion_pixels_weighted_and_ignored(tmp_path):
    """The bundled recipe's cost: lesion pixels weigh 5, pixels near an unlabelled subject's bright spots 0. Each
    rank's share holds a different total weight, so each divides by the global batch's: the same weights."""
    sources = write_dataset(tmp_path)
    changes = dict(epochs=1, lesion_loss_weight=5.0, lesion_fallback="ignore")
    run(sources, tmp_path / "one", **changes)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny(sources, tmp_path / "ddp", **changes)))
    torchrun_two_processes(config)
    single, double = tensors(tmp_path / "one"), tensors(tmp_path / "ddp")
    weights = [k for k in single if k.startswith("model.")]
    assert weights and all(torch.allclose(single[k], double[k], rtol=1e-4, atol=1e-6) for k in weights)
