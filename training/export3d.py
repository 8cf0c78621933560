"""A trained 3D network as a model folder whose card says how inference must use it.

The card holds the architecture's normalisation (the one the volumes were loaded with), the
output intensity scale (``training.export.output_intensity`` over the training volumes, same
spec), the training patch size, and whether inputs may be missing: "any_subset" only for a
network trained with input dropout (it has presence-flag channels and has seen zeroed
inputs), otherwise "all_required", so inference refuses an absent input instead of feeding
the network a zero channel it never learnt to read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from MRSynthesisLib.cards import ModelCard, save_model

from .config3d import Train3DConfig


def write_model_folder(network: nn.Module, config: Train3DConfig, folder: Path, *, intensity: dict[str, dict],
                       subjects: Mapping[str, Sequence[dict[str, str]]], metrics: dict[str, Any],
                       command: str, spacing_mm: list[float] | None) -> Path:
    """Save ``network`` with its card to ``folder`` (replacing an earlier export of the same run)."""
    card = ModelCard(
        name=config.name,
        architecture=config.architecture,
        inputs=list(config.inputs),
        outputs=list(config.outputs),
        normalisation=config.normalisation.to_dict(),
        spatial_dims=3,
        params=config.network_params(),
        lesion_input=config.lesion_input,
        plane=None,  # a 3D network sees the volume in the file's own axis order, not a plane
        missing_inputs="any_subset" if config.input_dropout else "all_required",
        output_intensity=intensity,
        patch_size=[config.patch_size] * 3,
        spacing_mm=spacing_mm,
        version=config.version,
        description=config.description,
        training={"subjects": dict(subjects), "credits": list(config.credits),
                  "recipe": {"command": command, "config": config.to_dict()}},
        metrics=metrics,
    )
    return save_model(card, network, folder, overwrite=True)
