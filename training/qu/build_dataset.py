"""Build a synthetic data set of registered multimodal slices with lesion labels (Qu et al. Sec. 2.8).

``python -m training.qu.build_dataset --structure-model RUN/structure --generator-model RUN/generator
--labels LESION_MASK_OR_FOLDER [...] --subjects N --seed S --output DIR``

For each subject, until it has ``--slices-per-subject`` accepted slices, a candidate is:

1. a code ~ N(0, 1) decoded by DC_f to a structure map f (binarised at 0.5) and MASK's
   background mask of f (binarised at 0.5); or, with ``--structure-from-scans FOLDER ...``
   instead of ``--structure-model``, Algorithm 1 on a random real slice of those scans (its
   own lesion removed, Sec. 2.5) and Algorithm 2's mask: the paper's "generate labelled
   registered multimodal MRI from structure maps extracted from real images" (Sec. 5);
2. Algorithm 3: rejected ("structure") when the contour-filled mask of f differs from
   MASK's by an MAE above ``--mae-threshold``;
3. a real lesion label (a slice of ``--labels``, randomly scaled, rotated, translated and
   flipped) drawn until it lies inside the brain; each draw outside counts as a
   "label_outside_brain" rejection, and after ``--label-attempts`` draws f is abandoned;
4. every modality generated from fuse(f, label) and set to 0 outside MASK's brain;
5. the Dice filter: the generator's own lesion components (trained on real slices only) segment
   each generated modality; rejected ("dice") unless every modality's Dice with the label
   reaches ``--dice-threshold`` (0 switches the filter off).

Every image of a subject is written on one grid (the modalities come from one code, so they
are registered), with ``lesion_mask``, ``brain_mask`` and ``structure_map``, and
``manifest.json`` lists files, seed, model folders, the label source and every filter's
rejection count. The output is assembled in a hidden temporary folder and renamed into place
at the end: an interrupted run leaves nothing under ``--output``. Same seed, same models, same
labels -> the same files (torch runs on ``--threads`` threads, 1 by default, so that sums are
taken in the same order).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from MRSynthesisLib.atomic import write_json
from MRSynthesisLib.errors import InputError
from MRSynthesisLib.structure_maps import (
    DEFAULT_DICE_THRESHOLD,
    DEFAULT_MAE_THRESHOLD,
    dice,
    label_inside_brain,
    passes_structure_filter,
)
from MRSynthesisLib.volume import Geometry, Volume, read_volume, write_volume
from training.datasets import _folder_subject

from .data import (
    LabelTransform,
    load_subject_slices,
    resample_slices,
    structure_maps_of,
)
from .folders import GENERATOR, STRUCTURE, load_folder

FORMAT = "mrsynthesis-qu-synthetic-dataset/1"
REJECTIONS = ("structure", "label_outside_brain", "dice")


def _label_files(sources: list[str]) -> list[Path]:
    files = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            found = _folder_subject(path)
            if found is None or found.lesion is None:
                raise InputError(f"{path}: folder holds no lesion_mask file")
            files.append(found.lesion)
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(f"{path}: no such lesion label file or folder")
    return files


def load_label_bank(sources: list[str], size: int, n_classes: int) -> tuple[np.ndarray, list[str]]:
    """Every axial slice with a lesion of the given masks, in LPS order, resampled (nearest) to size x size."""
    slices, names = [], []
    for path in _label_files(sources):
        volume = read_volume(path)
        values = sitk.GetArrayFromImage(sitk.DICOMOrient(volume.to_sitk(), "LPS"))
        if not np.array_equal(values, np.round(values)) or values.min() < 0 or values.max() >= n_classes:
            raise InputError(f"{path}: lesion labels must be integers in [0, {n_classes - 1}] "
                             f"(the generator knows {n_classes} classes); "
                             f"found values in [{values.min()}, {values.max()}]")
        labels = resample_slices(values.astype(np.uint8), size, 0)
        labels = labels[labels.reshape(len(labels), -1).max(axis=1) > 0]
        if len(labels) == 0:
            raise InputError(f"{path}: holds no lesion voxel")
        slices.append(labels)
        names.append(str(path.resolve()))
    return np.concatenate(slices), names


class Builder:
    """The candidate loop of the module docstring, with its rejection counts."""

    def __init__(self, structure_folder: str | None, scans: list[str] | None, generator_folder: str,
                 labels: list[str], seed: int, mae_threshold: float, dice_threshold: float, label_attempts: int,
                 max_candidates: int) -> None:
        self.config, generator, _ = load_folder(generator_folder, GENERATOR)
        if structure_folder is not None:
            structure_config, structure, _ = load_folder(structure_folder, STRUCTURE)
            if structure_config.size != self.config.size:
                raise InputError(f"{structure_folder} makes {structure_config.size}-pixel maps but "
                                 f"{generator_folder} was trained on {self.config.size}-pixel slices")
            self.vae, self.mask = structure["structure_vae"], structure["mask_generator"]
            self.source = {"kind": "noise", "structure_model": str(Path(structure_folder).resolve())}
        else:
            self.real_maps, self.real_masks = self._real_structures(scans)
            self.source = {"kind": "real_scans", "folders": [str(Path(f).resolve()) for f in scans],
                           "slices": len(self.real_maps)}
        self.generator, self.lesion = generator["generator"], generator["lesion"]
        self.bank, self.label_files = load_label_bank(labels, self.config.size, self.config.n_classes)
        self.transform = LabelTransform()
        self.rng = np.random.default_rng(seed)
        self.torch_rng = torch.Generator().manual_seed(seed)
        self.mae_threshold, self.dice_threshold = mae_threshold, dice_threshold
        self.label_attempts, self.max_candidates = label_attempts, max_candidates
        self.rejected = dict.fromkeys(REJECTIONS, 0)
        self.candidates = 0

    def _real_structures(self, scans: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Algorithm 1 (own lesion removed) and Algorithm 2 on every modality's slices of the scans."""
        c = self.config
        pools = []
        for folder in scans:
            found = _folder_subject(Path(folder)) if Path(folder).is_dir() else None
            labelled = found is not None and found.lesion is not None  # to cut the scan's own lesion out
            s = load_subject_slices(folder, c.modalities, c.size, c.slice_range, c.min_brain_fraction, labelled)
            m, n, h, w = s.images.shape
            pools.append(structure_maps_of(s.images.reshape(m * n, h, w), np.tile(s.labels, (m, 1, 1)),
                                           c.beta, c.mask_expand))
        return np.concatenate([p[0] for p in pools]), np.concatenate([p[1] for p in pools])

    def _structure(self) -> tuple[np.ndarray, np.ndarray]:
        if self.source["kind"] == "real_scans":
            pick = self.rng.integers(len(self.real_maps))
            return self.real_maps[pick], self.real_masks[pick]
        size = self.config.size
        code = torch.randn((1, *self.vae.code_shape(size, size)), generator=self.torch_rng)
        f = (self.vae.decode(code) > 0.5).float()
        background = (self.mask(f) > 0.5).float()
        return f[0, 0].numpy(), background[0, 0].numpy()

    @torch.no_grad()
    def sample(self) -> dict[str, object]:
        """One accepted slice: images (M, H, W), label, brain, structure map and its filter scores."""
        while True:
            if self.candidates >= self.max_candidates:
                raise InputError(f"no acceptable sample within --max-candidates {self.max_candidates}: rejected "
                                 + ", ".join(f"{k} {v}" for k, v in self.rejected.items())
                                 + "; lower --mae-threshold/--dice-threshold or train the models longer")
            self.candidates += 1
            f, background = self._structure()
            keep, error = passes_structure_filter(f, background, self.mae_threshold)
            if not keep:
                self.rejected["structure"] += 1
                continue
            label = None
            for _ in range(self.label_attempts):
                drawn = self.transform(self.bank[self.rng.integers(len(self.bank))], self.rng)
                if drawn.any() and label_inside_brain(drawn, background):
                    label = drawn
                    break
                self.rejected["label_outside_brain"] += 1
            if label is None:
                continue
            brain = 1.0 - background
            images = self.generator.generate(torch.from_numpy(f)[None, None],
                                             torch.from_numpy(label.astype(np.int64))[None])[0].numpy() * brain
            scores = []
            for i, image in enumerate(images):
                probabilities = self.lesion(torch.from_numpy(image)[None, None], i)
                scores.append(dice(probabilities.argmax(1)[0].numpy(), label))
            if min(scores) < self.dice_threshold:
                self.rejected["dice"] += 1
                continue
            return {"images": images.astype(np.float32), "label": label.astype(np.uint8),
                    "brain": brain.astype(np.uint8), "structure": f.astype(np.uint8),
                    "structure_mae": error, "dice": scores}


def _write(array: np.ndarray, path: Path, spacing: float, dtype) -> str:
    size = tuple(int(n) for n in reversed(array.shape))
    geometry = Geometry(size, (spacing,) * 3, (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    write_volume(Volume(array.astype(np.float32), geometry, str(path)), path, dtype=dtype)
    return path.name


def build(args: argparse.Namespace) -> Path:
    output = Path(args.output)
    if output.exists() and not args.overwrite:
        raise InputError(f"{output}: already exists; choose another --output or pass --overwrite")
    if args.subjects < 1 or args.slices_per_subject < 1:
        raise InputError("--subjects and --slices-per-subject must be >= 1")
    torch.set_num_threads(args.threads)
    builder = Builder(args.structure_model, args.structure_from_scans, args.generator_model, args.labels, args.seed,
                      args.mae_threshold, args.dice_threshold, args.label_attempts, args.max_candidates)
    generator_config, modalities = builder.config, builder.config.modalities
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".partial", dir=output.parent))
    try:
        subjects = []
        for k in range(args.subjects):
            samples = [builder.sample() for _ in range(args.slices_per_subject)]
            name = f"subject_{k:04d}"
            folder = temporary / name
            stack = {key: np.stack([s[key] for s in samples]) for key in ("images", "label", "brain", "structure")}
            files = {m: _write(stack["images"][:, i], folder / f"{m}.nii.gz", args.spacing, np.float32)
                     for i, m in enumerate(modalities)}
            files["lesion_mask"] = _write(stack["label"], folder / "lesion_mask.nii.gz", args.spacing, np.uint8)
            files["brain_mask"] = _write(stack["brain"], folder / "brain_mask.nii.gz", args.spacing, np.uint8)
            files["structure_map"] = _write(stack["structure"], folder / "structure_map.nii.gz", args.spacing, np.uint8)
            subjects.append({"name": name, "files": {key: f"{name}/{v}" for key, v in files.items()},
                             "structure_mae": [round(s["structure_mae"], 6) for s in samples],
                             "dice": [{m: round(d, 6) for m, d in zip(modalities, s["dice"])} for s in samples]})
        write_json(temporary / "manifest.json", {
            "format": FORMAT, "seed": args.seed, "modalities": modalities, "size": generator_config.size,
            "spacing_mm": args.spacing, "slices_per_subject": args.slices_per_subject,
            "structure_source": builder.source,
            "generator_model": str(Path(args.generator_model).resolve()),
            "lesion_scheme": generator_config.scheme,
            "label_source": {"files": builder.label_files, "slices": len(builder.bank),
                             "transform": asdict(builder.transform)},
            "filters": {"mae_threshold": args.mae_threshold, "dice_threshold": args.dice_threshold,
                        "label_attempts": args.label_attempts, "candidates": builder.candidates,
                        "accepted": args.subjects * args.slices_per_subject, "rejected": builder.rejected},
            "subjects": subjects,
        })
        if output.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".old", dir=output.parent))
            os.rename(output, old / output.name)
            os.rename(temporary, output)
            shutil.rmtree(old)
        else:
            os.rename(temporary, output)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return output


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.qu.build_dataset", description=__doc__.splitlines()[0])
    structure = p.add_mutually_exclusive_group(required=True)
    structure.add_argument("--structure-model", help="folder written by training.qu.train_structure (maps from noise)")
    structure.add_argument("--structure-from-scans", nargs="+", metavar="FOLDER",
                           help="real subject folders: structure maps extracted from their slices instead")
    p.add_argument("--generator-model", required=True, help="folder written by training.qu.train_generator")
    p.add_argument("--labels", nargs="+", required=True, help="lesion mask files, or subject folders holding one")
    p.add_argument("--subjects", type=int, required=True)
    p.add_argument("--slices-per-subject", type=int, default=1,
                   help="independent generated slices stacked along z (not a continuous 3D volume)")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--mae-threshold", type=float, default=DEFAULT_MAE_THRESHOLD, help="Algorithm 3 (paper: 0.05)")
    p.add_argument("--dice-threshold", type=float, default=DEFAULT_DICE_THRESHOLD,
                   help="Dice filter on every modality (paper: 0.95); 0 switches it off")
    p.add_argument("--label-attempts", type=int, default=10, help="label draws per structure map")
    p.add_argument("--max-candidates", type=int, default=10000, help="give up after this many candidates")
    p.add_argument("--spacing", type=float, default=1.0,
                   help="voxel size written to the files, mm (generated slices have no physical scale of their own)")
    p.add_argument("--threads", type=int, default=1)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        output = build(args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
