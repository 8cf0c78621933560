"""The panel's state in the module's parameter node, so that a saved scene restores the panel.

A plain ``vtkMRMLScriptedModuleNode`` (what ``ScriptedLoadableModuleLogic.getParameterNode``
returns) with string parameters and node references: the input rows are a variable-length
list of (volume, modality) pairs, which the parameter node wrapper cannot bind to widgets.
"""

from __future__ import annotations

from typing import Any, Optional

_SEPARATOR = ","


class _Flag:
    """A boolean parameter of the node, "true" or "false" (absent: false)."""

    def __init__(self, name: str, doc: str) -> None:
        self.name, self.__doc__ = name, doc

    def __get__(self, owner: Any, kind: Any = None) -> Any:
        return self if owner is None else owner._text(self.name) == "true"

    def __set__(self, owner: Any, enabled: bool) -> None:
        owner.node.SetParameter(self.name, "true" if enabled else "false")


class _Text:
    """A string parameter of the node with a default for when it is absent or empty."""

    def __init__(self, name: str, default: str, doc: str) -> None:
        self.name, self.default, self.__doc__ = name, default, doc

    def __get__(self, owner: Any, kind: Any = None) -> Any:
        return self if owner is None else owner._text(self.name, self.default)

    def __set__(self, owner: Any, value: str) -> None:
        owner.node.SetParameter(self.name, value or "")


class _Segment:
    """A segment of a segmentation: the node as a reference, its segment ID as a parameter."""

    def __init__(self, reference: str, parameter: str, doc: str) -> None:
        self.reference, self.parameter, self.__doc__ = reference, parameter, doc

    def __get__(self, owner: Any, kind: Any = None) -> Any:
        if owner is None:
            return self
        return owner.node.GetNodeReference(self.reference), owner._text(self.parameter)

    def __set__(self, owner: Any, segmentation_and_id: tuple[Optional[Any], str]) -> None:
        segmentation, segment_id = segmentation_and_id
        owner.node.SetNodeReferenceID(self.reference, segmentation.GetID() if segmentation else None)
        owner.node.SetParameter(self.parameter, segment_id or "")


class SynthesisParameters:
    """Typed access to the parameters and node references of one parameter node."""

    def __init__(self, node: Any) -> None:
        self.node = node

    def _text(self, name: str, default: str = "") -> str:
        value = self.node.GetParameter(name)
        return value if value else default

    def _list(self, name: str) -> list[str]:
        return [item for item in self._text(name).split(_SEPARATOR) if item]

    @property
    def inputs(self) -> list[tuple[Optional[Any], str]]:
        """The input rows: a volume node (None while unchosen) and its modality."""
        count = int(self._text("InputCount", "0"))
        modalities = (self._text("InputModalities").split(_SEPARATOR) + [""] * count)[:count]
        return [(self.node.GetNodeReference(f"input{i}"), modality) for i, modality in enumerate(modalities)]

    @inputs.setter
    def inputs(self, rows: list[tuple[Optional[Any], str]]) -> None:
        old = len(self.inputs)
        was = self.node.StartModify()
        for i in range(max(old, len(rows))):
            node = rows[i][0] if i < len(rows) else None
            self.node.SetNodeReferenceID(f"input{i}", node.GetID() if node is not None else None)
        self.node.SetParameter("InputCount", str(len(rows)))
        self.node.SetParameter("InputModalities", _SEPARATOR.join(modality for _, modality in rows))
        self.node.EndModify(was)

    @property
    def model(self) -> tuple[str, str]:
        """The chosen model's name and folder."""
        return self._text("ModelName"), self._text("ModelFolder")

    @model.setter
    def model(self, name_and_folder: tuple[str, str]) -> None:
        self.node.SetParameter("ModelName", name_and_folder[0])
        self.node.SetParameter("ModelFolder", name_and_folder[1])

    @property
    def targets(self) -> list[str]:
        return self._list("Targets")

    @targets.setter
    def targets(self, targets: list[str]) -> None:
        self.node.SetParameter("Targets", _SEPARATOR.join(targets))

    device = _Text("Device", "auto", "The device the command line is asked for (its --device).")
    precision = _Text("Precision", "auto", "The command line's --precision.")
    plane = _Text("Plane", "", "The plane 2D models slice in; empty: the card's.")

    # On/off choices, stored as "true"/"false" strings; each is off unless the user chose it.
    resample = _Flag("Resample", "Resample the other inputs onto the first input's grid.")
    native_spacing = _Flag("NativeSpacing", "Synthesise on the inputs' own voxels even where coarser than the model's.")
    register = _Flag("Register", "Register the other inputs rigidly onto the first input before synthesis.")
    saliency = _Flag("Saliency", "Compute per-input P3S saliency maps.")

    lesion = _Segment("lesionSegmentation", "LesionSegmentID", "The segment used as the lesion mask.")
    brain = _Segment("brainSegmentation", "BrainSegmentID", "The segment used as the brain mask.")

    @property
    def reference(self) -> tuple[Optional[Any], str]:
        """The real volume the result is compared with, and which target it is compared to."""
        return self.node.GetNodeReference("offPlaneReference"), self._text("OffPlaneTarget")

    @reference.setter
    def reference(self, volume_and_target: tuple[Optional[Any], str]) -> None:
        volume, target = volume_and_target
        self.node.SetNodeReferenceID("offPlaneReference", volume.GetID() if volume else None)
        self.node.SetParameter("OffPlaneTarget", target or "")
