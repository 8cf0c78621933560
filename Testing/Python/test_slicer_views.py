"""The module's two custom layouts, parsed and instantiated by MRML's own layout logic (slicer-core).

Showing volumes in them needs the Slicer application's layout manager; what can be checked
here is that MRML accepts the descriptions and creates the intended slice views.
"""

from __future__ import annotations

import pytest

pytest.importorskip("slicer", reason="the PyPI package slicer-core (real MRML classes) is not installed")

import slicer  # noqa: E402

import slicer_support as support  # noqa: E402
from MRSynthesisModuleLib import views  # noqa: E402


def slice_views(layout_id: int, description: str) -> dict[str, str]:
    """Layout name -> orientation of the slice views that MRML creates for ``description``."""
    scene = support.new_scene()
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)  # the application does this at startup
    logic = slicer.vtkMRMLLayoutLogic()
    logic.SetMRMLScene(scene)
    layout = logic.GetLayoutNode()
    layout.AddLayoutDescription(layout_id, description)
    layout.SetViewArrangement(layout_id)
    shown = logic.GetViewNodes()
    nodes = [shown.GetItemAsObject(i) for i in range(shown.GetNumberOfItems())]
    return {n.GetLayoutName(): n.GetOrientation() for n in nodes if n.IsA("vtkMRMLSliceNode")}


def test_the_saliency_layout_has_the_result_above_one_view_per_input():
    assert slice_views(views.SALIENCY_LAYOUT_ID, views.saliency_layout(3)) == {
        "Red": "Axial", "MRSynthesisSaliency1": "Axial", "MRSynthesisSaliency2": "Axial",
        "MRSynthesisSaliency3": "Axial"}


def test_the_off_plane_layout_shows_result_and_reference_sagittal_and_coronal():
    assert slice_views(views.OFF_PLANE_LAYOUT_ID, views.off_plane_layout()) == {
        "Yellow": "Sagittal", "Green": "Coronal", "MRSynthesisReferenceSagittal": "Sagittal",
        "MRSynthesisReferenceCoronal": "Coronal"}
