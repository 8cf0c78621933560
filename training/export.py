"""The trained network as a model folder: the card says everything inference needs.

The card's normalisation is the one ``datasets`` applied; its output intensity is the
median, over the training volumes, of each output's normalisation statistics
(``preprocessing.reference_stats``), so a synthetic image is returned on a typical scale
of its contrast. The recipe (config and command) is in the card, so the model can be
retrained from the card alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from MRSynthesisLib.cards import ModelCard, save_model
from MRSynthesisLib.logic import COARSER_THAN_MODEL, voxel_size_text
from MRSynthesisLib.models.chartsias import ChartsiasMIMO
from MRSynthesisLib.preprocessing import NormalisationSpec, reference_stats

from .config import TrainConfig
from .datasets import NORMALISATION


def output_intensity(raws: Sequence[Mapping[str, np.ndarray]], brains: Sequence[np.ndarray], outputs: Sequence[str],
                     spec: NormalisationSpec = NORMALISATION) -> dict[str, dict]:
    """{output: IntensityStats dict} over the training volumes: ``raws`` a subject's output -> raw array, in the
    order of ``brains``; an output is taken over the subjects that hold it (``incomplete_subjects``)."""
    return {m: reference_stats([r[m] for r in raws if m in r], [b for r, b in zip(raws, brains) if m in r],
                               spec).to_dict() for m in outputs}


def training_spacing(spacings: Sequence[Sequence[float] | None]) -> list[float] | None:
    """The card's ``spacing_mm``: the median voxel spacing of the training subjects along each patient axis
    (inference resamples coarser inputs onto it); None when a subject's is unknown."""
    if not spacings or any(s is None for s in spacings):
        return None
    return [float(v) for v in np.median(np.asarray(spacings, float), axis=0)]


def spacing_outliers(names: Sequence[str], spacings: Sequence[Sequence[float] | None],
                     slice_plane_only: bool = False) -> list[str]:
    """A line per training subject whose voxels differ from the median (``training_spacing``) by more than
    inference's ``COARSER_THAN_MODEL`` along an axis the network convolves over (``slice_plane_only``: a 2D
    model's axial slices, left-right and anterior-posterior): the network learns that subject at another
    scale, and inference will resample only inputs coarser than the median."""
    median = training_spacing(spacings)
    if median is None:
        return []
    axes = 2 if slice_plane_only else 3
    return [f"training subject {name}: voxels of {voxel_size_text(spacing)} (left-right x anterior-posterior x "
            f"superior-inferior) against the subjects' median {voxel_size_text(median)}; the model learns it at "
            "another scale (\"spacing_mm\" in the recipe brings finer subjects to one; training/README.md)"
            for name, spacing in zip(names, spacings)
            if any(max(s, m) > COARSER_THAN_MODEL * min(s, m) for s, m in zip(spacing[:axes], median[:axes]))]


def network_params(config: TrainConfig) -> dict[str, Any]:
    return {"latent_channels": config.latent_channels, "filters": list(config.filters), "fusion": config.fusion}


def write_model_folder(network: nn.Module, config: TrainConfig, folder: Path, *, intensity: dict[str, dict],
                       subjects: Mapping[str, Sequence[dict[str, str]]], metrics: dict[str, Any],
                       command: str, spacing_mm: list[float] | None, base: Any = None) -> Path:
    """Save ``network`` with its card to ``folder`` (replacing an earlier export of the same run).

    ``base`` (a ``training.extend.Base``) marks an extension: the card keeps the base card's
    inputs, normalisation and output intensities, lists its outputs plus the new ones (the
    network's), and records the base model in ``training.extends``. ``spacing_mm``: ``training_spacing``
    of the training subjects (an extension keeps the base card's: its encoders learnt the base's scale).
    """
    if base is not None:
        credits = list(dict.fromkeys([*config.credits, *base.card.training.get("credits", [])]))
        card = ModelCard(
            name=config.name,
            architecture=base.card.architecture,
            inputs=list(base.card.inputs),
            outputs=list(network.outputs),
            normalisation=dict(base.card.normalisation),
            spatial_dims=base.card.spatial_dims,
            params=dict(base.card.params),
            lesion_input=base.card.lesion_input,
            plane=base.card.plane,
            missing_inputs=base.card.missing_inputs,
            output_intensity={**base.card.output_intensity, **intensity},
            spacing_mm=base.card.spacing_mm,
            version=config.version,
            description=config.description,
            training={"subjects": dict(subjects), "credits": credits, "extends": base.provenance(),
                      "recipe": {"command": command, "config": config.to_dict()}},
            metrics=metrics,
        )
        return save_model(card, network, folder, overwrite=True)
    card = ModelCard(
        name=config.name,
        architecture=ChartsiasMIMO.ARCHITECTURE,
        inputs=list(config.inputs),
        outputs=list(config.outputs),
        normalisation=NORMALISATION.to_dict(),
        spatial_dims=ChartsiasMIMO.SPATIAL_DIMS,
        params=network_params(config),
        lesion_input=config.lesion_input,
        plane="axial",
        missing_inputs="any_subset",
        output_intensity=intensity,
        spacing_mm=spacing_mm,
        version=config.version,
        description=config.description,
        training={"subjects": dict(subjects), "credits": list(config.credits),
                  "recipe": {"command": command, "config": config.to_dict()}},
        metrics=metrics,
    )
    return save_model(card, network, folder, overwrite=True)
