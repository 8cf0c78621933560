"""Synthetic nodes that Slicer itself saves (the Save dialog, ``slicer.util.saveNode``) keep their mark.

MRML's storage writes no header line, so a synthetic FLAIR saved from the Save dialog came out as a plain
image that passes for an acquired scan once it leaves the scene. Slicer's IO manager tells after each file it
saved (the ``fileSaved`` signal of ``qSlicerCoreIOManager``, Slicer 5.0 and later: the writer's parameters,
``nodeID`` and ``fileName`` among them). ``SavedFileMarker`` answers it for the panel's outputs: the command
line's header line goes into the file (``header_notes``, on a copy then renamed, so a failure leaves Slicer's
file as it was), and a synthetic image (``SceneBridge.mark_synthetic``) gets its sidecar beside it, as
``mrsynthesis synthesize`` writes them; a saliency map (``mark_saliency``) only the line, as the command line's.
A JSON file already under the sidecar's name that is not one of ours is the user's: left alone, and said.

Torch- and nibabel-free: connected at Slicer's start-up, before Slicer's Python may have either.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Optional

from MRSynthesisLib.atomic import is_temporary, replacing, write_json
from MRSynthesisLib.errors import InputError
from MRSynthesisLib.formats import WRITABLE_SUFFIXES, suffix_of
from MRSynthesisLib.header_notes import write_note
from MRSynthesisLib.provenance import is_ours, sidecar_path

from .scene import PROVENANCE_ATTRIBUTE, header_line


def provenance(node: Any) -> Optional[dict]:
    """The record ``SceneBridge.mark_synthetic`` put on ``node``; None for any other node (or none)."""
    text = node.GetAttribute(PROVENANCE_ATTRIBUTE) if node is not None else None
    return json.loads(text) if text else None


def sidecar_record(record: Mapping[str, Any], image: str) -> dict:
    """The sidecar of ``image`` from a node's record: the record names the file the command line wrote."""
    return {**record, "image": os.path.basename(image)}


class SavedFileMarker:
    """Called with the parameters of each file Slicer saved; marks those of synthetic nodes.

    ``warn`` receives what the user should know (Slicer's ``logging.warning``: the Python console and the
    error log). Nothing here raises: a slot that raised would leave Slicer's save half-reported (and set
    the Python error flag of ``--testing``); what fails is said through ``warn``.
    """

    def __init__(self, scene: Any, warn: Callable[[str], None]) -> None:
        self.scene = scene
        self.warn = warn

    def __call__(self, parameters: Mapping[str, Any]) -> None:
        node_id, path = parameters.get("nodeID"), parameters.get("fileName")
        if not node_id or not path or is_temporary(path):  # a scene file; batch mode's own temporary files
            return
        try:
            node = self.scene.GetNodeByID(str(node_id))
            line = header_line(node) if node is not None else ""
            if line:  # a synthetic image or a saliency map of ours
                self.mark(self.full_path(str(path)), line, provenance(node))
        except Exception as error:  # noqa: BLE001 - a Qt slot: an exception would only print after Slicer's save
            self.warn(f"MRSynthesis: the file {path} Slicer saved could not be marked as ours "
                      f"({type(error).__name__}: {error})")

    def full_path(self, path: str) -> str:
        """Where Slicer wrote ``path``: a relative name is under the scene's root directory, not the working
        directory (vtkMRMLStorageNode::GetFullNameFromNthFileName; slicer.util.saveNode passes names as given)."""
        return os.path.abspath(os.path.join(self.scene.GetRootDirectory() or "", path))

    def mark(self, path: str, line: str, record: Optional[Mapping[str, Any]]) -> None:
        """The header line of the image just saved at ``path``, and the sidecar of a synthetic one (``record``)."""
        what = "a synthetic image" if record is not None else "an MRSynthesis saliency map"
        if path.lower().endswith(WRITABLE_SUFFIXES):
            try:
                with replacing(path, suffix=suffix_of(path)) as temporary:
                    shutil.copyfile(path, temporary)
                    write_note(temporary, line)
            except (OSError, ValueError, InputError) as error:
                self.warn(f"MRSynthesis: {path} holds {what}, but its header could not say so ({error})")
        else:
            self.warn(f"MRSynthesis: {path} holds {what}, but its format has no header line MRSynthesis writes "
                      f"({', '.join(WRITABLE_SUFFIXES)} have)")
        if record is None:
            return
        sidecar = sidecar_path(path)
        if sidecar.exists() and not is_ours(sidecar, path):
            self.warn(f"MRSynthesis: {sidecar} is not an MRSynthesis sidecar and was left alone, so nothing beside "
                      f"{Path(path).name} records how it was made; save it under another name to have one")
            return
        try:
            write_json(sidecar, sidecar_record(record, path))
        except (OSError, InputError) as error:
            self.warn(f"MRSynthesis: the sidecar of the synthetic image {path} could not be written ({error})")
