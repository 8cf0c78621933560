"""Running the Slicer module's code outside Slicer: real MRML classes and real Qt widgets.

MRML comes from the PyPI package ``slicer-core`` (the classes Slicer itself is built on);
widgets from PySide6 through Qt.py, drawn offscreen. What only the Slicer application has
(node selectors, layouts, Segment Editor, installing packages) is replaced by the small
stand-ins in ``slicer_widgets``. Tests import this module after ``pytest.importorskip`` of
``slicer`` / ``PySide6`` so that they skip with a reason where those are missing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np
import slicer
import vtk

from slicer_paths import REPO  # noqa: F401  (also puts the module's code on sys.path)

# An oblique grid: voxel axes rotated 10 degrees about S, anisotropic spacing, LAS-like flips.
_ANGLE = np.deg2rad(10.0)
OBLIQUE = np.array([
    [-np.cos(_ANGLE) * 1.0, np.sin(_ANGLE) * 1.2, 0.0, 12.5],
    [-np.sin(_ANGLE) * 1.0, -np.cos(_ANGLE) * 1.2, 0.0, -20.0],
    [0.0, 0.0, 1.5, 5.0],
    [0.0, 0.0, 0.0, 1.0],
])

_rules_registered = False


def new_scene() -> object:
    """An empty MRML scene that can convert segmentations (the Slicer app registers these rules at startup)."""
    global _rules_registered
    if not _rules_registered:
        factory = slicer.vtkSegmentationConverterFactory.GetInstance()
        factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
        factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())
        _rules_registered = True
    scene = slicer.vtkMRMLScene()
    scene.AddNewNodeByClass("vtkMRMLSubjectHierarchyNode")  # always present in the app
    return scene


def add_volume(scene: object, array: np.ndarray, name: str, ijk_to_ras: np.ndarray = OBLIQUE) -> object:
    """A scalar volume node holding ``array`` ((k, j, i) order, as ``arrayFromVolume`` returns it)."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array))
    node.CreateDefaultDisplayNodes()
    return node


def ijk_to_ras(node: object) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def paint(scene: object, segmentation: object, segment_id: str, mask: np.ndarray, volume: object) -> None:
    """Fill a segment with ``mask`` on ``volume``'s grid, as painting in Segment Editor would."""
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    labelmap.CopyOrientation(volume)
    slicer.util.updateVolumeFromArray(labelmap, mask.astype(np.uint8))
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation, ids)
    scene.RemoveNode(labelmap)


def node_ids(scene: object) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def wait_until(condition: Callable[[], bool], timeout: float, step: Callable[[], None]) -> float:
    """Run ``step`` (e.g. Qt's processEvents) until ``condition``; returns the seconds it took."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"not reached within {timeout} s")
        step()
        time.sleep(0.01)
    return time.monotonic() - start


class CoreFiles:
    """Batch mode's file access (``slicer.util.loadVolume``/``saveNode`` in Slicer) with MRML storage nodes."""

    def __init__(self, scene: object) -> None:
        self.scene = scene

    def load_volume(self, path: str, name: str) -> object:
        node = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(path)
        if not os.path.isfile(path) or not storage.ReadData(node):
            self.scene.RemoveNode(node)
            raise RuntimeError(f"Failed to load volume from {path}")  # as loadVolume raises
        return node

    def save_node(self, node: object, path: str) -> bool:
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(path)
        return bool(storage.WriteData(node))
