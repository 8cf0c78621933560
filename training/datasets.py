"""Finding subjects on disk, splitting them, and loading them preprocessed as inference does.

Four layouts are understood: a folder tree in BraTS naming (``<case>/<case>-t1n.nii.gz``
or ``<case>/t1n.nii.gz``), the same in the shared MS naming (``patientXX/T1.nii.gz``,
``T1POST``, ``T2``, ``FLAIR``, ``lesion_mask``), BIDS (``sub-01/[ses-1/]anat/sub-01_T1w.nii.gz``;
each session a subject, the sessions of one ``sub-`` a patient that the split keeps on one
side), and a CSV manifest. Modality names go
through ``MRSynthesisLib.modalities`` so that every alias a collection uses maps to one
canonical name.

Each subject is loaded once, normalised with the very functions ``SynthesisLogic`` uses
(``foreground_mask`` over the inputs, then ``normalise`` by the card's spec) and kept in
RAM as float32 with the axial axis first, so a model trained here sees what it will see
at inference.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from MRSynthesisLib import manifest, modalities
from MRSynthesisLib.coverage import PARTIAL_FRACTION, not_measured
from MRSynthesisLib.errors import InputError
from MRSynthesisLib.logic import model_grid, voxel_size_text
from MRSynthesisLib.preprocessing import NormalisationSpec, foreground_mask, normalise
from MRSynthesisLib.provenance import is_output
from MRSynthesisLib.validation import check_mask, checked_image, repeated_scan, voxel_digest
from MRSynthesisLib.volume import read_volume, reordered, reoriented_onto, resample_to, training_axis_order

from .lesions import flair_hyperintensity_mask

# "ignore" leaves the cost blind to a subject's derived FLAIR-hyperintense region grown by this many
# voxels: the derived mask stops at z > 3, and the fainter rim of an oedema is lesion as well.
IGNORE_MARGIN = 3
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
LESION_COLUMN = "lesion_mask"
_LESION_STEM = re.compile(r"(^|.*[_\-.])(lesion_mask|lesion|lesions)$", re.IGNORECASE)
NORMALISATION = NormalisationSpec("mean_in_brain")  # the paper's scheme, as the card states


@dataclass
class SubjectFiles:
    """Where one subject's images are: canonical modality -> path, and an optional lesion mask.

    ``patient``: the person a BIDS session belongs to (its ``sub-`` folder), so that the split keeps
    a patient's sessions together; None when the subject is its own patient.
    """

    subject: str
    images: dict[str, Path]
    lesion: Path | None = None
    patient: str | None = None


def _stem(path: Path) -> str | None:
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def bids_subject(folder: Path) -> tuple[str, str] | None:
    """(subject name, patient) of a BIDS ``sub-<label>/[ses-<label>/]anat`` folder, else None: every such
    folder is called ``anat``, so its name cannot be the subject's."""
    if folder.name != "anat":
        return None
    parent, session = folder.parent, None
    if parent.name.startswith("ses-"):
        parent, session = parent.parent, parent.name
    if not parent.name.startswith("sub-"):
        return None
    return (f"{parent.name}_{session}" if session else parent.name), parent.name


def _folder_subject(folder: Path) -> SubjectFiles | None:
    """The images of one subject folder, or None when it holds no recognised image."""
    images: dict[str, Path] = {}
    lesion = None
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        stem = _stem(path)
        if stem is None:
            continue
        if _LESION_STEM.match(stem):
            lesion = path
            continue
        modality = modalities.guess(path.name)
        if modality is None:
            continue
        if modality in images:
            raise InputError(f"{folder}: both {images[modality].name} and {path.name} are {modality}")
        images[modality] = path
    if not images:
        return None
    name, patient = bids_subject(folder) or (folder.name, None)
    return SubjectFiles(name, images, lesion, patient)


def _derived_lesion_masks(folders: Sequence[Path]) -> dict[str, Path]:
    """BIDS subject name -> its lesion mask among ``folders`` (a data set's ``derivatives``); two for one
    subject are refused, since which one was meant cannot be told."""
    masks: dict[str, Path] = {}
    for folder in folders:
        named = bids_subject(folder)
        for path in sorted(p for p in folder.iterdir() if p.is_file()) if named else ():
            stem = _stem(path)
            if stem is not None and _LESION_STEM.match(stem):
                if named[0] in masks:
                    raise InputError(f"{masks[named[0]]} and {path} are both lesion masks of {named[0]}; keep one")
                masks[named[0]] = path
    return masks


def discover_folder(root: Path) -> list[SubjectFiles]:
    """Every folder under ``root`` (``root`` included) that holds recognised images is a subject.

    In a BIDS data set (``dataset_description.json`` at ``root``) the folders under ``derivatives`` and
    ``sourcedata`` hold no subjects of their own (a pipeline's preprocessed T1w would repeat the
    subject's name), but a lesion mask under ``derivatives`` is the subject's."""
    if not root.is_dir():
        raise InputError(f"{root}: no such folder")
    folders = [root, *sorted(p for p in root.rglob("*") if p.is_dir())]
    bids = (root / "dataset_description.json").is_file()
    kind = {f: ({"derivatives", "sourcedata"} & set(f.relative_to(root).parts) if bids else set()) for f in folders}
    found = [s for folder in folders if not kind[folder] and (s := _folder_subject(folder)) is not None]
    derived = _derived_lesion_masks([f for f in folders if "derivatives" in kind[f]])
    for subject in found:
        if subject.lesion is None and subject.subject in derived:
            subject.lesion = derived[subject.subject]
    if not found:
        raise InputError(f"{root}: no subject folders with images named by modality (e.g. T1.nii.gz, case-t2f.nii.gz)")
    return found


def read_manifest(path: Path) -> list[SubjectFiles]:
    """The subjects of a CSV manifest (``MRSynthesisLib.manifest``, the reader ``mrsynthesis batch``
    uses): a ``subject`` column, one column per modality (any alias), an optional ``lesion_mask``, and
    an optional ``patient`` (rows that are sessions of one person name it, and the split keeps them
    together)."""
    return [SubjectFiles(row.subject, row.images, row.masks.get(LESION_COLUMN), row.labels.get(manifest.PATIENT_COLUMN))
            for row in manifest.read_manifest(path, [LESION_COLUMN], [manifest.PATIENT_COLUMN])]


def discover(sources: Sequence[str]) -> list[SubjectFiles]:
    """All subjects of the configured sources; subject names must be unique across them."""
    subjects: list[SubjectFiles] = []
    for source in sources:
        path = Path(source)
        subjects += read_manifest(path) if path.suffix.lower() == ".csv" else discover_folder(path)
    names = [s.subject for s in subjects]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(f"subject names repeat across the data sources: {repeated}")
    return subjects


def data_record(files: Mapping[str, SubjectFiles], training: Sequence[str],
                validation: Sequence[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """What a run draws its steps and validation from: the split and each subject's files. The
    checkpoint keeps it so that --resume refuses data that changed under the run: an added subject
    reshuffles a ``validation_fraction`` split and can move a validation subject into training."""
    def entry(name: str) -> dict[str, Any]:
        subject = files[name]
        return {"images": {m: str(p) for m, p in sorted(subject.images.items())},
                "lesion": None if subject.lesion is None else str(subject.lesion)}

    return {"training": {n: entry(n) for n in training}, "validation": {n: entry(n) for n in validation}}


def check_same_data(saved: Mapping[str, Any] | None, current: Mapping[str, Any]) -> None:
    """Refuse to resume on data other than the checkpoint's (``data_record``); a checkpoint written
    before the record existed (``saved`` None) is taken as it is."""
    if saved is None or saved == current:
        return
    found = []
    for role in ("training", "validation"):
        before, now = saved.get(role, {}), current[role]
        if set(now) - set(before):
            found.append(f"{role} subjects added: {sorted(set(now) - set(before))}")
        if set(before) - set(now):
            found.append(f"{role} subjects gone: {sorted(set(before) - set(now))}")
        changed = sorted(n for n in set(now) & set(before) if now[n] != before[n])
        if changed:
            found.append(f"other files for {role} subjects {changed}")
    raise InputError(f"--resume: the data are not those of the checkpoint's run ({'; '.join(found)}); restore them, "
                     "or start a new run in another --out")


def patients(files: Mapping[str, SubjectFiles]) -> dict[str, str]:
    """Subject -> patient for the subjects that are sessions of a patient (``split_subjects``)."""
    return {n: f.patient for n, f in files.items() if f.patient}


def split_subjects(names: Sequence[str], validation: Sequence[str], fraction: float,
                   seed: int, patients: Mapping[str, str] | None = None) -> tuple[list[str], list[str]]:
    """(training, validation) subject names: by subject, never by slice, so no scan is in both; and by
    patient (``patients``: subject -> patient, for BIDS sessions), so that no person is in both.

    ``validation`` may name subjects or patients (all of a patient's sessions); a session named
    while another session of its patient would train is refused. ``fraction`` draws patients."""
    names = list(names)
    patient = {n: (patients or {}).get(n, n) for n in names}
    if validation:
        unknown = sorted(set(validation) - set(names) - set(patient.values()))
        if unknown:
            raise InputError(f"validation subjects {unknown} are not among the subjects found: {names}")
        held = [n for n in names if n in set(validation) or patient[n] in set(validation)]
        split = sorted({patient[n] for n in held} & {patient[n] for n in names if n not in held})
        if split:
            sessions = "; ".join(p + ": " + ", ".join(n for n in names if patient[n] == p) for p in split)
            raise InputError(f"validation subjects {held} leave other sessions of the same patient in training "
                             f"({sessions}): name the patient, or all of its sessions")
    elif fraction > 0:
        groups = list(dict.fromkeys(patient.values()))  # the names themselves when each is its own patient
        count = max(1, round(fraction * len(groups)))
        order = np.random.default_rng(seed).permutation(len(groups))
        chosen = {groups[i] for i in order[:count]}
        held = [n for n in names if patient[n] in chosen]
    else:
        held = []
    train = [n for n in names if n not in set(held)]
    if not train:
        raise InputError("no subject is left for training after the validation split")
    return train, held


@dataclass
class Subject:
    """One preprocessed subject: modality -> (slices, H, W) float32, axial axis first, for the sequences
    it holds (all the recipe's, unless ``incomplete_subjects``).

    ``lesion_source`` says where the lesion channel came from: "mask", "flair" (derived),
    "zeros" (taken as lesion-free), "ignored" (all zeros, and ``ignore`` marks the derived
    lesion region that no cost may see) or "none" (no lesion channel).
    """

    name: str
    images: dict[str, np.ndarray]
    lesion: np.ndarray  # (slices, H, W) float32, 0/1, inside the brain
    brain: np.ndarray  # (slices, H, W) bool
    slices: np.ndarray  # indices of the slices with enough brain to train on
    lesion_source: str
    ignore: np.ndarray | None = None  # (slices, H, W) bool: pixels left out of every cost
    spacing_mm: tuple[float, float, float] | None = None  # ``Geometry.anatomical_spacing`` of its images
    resampled_from: tuple[float, float, float] | None = None  # the files' spacing, when the config's replaced it
    axial_axis: int = 0  # the file's (z, y, x) axis that was moved first
    voxel_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)  # spacing along the (slices, H, W) axes
    notes: tuple[str, ...] = ()  # what loading changed in its images (``spikes.remove_spikes``)
    scans: dict[str, tuple[str, str]] = field(default_factory=dict)  # modality -> (voxel digest, file)

    def supervised(self, index) -> np.ndarray:
        """The brain pixels of slices ``index`` that the cost and validation may look at."""
        brain = self.brain[index]
        return brain if self.ignore is None else brain & ~self.ignore[index]

    def lesion_said(self) -> str:
        """What the training log says of the lesion channel: where it came from, and how many voxels it marks in
        the brain (a mask's voxels outside the brain mask are not counted: the channel is cut to the brain)."""
        count = int(self.lesion.sum())
        return {"mask": f"lesion channel from its mask ({count} voxels in the brain)",
                "flair": f"lesion channel derived from its FLAIR ({count} voxels in the brain)",
                "zeros": "lesion channel all zeros (taken as lesion-free)",
                "ignored": "lesion channel all zeros, its FLAIR-derived lesion region "
                           f"({int(self.ignore.sum()) if self.ignore is not None else 0} voxels) left out of every "
                           "cost",
                "none": "no lesion channel"}.get(self.lesion_source, f"lesion channel from {self.lesion_source}")

    @cached_property
    def lesion_points(self) -> np.ndarray:
        """(n, 3) slice/row/column of the expert-labelled lesion voxels in the training slices."""
        if self.lesion_source != "mask":
            return np.zeros((0, 3), np.int64)
        points = np.argwhere(self.lesion[self.slices] > 0.5)
        points[:, 0] = self.slices[points[:, 0]]
        return points


def check_distinct_scans(scans: Mapping[str, Mapping[str, tuple[str, str]]]) -> None:
    """Refuse one scan given twice: under two subjects' names (a data set listed twice, or BraTS releases that
    renamed the same cases), it would sit on both sides of the split, in training and in the validation that
    picks the epoch; as two modalities of one subject, one of them is the wrong file. ``scans``: subject ->
    modality -> (``voxel_digest``, file)."""
    repeated = repeated_scan(((s, m), digest) for s, per in scans.items() for m, (digest, _) in per.items())
    if repeated:
        (subject, modality), (first, first_modality) = repeated
        raise InputError(f"{scans[subject][modality][1]} (subject {subject}'s {modality}) holds the same voxels as "
                         f"{scans[first][first_modality][1]} (subject {first}'s {first_modality}): " + (
                             "one of them is the wrong file" if first == subject else
                             "the same scan under two names would be trained on and validated on; keep one of the "
                             "subjects"))


def resampled(subject: Subject) -> str:
    """What the loading messages add for a subject resampled to the config's ``spacing_mm``."""
    if subject.resampled_from is None:
        return ""
    return f" (resampled from {voxel_size_text(subject.resampled_from)} to {voxel_size_text(subject.spacing_mm)})"


def load_subject(files: SubjectFiles, inputs: Sequence[str], outputs: Sequence[str], *, lesion_input: bool,
                 lesion_fallback: str, flair_z: float, min_voxels: int,
                 min_slice_brain_fraction: float, normalisation: NormalisationSpec = NORMALISATION,
                 spacing_mm: Sequence[float] | None = None, plane: str | None = "axial", incomplete: bool = False
                 ) -> tuple[Subject, dict[str, np.ndarray], np.ndarray]:
    """Read, check, mask and normalise one subject exactly as ``SynthesisLogic`` does.

    ``normalisation`` is the card's spec: ``NORMALISATION`` for a new model, the base card's
    when a model is extended (``training.extend``), so the frozen encoders see what they learnt on.
    ``spacing_mm`` (the config's, left-right / anterior-posterior / inferior-superior): a subject whose
    voxels are finer than it by more than ``COARSER_THAN_MODEL`` along an axis the network convolves over
    (``plane``: a 2D model's slicing plane, whose slice axis is kept; None: a 3D model, every axis) is
    resampled to it, images linearly and the lesion mask by nearest neighbour (``logic.model_grid`` with
    ``finer``). Coarser subjects keep their voxels: resampled up, a 2 mm training case taught the network
    its blur at the fine scale and lowered the held-out SSIM (docs/results/mixed_spacing).

    With ``incomplete`` (the recipe's ``incomplete_subjects``) a subject may lack some of the sequences, as
    long as it holds an input and an output: it is loaded with those it has (its brain mask from the inputs
    it has, as inference takes it from the inputs given), and the steps use it where it serves
    (``batches.trains``).

    Also returns the raw output arrays it holds and the brain mask on the grid trained on (the file's, or the
    recipe's spacing), which ``preprocessing.reference_stats`` needs for the card's output intensity scale.
    """
    needed = list(dict.fromkeys([*inputs, *outputs]))
    missing = [m for m in needed if m not in files.images]
    found = ", ".join(f"{m} ({p})" for m, p in files.images.items()) or "none"
    if missing and not incomplete:
        raise InputError(f"subject {files.subject} has no {', '.join(missing)} image; it has {found} (with "
                         "\"incomplete_subjects\": true in the recipe it trains on the sequences it has)")
    for role, names in (("inputs", inputs), ("outputs", outputs)):
        if not any(m in files.images for m in names):
            raise InputError(f"subject {files.subject} has none of the {role} {', '.join(names)}; it has {found}: "
                             "it cannot serve a training step; leave it out")
    needed = [m for m in needed if m in files.images]
    inputs = [m for m in inputs if m in files.images]
    outputs = [m for m in outputs if m in files.images]
    volumes = {m: read_volume(files.images[m]) for m in needed}
    scans = {m: (voxel_digest(v.array), str(files.images[m])) for m, v in volumes.items()}
    check_distinct_scans({files.subject: scans})
    notes = [f"{files.images[m]}: its header says \"{v.description}\": not an acquired scan but an MRSynthesis "
             "output; trained on, it teaches the network what the model that made it does" for m, v in volumes.items()
             if is_output(v.description)]
    for m, volume in volumes.items():  # what inference repairs or refuses, training does alike
        volumes[m], changed = checked_image(volume)
        notes.extend(changed)
    geometry = volumes[needed[0]].geometry
    for m, volume in volumes.items():  # the same grid, stored in any voxel order (as inference takes them)
        volumes[m] = reoriented_onto(volume, geometry)
        if volumes[m] is None:
            differences = "; ".join(volume.geometry.differences(geometry))
            raise InputError(f"{files.images[m]}: subject {files.subject}'s {m} is not on the grid of its "
                             f"{needed[0]} ({files.images[needed[0]]}): {differences}")
    order = training_axis_order(geometry)
    if order is not None:  # as inference runs a model (logic._onto_model_grid): axes L-R, A-P, I-S, losslessly
        volumes = {m: reordered(v, order) for m, v in volumes.items()}
        geometry = volumes[needed[0]].geometry
    target = model_grid(geometry, spacing_mm, plane, finer=True)
    if target is not None:
        volumes = {m: resample_to(v, target) for m, v in volumes.items()}
    brain = foreground_mask([volumes[m].array for m in inputs])
    for m in needed:  # inference leaves such an input out where it holds none; training would learn the zeros
        share = np.count_nonzero(not_measured(volumes[m].array, brain)) / np.count_nonzero(brain)
        if share > PARTIAL_FRACTION:
            raise InputError(f"{files.images[m]}: subject {files.subject}'s {m} holds no data (zeros) in "
                             f"{100 * share:.0f} % of its brain (a slab, a smaller field of view or a tighter "
                             "skull-stripping mask): training would take them for dark tissue; crop the subject to "
                             "where every image holds data, give its images one brain mask, or leave it out")
    normalised = {m: normalise(volumes[m].array, normalisation, brain)[0] for m in needed}
    lesion = np.zeros(brain.shape, np.float32)
    ignore = None
    source = "none"
    if lesion_input:
        if files.lesion is not None:
            read = read_volume(files.lesion)
            mask = reoriented_onto(read, geometry)
            if mask is None:
                differences = "; ".join(read.geometry.differences(geometry))
                raise InputError(f"{files.lesion}: subject {files.subject}'s lesion mask is not on the grid of its "
                                 f"images ({files.images[needed[0]]}): {differences}")
            lesion, source = check_mask(mask).astype(np.float32), "mask"  # 0/1 only, as inference takes it
            if target is not None:
                lesion = resample_to(mask.with_array(lesion), target, nearest=True).array
        elif lesion_fallback != "zeros" and "FLAIR" not in volumes:
            raise InputError(f"subject {files.subject} has neither a lesion mask nor a FLAIR to derive its lesion "
                             f"channel from (lesion_fallback \"{lesion_fallback}\"); give its lesion mask, or "
                             "leave it out")
        elif lesion_fallback == "flair":
            lesion = flair_hyperintensity_mask(volumes["FLAIR"].array, brain, flair_z, min_voxels).astype(np.float32)
            source = "flair"
        elif lesion_fallback == "ignore":
            derived = flair_hyperintensity_mask(volumes["FLAIR"].array, brain, flair_z, min_voxels)
            ignore = ndi.binary_dilation(derived, np.ones((3, 3, 3), bool), iterations=IGNORE_MARGIN) & brain
            source = "ignored"
        else:
            source = "zeros"
        lesion *= brain
    grid = target or geometry
    axis = grid.axis_for("axial")
    first = lambda a: np.ascontiguousarray(np.moveaxis(a, axis, 0))  # noqa: E731
    brain_first = first(brain)
    area = brain_first.reshape(len(brain_first), -1).sum(1)
    slices = np.flatnonzero(area >= min_slice_brain_fraction * area.max())
    spacing = tuple(float(v) for v in reversed(grid.spacing))  # the (z, y, x) arrays' axes
    subject = Subject(files.subject, {m: first(a) for m, a in normalised.items()}, first(lesion), brain_first,
                      slices, source, None if ignore is None else first(ignore), grid.anatomical_spacing(),
                      geometry.anatomical_spacing() if target is not None else None, axis,
                      (spacing[axis], *(v for k, v in enumerate(spacing) if k != axis)), tuple(notes), scans)
    return subject, {m: volumes[m].array for m in outputs}, brain
