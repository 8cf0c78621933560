"""Model folders of the two Qu stages: ``qu_model.json`` + one safetensors file per network.

A folder is what ``train_structure`` / ``train_generator`` write and ``build_dataset`` reads:
the JSON holds the kind, the config the networks were built from and their file names;
weights go through ``training.checkpoint`` (safetensors only, never a pickle).

Generator folders written before the MRI code discriminator was added have no
``code_discriminator`` weights; they still load (``OPTIONAL``), without that network, which
only training uses.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from MRSynthesisLib.atomic import write_json
from MRSynthesisLib.errors import InputError
from MRSynthesisLib.models.qu_discriminators import (
    MRICodeDiscriminator,
    MRIDiscriminator,
)
from MRSynthesisLib.models.qu_mask_generator import MaskGenerator
from MRSynthesisLib.models.qu_multimodal_generator import MultimodalGenerator
from MRSynthesisLib.models.qu_segmentors import LesionComponents
from MRSynthesisLib.models.qu_structure_vaegan import StructureVAE
from training.checkpoint import CheckpointError, load_weights, save_weights

from .config import QuConfig

MANIFEST = "qu_model.json"
STRUCTURE = "qu-structure"
GENERATOR = "qu-generator"
# Networks a folder may lack (older generator folders): left out of ``load_folder``'s result
# when the manifest does not list them, required when it does.
OPTIONAL = {"code_discriminator"}


def structure_networks(config: QuConfig) -> dict[str, nn.Module]:
    return {"structure_vae": StructureVAE(config.structure_width, config.structure_code_channels),
            "mask_generator": MaskGenerator(config.mask_width)}


def generator_networks(config: QuConfig) -> dict[str, nn.Module]:
    n = len(config.modalities)
    return {"generator": MultimodalGenerator(n, config.n_classes, config.generator_width,
                                             config.generator_code_channels),
            "lesion": LesionComponents(config.scheme, n, config.n_classes, config.segmentor_width),
            "discriminator": MRIDiscriminator(n, config.discriminator_width),
            "code_discriminator": MRICodeDiscriminator(config.generator_code_channels, config.discriminator_width)}


def save_folder(folder: Path, kind: str, config: QuConfig, networks: dict[str, nn.Module],
                extra: dict[str, Any] | None = None, files: Sequence[Path] = ()) -> None:
    """Write into a hidden temporary folder beside ``folder``, then rename it into place.

    An interrupted save leaves no half model under the final name; an existing ``folder``
    (the caller checked ``--overwrite``) is replaced only once the new one is complete.
    ``files`` (e.g. a samples figure) are copied in beside the weights.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
    try:
        for name, network in networks.items():
            save_weights(network, temporary / f"{name}.safetensors")
        for extra_file in files:
            shutil.copy2(extra_file, temporary / Path(extra_file).name)
        write_json(temporary / MANIFEST, {"kind": kind, "config": config.to_dict(),
                                          "weights": {n: f"{n}.safetensors" for n in networks}, **(extra or {})})
        if folder.exists():
            shutil.rmtree(folder)
        os.rename(temporary, folder)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def load_folder(folder: str | Path, kind: str) -> tuple[QuConfig, dict[str, nn.Module], dict[str, Any]]:
    """(config, networks in eval mode, the whole manifest); any problem is an ``InputError`` naming the file."""
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such file; is {folder} a {kind} model folder?") from None
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: not valid JSON ({error})") from None
    if manifest.get("kind") != kind:
        raise InputError(f"{path}: is a {manifest.get('kind')!r} folder, a {kind!r} folder is expected")
    try:
        config = QuConfig.from_dict(manifest["config"])
    except (KeyError, ValueError, TypeError) as error:
        raise InputError(f"{path}: bad config ({error})") from None
    networks = structure_networks(config) if kind == STRUCTURE else generator_networks(config)
    listed = manifest.get("weights", {})
    networks = {name: net for name, net in networks.items() if name not in OPTIONAL or name in listed}
    for name, network in networks.items():
        weights = Path(folder) / f"{name}.safetensors"
        if not weights.is_file():
            raise InputError(f"{weights}: no such file")
        try:
            load_weights(weights, network)
        except (CheckpointError, RuntimeError) as error:
            raise InputError(f"{weights}: {error}") from None
        network.eval()
    return config, networks, manifest
