"""The models the panel offers: `mrsynthesis models --json`, plus model folders the user added.

The list comes from the command line, so the panel shows exactly what a run would find.
Folders the user adds are kept in the application settings; a folder that is itself a
model is searched through its parent, whose other models are then left out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

SETTINGS_KEY = "MRSynthesis/ModelFolders"
CARD_NAME = "card.json"  # what makes a folder a model folder (MRSynthesisLib.cards.CARD_NAME)


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
    problem: Optional[str] = None

    @classmethod
    def from_entry(cls, entry: dict[str, Any]) -> "ModelInfo":
        card = entry.get("card") or {}
        return cls(name=entry["name"], folder=entry["folder"], origin=entry["origin"],
                   inputs=list(card.get("inputs", [])), outputs=list(card.get("outputs", [])),
                   lesion_input=bool(card.get("lesion_input", False)), spatial_dims=int(card.get("spatial_dims", 2)),
                   plane=card.get("plane"), problem=entry.get("problem"))

    @property
    def label(self) -> str:
        return f"{self.name} ({self.origin})" + (" - unusable" if self.problem else "")

    def summary(self) -> str:
        if self.problem:
            return f"This model cannot be used: {self.problem}"
        kind = f"2D, slice by slice ({self.plane})" if self.spatial_dims == 2 else "3D"
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
        """What MRSYNTHESIS_MODEL_PATH gets: each added folder, or its parent when it is a model."""
        return [str(Path(f).parent) if _is_model(f) else f for f in self.user_folders]

    def update(self, stdout: str) -> list[ModelInfo]:
        """Read the output of `models --json`, dropping siblings of single added model folders."""
        added = {str(Path(f)) for f in self.user_folders}
        only_for_one = {str(Path(f).parent) for f in added if _is_model(f)} - added
        self.models = [m for entry in json.loads(stdout) for m in [ModelInfo.from_entry(entry)]
                       if str(Path(m.folder).parent) not in only_for_one or str(Path(m.folder)) in added]
        return self.models


def _is_model(folder: str) -> bool:
    return (Path(folder) / CARD_NAME).is_file()
