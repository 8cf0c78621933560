"""The Slicer-only widgets of the panel, made in one place.

Node selectors are MRML widgets that exist only inside Slicer; the panel asks this
factory for them and uses only what the stand-ins in the tests also have:
``currentNode()``, ``setCurrentNode()``, ``currentNodeChanged``, and for the segment
selector ``currentSegmentID()``, ``setCurrentSegmentID()``, ``currentSegmentChanged``.
"""

from __future__ import annotations

from typing import Any

import slicer


class SlicerWidgetFactory:
    """qMRMLNodeComboBox and qMRMLSegmentSelectorWidget bound to one scene."""

    def __init__(self, scene: Any) -> None:
        self.scene = scene

    def volume_selector(self, none_enabled: bool = False) -> Any:
        """Scalar volumes only: subclasses (label maps, vector, tensor and DWI volumes) are excluded by
        ``showChildNodeTypes``, as ``SceneBridge.scalar_volumes`` excludes them."""
        selector = slicer.qMRMLNodeComboBox()
        selector.nodeTypes = ["vtkMRMLScalarVolumeNode"]
        selector.showChildNodeTypes = False
        selector.addEnabled = False
        selector.removeEnabled = False
        selector.noneEnabled = none_enabled
        selector.setMRMLScene(self.scene)
        return selector

    def segment_selector(self) -> Any:
        selector = slicer.qMRMLSegmentSelectorWidget()
        selector.noneEnabled = True
        selector.setMRMLScene(self.scene)
        return selector
