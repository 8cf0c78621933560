"""The Qu et al. data-set builder (python -m training.qu.build_dataset): registration, labels inside
the brain, filters, manifest, reproducibility, and nothing half-written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import make_subject, write_image
from MRSynthesisLib.errors import InputError
from MRSynthesisLib.models.qu_mask_generator import MaskGenerator
from MRSynthesisLib.volume import read_volume
from training.qu import build_dataset as bd
from training.qu import train_generator as tg
from training.qu import train_structure as ts
from training.qu.config import QuConfig
from training.qu.data import load_subject_slices, structure_maps_of
from training.qu.folders import GENERATOR, STRUCTURE, save_folder

SIZE = 16
MODALITIES = ["T1", "T2", "FLAIR"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny structure and generator folders trained for two steps on phantom slices, and a label file."""
    root = tmp_path_factory.mktemp("qu_models")
    subject = make_subject(root / "subject")
    config = QuConfig.from_dict({
        "name": "tiny", "sources": [{"folder": str(subject.folder)}], "out": str(root / "run"),
        "modalities": MODALITIES, "size": SIZE, "slice_range": [0.0, 1.0], "min_brain_fraction": 0.05,
        "batch_size": 2, "structure_steps": 2, "generator_steps": 2, "log_every": 1, "threads": 1,
        "structure_width": 4, "structure_code_channels": 2, "mask_width": 4, "generator_width": 4,
        "generator_code_channels": 4, "discriminator_width": 4, "segmentor_width": 4, "scheme": "per_modality"})
    threads = torch.get_num_threads()
    slices = ts.load_sources(config)
    nets, history = ts.train_structure(config, slices, log=lambda _: None)
    save_folder(root / "run" / "structure", STRUCTURE, config, nets, {"log": history})
    nets, history, _ = tg.train_generator(config, slices, log=lambda _: None)
    save_folder(root / "run" / "generator", GENERATOR, config, nets, {"log": history})
    torch.set_num_threads(threads)
    return root / "run" / "structure", root / "run" / "generator", subject["lesion_mask"]


@pytest.fixture
def disc_brain(monkeypatch):
    """MASK answers a centred disc of radius 0.6 as the brain, whatever the structure map (an untrained
    MASK answers noise): labels near the edge then fall outside and must be redrawn."""
    y, x = np.mgrid[-1:1:SIZE * 1j, -1:1:SIZE * 1j]
    background = torch.from_numpy((np.hypot(y, x) >= 0.6).astype(np.float32))
    monkeypatch.setattr(MaskGenerator, "forward", lambda self, f: background.expand_as(f).clone())
    return background.numpy()


def args(models, output, *extra):
    structure, generator, labels = models
    return bd.parser().parse_args(["--structure-model", str(structure), "--generator-model", str(generator),
                                   "--labels", str(labels), "--subjects", "3", "--seed", "7", "--output", str(output),
                                   "--mae-threshold", "1", "--dice-threshold", "0", *extra])


def test_subjects_are_registered_labels_stay_inside_the_brain_and_the_manifest_says_why(models, disc_brain, tmp_path):
    out = bd.build(args(models, tmp_path / "synthetic", "--slices-per-subject", "2"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 7 and manifest["modalities"] == MODALITIES
    assert manifest["lesion_scheme"] == "per_modality"
    assert manifest["structure_source"] == {"kind": "noise", "structure_model": str(models[0].resolve())}
    assert manifest["label_source"]["files"] == [str(models[2].resolve())] and manifest["label_source"]["slices"] > 0
    filters = manifest["filters"]
    assert filters["accepted"] == 6 and set(filters["rejected"]) == {"structure", "label_outside_brain", "dice"}
    assert filters["rejected"]["label_outside_brain"] > 0  # the disc is small: some drawn labels were refused
    assert filters["candidates"] >= 6
    assert len(manifest["subjects"]) == 3
    for subject in manifest["subjects"]:
        files = subject["files"]
        assert set(files) == {*MODALITIES, "lesion_mask", "brain_mask", "structure_map"}
        volumes = {key: read_volume(out / path) for key, path in files.items()}
        reference = volumes["T1"].geometry
        for volume in volumes.values():  # one grid for every modality and label: registered
            assert reference.differences(volume.geometry) == []
        assert volumes["T1"].array.shape == (2, SIZE, SIZE)
        label, brain = volumes["lesion_mask"].array, volumes["brain_mask"].array
        assert label.any() and set(np.unique(label)) <= {0, 1}
        assert not np.any((label > 0) & (brain == 0))  # never a lesion outside the brain
        np.testing.assert_array_equal(brain[0], 1 - disc_brain)
        for m in MODALITIES:
            image = volumes[m].array
            assert image.min() >= 0 and image.max() <= 1 and not np.any(image[brain == 0])
        assert len(subject["dice"]) == 2 and set(subject["dice"][0]) == set(MODALITIES)


def test_same_seed_same_files_other_seed_other_files(models, disc_brain, tmp_path):
    a = bd.build(args(models, tmp_path / "a"))
    b = bd.build(args(models, tmp_path / "b"))
    c = bd.build(args(models, tmp_path / "c", "--seed", "8"))
    names = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "subject_0000" / "T1.nii.gz").read_bytes() != (c / "subject_0000" / "T1.nii.gz").read_bytes()


def test_existing_output_is_kept_unless_overwrite(models, disc_brain, tmp_path, capsys):
    out = tmp_path / "synthetic"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert bd.main([str(a) for a in _argv(models, out)]) == 2
    assert "already exists" in capsys.readouterr().err and (out / "mine.txt").exists()
    assert bd.main([*_argv(models, out), "--overwrite"]) == 0
    assert not (out / "mine.txt").exists() and (out / "manifest.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["synthetic"]  # no temporary folder left


def _argv(models, output):
    structure, generator, labels = models
    return ["--structure-model", str(structure), "--generator-model", str(generator), "--labels", str(labels),
            "--subjects", "1", "--seed", "0", "--output", str(output), "--mae-threshold", "1", "--dice-threshold", "0"]


def test_an_interrupted_build_leaves_nothing(models, disc_brain, tmp_path, monkeypatch):
    original, calls = bd.Builder.sample, []

    def interrupted(self):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(bd.Builder, "sample", interrupted)
    with pytest.raises(KeyboardInterrupt):
        bd.build(args(models, tmp_path / "synthetic"))
    assert list(tmp_path.iterdir()) == []


def test_filters_that_reject_everything_stop_with_the_counts(models, disc_brain, tmp_path):
    with pytest.raises(InputError, match=r"rejected structure 0, label_outside_brain \d+, dice 5"):
        bd.build(args(models, tmp_path / "x", "--dice-threshold", "1.01", "--max-candidates", "5"))
    with pytest.raises(InputError, match=r"rejected structure 4, label_outside_brain 0, dice 0"):
        bd.build(args(models, tmp_path / "x", "--mae-threshold", "-1", "--max-candidates", "4"))
    assert list(tmp_path.iterdir()) == []


def test_bad_label_files_are_named(models, tmp_path):
    bad = write_image(np.full((4, 6, 5), 3, np.uint8), tmp_path / "three_classes.nii.gz")
    with pytest.raises(InputError, match=r"three_classes\.nii\.gz: lesion labels must be integers in \[0, 1\]"):
        bd.load_label_bank([str(bad)], SIZE, 2)
    empty = write_image(np.zeros((4, 6, 5), np.uint8), tmp_path / "empty.nii.gz")
    with pytest.raises(InputError, match=r"empty\.nii\.gz: holds no lesion voxel"):
        bd.load_label_bank([str(empty)], SIZE, 2)
    with pytest.raises(InputError, match="no such lesion label file"):
        bd.load_label_bank([str(tmp_path / "missing.nii.gz")], SIZE, 2)
    with pytest.raises(InputError, match="no such file"):
        bd.build(args((tmp_path, models[1], models[2]), tmp_path / "out"))


def test_usefulness_command_trains_every_regime_and_writes_its_table(models, disc_brain, tmp_path):
    from training.qu import usefulness

    synthetic = bd.build(args(models, tmp_path / "synthetic"))
    train, test = make_subject(tmp_path / "train", seed=1), make_subject(tmp_path / "test", seed=2)
    output = tmp_path / "results.json"
    argv = ["--train-subject", str(train.folder), "--test-subject", str(test.folder), "--synthetic", str(synthetic),
            "--output", str(output), "--size", str(SIZE), "--steps", "2", "--batch-size", "2", "--seeds", "0",
            "--slice-range", "0", "1"]
    assert usefulness.main(argv) == 0
    assert usefulness.main([*argv[:7], str(tmp_path / "dice.json"), *argv[8:], "--loss", "soft_dice"]) == 0
    assert json.loads((tmp_path / "dice.json").read_text())["loss"] == "soft_dice"
    results = json.loads(output.read_text())
    assert [r["regime"] for r in results["runs"]] == list(usefulness.REGIMES)
    assert results["synthetic_slices"] == 3 and results["test_slices"] > 0
    for row in results["runs"]:
        assert 0 <= row["dice_pooled"] <= 1 and 0 <= row["dice_per_lesion_slice"] <= 1 and row["lesion_slices"] > 0
    assert set(results["mean"]) == set(usefulness.REGIMES)
    assert usefulness.main([*argv[:5], str(tmp_path), *argv[6:]]) == 2  # not a built data set


def test_structure_maps_can_come_from_real_scans(models, tmp_path):
    structure, generator, labels = models
    scan = labels.parent
    argv = ["--structure-from-scans", str(scan), "--generator-model", str(generator), "--labels", str(labels),
            "--subjects", "2", "--seed", "1", "--output", str(tmp_path / "out"), "--mae-threshold", "1",
            "--dice-threshold", "0"]
    out = bd.build(bd.parser().parse_args(argv))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["structure_source"]["kind"] == "real_scans" and manifest["structure_source"]["slices"] > 0
    slices = load_subject_slices(scan, MODALITIES, SIZE, [0.0, 1.0], 0.05, labelled=True)
    m, n, h, w = slices.images.shape
    maps, masks = structure_maps_of(slices.images.reshape(m * n, h, w), np.tile(slices.labels, (m, 1, 1)), 0.5, 4)
    for subject in manifest["subjects"]:
        f = read_volume(out / subject["files"]["structure_map"]).array[0]
        brain = read_volume(out / subject["files"]["brain_mask"]).array[0]
        label = read_volume(out / subject["files"]["lesion_mask"]).array[0]
        # the map and the brain are one real slice's Algorithm 1 and Algorithm 2 outputs
        assert any(np.array_equal(maps[i], f) and np.array_equal(1 - masks[i], brain) for i in range(len(maps)))
        assert label.any() and not np.any((label > 0) & (brain == 0))
    with pytest.raises(SystemExit):
        bd.parser().parse_args([*argv, "--structure-model", str(structure)])


def test_scans_stored_in_another_voxel_order_give_the_same_slices(tmp_path):
    """A lesion mask and a T2 written RAS beside a LAS T1 (the same voxels) were refused as other grids."""
    import SimpleITK as sitk

    subject = make_subject(tmp_path / "s")
    before = load_subject_slices(subject.folder, ["T1", "T2"], 32, [0.0, 1.0], 0.05, labelled=True)
    for key in ("lesion_mask", "T2"):
        sitk.WriteImage(sitk.DICOMOrient(sitk.ReadImage(str(subject[key])), "RAS"), str(subject[key]))
    after = load_subject_slices(subject.folder, ["T1", "T2"], 32, [0.0, 1.0], 0.05, labelled=True)
    np.testing.assert_array_equal(after.images, before.images)
    np.testing.assert_array_equal(after.labels, before.labels)
    assert before.labels.any()
    write_image(subject.arrays["lesion"], subject["lesion_mask"], origin=(5.0, 5.0, 5.0))  # truly elsewhere
    with pytest.raises(InputError, match="is not on the grid of"):
        load_subject_slices(subject.folder, ["T1", "T2"], 32, [0.0, 1.0], 0.05, labelled=True)
