"""Tests of the training data side: discovery, split, preprocessing, crops, lesions, checkpoints.

Phantoms (a few kilobytes of NIfTI written to tmp_path) stand in for real scans; the
helpers here also serve test_training_run.py.
"""

from __future__ import annotations

import json
import math
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage as ndi

from MRSynthesisLib.errors import InputError
from MRSynthesisLib.models.chartsias import ChartsiasMIMO
from MRSynthesisLib.models.losses_chartsias import chartsias_loss
from MRSynthesisLib.preprocessing import NormalisationSpec, foreground_mask, normalise
from training.augment import Geometry2D, ThickSlices, crop, draw_thick_slices, thick_slice, thick_slice_operator
from training.batches import TRAIN_STREAM, all_subsets, build_batch, step_subset
from training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from training.config import AugmentConfig, TrainConfig
from training.datasets import discover, load_subject, split_subjects
from training.lesions import flair_hyperintensity_mask

SHAPE = (12, 28, 24)  # (z, y, x)
# tissue -> intensity per modality: background, grey matter, white matter, CSF, lesion
CONTRASTS = {"T1": (0, 0.7, 1.0, 0.2, 0.5), "T1c": (0, 0.75, 1.0, 0.25, 0.9), "T2": (0, 0.8, 0.5, 1.5, 1.2),
             "FLAIR": (0, 0.8, 0.6, 0.1, 1.8)}
LPS = (1, 0, 0, 0, 1, 0, 0, 0, 1)
LAS = (1, 0, 0, 0, -1, 0, 0, 0, 1)


def tissue_map(seed: int, lesion: bool = True) -> np.ndarray:
    """Labels 0-4 (background, GM, WM, CSF, lesion) of an ellipsoidal phantom head."""
    z, y, x = np.indices(SHAPE).astype(float)
    cz, cy, cx = (np.array(SHAPE) - 1) / 2 + np.random.default_rng(seed).uniform(-1, 1, 3)
    r = ((z - cz) / 5.5) ** 2 + ((y - cy) / 12) ** 2 + ((x - cx) / 10) ** 2
    labels = np.where(r < 1, 1, 0)
    labels[r < 0.6] = 2
    labels[((z - cz) / 2) ** 2 + ((y - cy) / 3) ** 2 + ((x - cx) / 2) ** 2 < 1] = 3
    if lesion:
        labels[((z - cz) / 2) ** 2 + ((y - cy + 5) / 2) ** 2 + ((x - cx - 4) / 2) ** 2 < 1] = 4
    return labels


def write(array: np.ndarray, path: Path, direction=LPS) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def images_of(labels: np.ndarray, seed: int, scale: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {m: (np.asarray(c)[labels] * scale * (1 + 0.05 * rng.standard_normal(SHAPE)) * (labels > 0))
            for m, c in CONTRASTS.items()}


def write_ms_subject(root: Path, name: str, seed: int, lesion: bool = True) -> Path:
    """A subject in the shared MS naming: T1, T1POST, T2, FLAIR, lesion_mask (float32, LAS)."""
    labels = tissue_map(seed, lesion)
    files = {"T1": "T1", "T1c": "T1POST", "T2": "T2", "FLAIR": "FLAIR"}
    for m, image in images_of(labels, seed, 1.0).items():
        write(image.astype(np.float32), root / name / f"{files[m]}.nii.gz", LAS)
    write((labels == 4).astype(np.uint8), root / name / "lesion_mask.nii.gz", LAS)
    return root / name


def write_brats_subject(root: Path, name: str, seed: int, prefixed: bool = True) -> Path:
    """A subject in BraTS naming (``<case>-t1n.nii.gz`` or ``t1n.nii.gz``), int16, LPS, no lesion label."""
    labels = tissue_map(seed)
    files = {"T1": "t1n", "T1c": "t1c", "T2": "t2w", "FLAIR": "t2f"}
    for m, image in images_of(labels, seed, 800.0).items():
        stem = f"{name}-{files[m]}" if prefixed else files[m]
        write(image.astype(np.int16), root / name / f"{stem}.nii.gz", LPS)
    return root / name


def write_dataset(root: Path) -> list[str]:
    """Two MS-named subjects (one lesion-free) and one BraTS-named subject: the sources of a config."""
    write_ms_subject(root / "ms", "patient01", 1)
    write_ms_subject(root / "ms", "patient02", 2, lesion=False)
    write_brats_subject(root / "brats", "BraTS-X-0003", 3)
    return [str(root / "ms"), str(root / "brats")]


def test_discovery_of_brats_layouts(tmp_path):
    write_brats_subject(tmp_path, "BraTS-GLI-0001", 1)
    write_brats_subject(tmp_path, "case2", 2, prefixed=False)
    subjects = {s.subject: s for s in discover([str(tmp_path)])}
    assert sorted(subjects) == ["BraTS-GLI-0001", "case2"]
    assert {m: p.name for m, p in subjects["BraTS-GLI-0001"].images.items()} == {
        "T1": "BraTS-GLI-0001-t1n.nii.gz", "T1c": "BraTS-GLI-0001-t1c.nii.gz",
        "T2": "BraTS-GLI-0001-t2w.nii.gz", "FLAIR": "BraTS-GLI-0001-t2f.nii.gz"}
    assert subjects["case2"].images["FLAIR"].name == "t2f.nii.gz"
    assert all(s.lesion is None for s in subjects.values())


def test_a_folder_with_dwi_and_its_adc_map_is_read_with_the_dwi(tmp_path):
    """UCSF-PDGM and ISLES 2022 keep the ADC map beside the DWI; it is not a DWI (its contrast is near inverse),
    and taking it for one refused the whole folder as holding two DWI images."""
    write_ms_subject(tmp_path / "ms", "case1", 1)
    folder = tmp_path / "ms" / "case1"
    for name in ("case1_DWI.nii.gz", "case1_ADC.nii.gz"):
        shutil.copy(folder / "T2.nii.gz", folder / name)
    (subject,) = discover([str(tmp_path / "ms")])
    assert subject.images["DWI"].name == "case1_DWI.nii.gz" and "ADC" not in str(sorted(subject.images.values()))


def test_discovery_of_ms_layout(tmp_path):
    write_ms_subject(tmp_path / "ms", "patient07", 1)
    (subject,) = discover([str(tmp_path / "ms")])
    assert subject.subject == "patient07"
    assert {m: p.name for m, p in subject.images.items()} == {
        "T1": "T1.nii.gz", "T1c": "T1POST.nii.gz", "T2": "T2.nii.gz", "FLAIR": "FLAIR.nii.gz"}
    assert subject.lesion.name == "lesion_mask.nii.gz"


def test_discovery_of_csv_manifest(tmp_path):
    write_ms_subject(tmp_path, "a", 1)
    write_brats_subject(tmp_path, "b", 2, prefixed=False)
    (tmp_path / "list.csv").write_text("subject,t1n,T2W,Flair,lesion_mask\n"
                                       "s1,a/T1.nii.gz,a/T2.nii.gz,a/FLAIR.nii.gz,a/lesion_mask.nii.gz\n"
                                       f"s2,{tmp_path}/b/t1n.nii.gz,,b/t2f.nii.gz,\n")
    s1, s2 = discover([str(tmp_path / "list.csv")])
    assert s1.images == {"T1": tmp_path / "a/T1.nii.gz", "T2": tmp_path / "a/T2.nii.gz",
                         "FLAIR": tmp_path / "a/FLAIR.nii.gz"}
    assert s1.lesion == tmp_path / "a/lesion_mask.nii.gz"
    assert s2.images == {"T1": tmp_path / "b/t1n.nii.gz", "FLAIR": tmp_path / "b/t2f.nii.gz"} and s2.lesion is None
    (tmp_path / "bad.csv").write_text("subject,T7\ns1,a/T1.nii.gz\n")
    with pytest.raises(ValueError, match="T7"):
        discover([str(tmp_path / "bad.csv")])


def test_subject_errors_name_the_files(tmp_path):
    folder = write_ms_subject(tmp_path, "p", 1)
    kwargs = dict(lesion_input=True, lesion_fallback="zeros", flair_z=3.0, min_voxels=5, min_slice_brain_fraction=0.05)

    def message(inputs: list[str], outputs: list[str]) -> str:
        with pytest.raises(InputError) as error:
            load_subject(discover([str(tmp_path)])[0], inputs, outputs, **kwargs)
        return str(error.value)

    (folder / "T2.nii.gz").unlink()
    assert f"subject p has no T2 image; it has FLAIR ({folder / 'FLAIR.nii.gz'}), T1 (" in message(["T1", "T2"], [])
    shifted = sitk.ReadImage(str(folder / "FLAIR.nii.gz"))
    shifted.SetOrigin((5.0, 0.0, 0.0))
    sitk.WriteImage(shifted, str(folder / "FLAIR.nii.gz"))
    assert message(["T1"], ["FLAIR"]).startswith(
        f"{folder / 'FLAIR.nii.gz'}: subject p's FLAIR is not on the grid of its T1 ({folder / 'T1.nii.gz'}): origin")
    labels = sitk.ReadImage(str(folder / "lesion_mask.nii.gz"))
    two_labels = sitk.GetArrayFromImage(labels)
    two_labels[0, 0, 0] = 2  # a label map (0/1/2), not a mask
    written = sitk.GetImageFromArray(two_labels)
    written.CopyInformation(labels)
    sitk.WriteImage(written, str(folder / "lesion_mask.nii.gz"))
    assert message(["T1"], ["T1c"]).startswith(f"{folder / 'lesion_mask.nii.gz'}: a mask must hold 0 and one whole "
                                               "positive value (1, or 255 as some tools write), found values 0, 1, 2")
    lesion = labels
    lesion.SetSpacing((2.0, 1.0, 1.0))
    sitk.WriteImage(lesion, str(folder / "lesion_mask.nii.gz"))
    assert message(["T1"], ["T1c"]).startswith(
        f"{folder / 'lesion_mask.nii.gz'}: subject p's lesion mask is not on the grid of its images")


def test_training_refuses_shifted_intensities_as_inference_does(tmp_path):
    folder = write_ms_subject(tmp_path, "p", 1)
    image = sitk.ReadImage(str(folder / "T2.nii.gz"))
    t2 = sitk.GetArrayFromImage(image)
    brain = t2 > 0
    z = sitk.GetImageFromArray(np.where(brain, (t2 - t2[brain].mean()) / t2[brain].std(), 0).astype(np.float32))
    z.CopyInformation(image)
    sitk.WriteImage(z, str(folder / "T2.nii.gz"))
    with pytest.raises(InputError, match="T2.nii.gz: its negative voxels sum to .* of its positive ones"):
        load_subject(discover([str(tmp_path)])[0], ["T1", "T2"], ["FLAIR"], lesion_input=False,
                     lesion_fallback="zeros", flair_z=3.0, min_voxels=5, min_slice_brain_fraction=0.05)


def test_training_takes_nan_as_no_data_as_inference_does(tmp_path):
    """NaN in the background (as some tools mask): 0 there, as the files without it, and said."""
    folder = write_ms_subject(tmp_path, "p", 1)
    options = dict(lesion_input=False, lesion_fallback="zeros", flair_z=3.0, min_voxels=5,
                   min_slice_brain_fraction=0.05)
    clean, _, _ = load_subject(discover([str(tmp_path)])[0], ["T1", "T2"], ["FLAIR"], **options)
    image = sitk.ReadImage(str(folder / "T2.nii.gz"))
    t2 = sitk.GetArrayFromImage(image)
    masked = sitk.GetImageFromArray(np.where(t2 > 0, t2, np.nan).astype(np.float32))
    masked.CopyInformation(image)
    sitk.WriteImage(masked, str(folder / "T2.nii.gz"))
    subject, _, _ = load_subject(discover([str(tmp_path)])[0], ["T1", "T2"], ["FLAIR"], **options)
    (note,) = subject.notes
    assert note.startswith(f"{folder / 'T2.nii.gz'}: {int(np.count_nonzero(t2 <= 0))} voxels (")
    np.testing.assert_allclose(subject.images["T2"], clean.images["T2"], rtol=1e-6)


def test_a_subject_stored_in_another_axis_order_trains_on_the_same_slices(tmp_path):
    """Inference runs a model on voxel axes in the training data's order (L-R, A-P, I-S); a subject stored in
    another (a sagittal acquisition's) is reordered for training alike, so its slices are those of the same subject
    stored LAS, not slices turned 90 degrees."""
    write_ms_subject(tmp_path / "las", "p", 1)
    folder = write_ms_subject(tmp_path / "als", "p", 1)
    for path in folder.iterdir():
        image = sitk.ReadImage(str(path))
        sitk.WriteImage(sitk.DICOMOrient(image, "ALS"), str(path))
    options = dict(lesion_input=True, lesion_fallback="zeros", flair_z=3.0, min_voxels=5,
                   min_slice_brain_fraction=0.05)
    stored, turned = (load_subject(discover([str(tmp_path / kind)])[0], ["T1", "T2"], ["FLAIR"], **options)[0]
                      for kind in ("las", "als"))
    assert sitk.ReadImage(str(folder / "T1.nii.gz")).GetSize() != sitk.ReadImage(
        str(tmp_path / "las" / "p" / "T1.nii.gz")).GetSize()  # the files do differ in their axes
    for m in ("T1", "T2", "FLAIR"):
        np.testing.assert_array_equal(turned.images[m], stored.images[m])
    np.testing.assert_array_equal(turned.lesion, stored.lesion)
    assert turned.axial_axis == stored.axial_axis and list(turned.slices) == list(stored.slices)


def test_training_refuses_one_scan_given_as_two_modalities(tmp_path):
    """The T2 file copied over the FLAIR's name (inference refuses one file given twice, by name)."""
    folder = write_ms_subject(tmp_path, "p", 1)
    image = sitk.ReadImage(str(folder / "T2.nii.gz"))
    image.SetMetaData("descrip", "re-saved")
    sitk.WriteImage(image, str(folder / "FLAIR.nii.gz"))  # other bytes, the same voxels
    with pytest.raises(InputError) as error:
        load_subject(discover([str(tmp_path)])[0], ["T1", "T2"], ["FLAIR"], lesion_input=False,
                     lesion_fallback="zeros", flair_z=3.0, min_voxels=5, min_slice_brain_fraction=0.05)
    assert str(error.value) == (f"{folder / 'FLAIR.nii.gz'} (subject p's FLAIR) holds the same voxels as "
                                f"{folder / 'T2.nii.gz'} (subject p's T2): one of them is the wrong file")


def test_training_says_which_images_are_mrsynthesis_outputs(tmp_path):
    """A cohort whose missing FLAIRs were filled in with synthetic ones: trained on, they teach the old model."""
    folder = write_ms_subject(tmp_path, "p", 1)
    options = dict(lesion_input=False, lesion_fallback="zeros", flair_z=3.0, min_voxels=5,
                   min_slice_brain_fraction=0.05)
    acquired, _, _ = load_subject(discover([str(tmp_path)])[0], ["T1", "T2"], ["FLAIR"], **options)
    assert acquired.notes == ()
    image = sitk.ReadImage(str(folder / "FLAIR.nii.gz"))
    image.SetMetaData("ITK_FileNotes", "MRSynthesis synthetic FLAIR from T1+T2 (tiny)")
    sitk.WriteImage(image, str(folder / "FLAIR.nii.gz"))
    subject, _, _ = load_subject(discover([str(tmp_path)])[0], ["T1", "T2"], ["FLAIR"], **options)
    assert subject.notes == (f'{folder / "FLAIR.nii.gz"}: its header says "MRSynthesis synthetic FLAIR from T1+T2 '
                             '(tiny)": not an acquired scan but an MRSynthesis output; trained on, it teaches the '
                             "network what the model that made it does",)


def test_training_refuses_an_image_with_data_over_part_of_the_brain(tmp_path):
    """Inference leaves such an input out where it holds no data; training would learn its zeros as tissue."""
    folder = write_ms_subject(tmp_path, "p", 1)
    image = sitk.ReadImage(str(folder / "FLAIR.nii.gz"))
    flair = sitk.GetArrayFromImage(image)
    flair[:, :flair.shape[1] // 2] = 0  # a smaller field of view: half the phantom's brain
    cut = sitk.GetImageFromArray(flair)
    cut.CopyInformation(image)
    sitk.WriteImage(cut, str(folder / "FLAIR.nii.gz"))
    options = dict(lesion_input=False, lesion_fallback="zeros", flair_z=3.0, min_voxels=5,
                   min_slice_brain_fraction=0.05)
    for inputs, outputs in ((["T1", "FLAIR"], ["T2"]), (["T1"], ["FLAIR"])):  # as an input and as a target
        with pytest.raises(InputError) as error:
            load_subject(discover([str(tmp_path)])[0], inputs, outputs, **options)
        assert str(error.value).startswith(f"{folder / 'FLAIR.nii.gz'}: subject p's FLAIR holds no data (zeros) in ")
        assert ("crop the subject to where every image holds data, give its images one brain mask, or leave it "
                "out") in str(error.value)
    load_subject(discover([str(tmp_path)])[0], ["T1"], ["T2"], **options)  # without it the subject loads
    t2 = sitk.ReadImage(str(folder / "T2.nii.gz"))  # and a T2 skull-stripped tighter than the T1
    brain = sitk.GetArrayFromImage(t2) > 0
    tighter = sitk.GetImageFromArray(np.where(ndi.binary_erosion(brain, iterations=2), sitk.GetArrayFromImage(t2), 0))
    tighter.CopyInformation(t2)
    sitk.WriteImage(tighter, str(folder / "T2.nii.gz"))
    with pytest.raises(InputError, match="subject p's T2 holds no data .*a tighter skull-stripping mask"):
        load_subject(discover([str(tmp_path)])[0], ["T1"], ["T2"], **options)


def test_split_is_by_subject_and_seeded():
    names = [f"s{i}" for i in range(10)]
    train, held = split_subjects(names, ["s3", "s7"], 0.5, 0)
    assert held == ["s3", "s7"] and train == [n for n in names if n not in held]
    train, held = split_subjects(names, [], 0.3, seed=4)
    assert len(held) == 3 and not set(train) & set(held) and sorted(train + held) == sorted(names)
    assert split_subjects(names, [], 0.3, seed=4) == (train, held)
    assert split_subjects(names, [], 0.3, seed=5) != (train, held)
    with pytest.raises(ValueError, match="not among"):
        split_subjects(names, ["nobody"], 0, 0)


def write_bids_session(root: Path, subject: str, session: str | None, seed: int) -> Path:
    """``sub-<subject>/[ses-<session>/]anat/`` with T1w, ce-gadolinium T1w, T2w and FLAIR, BIDS-named."""
    labels = tissue_map(seed)
    stem = f"sub-{subject}" + (f"_ses-{session}" if session else "")
    anat = root / f"sub-{subject}" / (f"ses-{session}" if session else "") / "anat"
    files = {"T1": "T1w", "T1c": "ce-gadolinium_T1w", "T2": "T2w", "FLAIR": "FLAIR"}
    for m, image in images_of(labels, seed, 1.0).items():
        write(image.astype(np.float32), anat / f"{stem}_{files[m]}.nii.gz", LAS)
    (anat / f"{stem}_T1w.json").write_text("{}")  # BIDS sidecars beside the images are not images
    return anat


def test_discovery_of_bids_sessions_and_a_split_that_keeps_a_patient_on_one_side(tmp_path):
    """Every BIDS anat folder is called "anat": as subject names they repeated and the data set was refused.
    Sessions of one sub- are one person: a split by session would train and validate on the same brain."""
    for subject, session, seed in (("01", "1", 1), ("01", "2", 2), ("02", None, 3), ("03", "1", 4)):
        write_bids_session(tmp_path / "bids", subject, session, seed)
    found = {s.subject: s for s in discover([str(tmp_path / "bids")])}
    assert sorted(found) == ["sub-01_ses-1", "sub-01_ses-2", "sub-02", "sub-03_ses-1"]
    assert {m: p.name for m, p in found["sub-01_ses-2"].images.items()} == {
        "T1": "sub-01_ses-2_T1w.nii.gz", "T1c": "sub-01_ses-2_ce-gadolinium_T1w.nii.gz",
        "T2": "sub-01_ses-2_T2w.nii.gz", "FLAIR": "sub-01_ses-2_FLAIR.nii.gz"}
    patients = {n: f.patient for n, f in found.items() if f.patient}
    assert patients == {"sub-01_ses-1": "sub-01", "sub-01_ses-2": "sub-01", "sub-02": "sub-02",
                        "sub-03_ses-1": "sub-03"}
    names = sorted(found)
    for seed in range(8):  # a drawn split holds whole patients
        train, held = split_subjects(names, [], 0.3, seed, patients)
        assert not {patients[n] for n in train} & {patients[n] for n in held}
    assert split_subjects(names, ["sub-01"], 0, 0, patients)[1] == ["sub-01_ses-1", "sub-01_ses-2"]
    with pytest.raises(InputError, match=r"sub-01_ses-2'\] leave other sessions .*sub-01: sub-01_ses-1, sub-01_ses-2"):
        split_subjects(names, ["sub-01_ses-2"], 0, 0, patients)
    assert split_subjects(names, ["sub-01_ses-1", "sub-01_ses-2"], 0, 0, patients)[0] == ["sub-02", "sub-03_ses-1"]


def test_a_bids_data_set_takes_lesion_masks_from_its_derivatives_and_no_subjects(tmp_path):
    root = tmp_path / "bids"
    write_bids_session(root, "01", None, 1)
    write_bids_session(root, "02", "1", 2)
    (root / "dataset_description.json").write_text('{"Name": "test", "BIDSVersion": "1.9.0"}')
    lesions = root / "derivatives" / "lesions"
    mask = write((tissue_map(1) == 4).astype(np.uint8), lesions / "sub-01" / "anat" / "sub-01_label-lesion_mask.nii.gz",
                 LAS)
    # a pipeline's preprocessed T1w under derivatives: the subject's name again, not a subject
    write(images_of(tissue_map(1), 1, 1.0)["T1"].astype(np.float32),
          root / "derivatives" / "preproc" / "sub-01" / "anat" / "sub-01_desc-preproc_T1w.nii.gz", LAS)
    found = {s.subject: s for s in discover([str(root)])}
    assert sorted(found) == ["sub-01", "sub-02_ses-1"]
    assert found["sub-01"].lesion == mask and found["sub-02_ses-1"].lesion is None
    assert found["sub-01"].images["T1"].name == "sub-01_T1w.nii.gz"
    write(np.zeros((2, 2, 2), np.uint8), lesions / "sub-01" / "anat" / "sub-01_desc-manual_lesion_mask.nii.gz", LAS)
    with pytest.raises(InputError, match="are both lesion masks of sub-01"):
        discover([str(root)])


def test_a_manifest_names_the_patient_of_each_session(tmp_path):
    write_ms_subject(tmp_path, "a", 1)
    (tmp_path / "list.csv").write_text("subject,patient,T1,FLAIR\n"
                                       "a_visit1,a,a/T1.nii.gz,a/FLAIR.nii.gz\n"
                                       "a_visit2,a,a/T2.nii.gz,a/T1POST.nii.gz\n"
                                       "b,,a/T1POST.nii.gz,a/T2.nii.gz\n")
    subjects = {s.subject: s for s in discover([str(tmp_path / "list.csv")])}
    assert {n: s.patient for n, s in subjects.items()} == {"a_visit1": "a", "a_visit2": "a", "b": None}
    patients = {n: s.patient for n, s in subjects.items() if s.patient}
    with pytest.raises(InputError, match="leave other sessions of the same patient in training"):
        split_subjects(list(subjects), ["a_visit1"], 0, 0, patients)


def test_subject_is_preprocessed_as_inference_does(tmp_path):
    """Same brain mask and normalisation as SynthesisLogic, axial axis first, whatever the file orientation."""
    folder = write_brats_subject(tmp_path, "c", 5)
    (files,) = discover([str(tmp_path)])
    subject, raw, brain = load_subject(files, ["T1", "T2"], ["FLAIR"], lesion_input=True, lesion_fallback="zeros",
                                       flair_z=3.0, min_voxels=5, min_slice_brain_fraction=0.05)
    arrays = {m: sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"c-{f}.nii.gz"))).astype(np.float32)
              for m, f in (("T1", "t1n"), ("T2", "t2w"), ("FLAIR", "t2f"))}
    expected_brain = foreground_mask([arrays["T1"], arrays["T2"]])
    assert np.array_equal(brain, expected_brain) and np.array_equal(raw["FLAIR"], arrays["FLAIR"])
    expected = normalise(arrays["FLAIR"], NormalisationSpec("mean_in_brain"), expected_brain)[0]
    assert np.array_equal(subject.images["FLAIR"], expected)  # LPS: the axial axis is already numpy axis 0
    assert subject.lesion_source == "zeros" and not subject.lesion.any()
    assert set(subject.slices) <= set(np.flatnonzero(expected_brain.any((1, 2))))


def labelled_and_unlabelled(root: Path, fallback: str, inputs=("T1", "T2"), outputs=("FLAIR",)) -> tuple:
    """(patient01 with its expert mask, BraTS-X-0003 without one) of ``write_dataset``, loaded with ``fallback``."""
    files = {s.subject: s for s in discover(write_dataset(root))}
    kwargs = dict(lesion_input=True, lesion_fallback=fallback, flair_z=3.0, min_voxels=5, min_slice_brain_fraction=0.05)
    return tuple(load_subject(files[name], list(inputs), list(outputs), **kwargs)[0]
                 for name in ("patient01", "BraTS-X-0003"))


def test_lesion_channel_from_mask_or_flair(tmp_path):
    given, derived = labelled_and_unlabelled(tmp_path, "flair", ("T1", "FLAIR"), ("T2",))
    truth = tissue_map(3) == 4  # axial is numpy axis 0 in both orientations written here
    assert given.lesion_source == "mask" and np.array_equal(given.lesion > 0, tissue_map(1) == 4)
    assert derived.lesion_source == "flair"
    found = derived.lesion > 0
    assert (found & truth).sum() >= 0.8 * truth.sum() and (found & ~truth).sum() <= 0.2 * truth.sum()


def test_flair_mask_finds_a_bright_blob_and_drops_specks():
    rng = np.random.default_rng(0)
    flair = 1 + 0.05 * rng.standard_normal((20, 40, 40))
    brain = np.zeros(flair.shape, bool)
    brain[2:18, 4:36, 4:36] = True
    flair[8:12, 15:21, 15:21] = 2.0  # 144-voxel lesion
    flair[5, 30, 30] = 3.0  # one hot voxel: noise, not a lesion
    mask = flair_hyperintensity_mask(flair * brain, brain, z=3.0, min_voxels=20)
    assert mask[8:12, 15:21, 15:21].all() and mask.sum() == 144


def _slice_images(seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    t1 = rng.random((30, 26)).astype(np.float32)
    lesion = (rng.random((30, 26)) > 0.7).astype(np.float32)
    return {"T1": t1, "T2": 3 * t1 + 1, "L": lesion}, lesion


def test_crop_without_transform_is_an_exact_window_and_keeps_modalities_aligned():
    images, lesion = _slice_images()
    out, mask = crop(images, lesion, Geometry2D((12, 10)), 8)
    window = (slice(8, 16), slice(6, 14))
    for m in images:
        assert torch.equal(out[m][0], torch.from_numpy(images[m][window]))
    assert torch.equal(mask[0], torch.from_numpy(lesion[window]))


@pytest.mark.parametrize("flip_rows,flip_columns", [(True, False), (False, True)])
def test_flips_and_quarter_turn_move_every_modality_and_the_mask_together(flip_rows, flip_columns):
    images, lesion = _slice_images(1)
    plain, plain_mask = crop(images, lesion, Geometry2D((14, 12)), 10)
    flipped, flipped_mask = crop(images, lesion, Geometry2D((14, 12), flip_rows, flip_columns), 10)
    turned, turned_mask = crop(images, lesion, Geometry2D((14, 12), angle=math.pi / 2), 10)
    for m in images:
        # flips and turns are about the centre pixel (index 5 of 10): one edge row/column of the
        # transformed crop lies outside the plain crop, the rest is the plain crop flipped/turned
        p = plain[m][0]
        if flip_rows:
            assert torch.equal(flipped[m][0][1:], p.flip(0)[:-1])
        else:
            assert torch.equal(flipped[m][0][:, 1:], p.flip(1)[:, :-1])
        assert torch.allclose(turned[m][0][:, 1:], torch.rot90(p, -1)[:, :-1], atol=1e-5)
    assert torch.allclose(turned["T2"], 3 * turned["T1"] + 1, atol=1e-5)
    assert torch.equal(turned_mask, turned["L"].round())  # nearest on the mask = the image of the mask
    assert torch.equal(flipped_mask, flipped["L"])


def test_rotated_crop_keeps_the_linear_relation_between_modalities():
    images, lesion = _slice_images(2)
    out, mask = crop(images, lesion, Geometry2D((15, 13), True, False, angle=0.3, zoom=1.1), 12)
    inside = out["T1"] > 0  # background (zero padding) is 0 in both, not 3 * 0 + 1
    assert torch.allclose(out["T2"][inside], 3 * out["T1"][inside] + 1, atol=1e-4)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}


def test_intensity_augmentation_touches_inputs_only(tmp_path):
    roots = write_dataset(tmp_path)
    subject = load_subject(discover(roots)[0], ["T1", "T2"], ["T1", "FLAIR"], lesion_input=True,
                           lesion_fallback="flair", flair_z=3.0, min_voxels=5, min_slice_brain_fraction=0.05)[0]
    intensity_only = AugmentConfig(flip=False, rotate_degrees=0, scale=0, probability=1.0)
    kwargs = dict(seed=0, stream=TRAIN_STREAM, step=3, subset=("T1", "T2"), outputs=("T1", "FLAIR"), crop_size=16,
                  lesion_input=True)
    augmented = build_batch([subject], range(4), augment=intensity_only, **kwargs)
    plain = build_batch([subject], range(4), augment=None, **kwargs)
    assert all(torch.equal(augmented.references[m], plain.references[m]) for m in ("T1", "FLAIR"))
    assert torch.equal(augmented.lesion, plain.lesion)
    assert not torch.allclose(augmented.inputs["T1"], plain.inputs["T1"])
    assert torch.equal(augmented.inputs["T1"] == 0, plain.inputs["T1"] == 0)  # background stays 0


def test_thick_slice_operator_averages_each_slab_and_interpolates_between_their_centres():
    rng = np.random.default_rng(0)
    line = rng.uniform(0, 1, 12)
    assert np.allclose(thick_slice_operator(12, 1.0, 0.0), np.eye(12))  # 1-voxel slices are the voxels
    # 3-voxel slabs on voxel boundaries (the first centred at voxel 1): each the mean of its 3 voxels, read back
    # linearly between the slab centres 1, 4, 7, 10 and as the outer slab beyond them
    slabs = line.reshape(4, 3).mean(1)
    expected = np.interp(np.arange(12), [1, 4, 7, 10], slabs)
    assert np.allclose(thick_slice_operator(12, 3.0, 1.0) @ line, expected)
    for thickness, offset in ((2.5, 0.3), (4.7, 4.0), (7.0, 6.9)):
        operator = thick_slice_operator(30, thickness, offset)
        assert np.allclose(operator.sum(1), 1) and (operator >= 0).all()  # a constant stays that constant


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_thick_slice_of_one_slice_is_the_volume_acquired_along_that_axis(axis):
    volume = np.random.default_rng(1).uniform(0, 1, (9, 11, 13)).astype(np.float32)
    thick = ThickSlices(axis, 3.4, 1.2)
    operator = thick_slice_operator(volume.shape[axis], thick.thickness, thick.offset)
    whole = np.moveaxis(np.tensordot(operator, np.moveaxis(volume, axis, 0), axes=1), 0, axis)
    for z in (0, 4, 8):
        assert np.allclose(thick_slice(volume, z, thick), whole[z], atol=1e-6)


def test_thick_slices_are_drawn_only_when_asked_and_in_voxels_of_the_axis():
    off = AugmentConfig()
    rng = np.random.default_rng(2)
    state = rng.bit_generator.state
    assert draw_thick_slices(rng, (1.0, 1.0, 1.0), off) is None and rng.bit_generator.state == state  # no draw
    on = AugmentConfig(thick_slice_mm=6.0, thick_slice_probability=1.0)
    drawn = [draw_thick_slices(np.random.default_rng(s), (1.0, 0.5, 4.0), on) for s in range(200)]
    made = [t for t in drawn if t is not None]
    assert 40 < len(drawn) - len(made) < 95  # the third of the draws that picked the 4 mm axis
    assert {t.axis for t in made} == {0, 1}  # 6 mm is not 2 voxels of 4 mm: that axis is never made thick
    assert all(2 <= t.thickness <= 6.0 / (1.0, 0.5)[t.axis] and 0 <= t.offset < t.thickness for t in made)
    assert max(t.thickness for t in made if t.axis == 1) > 6  # 0.5 mm voxels: up to 12 of them


def test_thick_slice_augmentation_touches_inputs_only(tmp_path):
    roots = write_dataset(tmp_path)
    subject = load_subject(discover(roots)[0], ["T1", "T2"], ["T1", "FLAIR"], lesion_input=True,
                           lesion_fallback="flair", flair_z=3.0, min_voxels=5, min_slice_brain_fraction=0.05)[0]
    kwargs = dict(seed=0, stream=TRAIN_STREAM, step=3, subset=("T1", "T2"), outputs=("T1", "FLAIR"), crop_size=16,
                  lesion_input=True)
    none = dict(flip=False, rotate_degrees=0, scale=0, gamma=0, intensity_scale=0, bias_field=0)
    thick = build_batch([subject], range(6), augment=AugmentConfig(**none, thick_slice_mm=5.0,
                                                                     thick_slice_probability=1.0), **kwargs)
    plain = build_batch([subject], range(6), augment=None, **kwargs)
    assert all(torch.equal(thick.references[m], plain.references[m]) for m in ("T1", "FLAIR"))  # T1 out stays sharp
    assert not torch.allclose(thick.inputs["T1"], plain.inputs["T1"])
    assert not torch.allclose(thick.inputs["T2"], plain.inputs["T2"])
    # a recipe without thick slices draws the same batches whatever thick_slice_probability says
    same = [build_batch([subject], range(6), augment=AugmentConfig(thick_slice_probability=p), **kwargs)
            for p in (0.25, 1.0)]
    assert torch.equal(same[0].inputs["T2"], same[1].inputs["T2"])
    with pytest.raises(ValueError, match="thick_slice_probability"):
        AugmentConfig(thick_slice_probability=1.5).validate()
    with pytest.raises(ValueError, match="thick_slice_mm"):
        AugmentConfig(thick_slice_mm=-1).validate()


def test_a_batch_split_in_shares_is_the_global_batch(tmp_path):
    """What makes N processes take the step one process takes."""
    roots = write_dataset(tmp_path)
    subjects = [load_subject(f, ["T1", "T2"], ["FLAIR"], lesion_input=True, lesion_fallback="flair", flair_z=3.0,
                             min_voxels=5, min_slice_brain_fraction=0.05)[0] for f in discover(roots)]
    kwargs = dict(seed=7, stream=TRAIN_STREAM, step=11, subset=("T2",), outputs=("FLAIR",), crop_size=16,
                  lesion_input=True, augment=AugmentConfig())
    whole = build_batch(subjects, range(6), **kwargs)
    halves = [build_batch(subjects, range(0, 3), **kwargs), build_batch(subjects, range(3, 6), **kwargs)]
    assert torch.equal(whole.inputs["T2"], torch.cat([h.inputs["T2"] for h in halves]))
    assert torch.equal(whole.references["FLAIR"], torch.cat([h.references["FLAIR"] for h in halves]))
    assert torch.equal(whole.lesion, torch.cat([h.lesion for h in halves]))


def test_step_subsets_cover_every_combination():
    names = ("T1", "T2", "FLAIR")
    drawn = {step_subset(all_subsets(names), 0, step) for step in range(200)}
    assert drawn == set(all_subsets(names)) and len(drawn) == 7
    assert step_subset([names], 0, 5) == names


def test_ignore_fallback_hides_an_unlabelled_lesion_from_the_cost(tmp_path):
    """A label-free subject teaches the lesion channel nothing: channel 0, lesion region out of the cost."""
    labelled, unlabelled = labelled_and_unlabelled(tmp_path, "ignore")
    truth = tissue_map(3) == 4
    assert unlabelled.lesion_source == "ignored" and not unlabelled.lesion.any()
    assert unlabelled.ignore[truth].all() and not unlabelled.ignore[~unlabelled.brain].any()
    assert labelled.lesion_source == "mask" and labelled.ignore is None

    batch = build_batch([unlabelled, labelled], range(8), seed=1, stream=TRAIN_STREAM, step=0, subset=("T1", "T2"),
                        outputs=("FLAIR",), crop_size=16, lesion_input=True, augment=None)
    hidden = batch.weight == 0
    assert hidden.any() and set(batch.weight.unique().tolist()) == {0.0, 1.0}
    assert (batch.inputs["T1"][hidden] > 0).all()  # hidden pixels are brain, not padding
    model = ChartsiasMIMO(("T1", "T2"), ("FLAIR",), lesion_input=True, latent_channels=2, filters=(4, 4, 4))
    changed = {"FLAIR": torch.where(hidden, 100.0, batch.references["FLAIR"])}
    loss = lambda refs, mask: chartsias_loss(model, batch.inputs, refs, batch.lesion, mask=mask)[0]  # noqa: E731
    assert torch.equal(loss(changed, batch.weight), loss(batch.references, batch.weight))
    assert loss(changed, None) > loss(batch.references, None)


def test_lesion_crops_centre_on_expert_lesions_only(tmp_path):
    labelled, derived = labelled_and_unlabelled(tmp_path, "flair")
    draw = dict(seed=2, stream=TRAIN_STREAM, step=4, subset=("T1",), outputs=("FLAIR",), crop_size=16,
                lesion_input=True, augment=None)
    centre = (slice(None), 0, 8, 8)  # crop offsets run from -size // 2: index 8 of 16 is the centre pixel
    often = build_batch([labelled], range(64), lesion_crop_fraction=0.9, **draw)
    never = build_batch([labelled], range(64), **draw)
    assert often.lesion[centre].mean() > 0.7 > never.lesion[centre].mean()
    # a subject without an expert mask (here a FLAIR-derived one) draws exactly the crops it drew before
    plain = build_batch([derived], range(16), **draw)
    assert torch.equal(build_batch([derived], range(16), lesion_crop_fraction=0.5, **draw).inputs["T1"],
                       plain.inputs["T1"])


def test_lesion_loss_weight_weighs_lesion_pixels_and_keeps_ignored_ones_out(tmp_path):
    labelled, unlabelled = labelled_and_unlabelled(tmp_path, "ignore")
    draw = dict(seed=1, stream=TRAIN_STREAM, step=0, subset=("T1", "T2"), outputs=("FLAIR",), crop_size=16,
                lesion_input=True, augment=None)
    plain = build_batch([unlabelled, labelled], range(8), **draw)
    weighted = build_batch([unlabelled, labelled], range(8), lesion_weight=5.0, **draw)
    lesion = weighted.lesion == 1
    assert lesion.any() and (plain.weight == 0).any()
    assert torch.equal(weighted.inputs["T1"], plain.inputs["T1"])  # the same crops, only the weights differ
    assert (weighted.weight[lesion] == 5).all() and torch.equal(weighted.weight[~lesion], plain.weight[~lesion])
    # without an ignore region the batch carries weights only when lesions are weighted
    assert build_batch([labelled], range(4), **draw).weight is None
    assert set(build_batch([labelled], range(4), lesion_weight=3.0, **draw).weight.unique().tolist()) <= {1.0, 3.0}
    # in the cost: an error on lesion pixels counts 5 times an equal error elsewhere
    model = ChartsiasMIMO(("T1", "T2"), ("FLAIR",), lesion_input=True, latent_channels=2, filters=(4, 4, 4))
    refs = lambda where: {"FLAIR": torch.where(where, weighted.references["FLAIR"] + 100, weighted.references["FLAIR"])}  # noqa: E731
    c1 = lambda r, w: chartsias_loss(model, weighted.inputs, r, weighted.lesion, (1, 0, 0), mask=w)[1]["c1"]  # noqa: E731
    base = c1(weighted.references, weighted.weight)
    assert (c1(refs(lesion), weighted.weight) - base
            > c1(refs(lesion), plain.weight) - c1(weighted.references, plain.weight))


def test_lesion_options_are_checked():
    base = {"name": "m", "data": ["d"], "inputs": ["T1", "T2"], "outputs": ["FLAIR"]}
    ignore = TrainConfig.from_dict({**base, "lesion_fallback": "ignore", "lesion_crop_fraction": 0.33})
    assert ignore.lesion_crop_fraction == 0.33
    with pytest.raises(ValueError, match="lesion_crop_fraction must be in"):
        TrainConfig.from_dict({**base, "lesion_crop_fraction": 1.0})
    with pytest.raises(ValueError, match="needs lesion_input"):
        TrainConfig.from_dict({**base, "lesion_input": False, "lesion_crop_fraction": 0.2})
    with pytest.raises(ValueError, match="lesion_loss_weight needs lesion_input"):
        TrainConfig.from_dict({**base, "lesion_input": False, "lesion_loss_weight": 5.0})
    with pytest.raises(ValueError, match="lesion_loss_weight must be >= 1"):
        TrainConfig.from_dict({**base, "lesion_loss_weight": 0.5})
    with pytest.raises(ValueError, match="'ignore' needs FLAIR"):
        TrainConfig.from_dict({**base, "outputs": ["T1c"], "lesion_fallback": "ignore"})


def test_config_rejects_unknown_keys_and_canonicalises_names(tmp_path):
    base = {"name": "m", "data": ["d"], "inputs": ["t1n", "t2f"], "outputs": ["T2w"]}
    config = TrainConfig.from_dict(base, base=tmp_path)
    assert config.inputs == ["T1", "FLAIR"] and config.outputs == ["T2"] and config.data == [str(tmp_path / "d")]
    with pytest.raises(ValueError, match="learning_rat"):
        TrainConfig.from_dict({**base, "learning_rat": 0.1})
    with pytest.raises(ValueError, match="multiple of 4"):
        TrainConfig.from_dict({**base, "crop_size": 30})


class _Payload:
    """Unpickling this creates a file: the proof that a loader ran a pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoint_round_trip_and_pickles_are_refused(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    save_checkpoint(tmp_path / "c.safetensors", model, optimizer, {"epoch": 3, "log": [{"a": 1.5}]})
    expected_rng = torch.get_rng_state()
    torch.rand(5)
    other = torch.nn.Linear(3, 2)
    other_optimizer = torch.optim.Adam(other.parameters(), lr=0.5)
    state = load_checkpoint(tmp_path / "c.safetensors", other, other_optimizer)
    assert state == {"epoch": 3, "log": [{"a": 1.5}]}
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    assert other_optimizer.param_groups[0]["lr"] == 0.1
    assert torch.equal(other_optimizer.state_dict()["state"][0]["exp_avg"],
                       optimizer.state_dict()["state"][0]["exp_avg"])
    assert torch.equal(torch.get_rng_state(), expected_rng)

    marker = tmp_path / "pwned"
    with open(tmp_path / "p.safetensors", "wb") as handle:
        pickle.dump({"model": _Payload(marker)}, handle)
    torch.save({"model": model.state_dict()}, tmp_path / "t.safetensors")
    for name in ("p.safetensors", "t.safetensors"):
        with pytest.raises(CheckpointError, match="pickle"):
            load_checkpoint(tmp_path / name, other, other_optimizer)
    assert not marker.exists()
    (tmp_path / "j.safetensors").write_text(json.dumps({"epoch": 1}))
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "j.safetensors", other, other_optimizer)


def test_resume_accepts_a_checkpoint_written_before_a_config_key_existed():
    from training.loop import _check_resumable

    config = TrainConfig.from_dict({"name": "m", "data": ["d"], "inputs": ["T1"], "outputs": ["FLAIR"]})
    saved = config.to_dict()
    del saved["lesion_crop_fraction"]  # as in a checkpoint from before the key was added
    _check_resumable(saved, config, steps_done=200)
    with pytest.raises(ValueError, match="lesion_crop_fraction"):
        _check_resumable({**saved, "lesion_crop_fraction": 0.5}, config, steps_done=200)
    for key in ("thick_slice_mm", "thick_slice_probability"):  # an augment key added since
        del saved["augment"][key]
    _check_resumable(saved, config, steps_done=200)
    with pytest.raises(ValueError, match="augment"):
        _check_resumable({**saved, "augment": {**saved["augment"], "thick_slice_mm": 5.0}}, config, steps_done=200)


def test_subject_spacing_is_recorded_along_the_patient_axes(tmp_path):
    """The card's spacing_mm: voxel sizes follow the patient axes whatever the files' axis order, median over
    subjects, and unknown when a subject's is."""
    from training.export import training_spacing

    folder = write_brats_subject(tmp_path, "c", 5)
    for path in folder.iterdir():  # voxel i runs A-P, j I-S, k L-R, of 0.9, 3.0 and 1.1 mm
        image = sitk.ReadImage(str(path))
        image.SetSpacing((0.9, 3.0, 1.1))
        image.SetDirection((0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0))
        sitk.WriteImage(image, str(path))
    subject = load_subject(discover([str(tmp_path)])[0], ["T1"], ["FLAIR"], lesion_input=False,
                           lesion_fallback="zeros", flair_z=3.0, min_voxels=5, min_slice_brain_fraction=0.05)[0]
    assert subject.spacing_mm == pytest.approx((1.1, 0.9, 3.0))
    # the (slices, H, W) arrays' axes in the training data's order whatever the file's: I-S, A-P, L-R
    assert subject.voxel_mm == pytest.approx((3.0, 0.9, 1.1))
    assert training_spacing([subject.spacing_mm, (1.0, 1.0, 1.0), (1.0, 1.2, 1.0)]) == pytest.approx([1.0, 1.0, 1.0])
    assert training_spacing([subject.spacing_mm, None]) is None and training_spacing([]) is None


def test_training_subjects_at_another_scale_are_named():
    from training.export import spacing_outliers

    spacings = [(1.0, 1.0, 1.0), (1.1, 0.9, 1.0), (2.0, 2.0, 1.0), (1.0, 1.0, 3.0)]
    said = spacing_outliers(["a", "b", "c", "d"], spacings)
    assert [line.split(":")[0] for line in said] == ["training subject c", "training subject d"]
    assert "voxels of 2 x 2 x 1 mm" in said[0] and "median 1.05 x 1 x 1 mm" in said[0]
    assert '"spacing_mm"' in said[0]  # how to avoid it
    # a 2D model sees axial slices: thicker slices are no other scale to it
    assert [line.split(":")[0] for line in spacing_outliers(["a", "b", "c", "d"], spacings, slice_plane_only=True)
            ] == ["training subject c"]
    assert spacing_outliers(["a", "b"], [(1.0, 1.0, 1.0), None]) == []


def respaced_subject(root: Path, spacing: tuple[float, float, float]) -> Path:
    """An MS subject (LAS) whose files say their voxels are ``spacing`` (ITK x, y, z = L-R, A-P, I-S)."""
    folder = write_ms_subject(root, "patient05", 5)
    for path in folder.iterdir():
        image = sitk.ReadImage(str(path))
        image.SetSpacing(spacing)
        sitk.WriteImage(image, str(path))
    return root


@pytest.mark.parametrize("plane, spacing, shape", [
    ("axial", (0.5, 0.5, 0.5), (12, 14, 12)),  # 2D: the finer in-plane axes to 1 mm, its slices kept
    (None, (0.5, 0.5, 0.5), (6, 14, 12)),  # 3D: every axis
    ("axial", (2.0, 0.5, 3.0), (12, 14, 24)),  # only the finer axis: coarser voxels are kept
    ("axial", (1.1, 0.9, 3.0), (12, 28, 24)),  # within 20 %: left alone
])
def test_subjects_are_resampled_to_the_recipes_spacing(tmp_path, plane, spacing, shape):
    """``spacing_mm`` [1, 1, 1]: finer voxels are brought to it, images linearly and the lesion mask by nearest
    neighbour (still 0/1); coarser ones are kept (resampled up, a coarse case taught the network its blur:
    docs/results/mixed_spacing); the files' spacing is remembered for the loading message."""
    from training.datasets import resampled

    files = discover([str(respaced_subject(tmp_path, spacing))])[0]
    subject, raw, brain = load_subject(files, ["T1", "T2"], ["FLAIR"], lesion_input=True, lesion_fallback="zeros",
                                       flair_z=3.0, min_voxels=5, min_slice_brain_fraction=0.05,
                                       spacing_mm=[1.0, 1.0, 1.0], plane=plane)
    moved = shape != SHAPE
    expected = tuple(1.0 if s < 1 / 1.2 and (plane is None or axis < 2) else s for axis, s in enumerate(spacing))
    assert brain.shape == raw["FLAIR"].shape == shape  # the file's (z, y, x) order
    assert subject.brain.shape == shape  # axial first: z is the axial axis here
    assert subject.spacing_mm == pytest.approx(expected)
    assert subject.resampled_from == (pytest.approx(spacing) if moved else None)
    assert set(np.unique(subject.lesion)) == {0.0, 1.0}  # binary, and the lesion survives
    assert ("resampled from" in resampled(subject)) == moved


def test_the_training_log_says_where_each_subjects_lesion_channel_came_from():
    """It printed "lesion channel from ignored (0 voxels)" for the BraTS case, whose derived lesions are left out of
    the costs, and a mask's count without saying that voxels outside the brain are not counted."""
    from training.datasets import Subject

    lesion = np.zeros((2, 4, 4), np.float32)
    lesion[0, 1, 1:3] = 1
    ignore = np.zeros((2, 4, 4), bool)
    ignore[1, :2, :2] = True

    def said(source: str) -> str:
        return Subject("s", {}, lesion if source in ("mask", "flair") else np.zeros_like(lesion),
                       np.ones((2, 4, 4), bool), np.arange(2), source, ignore if source == "ignored" else None
                       ).lesion_said()

    assert said("mask") == "lesion channel from its mask (2 voxels in the brain)"
    assert said("flair") == "lesion channel derived from its FLAIR (2 voxels in the brain)"
    assert said("ignored") == ("lesion channel all zeros, its FLAIR-derived lesion region (4 voxels) left out of "
                               "every cost")
    assert said("zeros") == "lesion channel all zeros (taken as lesion-free)" and said("none") == "no lesion channel"
