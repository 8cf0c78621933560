"""Plain-Qt stand-ins for what only the Slicer application provides to the panel.

* ``StandInWidgetFactory``: node selectors listing the nodes of a real MRML scene, with the
  members the panel uses of qMRMLNodeComboBox and qMRMLSegmentSelectorWidget.
* ``RecordingActions``: package check and install, folder choice, Segment Editor and view
  layouts, recorded instead of performed.
* ``DictSettings``: QSettings' ``value``/``setValue`` on a dict.
* ``ReplayLauncher``: a launcher whose runs end at once with a given outcome.
"""

from __future__ import annotations

from typing import Any, Optional

import slicer
from Qt import QtCore, QtWidgets


class NodeComboBox(QtWidgets.QComboBox):
    """The nodes of one class in a scene, kept up to date as nodes are added and removed."""

    currentNodeChanged = QtCore.Signal(object)

    def __init__(self, scene: Any, node_class: str, none_enabled: bool = False,
                 exclude_class: Optional[str] = None) -> None:
        super().__init__()
        self.scene, self.node_class, self.none_enabled, self.exclude_class = scene, node_class, none_enabled, exclude_class
        self._nodes: list[Any] = []
        self._refresh()
        self.currentIndexChanged.connect(lambda *_: self.currentNodeChanged.emit(self.currentNode()))
        for event in (slicer.vtkMRMLScene.NodeAddedEvent, slicer.vtkMRMLScene.NodeRemovedEvent):
            scene.AddObserver(event, lambda *_: self._refresh())

    def _refresh(self) -> None:
        current = self.currentNode()
        count = self.scene.GetNumberOfNodesByClass(self.node_class)
        nodes = [self.scene.GetNthNodeByClass(i, self.node_class) for i in range(count)]
        self._nodes = ([None] if self.none_enabled else []) + [
            n for n in nodes if not (self.exclude_class and n.IsA(self.exclude_class))]
        self.blockSignals(True)
        self.clear()
        for node in self._nodes:
            self.addItem(node.GetName() if node is not None else "None")
        self.setCurrentIndex(self._nodes.index(current) if current in self._nodes else -1)
        self.blockSignals(False)
        if self.currentNode() is not current:  # it was removed
            self.currentNodeChanged.emit(None)

    def currentNode(self) -> Any:
        index = self.currentIndex()
        return self._nodes[index] if 0 <= index < len(self._nodes) else None

    def setCurrentNode(self, node: Any) -> None:
        self.setCurrentIndex(self._nodes.index(node) if node in self._nodes else -1)


class SegmentSelector(QtWidgets.QWidget):
    """A segmentation selector and a segment selector, as in qMRMLSegmentSelectorWidget."""

    currentNodeChanged = QtCore.Signal(object)
    currentSegmentChanged = QtCore.Signal(str)

    def __init__(self, scene: Any) -> None:
        super().__init__()
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.nodes = NodeComboBox(scene, "vtkMRMLSegmentationNode", none_enabled=True)
        self.segments = QtWidgets.QComboBox()
        layout.addWidget(self.nodes)
        layout.addWidget(self.segments)
        self._ids: list[str] = []
        self.nodes.currentNodeChanged.connect(self._on_node_changed)
        self.segments.currentIndexChanged.connect(lambda *_: self.currentSegmentChanged.emit(self.currentSegmentID()))

    def _fill_segments(self) -> None:
        node = self.nodes.currentNode()
        segmentation = node.GetSegmentation() if node is not None else None
        count = segmentation.GetNumberOfSegments() if segmentation is not None else 0
        self._ids = [segmentation.GetNthSegmentID(i) for i in range(count)]
        self.segments.blockSignals(True)
        self.segments.clear()
        for segment_id in self._ids:
            self.segments.addItem(segmentation.GetSegment(segment_id).GetName())
        self.segments.blockSignals(False)

    def _on_node_changed(self, node: Any) -> None:
        self._fill_segments()
        self.currentNodeChanged.emit(node)
        self.currentSegmentChanged.emit(self.currentSegmentID())

    def currentNode(self) -> Any:
        return self.nodes.currentNode()

    def setCurrentNode(self, node: Any) -> None:
        self.nodes.setCurrentNode(node)

    def currentSegmentID(self) -> str:
        index = self.segments.currentIndex()
        return self._ids[index] if 0 <= index < len(self._ids) else ""

    def setCurrentSegmentID(self, segment_id: str) -> None:
        self._fill_segments()  # the segment may be new
        self.segments.setCurrentIndex(self._ids.index(segment_id) if segment_id in self._ids else -1)


class StandInWidgetFactory:
    def __init__(self, scene: Any) -> None:
        self.scene = scene

    def volume_selector(self, none_enabled: bool = False) -> NodeComboBox:
        return NodeComboBox(self.scene, "vtkMRMLScalarVolumeNode", none_enabled, exclude_class="vtkMRMLLabelMapVolumeNode")

    def segment_selector(self) -> SegmentSelector:
        return SegmentSelector(self.scene)


class RecordingActions:
    """Records what the panel asks of the application; ``missing`` and ``consent`` steer installs."""

    def __init__(self, missing: Optional[list[str]] = None, consent: bool = True, folder: str = "") -> None:
        self.missing = list(missing or [])
        self.consent = consent
        self.folder = folder
        self.calls: list[tuple[Any, ...]] = []

    def missing_packages(self) -> list[str]:
        return list(self.missing)

    def install_packages(self, missing: list[str]) -> bool:
        self.calls.append(("install_packages", tuple(missing)))
        if self.consent:
            self.missing = []
        return self.consent

    def choose_folder(self) -> str:
        self.calls.append(("choose_folder",))
        return self.folder

    def __getattr__(self, name: str) -> Any:  # open_segment_editor, show_result, show_saliency, show_off_plane
        if name not in ("open_segment_editor", "show_result", "show_saliency", "show_off_plane"):
            raise AttributeError(name)
        return lambda *args: self.calls.append((name, *args))

    def called(self, name: str) -> list[tuple[Any, ...]]:
        return [call[1:] for call in self.calls if call[0] == name]


class DictSettings:
    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def value(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def setValue(self, key: str, value: Any) -> None:  # noqa: N802 - QSettings' name
        self.values[key] = value


class _FinishedRun:
    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome

    def poll(self) -> Any:
        return self.outcome

    def cancel(self) -> None:
        pass


class ReplayLauncher:
    """Every run ends at once with ``outcome`` (e.g. a model list recorded from the real command line)."""

    def __init__(self, outcome: Any) -> None:
        self.outcome = outcome
        self.arguments: list[list[str]] = []

    def run(self, arguments: list[str], model_folders: Any = (), **callbacks: Any) -> _FinishedRun:
        self.arguments.append(list(arguments))
        return _FinishedRun(self.outcome)
