"""The MRML bridge: volume and segmentation nodes to files for the command line, and back.

Every call takes the scene it works on (never ``slicer.mrmlScene``), so tests run it on a
scene of their own with the real MRML classes. Files are written and read with MRML's
own storage nodes, as SlicerMONAIAuto3DSeg does for its background process, so the
IJK-to-RAS geometry survives the trip. Nodes the user made are only ever read.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any, Optional

import slicer
import vtk

LESION_SEGMENT_NAME = "lesion"
LESION_COLOR = (1.0, 0.2, 0.1)
SALIENCY_COLOR_NODE_ID = "vtkMRMLColorTableNodeIron"  # built in (vtkMRMLColorLogic.h), black-red-yellow
SYNTHETIC_ATTRIBUTE = "MRSynthesis.Synthetic"
PROVENANCE_ATTRIBUTE = "MRSynthesis.Provenance"  # JSON: the output's sidecar (MRSynthesisLib.provenance)
SALIENCY_ATTRIBUTE = "MRSynthesis.Saliency"  # a P3S map's header line (MRSynthesisLib.provenance.saliency_description)
SALIENCY_HIDDEN_BELOW = 0.01  # fraction of the map's maximum drawn transparent, so the input shows through


class SceneBridge:
    """Reads and writes the nodes of one MRML scene."""

    def __init__(self, scene: Any) -> None:
        self.scene = scene

    def scalar_volumes(self) -> list[Any]:
        """The scene's scalar volumes as the input selectors list them (``showChildNodeTypes`` off): not the
        subclasses, label maps, vector (RGB), tensor and diffusion-weighted volumes."""
        nodes = (self.scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
                 for i in range(self.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")))
        return [node for node in nodes if node.GetClassName() == "vtkMRMLScalarVolumeNode"]

    def observe_removals(self, callback: Callable[[Any], None]) -> int:
        """Call ``callback(node)`` as each node is about to leave the scene, before the node selectors move
        their selection off it (their scene model observes at priority -10: qMRMLSceneModel.cxx HEAD:381);
        the tag is for ``stop_observing``. The call-data form is DICOMUtils.py's (HEAD:866-872)."""
        @vtk.calldata_type(vtk.VTK_OBJECT)
        def about_to_be_removed(caller: Any, event: Any, node: Any) -> None:
            callback(node)

        return self.scene.AddObserver(slicer.vtkMRMLScene.NodeAboutToBeRemovedEvent, about_to_be_removed)

    def stop_observing(self, tag: int) -> None:
        self.scene.RemoveObserver(tag)

    def write_volume(self, node: Any, path: str) -> None:
        """Write a volume node's voxels and geometry (its parent transform is not applied); a synthetic one
        (``mark_synthetic``) with the header line the command line gave it, which MRML's storage does not write,
        so that the command line sees it for what it is when it comes back as an input."""
        with self._storage(path) as storage:
            storage.UseCompressionOff()
            if not storage.WriteData(node):
                raise OSError(f"could not write {node.GetName()!r} to {path}")
        line = header_line(node)
        if line:
            from MRSynthesisLib.header_notes import write_note

            write_note(path, line)

    def load_volume(self, path: str, name: str, like: Any) -> Any:
        """A new scalar volume node read from ``path``, in the same transform as ``like``.

        The node keeps no storage node: its file is a temporary one, so saving the scene
        asks for a new place instead of pointing at a deleted file.
        """
        node = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", self.scene.GenerateUniqueName(name))
        with self._storage(path) as storage:
            if not storage.ReadData(node):
                self.scene.RemoveNode(node)
                raise OSError(f"could not read the result {path}")
        node.CreateDefaultDisplayNodes()
        node.SetAndObserveTransformNodeID(like.GetTransformNodeID())
        return node

    @contextlib.contextmanager
    def _storage(self, path: str) -> Iterator[Any]:
        """A storage node for one file, in the scene only while it is used."""
        storage = self.scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
        try:
            storage.SetFileName(path)
            yield storage
        finally:
            self.scene.RemoveNode(storage)

    def write_segment_mask(self, segmentation: Any, segment_id: str, reference: Any, path: str) -> None:
        """Write one segment as a 0/1 mask on ``reference``'s grid (the command line's grid)."""
        if segmentation.GetSegmentation().GetSegment(segment_id) is None:
            raise ValueError(f"segmentation {segmentation.GetName()!r} has no segment {segment_id!r}")
        labelmap = self.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        try:
            ids = vtk.vtkStringArray()
            ids.InsertNextValue(segment_id)
            # A static method, called this way in Slicer's SegmentEditorMaskVolumeEffect.py.
            if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                    segmentation, ids, labelmap, reference):
                raise OSError(f"could not export segment {segment_id!r} of {segmentation.GetName()!r}")
            self.write_volume(labelmap, path)
        finally:
            display = labelmap.GetDisplayNode()  # the export adds a display and a colour node
            if display is not None:
                self.scene.RemoveNode(display.GetColorNode())
                self.scene.RemoveNode(display)
            self.scene.RemoveNode(labelmap)

    def segment_drawn_on(self, segmentation: Any) -> Optional[Any]:
        """The volume a segmentation was drawn on: its reference image geometry volume (the node reference that
        ``SetReferenceImageGeometryParameterFromVolumeNode`` sets, read as slicer.util.arrayFromSegmentBinaryLabelmap
        reads it: Base/Python/slicer/util.py HEAD:2467); None when it has none."""
        return segmentation.GetNodeReference(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole())

    def create_lesion_segment(self, volume: Any, segmentation: Optional[Any] = None) -> tuple[Any, str]:
        """An empty "lesion" segment to paint on ``volume``, in a new segmentation unless one is given."""
        if segmentation is None:
            segmentation = self.scene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", self.scene.GenerateUniqueName(f"{volume.GetName()} lesion"))
            segmentation.CreateDefaultDisplayNodes()
            segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
            segmentation.SetAndObserveTransformNodeID(volume.GetTransformNodeID())
        # The first argument of AddEmptySegment is the ID; "" lets the segmentation choose one.
        segment_id = segmentation.GetSegmentation().AddEmptySegment("", LESION_SEGMENT_NAME, list(LESION_COLOR))
        return segmentation, segment_id

    def style_saliency(self, node: Any) -> None:
        """A heat colour map with the near-zero background transparent, for a foreground overlay."""
        display = node.GetDisplayNode()
        display.SetAndObserveColorNodeID(SALIENCY_COLOR_NODE_ID)
        high = node.GetImageData().GetScalarRange()[1]
        if high > 0:
            display.SetApplyThreshold(1)
            display.SetThreshold(SALIENCY_HIDDEN_BELOW * high, high)

    def mark_synthetic(self, node: Any, record: dict) -> None:
        """Say on the node that it is synthetic, and how it was made (the command line's sidecar, with the
        inputs named as the user knows them): attributes are saved with the scene, so the mark outlives the
        session; a node renamed or saved alone still carries it while the scene holds it."""
        node.SetAttribute(SYNTHETIC_ATTRIBUTE, "true")
        node.SetAttribute(PROVENANCE_ATTRIBUTE, json.dumps(record))

    def mark_saliency(self, node: Any, line: str) -> None:
        """Say on the node which input of which synthetic image it maps (the header line of the command line's map)."""
        node.SetAttribute(SALIENCY_ATTRIBUTE, line)

    def remove(self, nodes: list[Any]) -> None:
        for node in nodes:
            if node is not None and node.GetScene() is not None:
                self.scene.RemoveNode(node)


def header_line(node: Any) -> str:
    """The line the command line writes in the header of the file this node came from: a synthetic image's
    description (``mark_synthetic``), a saliency map's (``mark_saliency``); "" for a node of the user's."""
    record = node.GetAttribute(PROVENANCE_ATTRIBUTE)
    return json.loads(record).get("description", "") if record else node.GetAttribute(SALIENCY_ATTRIBUTE) or ""
