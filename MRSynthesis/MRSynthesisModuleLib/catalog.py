"""The models the panel offers: `mrsynthesis models --json`, plus model folders the user added.

The list comes from the command line, so the panel shows exactly what a run would find.
Folders the user adds (a model folder, or a folder of model folders) are kept in the
application settings and handed to the command line in ``MRSYNTHESIS_MODEL_PATH``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

SETTINGS_KEY = "MRSynthesis/ModelFolders"


@dataclass
class ModelInfo:
    """One entry of `models --json`; ``problem`` says why an unusable one cannot run."""

    name: str
    folder: str
    origin: str
    inputs: list[str]
    outputs: list[str]
    lesion_input: bool = False
    spatial_dims: int = 2
    plane: Optional[str] = None
    spacing_mm: Optional[list[float]] = None  # the training voxels; coarser inputs are synthesised on them
    problem: Optional[str] = None

    @classmethod
    def from_entry(cls, entry: dict[str, Any]) -> "ModelInfo":
        card = entry.get("card") or {}
        return cls(name=entry["name"], folder=entry["folder"], origin=entry["origin"],
                   inputs=list(card.get("inputs", [])), outputs=list(card.get("outputs", [])),
                   lesion_input=bool(card.get("lesion_input", False)), spatial_dims=int(card.get("spatial_dims", 2)),
                   plane=card.get("plane"), spacing_mm=card.get("spacing_mm"), problem=entry.get("problem"))

    @property
    def label(self) -> str:
        return f"{self.name} ({self.origin})" + (" - unusable" if self.problem else "")

    def summary(self) -> str:
        if self.problem:
            return f"This model cannot be used: {self.problem}"
        kind = f"2D, slice by slice ({self.plane})" if self.spatial_dims == 2 else "3D"
        if self.spacing_mm:
            kind += f", trained on {' x '.join(f'{v:.3g}' for v in self.spacing_mm)} mm voxels"
        lesion = "; takes a lesion mask" if self.lesion_input else ""
        return f"Inputs: {', '.join(self.inputs)}\nOutputs: {', '.join(self.outputs)}\n{kind}{lesion}"


class ModelCatalog:
    """User model folders (remembered in ``settings``) and the parsed model list."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.models: list[ModelInfo] = []

    @property
    def user_folders(self) -> list[str]:
        stored = self.settings.value(SETTINGS_KEY, "")
        return json.loads(stored) if stored else []

    def add_folder(self, folder: str) -> None:
        folders = self.user_folders
        if folder not in folders:
            self.settings.setValue(SETTINGS_KEY, json.dumps([*folders, folder]))

    def search_folders(self) -> list[str]:
        """What MRSYNTHESIS_MODEL_PATH gets: the added folders (each a model or a folder of models)."""
        return self.user_folders

    def update(self, stdout: str) -> list[ModelInfo]:
        """Read the output of `models --json`."""
        self.models = [ModelInfo.from_entry(entry) for entry in json.loads(stdout)]
        return self.models
