"""Plain-Qt stand-ins for what only the Slicer application provides to the panel.

* ``StandInWidgetFactory``: node selectors listing the nodes of a real MRML scene, with the
  members the panel uses of qMRMLNodeComboBox and qMRMLSegmentSelectorWidget, and their
  behaviour where it matters (a removed node, a stale segment ID).
* ``RecordingActions``: package check and install, folder choice, Segment Editor and view
  layouts, recorded instead of performed.
* ``DictSettings``: QSettings' ``value``/``setValue`` on a dict.
* ``ReplayLauncher``: a launcher whose runs end at once with a given outcome.
"""

from __future__ import annotations

from typing import Any, Optional

import slicer
import vtk
from Qt import QtCore, QtWidgets

# qMRMLSceneModel observes node removal at this priority, after the scene's other observers
# (Libs/MRML/Widgets/qMRMLSceneModel.cxx HEAD:381-382).
SCENE_MODEL_PRIORITY = -10.0
NONE_DISPLAY = "None"


class NodeComboBox(QtWidgets.QComboBox):
    """The nodes of exactly one class in a scene (``showChildNodeTypes`` off), as qMRMLNodeComboBox lists them.

    Like it, a QComboBox over rows that the scene model removes on NodeAboutToBeRemovedEvent
    (qMRMLSceneModel.cxx HEAD:1184-1230): the current node's row going, QComboBox makes the row now in its
    place (or the last) current, so the selection moves on to another node, and to "None" only when no node
    is left (qMRMLNodeComboBox.cxx HEAD:719-744, 1246-1257; Qt's QComboBox rowsRemoved).
    """

    currentNodeChanged = QtCore.Signal(object)

    def __init__(self, scene: Any, node_class: str, none_enabled: bool = False) -> None:
        super().__init__()
        self.scene, self.node_class, self.none_enabled = scene, node_class, none_enabled
        self._nodes: list[Any] = []
        self._emitted: Any = None
        self._refresh()
        self.currentIndexChanged.connect(lambda *_: self._emit_if_changed())
        scene.AddObserver(slicer.vtkMRMLScene.NodeAddedEvent, lambda *_: self._refresh())

        @vtk.calldata_type(vtk.VTK_OBJECT)
        def about_to_be_removed(caller: Any, event: Any, node: Any) -> None:
            if node in self._nodes:
                index = self._nodes.index(node)
                del self._nodes[index]
                self.removeItem(index)  # QComboBox's rule for the current row

        scene.AddObserver(slicer.vtkMRMLScene.NodeAboutToBeRemovedEvent, about_to_be_removed, SCENE_MODEL_PRIORITY)

    def _refresh(self) -> None:
        current = self.currentNode()
        count = self.scene.GetNumberOfNodesByClass(self.node_class)
        nodes = [self.scene.GetNthNodeByClass(i, self.node_class) for i in range(count)]
        self._nodes = ([None] if self.none_enabled else []) + [n for n in nodes if n.GetClassName() == self.node_class]
        self.blockSignals(True)
        self.clear()
        for node in self._nodes:
            self.addItem(node.GetName() if node is not None else NONE_DISPLAY)
        self.setCurrentIndex(self._nodes.index(current) if current in self._nodes else -1)
        self.blockSignals(False)

    def _emit_if_changed(self) -> None:
        node = self.currentNode()
        if node is not self._emitted:
            self._emitted = node
            self.currentNodeChanged.emit(node)

    def currentNode(self) -> Any:
        index = self.currentIndex()
        return self._nodes[index] if 0 <= index < len(self._nodes) else None

    def setCurrentNode(self, node: Any) -> None:
        self.setCurrentIndex(self._nodes.index(node) if node in self._nodes else -1)


class SegmentSelector(QtWidgets.QWidget):
    """qMRMLSegmentSelectorWidget with ``noneEnabled`` (as the panel makes it), single selection.

    As the C++ widget (Libs/MRML/Widgets/qMRMLSegmentSelectorWidget.cxx, HEAD), ``currentSegmentID()`` is the ID
    chosen last while a segmentation was selected (322-333): selecting no segmentation, removing it or its
    segment leaves it as it was (onCurrentNodeChanged 125-140 and populateSegmentCombobox 171-193 never reset
    it; onCurrentSegmentChanged returns without a node, 275-285). A newly selected segmentation shows "None"
    when no ID is held, the held segment when it has it, else its first segment (250-271).
    """

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
        self._node: Any = None
        self._current = ""
        self._tags: list[int] = []
        self.nodes.currentNodeChanged.connect(self._on_node_changed)  # first, as in the C++ init()
        self.nodes.currentNodeChanged.connect(self.currentNodeChanged.emit)
        self.segments.currentIndexChanged.connect(self._on_segment_changed)

    def _on_node_changed(self, node: Any) -> None:
        if node is self._node:
            return
        for tag in self._tags:
            self._node.RemoveObserver(tag)
        self._node = node
        events = (slicer.vtkSegmentation.SegmentAdded, slicer.vtkSegmentation.SegmentRemoved,
                  slicer.vtkSegmentation.SegmentModified)
        self._tags = [node.AddObserver(event, lambda *_: self._populate()) for event in events] if node else []
        self._populate()

    def _populate(self) -> None:
        self.segments.blockSignals(True)
        self.segments.clear()
        self.segments.blockSignals(False)
        segmentation = self._node.GetSegmentation() if self._node is not None else None
        if segmentation is None or segmentation.GetNumberOfSegments() == 0:
            return  # the held ID is kept
        ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
        self.segments.blockSignals(True)
        self.segments.addItem(NONE_DISPLAY, NONE_DISPLAY)
        for segment_id in ids:
            self.segments.addItem(segmentation.GetSegment(segment_id).GetName(), segment_id)
        if not self._current or self._current in ids:
            self.setCurrentSegmentID(self._current)
            self.segments.blockSignals(False)
        else:  # the held segment is not in this segmentation: its first segment
            self.segments.setCurrentIndex(-1)
            self.segments.blockSignals(False)
            self.segments.setCurrentIndex(1)

    def _on_segment_changed(self, index: int) -> None:
        if self._node is None:
            return
        data = self.segments.itemData(index)
        self._current = "" if data in (None, NONE_DISPLAY) else data
        self.currentSegmentChanged.emit(self._current)

    def currentNode(self) -> Any:
        return self.nodes.currentNode()

    def setCurrentNode(self, node: Any) -> None:
        self.nodes.setCurrentNode(node)

    def currentSegmentID(self) -> str:
        return self._current

    def setCurrentSegmentID(self, segment_id: str) -> None:
        if not segment_id:
            self.segments.setCurrentIndex(0)
            return
        index = self.segments.findData(segment_id)
        if index != -1 and index != self.segments.currentIndex():
            self.segments.setCurrentIndex(index)


class StandInWidgetFactory:
    def __init__(self, scene: Any) -> None:
        self.scene = scene

    def volume_selector(self, none_enabled: bool = False) -> NodeComboBox:
        return NodeComboBox(self.scene, "vtkMRMLScalarVolumeNode", none_enabled)

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
