"""Adding outputs to a trained model (Chartsias et al. 2018, Sec. VI-E: "we add just a DWI
decoder that we then train in isolation").

A config with ``"extend": "<model folder>"`` loads that folder with
``MRSynthesisLib.cards.load_model`` (safetensors; nothing is unpickled), checks that the
config describes the same network (inputs, lesion channel, fusion, filters, latent width),
adds a freshly initialised decoder for each config output the card lacks and freezes every
other parameter. The loop then trains only those decoders, with the cost restricted to the
new outputs; the exported card lists the base outputs plus the new ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from MRSynthesisLib.cards import ModelCard, file_sha256, load_model
from MRSynthesisLib.errors import InputError
from MRSynthesisLib.models.chartsias import ChartsiasMIMO
from MRSynthesisLib.preprocessing import NormalisationSpec

from .config import TrainConfig


@dataclass
class Base:
    """The model being extended: its card, its network (new decoders added, the rest frozen), what is new."""

    card: ModelCard
    network: ChartsiasMIMO
    folder: Path
    new_outputs: list[str]
    weights_sha256: str

    @property
    def normalisation(self) -> NormalisationSpec:
        return NormalisationSpec.from_dict(self.card.normalisation)

    def provenance(self) -> dict[str, Any]:
        """What the card's ``training.extends`` records: which model this one was built on."""
        return {"name": self.card.name, "version": self.card.version, "weights_sha256": self.weights_sha256,
                "folder": str(self.folder), "outputs": list(self.card.outputs), "new_outputs": list(self.new_outputs),
                "trained": "only the decoders of new_outputs; encoders and the other decoders are the base's, "
                           "bit for bit",
                "base_training": self.card.training, "base_metrics": self.card.metrics}


def check_matches(config: TrainConfig, card: ModelCard) -> None:
    """Refuse a config that would describe another network than the card's, naming every mismatch."""
    params = card.params or {}
    pairs = {
        "architecture": (ChartsiasMIMO.ARCHITECTURE, card.architecture),
        "plane": ("axial", card.plane),  # training takes axial slices
        "inputs": (list(config.inputs), list(card.inputs)),
        "lesion_input": (config.lesion_input, card.lesion_input),
        "fusion": (config.fusion, params.get("fusion", "max")),
        "filters": (list(config.filters), list(params.get("filters", [32, 64, 128]))),
        "latent_channels": (config.latent_channels, params.get("latent_channels", 16)),
    }
    if config.spacing_mm is not None:  # the scale the frozen encoders learnt; null: the subjects' own voxels
        pairs["spacing_mm"] = (list(config.spacing_mm), card.spacing_mm)
    wrong = [f"{key}: config {mine!r} but card {theirs!r}" for key, (mine, theirs) in pairs.items() if mine != theirs]
    if wrong:
        raise InputError(f"extend: the config does not describe the network of {config.extend} ({card.name!r}): "
                         + "; ".join(wrong) + ". Copy these values from the card: only new outputs may be added.")


def load_base(config: TrainConfig) -> Base:
    """Load ``config.extend``, check it, add the new decoders and freeze everything else."""
    folder = Path(config.extend or "")
    loaded = load_model(folder)
    card = loaded.card
    check_matches(config, card)
    new = [m for m in config.outputs if m not in card.outputs]
    if not new:
        raise InputError(f"extend: every config output {config.outputs} is already an output of {folder} "
                         f"({card.outputs}); list at least one new output")
    if config.lesion_input and config.lesion_fallback != "zeros" and "FLAIR" not in [*config.inputs, *new]:
        raise InputError(f"extend: lesion_fallback '{config.lesion_fallback}' needs FLAIR among the inputs or the new "
                         "outputs (the base's outputs are not loaded); use 'zeros' or give FLAIR")
    network = loaded.network
    # a training setting the card does not carry; new decoders inherit it
    network.output_gradient = config.output_gradient
    for m in new:
        network.add_output(m)
    network.freeze_all_but(new)
    network.train()
    checksum = card.weights_sha256 or file_sha256(folder / card.weights)
    return Base(card, network, folder, new, checksum)


def working_config(config: TrainConfig, base: Base) -> TrainConfig:
    """The config the loop trains and validates with: outputs = the new ones only, and no c2.

    c1 and c3 are taken with the new outputs as the only references (each input's latent
    alone, and the fused latent, decoded by the new decoders). c2 (the variance of the
    encoders' latents) depends only on the frozen encoders: a constant without gradient. It
    is dropped (weight 0) rather than carried as an offset, so the logged and monitored
    ``total`` is exactly what the new decoders minimise: w1*c1 + w3*c3 over the new outputs.
    """
    w1, _, w3 = config.loss_weights
    return dataclasses.replace(config, outputs=list(base.new_outputs), loss_weights=[w1, 0.0, w3])
