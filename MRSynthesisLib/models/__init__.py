"""Network architectures, one per file, found by the name a model card gives.

A card's ``architecture.name`` selects the class; the card's inputs, outputs and
``lesion_input`` plus ``architecture.params`` are its constructor arguments. The
mapping is to import paths so that listing models never imports torch code needlessly.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

ARCHITECTURES: dict[str, str] = {
    "chartsias2018": "MRSynthesisLib.models.chartsias:ChartsiasMIMO",
    "klingelhoefer_ae3d": "MRSynthesisLib.models.klingelhoefer_ae3d:KlingelhoeferAE3D",
    "wei2019_fcn3d": "MRSynthesisLib.models.wei_fcn3d:WeiFCN3D",
}


def register(name: str, target: str | type) -> None:
    """Make an architecture available under ``name`` (a class or a 'module:Class' path)."""
    ARCHITECTURES[name] = target  # type: ignore[assignment]


def architecture_class(name: str) -> type[nn.Module]:
    if name not in ARCHITECTURES:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    target = ARCHITECTURES[name]
    if isinstance(target, type):
        return target
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def build(name: str, inputs: Sequence[str], outputs: Sequence[str], lesion_input: bool,
          params: Mapping[str, Any]) -> nn.Module:
    """Instantiate architecture ``name`` for the given modalities with card parameters."""
    return architecture_class(name)(inputs=list(inputs), outputs=list(outputs), lesion_input=lesion_input, **params)
