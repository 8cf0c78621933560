"""The recipe of a 3D run (Wei et al.'s FCN, Klingelhoefer & Rousseau's autoencoder): one JSON file.

Like ``training.config``: every key is checked and unknown keys are errors, because a
misspelt key that silently fell back to a default would train another model than the one
asked for. The papers' settings are not defaults here; the bundled configs spell them out.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from MRSynthesisLib import modalities
from MRSynthesisLib.models import architecture_class
from MRSynthesisLib.preprocessing import NormalisationSpec

from .config import PRECISIONS, AugmentConfig, check_common_ranges, check_spacing
from .config_io import check_keys, load_config_file
from .run_folder import check_model_name

# The normalisation is the architecture's, as its paper describes it (see preprocessing.py):
# Wei et al. z-score every sequence, Klingelhoefer & Rousseau divide by 3x the mean of the
# non-zero voxels (their sigmoid output needs targets inside (0, 1)).
NORMALISATIONS = {
    "wei2019_fcn3d": NormalisationSpec("zscore"),
    "klingelhoefer_ae3d": NormalisationSpec("three_mean_nonzero"),
}
OPTIMISERS = ("sgd", "adam")
LOSSES = ("mse", "mae")
# Set by the config's own keys, so 'params' may not repeat them.
RESERVED_PARAMS = ("inputs", "outputs", "lesion_input", "input_dropout")
# Keys that may change on --resume: they bound how long the run goes on, how fast it computes
# or where its folder is, not what a step computes.
RESUMABLE_CHANGES = ("epochs", "max_minutes", "threads", "out")
# The 2D trainer's "ignore" needs per-pixel cost weights, which the 3D losses do not take.
LESION_FALLBACKS = ("flair", "zeros")


@dataclass
class Train3DConfig:
    """Everything a 3D training run depends on; see training/README.md, section "3D models"."""

    name: str
    architecture: str
    data: list[str]  # folders (BraTS or MS naming) and/or CSV manifests, as in training.config
    inputs: list[str]
    outputs: list[str]
    optimiser: str  # Wei: "sgd"; Klingelhoefer: "adam"
    learning_rate: float  # Wei: 0.0005; Klingelhoefer: Keras' Adam default 0.001 (the paper gives none)
    batch_size: int  # Wei: 1; Klingelhoefer: 32
    patch_size: int  # input patch edge; the target is its central crop (see training.patches3d)
    loss: str  # both papers: "mse"
    epochs: int
    steps_per_epoch: int
    patch_step: int | None = None  # Klingelhoefer's extraction grid (16); null for Wei's random crops
    params: dict[str, Any] = field(default_factory=dict)  # architecture arguments (filters, layers)
    out: str = "runs/train3d"
    description: str = ""
    version: str = "0.1.0"
    credits: list[str] = field(default_factory=list)
    validation_subjects: list[str] = field(default_factory=list)
    validation_patches: int = 64  # fixed validation patches per epoch: enough to rank epochs, cheap on a CPU
    lesion_input: bool = False
    lesion_fallback: str = "flair"  # as training.config, for subjects without a lesion mask
    lesion_flair_z: float = 3.0
    lesion_min_voxels: int = 20
    input_dropout: bool = False
    # A subject lacking some of the sequences trains on those it holds (as training.config's key): its inputs
    # only with input_dropout (a network without presence flags needs every input), its outputs in any case.
    incomplete_subjects: bool = False
    # Flips, rotation, zoom and intensity jitter of the training windows (training.augment3d), the 2D recipe's
    # keys; null (the papers): none. thick_slice_mm is the 2D trainer's only.
    augment: AugmentConfig | None = None
    # voxel size (mm; left-right, anterior-posterior, inferior-superior) that subjects with finer voxels (by
    # more than 20 % along any axis) are resampled to; coarser ones keep theirs (null: all keep theirs)
    spacing_mm: list[float] | None = None
    # Prechelt's UP_p early stopping (Wei: q = 5, p = 3); strips null = a fixed schedule.
    strip_length: int = 5
    strips: int | None = None
    max_minutes: float | None = None
    seed: int = 0
    threads: int | None = None
    precision: str = "auto"

    @property
    def normalisation(self) -> NormalisationSpec:
        return NORMALISATIONS[self.architecture]

    @property
    def network_class(self) -> type:
        return architecture_class(self.architecture)

    def build_network(self) -> Any:
        """A freshly initialised network (draws from torch's global generator)."""
        return self.network_class(self.inputs, self.outputs, lesion_input=self.lesion_input, **self.network_params())

    @property
    def margin(self) -> int:
        """Input voxels each side of the target patch: a valid network's CROP (the AE: 11, what its
        output lacks), else the same-padded network's HALO (the FCN: its depth; see
        training.patches3d for why the FCN's halo is left out of the loss)."""
        with torch.random.fork_rng(devices=[]):  # asking must not shift a seeded run's random draws
            network = self.build_network()
        return int(network.CROP) or int(network.HALO)

    @property
    def target_size(self) -> int:
        return self.patch_size - 2 * self.margin

    def network_params(self) -> dict[str, Any]:
        """The model's constructor arguments besides the modalities (the card's ``params``)."""
        return {**self.params, "input_dropout": self.input_dropout}

    def validate(self) -> None:
        check_model_name(self.name)
        if self.architecture not in NORMALISATIONS:
            raise ValueError(f"architecture must be one of {sorted(NORMALISATIONS)}, got {self.architecture!r}")
        if not self.data:
            raise ValueError("data must list at least one folder or CSV manifest")
        for label in ("inputs", "outputs"):
            names = [modalities.canonical(n) for n in getattr(self, label)]
            if not names or len(set(names)) != len(names):
                raise ValueError(f"{label} must list distinct modalities, got {getattr(self, label)}")
            setattr(self, label, names)
        if set(self.inputs) & set(self.outputs):
            both = sorted(set(self.inputs) & set(self.outputs))
            raise ValueError(f"a modality cannot be both input and output: {both}")
        reserved = sorted(set(self.params) & set(RESERVED_PARAMS))
        if reserved:
            raise ValueError(f"params may not set {reserved}; they are config keys of their own")
        if self.lesion_fallback not in LESION_FALLBACKS:
            raise ValueError(f"lesion_fallback must be one of {LESION_FALLBACKS}")
        if self.lesion_input and self.lesion_fallback == "flair" and "FLAIR" not in self.inputs + self.outputs:
            raise ValueError("lesion_fallback 'flair' needs FLAIR among the inputs or outputs")
        if self.input_dropout and len(self.inputs) < 2:
            raise ValueError("input_dropout needs at least two inputs (one is always kept)")
        if self.optimiser not in OPTIMISERS:
            raise ValueError(f"optimiser must be one of {OPTIMISERS}, got {self.optimiser!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}")
        check_common_ranges(self)
        for name in ("batch_size", "epochs", "steps_per_epoch", "validation_patches", "strip_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.strips is not None and self.strips < 1:
            raise ValueError("strips must be >= 1, or null for a fixed schedule")
        check_spacing(self.spacing_mm)
        if self.augment is not None:
            self.augment.validate()
            if self.augment.thick_slice_mm:
                raise ValueError("augment.thick_slice_mm is the 2D trainer's; a 3D recipe takes 0 there")
        if self.strips is not None and not self.validation_subjects:
            raise ValueError("early stopping (strips) needs validation_subjects to measure the generalisation error")
        try:  # the network must accept the params; built once here so a bad key fails before data loading
            margin = self.margin
        except TypeError as error:
            raise ValueError(f"params do not fit {self.architecture}: {error}") from None
        if self.patch_size - 2 * margin < 1:
            raise ValueError(f"patch_size {self.patch_size} leaves no target: it must exceed 2 x {margin}")
        if self.architecture == "klingelhoefer_ae3d":
            self.network_class.output_size(self.patch_size)  # raises for a size the pooling cannot take
            if self.patch_step is None or self.patch_step < 1:
                raise ValueError("klingelhoefer_ae3d samples on a grid: patch_step must be a positive integer")
        elif self.patch_step is not None:
            raise ValueError("wei2019_fcn3d samples random crops: patch_step must be null")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: Path | None = None) -> Train3DConfig:
        """Parse a config; relative ``data`` paths are taken relative to ``base`` (the file's folder)."""
        check_keys(cls, data, custom=("augment",))
        values = dict(data)
        augment = values.pop("augment", None)
        if augment is not None:
            if not isinstance(augment, dict):
                raise ValueError(f"augment must be null or an object of keys, got {augment!r}")
            check_keys(AugmentConfig, augment, "augment")
            values["augment"] = AugmentConfig(**augment)
        if base is not None:
            values["data"] = [p if os.path.isabs(p) else str((base / p).resolve()) for p in values["data"]]
        config = cls(**values)
        config.validate()
        return config


def load_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> Train3DConfig:
    """Read a JSON config; ``overrides`` (from the command line) replace top-level keys. Any problem
    is an ``InputError`` naming the file."""
    return load_config_file(path, overrides, lambda data, base: Train3DConfig.from_dict(data, base=base))
