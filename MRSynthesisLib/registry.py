"""Where model folders are found: bundled ones, the user's own, or an explicit path.

Search order for a model given by name: the folders in ``MRSYNTHESIS_MODEL_PATH``
(os.pathsep-separated; each holds model folders or is one), then ``~/.mrsynthesis/models``, then the models bundled in
``Resources/Models``; a name that is an existing folder path is used as it is.

A name that more than one model folder carries (a training run exported under the bundled model's own name, in a
folder on ``MRSYNTHESIS_MODEL_PATH``) is refused rather than resolved to whichever folder is searched first: the
error names every folder that carries it, and the user passes the folder path, which is never ambiguous. Without a
name (no ``--model``), the bundled model is used, whatever the user's folders hold.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .cards import CARD_NAME, ModelCard, read_card, weights_path
from .errors import InputError, ModelCardError

# The bundled models: in a checkout and the Slicer extension, Resources/Models beside this package; installed from
# a wheel (pip install .), the package's bundled_models folder, which pyproject.toml maps Resources/Models to.
_CHECKOUT_MODELS = Path(__file__).resolve().parents[1] / "Resources" / "Models"
BUNDLED_MODELS = _CHECKOUT_MODELS if _CHECKOUT_MODELS.is_dir() else Path(__file__).resolve().parent / "bundled_models"
USER_MODELS = Path.home() / ".mrsynthesis" / "models"


@dataclass
class ModelEntry:
    name: str
    folder: Path
    origin: str  # "bundled", "user" or "path"
    card: ModelCard | None
    problem: str | None = None  # why the card could not be read


def search_folders() -> list[tuple[Path, str]]:
    extra = [Path(p) for p in os.environ.get("MRSYNTHESIS_MODEL_PATH", "").split(os.pathsep) if p]
    return [(p, "user") for p in (*extra, USER_MODELS)] + [(BUNDLED_MODELS, "bundled")]


def list_models() -> list[ModelEntry]:
    """Every model folder in the search folders; unreadable cards are listed with the reason."""
    entries = []
    for root, origin in search_folders():
        if not root.is_dir():
            continue
        # A search folder may hold model folders, or be a model folder itself.
        folders = ([root] if (root / CARD_NAME).is_file()
                   else sorted(p for p in root.iterdir() if (p / CARD_NAME).is_file()))
        for folder in folders:
            try:
                card = read_card(folder)
                weights_path(folder, card)
                entries.append(ModelEntry(folder.name, folder, origin, card))
            except ModelCardError as error:
                entries.append(ModelEntry(folder.name, folder, origin, None, str(error)))
    return entries


def name_clashes(entries: list[ModelEntry]) -> dict[str, list[Path]]:
    """The names that more than one model folder carries, each with those folders in search order. One folder
    reached twice (a search folder inside another, or listed twice in ``MRSYNTHESIS_MODEL_PATH``) is no clash."""
    folders: dict[str, dict[Path, Path]] = {}
    for entry in entries:
        folders.setdefault(entry.name, {}).setdefault(entry.folder.resolve(), entry.folder)
    return {name: list(found.values()) for name, found in folders.items() if len(found) > 1}


def resolve(model: str | None) -> Path:
    """The folder of ``model`` (a name or a path); ``None`` means the default bundled model."""
    if model is None:
        bundled = [e for e in list_models() if e.origin == "bundled" and e.card is not None]
        if not bundled:
            raise InputError("no bundled model is installed; pass --model with a model folder "
                             "(train one with `python -m training.train`)")
        return bundled[0].folder
    path = Path(model).expanduser()
    if (path / CARD_NAME).is_file():
        return path
    entries = list_models()
    clash = name_clashes(entries).get(model)
    if clash:
        origin = {e.folder: e.origin for e in reversed(entries)}
        carriers = "; ".join(f"{folder} [{origin[folder]}]" for folder in clash)
        raise InputError(f"model name {model!r} is carried by {len(clash)} model folders: {carriers}; pass the "
                         f"folder of the one you mean instead of the name (e.g. --model {clash[0]})")
    for entry in entries:
        if entry.name == model:
            return entry.folder
    known = ", ".join(e.name for e in entries) or "none"
    raise InputError(f"model {model!r} is neither a model folder (with {CARD_NAME}) nor a known model name; "
                     f"known models: {known}")
