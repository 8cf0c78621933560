"""Where results appear: slice views and the two layouts of the module. Needs the Slicer app.

* the result as background everywhere (a painted lesion segmentation shows on top of it);
* saliency: the result on top, below it one view per input with its P3S map as a
  coloured foreground;
* off-plane consistency: the result and the reference side by side, sagittal and coronal,
  where the stripes of slice-by-slice synthesis show.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import slicer

SALIENCY_LAYOUT_ID = 59101  # custom layouts use ids above the built-in ones (< 100)
OFF_PLANE_LAYOUT_ID = 59102
SALIENCY_OPACITY = 0.6

_VIEW = ('<item><view class="vtkMRMLSliceNode" singletontag="{tag}">'
         '<property name="orientation" action="default">{orientation}</property>'
         '<property name="viewlabel" action="default">{label}</property>'
         '<property name="viewcolor" action="default">{color}</property></view></item>')


def _view(tag: str, orientation: str, label: str, color: str = "#E17012") -> str:
    return _VIEW.format(tag=tag, orientation=orientation, label=label, color=color)


def saliency_layout(inputs: int) -> str:
    row = "".join(_view(f"MRSynthesisSaliency{i + 1}", "Axial", f"S{i + 1}") for i in range(inputs))
    return ('<layout type="vertical" split="true">' + _view("Red", "Axial", "R", "#F34A33")
            + f'<item><layout type="horizontal">{row}</layout></item></layout>')


def off_plane_layout() -> str:
    result = _view("Yellow", "Sagittal", "Y", "#EDD54C") + _view("Green", "Coronal", "G", "#6EB04B")
    reference = (_view("MRSynthesisReferenceSagittal", "Sagittal", "Ref S")
                 + _view("MRSynthesisReferenceCoronal", "Coronal", "Ref C"))
    return (f'<layout type="vertical" split="true"><item><layout type="horizontal">{result}</layout></item>'
            f'<item><layout type="horizontal">{reference}</layout></item></layout>')


def _use_layout(layout_id: int, description: str) -> Any:
    manager = slicer.app.layoutManager()
    layout_node = manager.layoutLogic().GetLayoutNode()
    if layout_node.IsLayoutDescription(layout_id):
        layout_node.SetLayoutDescription(layout_id, description)
    else:
        layout_node.AddLayoutDescription(layout_id, description)
    manager.setLayout(layout_id)
    return manager


def _show(manager: Any, view: str, background: Any, foreground: Any = None) -> None:
    logic = manager.sliceWidget(view).sliceLogic()
    composite = logic.GetSliceCompositeNode()
    composite.SetBackgroundVolumeID(background.GetID())
    composite.SetForegroundVolumeID(foreground.GetID() if foreground is not None else None)
    if foreground is not None:
        composite.SetForegroundOpacity(SALIENCY_OPACITY)
    logic.FitSliceToAll()


def show_result(result: Any, lesion: Any = None) -> None:
    """The result in every slice view, with the painted lesion segmentation (if any) on top."""
    slicer.util.setSliceViewerLayers(background=result, foreground=None, fit=True)
    display = lesion.GetDisplayNode() if lesion is not None else None
    if display is not None:  # a segmentation made by a script may have none
        display.SetVisibility(True)


def show_saliency(result: Any, overlays: Sequence[tuple[Any, Any]]) -> None:
    """``overlays``: (input volume, its saliency map) pairs, one view each."""
    manager = _use_layout(SALIENCY_LAYOUT_ID, saliency_layout(len(overlays)))
    _show(manager, "Red", result)
    for i, (volume, saliency) in enumerate(overlays):
        _show(manager, f"MRSynthesisSaliency{i + 1}", volume, saliency)


def show_off_plane(result: Any, reference: Any) -> None:
    manager = _use_layout(OFF_PLANE_LAYOUT_ID, off_plane_layout())
    for view, volume in (("Yellow", result), ("Green", result), ("MRSynthesisReferenceSagittal", reference),
                         ("MRSynthesisReferenceCoronal", reference)):
        _show(manager, view, volume)


def open_segment_editor(segmentation: Any, segment_id: str, volume: Any) -> None:
    """Switch to Segment Editor with the lesion segment selected and Paint active."""
    slicer.util.selectModule("SegmentEditor")  # first: its enter() picks nodes only when none are set
    editor = slicer.modules.SegmentEditorWidget.editor
    editor.setSegmentationNode(segmentation)
    if hasattr(editor, "setSourceVolumeNode"):  # Slicer >= 5.2
        editor.setSourceVolumeNode(volume)
    else:
        editor.setMasterVolumeNode(volume)
    editor.setCurrentSegmentID(segment_id)
    editor.setActiveEffectByName("Paint")
