"""Model folders: a JSON card plus safetensors weights.

A model is a folder holding ``card.json`` and the weights file the card names. The card
says everything needed to use the weights on data the model has never seen (architecture,
accepted inputs, outputs, plane, normalisation, output intensity scale), and where the
model came from (training data, licence, credit, metrics). Weights are read with
safetensors, so loading a model never unpickles (never runs) anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import modalities
from . import models as architectures
from .atomic import current_umask, read_json
from .errors import ModelCardError

if TYPE_CHECKING:  # torch is imported only to build or save a network: listing models stays light
    from torch import nn

SCHEMA_VERSION = 1
CARD_NAME = "card.json"
WEIGHTS_NAME = "model.safetensors"
PLANES = ("axial", "coronal", "sagittal")
MISSING_INPUT_POLICIES = ("any_subset", "all_required")


@dataclass
class ModelCard:
    """What a model folder's ``card.json`` holds; ``validate`` says what is wrong with it."""

    name: str
    architecture: str
    inputs: list[str]
    outputs: list[str]
    normalisation: dict[str, Any]
    spatial_dims: int = 2
    params: dict[str, Any] = field(default_factory=dict)
    lesion_input: bool = False
    plane: str | None = "axial"
    # "any_subset": trained to accept any non-empty subset (Chartsias); "all_required":
    # every input must be given, so a missing one is refused rather than zero-filled.
    missing_inputs: str = "any_subset"
    output_intensity: dict[str, dict[str, Any]] = field(default_factory=dict)
    patch_size: list[int] | None = None
    # Voxel spacing (mm) of the training volumes along the patient's left-right, posterior-anterior
    # and inferior-superior axes (``Geometry.anatomical_spacing``, median over the training
    # subjects): inference resamples inputs whose voxels are coarser onto it. None: not recorded.
    spacing_mm: list[float] | None = None
    version: str = "0.0.0"
    description: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    weights: str = WEIGHTS_NAME
    weights_sha256: str | None = None
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "card") -> "ModelCard":
        if not isinstance(data, dict):
            raise ModelCardError(f"{source}: a model card must be a JSON object")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ModelCardError(f"{source}: schema_version {version!r} is not supported "
                                 f"(this MRSynthesis reads version {SCHEMA_VERSION})")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelCardError(f"{source}: unknown card fields {unknown}; known fields: {sorted(known)}")
        missing = sorted(f for f in ("name", "architecture", "inputs", "outputs", "normalisation") if f not in data)
        if missing:
            raise ModelCardError(f"{source}: missing card fields {missing}")
        card = cls(**data)
        card.validate(source)
        return card

    def validate(self, source: str = "card") -> None:
        def fail(message: str) -> None:
            raise ModelCardError(f"{source}: {message}")

        for label in ("inputs", "outputs"):
            names = getattr(self, label)
            if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
                fail(f"'{label}' must be a non-empty list of modality names")
            for name in names:
                if not modalities.is_known(name) or modalities.canonical(name) != name:
                    fail(f"'{label}' holds {name!r}, which is not a canonical modality "
                         f"({', '.join(modalities.CANONICAL)})")
            if len(set(names)) != len(names):
                fail(f"'{label}' repeats a modality: {names}")
        if self.spatial_dims not in (2, 3):
            fail(f"spatial_dims must be 2 or 3, not {self.spatial_dims!r}")
        if self.spatial_dims == 2 and self.plane not in PLANES:
            fail(f"a 2D model needs 'plane' in {PLANES}, not {self.plane!r}")
        if self.missing_inputs not in MISSING_INPUT_POLICIES:
            fail(f"missing_inputs must be one of {MISSING_INPUT_POLICIES}, not {self.missing_inputs!r}")
        if self.architecture not in architectures.ARCHITECTURES:
            fail(f"unknown architecture {self.architecture!r}; known: {', '.join(sorted(architectures.ARCHITECTURES))}")
        if not isinstance(self.params, dict):
            fail("'params' must be an object")
        # Wrongly typed fields would otherwise crash later (AttributeError/TypeError) or, for
        # lesion_input, be taken as truthy ("no" -> a lesion channel).
        if not isinstance(self.name, str) or not self.name:
            fail(f"'name' must be a non-empty string, not {self.name!r}")
        if not isinstance(self.lesion_input, bool):
            fail(f"'lesion_input' must be true or false, not {self.lesion_input!r}")
        if not isinstance(self.output_intensity, dict):
            fail(f"'output_intensity' must be an object (output -> statistics), not {self.output_intensity!r}")
        if not isinstance(self.weights, str) or not self.weights:
            fail(f"'weights' must be the weights file name, not {self.weights!r}")
        if self.spacing_mm is not None and not (
                isinstance(self.spacing_mm, list) and len(self.spacing_mm) == 3
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 100
                        for v in self.spacing_mm)):
            fail(f"'spacing_mm' must be null or three voxel sizes in mm (left-right, posterior-anterior, "
                 f"inferior-superior), not {self.spacing_mm!r}")
        if self.weights_sha256 is not None and not isinstance(self.weights_sha256, str):
            fail(f"'weights_sha256' must be a hex string or null, not {self.weights_sha256!r}")
        from .preprocessing import (  # late: keeps card parsing light
            IntensityStats,
            NormalisationSpec,
        )
        try:
            NormalisationSpec.from_dict(self.normalisation)
            for name, stats in self.output_intensity.items():
                if name not in self.outputs:
                    raise ValueError(f"output_intensity names {name!r}, which is not an output")
                IntensityStats.from_dict(stats)
        except (ValueError, TypeError, KeyError) as error:
            fail(f"bad normalisation or output_intensity: {error}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LoadedModel:
    """A card and its network, weights loaded, in eval mode on the CPU."""

    card: ModelCard
    network: nn.Module
    folder: Path


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file (the card's ``weights_sha256``), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_card(folder: str | os.PathLike) -> ModelCard:
    folder = Path(folder)
    path = folder / CARD_NAME
    if not path.is_file():
        raise ModelCardError(f"{folder}: not a model folder (no {CARD_NAME})")
    return ModelCard.from_dict(read_json(path, ModelCardError), source=str(path))


def build_network(card: ModelCard) -> nn.Module:
    """The card's network; a parameter the card lacks because it was written before the parameter existed takes
    the value the card's model was trained with (the architecture's ``LEGACY_CARD_PARAMS``), not today's default."""
    try:
        legacy = getattr(architectures.architecture_class(card.architecture), "LEGACY_CARD_PARAMS", {})
        return architectures.build(card.architecture, card.inputs, card.outputs, card.lesion_input,
                                   {**legacy, **card.params})
    except (TypeError, ValueError) as error:
        raise ModelCardError(f"card {card.name!r}: architecture parameters do not fit "
                             f"{card.architecture!r}: {error}") from None


def weights_path(folder: str | os.PathLike, card: ModelCard) -> Path:
    """The weights file the card names; a ``ModelCardError`` when it is absent (cheap: listing models
    checks it too, so a folder without its weights is shown as unusable before anyone picks it)."""
    weights = Path(folder) / card.weights
    if not weights.is_file():
        raise ModelCardError(f"{folder}: the card names weights {card.weights!r}, which do not exist")
    return weights


def load_model(folder: str | os.PathLike) -> LoadedModel:
    """Read a model folder; every mismatch between card and weights is a ``ModelCardError``."""
    folder = Path(folder)
    card = read_card(folder)
    weights = weights_path(folder, card)
    if card.weights_sha256 and file_sha256(weights) != card.weights_sha256:
        raise ModelCardError(f"{weights}: checksum differs from the card's weights_sha256 (corrupt or replaced file)")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelCardError(f"{weights}: not a readable safetensors file ({error})") from None
    network = build_network(card)
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelCardError(f"{weights}: does not match the card's architecture; missing {missing[:5]}"
                             f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                             f"{' ...' if len(unexpected) > 5 else ''}")
    wrong = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if state[k].shape != v.shape]
    if wrong:
        raise ModelCardError(f"{weights}: tensor shapes do not match the card's architecture ({'; '.join(wrong[:3])})")
    network.load_state_dict(state)
    network.eval()
    return LoadedModel(card, network, folder)


def save_model(card: ModelCard, network: nn.Module, folder: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a model folder atomically (a temporary folder renamed into place)."""
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise ModelCardError(f"{folder}: already exists; choose another folder")
    import torch
    from safetensors.torch import save_file

    # A parameter whose default changed since cards were first written (LEGACY_CARD_PARAMS) is always written,
    # from the network saved, so that build_network reads no card of today as one of before.
    legacy = getattr(type(network), "LEGACY_CARD_PARAMS", {})
    card.params = {**card.params, **{k: getattr(network, k) for k in legacy if k not in card.params}}
    card.validate(str(folder))
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        state = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
                 for k, v in network.state_dict().items()}
        save_file(state, str(staging / card.weights), metadata={"card_name": card.name})
        card.weights_sha256 = file_sha256(staging / card.weights)
        (staging / CARD_NAME).write_text(json.dumps(card.to_dict(), indent=2) + "\n", encoding="utf-8")
        umask = current_umask()  # mkdtemp made the folder private; give the usual modes
        os.chmod(staging, 0o777 & ~umask)
        for item in staging.iterdir():
            os.chmod(item, 0o666 & ~umask)
        if folder.exists():
            backup = folder.with_name(f".{folder.name}.old")
            os.replace(folder, backup)
            os.replace(staging, folder)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder

