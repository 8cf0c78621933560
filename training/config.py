"""The training recipe: one JSON file, every key checked, nothing implicit.

A run is reproducible from its config alone (plus the seed inside it), so the config is
copied into the run folder and into the model card. Unknown keys are errors: a misspelt
key silently falling back to a default would train a different model than the one asked for.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from MRSynthesisLib import modalities
from MRSynthesisLib.models.chartsias import OUTPUT_GRADIENTS, ChartsiasMIMO

from .config_io import check_keys, load_config_file
from .run_folder import check_model_name

LESION_FALLBACKS = ("flair", "zeros", "ignore")
INPUT_SUBSETS = ("random", "all")
PRECISIONS = ("auto", "fp32", "bf16")
# What early stopping may watch, and the validation column each names: the synthesis tasks' mean MSE, or
# the training cost (c1 + c2 + c3 as weighted for training) on the fixed validation crops.
MONITORS = {"val_mse": "val_mse", "val_loss": "val_total"}
# Keys that may change between a run and its --resume: they bound how long the run goes on,
# how fast it computes, where its folder is or how the model is described, not what a step
# computes. The anneal keys may change too where the steps already taken keep their rates
# (training/schedule.py), and average_epochs where they keep their place in or out of the
# average (training/averaging.py); loop._check_resumable.
RESUMABLE_CHANGES = ("epochs", "max_minutes", "threads", "patience", "out", "name", "description", "version", "credits")
SCHEDULE_KEYS = ("lr_decay_epochs", "lr_final_fraction")
AVERAGE_KEYS = ("average_epochs",)


@dataclass
class AugmentConfig:
    """Random perturbations of training crops; a range of 0 switches a transform off.

    Geometric transforms (flips, rotation, scaling) move every modality and the lesion
    mask together; intensity transforms (gamma, scale, bias field) change each input
    modality independently and never the targets, so the network learns to map a
    slightly-off input to the clean reference it will be judged against.
    """

    flip: bool = True  # each in-plane axis with probability 1/2 (L-R; and A-P, since data come LAS and LPS)
    rotate_degrees: float = 10.0  # uniform in [-r, r]
    scale: float = 0.1  # zoom factor uniform in [1 - s, 1 + s]
    gamma: float = 0.3  # log(gamma) uniform in [-g, g], MONAI AdjustContrast
    intensity_scale: float = 0.1  # multiply by uniform [1 - s, 1 + s]
    # MONAI RandBiasField coefficients in [0, b], degree 3 (0.05: field within ~0.85-1.3 on a 64-pixel crop)
    bias_field: float = 0.05
    probability: float = 0.5  # each transform but flips and thick slices applies to a crop with this probability
    # An input as if acquired in thick 2D slices along one random axis and resampled back (augment.py):
    # slices up to this thick (mm; 0 = off), for each input of a sample with thick_slice_probability.
    thick_slice_mm: float = 0.0
    thick_slice_probability: float = 0.25

    def validate(self) -> None:
        for name in ("rotate_degrees", "scale", "gamma", "intensity_scale", "bias_field", "thick_slice_mm"):
            if not getattr(self, name) >= 0:  # not "< 0": NaN must fail too
                raise ValueError(f"augment.{name} must be >= 0")
        if self.scale >= 1 or self.intensity_scale >= 1:
            raise ValueError("augment.scale and augment.intensity_scale must be < 1")
        for name in ("probability", "thick_slice_probability"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"augment.{name} must be in [0, 1]")


def check_common_ranges(config: Any) -> None:
    """The ranges of the keys the 2D and 3D recipes share, which the key types alone do not bound."""
    if not config.learning_rate > 0:
        raise ValueError("learning_rate must be > 0")
    if config.max_minutes is not None and not config.max_minutes > 0:
        raise ValueError("max_minutes must be > 0, or null for no time budget")
    if config.seed < 0:
        raise ValueError("seed must be >= 0 (numpy's seeds are)")
    if config.threads is not None and config.threads < 1:
        raise ValueError("threads must be >= 1, or null for torch's default")
    if not config.lesion_flair_z >= 0:
        raise ValueError("lesion_flair_z must be >= 0")
    if config.lesion_min_voxels < 0:
        raise ValueError("lesion_min_voxels must be >= 0")


def check_spacing(spacing_mm: list[float] | None) -> None:
    """A recipe's ``spacing_mm``: null, or three positive voxel sizes in mm."""
    if spacing_mm is not None and (len(spacing_mm) != 3 or not all(v > 0 for v in spacing_mm)):
        raise ValueError("spacing_mm must be null or three positive voxel sizes in mm (left-right, "
                         f"anterior-posterior, inferior-superior), not {spacing_mm!r}")


@dataclass
class TrainConfig:
    """Everything a training run depends on; see training/README.md for each choice."""

    name: str
    data: list[str]  # folders (BraTS or MS naming) and/or CSV manifests
    inputs: list[str]
    outputs: list[str]
    out: str = "runs/train"
    description: str = ""
    version: str = "0.1.0"
    credits: list[str] = field(default_factory=list)  # data sets' authors and licences, copied to the card
    # Add outputs to an existing model folder (Sec. VI-E): its encoders and decoders stay frozen,
    # only a new decoder per config output the card lacks is trained (training/extend.py).
    extend: str | None = None
    # split by subject: explicit names win; else a seeded random fraction of subjects
    validation_subjects: list[str] = field(default_factory=list)
    validation_fraction: float = 0.0
    split_seed: int = 0
    # Train on subjects that lack some sequences (each serves the steps whose inputs it holds, and the cost
    # skips the outputs it lacks: training/README.md "Incomplete cohorts"). Off by default: a sequence the
    # folder naming did not recognise would otherwise be left out without a word.
    incomplete_subjects: bool = False
    # lesion channel
    lesion_input: bool = True
    # for subjects without a lesion mask; training/README.md "The lesion channel" compares the choices
    lesion_fallback: str = "flair"
    lesion_flair_z: float = 3.0
    lesion_min_voxels: int = 20
    # fraction of crops centred on an expert-labelled lesion voxel (nnU-Net oversamples foreground 33 %)
    lesion_crop_fraction: float = 0.0
    # weight of the lesion channel's pixels in the cost, other pixels 1 (1 = the paper's cost):
    # training/README.md "The lesion channel"
    lesion_loss_weight: float = 1.0
    # network (paper: 16 latent channels, 32/64/128 filters, max fusion)
    latent_channels: int = 16
    filters: list[int] = field(default_factory=lambda: [32, 64, 128])
    fusion: str = "max"
    # how the decoders' output ReLU passes gradients in training: "relu" (ref) or "pass_through"
    # (straight-through, so an output cannot die; same forward values): training/README.md "Dead outputs"
    output_gradient: str = "relu"
    # cost and optimiser (paper: c1 + c2 + c3, Adam with Keras' defaults, batch 16)
    loss_weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    input_subsets: str = "random"
    learning_rate: float = 1e-3
    # anneal: Adam's rate constant, then a half cosine to learning_rate * lr_final_fraction over
    # the last lr_decay_epochs epochs (0: constant throughout, the paper's); training/schedule.py
    lr_decay_epochs: int = 0
    lr_final_fraction: float = 0.01
    # weight averaging: the model is the mean of the weights after every step of the last
    # average_epochs epochs (0: the last step's weights, the paper's); training/averaging.py
    average_epochs: int = 0
    batch_size: int = 16
    # voxel size (mm; left-right, anterior-posterior, inferior-superior) that subjects with finer voxels (by
    # more than 20 % in the slice plane) are resampled to; coarser ones keep theirs (null: all keep theirs)
    spacing_mm: list[float] | None = None
    # sampling
    crop_size: int = 64
    min_slice_brain_fraction: float = 0.05
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # schedule
    epochs: int = 10
    steps_per_epoch: int = 100
    patience: int = 5
    monitor: str = "val_mse"
    max_minutes: float | None = None
    seed: int = 0
    # validation
    val_slice_stride: int = 8
    val_loss_batches: int = 4
    # speed
    precision: str = "auto"
    channels_last: bool = True
    threads: int | None = None

    def validate(self) -> None:
        check_model_name(self.name)
        if not self.data:
            raise ValueError("data must list at least one folder or CSV manifest")
        for label in ("inputs", "outputs"):
            names = [modalities.canonical(n) for n in getattr(self, label)]
            if not names or len(set(names)) != len(names):
                raise ValueError(f"{label} must list distinct modalities, got {getattr(self, label)}")
            setattr(self, label, names)
        if self.lesion_fallback not in LESION_FALLBACKS:
            raise ValueError(f"lesion_fallback must be one of {LESION_FALLBACKS}")
        if self.lesion_input and self.lesion_fallback != "zeros" and "FLAIR" not in self.inputs + self.outputs:
            raise ValueError(f"lesion_fallback '{self.lesion_fallback}' needs FLAIR among the inputs or outputs")
        if not 0 <= self.lesion_crop_fraction < 1:
            raise ValueError("lesion_crop_fraction must be in [0, 1)")
        if not self.lesion_loss_weight >= 1:
            raise ValueError("lesion_loss_weight must be >= 1 (1: every pixel weighs the same, the paper's cost)")
        if self.lesion_loss_weight != 1 and not self.lesion_input:
            raise ValueError("lesion_loss_weight needs lesion_input (the lesion masks are read only with it)")
        if self.lesion_crop_fraction and not self.lesion_input:
            raise ValueError("lesion_crop_fraction needs lesion_input (the lesion masks are read only with it)")
        if self.output_gradient not in OUTPUT_GRADIENTS:
            raise ValueError(f"output_gradient must be one of {OUTPUT_GRADIENTS}")
        if len(self.loss_weights) != 3 or min(self.loss_weights) < 0 or not any(self.loss_weights):
            raise ValueError(f"loss_weights must be [w1, w2, w3], none negative and not all 0, got {self.loss_weights}")
        if self.extend is not None and not (self.loss_weights[0] or self.loss_weights[2]):
            raise ValueError("extend trains only new decoders, which c2 does not reach: "
                             "loss_weights needs w1 or w3 > 0")
        if self.input_subsets not in INPUT_SUBSETS:
            raise ValueError(f"input_subsets must be one of {INPUT_SUBSETS}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}")
        if self.monitor not in MONITORS:
            raise ValueError(f"monitor must be one of {list(MONITORS)}")
        if self.crop_size < ChartsiasMIMO.SIZE_MULTIPLE or self.crop_size % ChartsiasMIMO.SIZE_MULTIPLE:
            raise ValueError(f"crop_size must be a positive multiple of {ChartsiasMIMO.SIZE_MULTIPLE}")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError("validation_fraction must be in [0, 1)")
        if self.split_seed < 0:
            raise ValueError("split_seed must be >= 0")
        for name in ("batch_size", "epochs", "steps_per_epoch", "patience", "val_slice_stride", "val_loss_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        check_common_ranges(self)
        if not 0 <= self.min_slice_brain_fraction < 1:
            raise ValueError("min_slice_brain_fraction must be in [0, 1): the fraction of a slice that is brain")
        # the network's own checks (fusion, filters, latent_channels), before any volume is loaded
        ChartsiasMIMO.check_shape(self.filters, self.latent_channels, self.fusion)
        if not 0 <= self.lr_decay_epochs <= self.epochs:
            raise ValueError(f"lr_decay_epochs ({self.lr_decay_epochs}) must be in [0, epochs] (epochs {self.epochs})")
        if not 0 <= self.lr_final_fraction <= 1:
            raise ValueError("lr_final_fraction must be in [0, 1]")
        if not 0 <= self.average_epochs <= self.epochs:
            raise ValueError(f"average_epochs ({self.average_epochs}) must be in [0, epochs] (epochs {self.epochs})")
        check_spacing(self.spacing_mm)
        self.augment.validate()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: Path | None = None) -> "TrainConfig":
        """Parse a config; relative ``data`` paths are taken relative to ``base`` (the file's folder)."""
        check_keys(cls, data, custom=("augment",))
        values = dict(data)
        augment = values.pop("augment", {})
        if not isinstance(augment, dict):
            raise ValueError(f"augment must be an object of keys, got {augment!r}")
        check_keys(AugmentConfig, augment, "augment")
        if base is not None:
            values["data"] = [p if os.path.isabs(p) else str((base / p).resolve()) for p in values["data"]]
            if values.get("extend") and not os.path.isabs(values["extend"]):
                values["extend"] = str((base / values["extend"]).resolve())
        config = cls(**values, augment=AugmentConfig(**augment))
        config.validate()
        return config


def load_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a JSON config; ``overrides`` (from the command line) replace top-level keys. Any problem
    is an ``InputError`` naming the file."""
    return load_config_file(path, overrides, lambda data, base: TrainConfig.from_dict(data, base=base))
