"""Training on an incomplete cohort (``incomplete_subjects``): subjects that lack some sequences.

Each subject serves the steps whose inputs it holds, the cost skips the outputs it lacks, and a
complete cohort trains exactly as it did without the option.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from MRSynthesisLib.cards import load_model
from MRSynthesisLib.errors import InputError
from MRSynthesisLib.models.chartsias import ChartsiasMIMO
from MRSynthesisLib.models.losses_chartsias import chartsias_loss
from test_training_data import write_dataset, write_ms_subject
from test_training_run import run, tensors, tiny, torchrun_two_processes
from training.batches import TRAIN_STREAM, all_subsets, build_batch, trainable_subsets
from training.datasets import discover, load_subject

LOAD = dict(lesion_input=True, lesion_fallback="zeros", flair_z=3.0, min_voxels=5, min_slice_brain_fraction=0.05)


def without(folder: Path, *files: str) -> Path:
    for name in files:
        (folder / f"{name}.nii.gz").unlink()
    return folder


def subjects_of(root: Path, inputs=("T1", "T2"), outputs=("T2", "FLAIR"), **changes):
    return [load_subject(f, list(inputs), list(outputs), incomplete=True, **{**LOAD, **changes})[0]
            for f in discover([str(root)])]


def test_a_subject_lacking_a_sequence_is_refused_unless_the_recipe_allows_it(tmp_path):
    (files,) = discover([str(without(write_ms_subject(tmp_path, "p1", 1), "FLAIR").parent)])
    with pytest.raises(InputError, match=r"p1 has no FLAIR image.*\"incomplete_subjects\": true"):
        load_subject(files, ["T1", "T2"], ["FLAIR"], **LOAD)
    subject, raw, brain = load_subject(files, ["T1", "T2"], ["T2", "FLAIR"], incomplete=True, **LOAD)
    assert set(subject.images) == {"T1", "T2"} and set(raw) == {"T2"}
    # its brain mask comes from the inputs it holds, as inference takes it from the inputs given
    assert brain.sum() > 0 and subject.brain.sum() == brain.sum()


def test_a_subject_that_can_serve_no_step_is_refused_by_name(tmp_path):
    write_ms_subject(tmp_path, "p1", 1)
    without(tmp_path / "p1", "T1", "T2")
    (files,) = discover([str(tmp_path)])
    with pytest.raises(InputError, match="p1 has none of the inputs T1, T2"):
        load_subject(files, ["T1", "T2"], ["FLAIR"], incomplete=True, **LOAD)
    with pytest.raises(InputError, match="p1 has none of the outputs T2"):
        load_subject(files, ["FLAIR"], ["T2"], incomplete=True, **LOAD)
    # a lesion channel derived from FLAIR needs the FLAIR
    write_ms_subject(tmp_path / "b", "p2", 2)
    without(tmp_path / "b" / "p2", "FLAIR", "lesion_mask")
    (files,) = discover([str(tmp_path / "b")])
    with pytest.raises(InputError, match="p2 has neither a lesion mask nor a FLAIR"):
        load_subject(files, ["T1"], ["T2", "FLAIR"], incomplete=True, **{**LOAD, "lesion_fallback": "flair"})


def test_steps_draw_the_subsets_and_subjects_that_can_serve_them(tmp_path):
    write_ms_subject(tmp_path, "complete", 1)
    without(write_ms_subject(tmp_path, "no_t2", 2), "T2")
    complete, no_t2 = subjects_of(tmp_path)
    assert trainable_subsets([complete, no_t2], ("T1", "T2"), ("T2", "FLAIR"), "random") == all_subsets(("T1", "T2"))
    assert trainable_subsets([no_t2], ("T1", "T2"), ("T2", "FLAIR"), "random") == [("T1",)]
    with pytest.raises(InputError, match="holds all of the inputs T1, T2"):
        trainable_subsets([no_t2], ("T1", "T2"), ("T2", "FLAIR"), "all")

    draw = dict(seed=4, stream=TRAIN_STREAM, step=0, outputs=("T2", "FLAIR"), crop_size=16, lesion_input=True,
                augment=None)
    mixed = build_batch([complete, no_t2], range(16), subset=("T1",), **draw)
    held = mixed.present["T2"].bool()
    assert 0 < held.sum() < 16 and mixed.present["FLAIR"].all()  # both subjects drawn; only one has a T2
    assert not mixed.references["T2"][~held].any() and mixed.references["T2"][held].any()
    # a step given T2 draws only the subject that has it: every reference is real
    only = build_batch([complete, no_t2], range(16), subset=("T2",), **draw)
    assert only.present is None
    assert torch.equal(only.inputs["T2"], build_batch([complete], range(16), subset=("T2",), **draw).inputs["T2"])


def test_the_cost_does_not_see_an_output_a_sample_lacks(tmp_path):
    write_ms_subject(tmp_path, "complete", 1)
    without(write_ms_subject(tmp_path, "no_t2", 2), "T2")
    batch = build_batch(subjects_of(tmp_path), range(8), seed=1, stream=TRAIN_STREAM, step=0, subset=("T1",),
                        outputs=("T2", "FLAIR"), crop_size=16, lesion_input=True, augment=None)
    lacking = batch.present["T2"] == 0
    assert lacking.any() and not lacking.all()
    model = ChartsiasMIMO(("T1", "T2"), ("T2", "FLAIR"), lesion_input=True, latent_channels=2, filters=(4, 4, 4))
    changed = dict(batch.references, T2=torch.where(lacking.view(-1, 1, 1, 1), 100.0, batch.references["T2"]))
    cost = lambda refs, present: chartsias_loss(model, batch.inputs, refs, batch.lesion,  # noqa: E731
                                                present=present)[0]
    assert torch.equal(cost(changed, batch.present), cost(batch.references, batch.present))
    assert cost(changed, None) > cost(batch.references, None)

    # an output no sample of the batch holds is not counted in the mean over outputs, and its decoder
    # still gets a gradient (0), so every rank all-reduces the same gradients
    flair_only = {"T2": torch.zeros(8), "FLAIR": torch.ones(8)}
    model.zero_grad()
    total, parts = chartsias_loss(model, batch.inputs, batch.references, batch.lesion, present=flair_only)
    total.backward()
    alone = chartsias_loss(model, batch.inputs, {"FLAIR": batch.references["FLAIR"]}, batch.lesion)[1]
    assert parts["c1"] == pytest.approx(alone["c1"]) and parts["c3"] == pytest.approx(alone["c3"])
    assert all(p.grad is not None and not p.grad.any() for p in model.decoders["T2"].parameters())
    with pytest.raises(ValueError, match="present must give each of the references"):
        chartsias_loss(model, batch.inputs, batch.references, batch.lesion, present={"FLAIR": torch.ones(8)})


def test_a_complete_cohort_trains_the_same_with_the_option_on(tmp_path):
    sources = write_dataset(tmp_path)
    run(sources, tmp_path / "off", epochs=1)
    run(sources, tmp_path / "on", epochs=1, incomplete_subjects=True)
    off, on = tensors(tmp_path / "off"), tensors(tmp_path / "on")
    assert off.keys() == on.keys() and all(torch.equal(off[k], on[k]) for k in off)


def test_an_incomplete_cohort_trains_a_model_whose_card_names_what_each_subject_lacked(tmp_path, capsys):
    sources = write_dataset(tmp_path)
    without(tmp_path / "ms" / "patient01", "FLAIR")
    without(tmp_path / "brats" / "BraTS-X-0003", "BraTS-X-0003-t2w")
    with pytest.raises(InputError, match="patient01 has no FLAIR image"):
        run(sources, tmp_path / "refused", epochs=1)
    folder = run(sources, tmp_path / "run", epochs=2, incomplete_subjects=True)
    said = capsys.readouterr().out
    assert "patient01: " in said and "without FLAIR" in said and "without T2" in said
    # patient01 (no FLAIR) and the BraTS case (no T2) train; patient02 validates: T2 and FLAIR never meet
    assert "warning: no training subject holds the inputs T2+FLAIR; T1+T2+FLAIR together" in said
    card = load_model(folder).card
    assert {s["subject"]: s.get("without") for s in card.training["subjects"]["training"]} == {
        "patient01": ["FLAIR"], "BraTS-X-0003": ["T2"]}
    assert set(card.output_intensity) == {"T2", "FLAIR"}  # each from the subjects that hold it
    rows = (tmp_path / "run" / "metrics.csv").read_text()
    assert "ssim[T1->FLAIR]" in rows and "nan" not in rows.lower()
    assert json.loads((folder / "card.json").read_text())["training"]["recipe"]["config"]["incomplete_subjects"]


def test_a_sequence_no_training_subject_holds_is_refused(tmp_path):
    sources = write_dataset(tmp_path)
    without(tmp_path / "ms" / "patient01", "FLAIR")
    without(tmp_path / "brats" / "BraTS-X-0003", "BraTS-X-0003-t2f")
    with pytest.raises(InputError, match="no training subject holds the output.s. FLAIR"):
        run(sources, tmp_path / "run", epochs=1, incomplete_subjects=True, lesion_fallback="zeros")


def test_two_processes_train_an_incomplete_cohort_as_one_does(tmp_path):
    """Each rank decodes every output, held or not, so both all-reduce the same gradients and cost parts (a rank
    whose share lacked an output would otherwise wait on a different list); each divides by the global batch's
    count of the samples holding an output, so the weights are the one-process run's."""
    sources = write_dataset(tmp_path)
    without(tmp_path / "ms" / "patient01", "FLAIR")
    without(tmp_path / "brats" / "BraTS-X-0003", "BraTS-X-0003-t2w")
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny(sources, tmp_path / "ddp", epochs=1, incomplete_subjects=True)))
    torchrun_two_processes(config)
    card = load_model(tmp_path / "ddp" / "tiny").card
    assert {s["subject"]: s.get("without") for s in card.training["subjects"]["training"]} == {
        "patient01": ["FLAIR"], "BraTS-X-0003": ["T2"]}
    run(sources, tmp_path / "one", epochs=1, incomplete_subjects=True)
    single, double = tensors(tmp_path / "one"), tensors(tmp_path / "ddp")
    weights = [k for k in single if k.startswith("model.")]
    assert weights and all(torch.allclose(single[k], double[k], rtol=1e-4, atol=1e-6) for k in weights)
