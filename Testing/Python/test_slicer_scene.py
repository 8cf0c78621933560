"""The MRML bridge on real MRML classes (slicer-core): nodes to files and back, segments to masks,
the parameter node through a saved scene."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("slicer", reason="the PyPI package slicer-core (real MRML classes) is not installed")

import slicer  # noqa: E402

from MRSynthesisLib.validation import check_mask  # noqa: E402
from MRSynthesisLib.volume import Volume, read_volume, write_volume  # noqa: E402
from MRSynthesisModuleLib.parameters import SynthesisParameters  # noqa: E402
from MRSynthesisModuleLib.scene import SALIENCY_COLOR_NODE_ID, SceneBridge  # noqa: E402
from MRSynthesisModuleLib.synthesis import PreparedRun  # noqa: E402
from slicer_support import OBLIQUE, add_volume, ijk_to_ras, new_scene, node_ids, paint  # noqa: E402

SHAPE = (6, 7, 9)  # (k, j, i)


def ras_to_lps(point):
    return (-point[0], -point[1], point[2])


def test_a_written_volume_is_what_the_command_line_reads(tmp_path):
    """Voxel (i, j, k) of the node is voxel [k, j, i] of MRSynthesisLib's array, at the same place."""
    scene = new_scene()
    array = np.random.default_rng(0).random(SHAPE, dtype=np.float32)
    node = add_volume(scene, array, "T1")
    SceneBridge(scene).write_volume(node, str(tmp_path / "t1.nrrd"))

    volume = read_volume(tmp_path / "t1.nrrd")
    np.testing.assert_array_equal(volume.array, slicer.util.arrayFromVolume(node))
    matrix = ijk_to_ras(node)
    np.testing.assert_allclose(volume.geometry.origin, ras_to_lps(matrix[:3, 3]), atol=1e-6)
    np.testing.assert_allclose(volume.geometry.spacing, (1.0, 1.2, 1.5), atol=1e-6)
    lps = np.diag([-1.0, -1.0, 1.0]) @ matrix[:3, :3] / np.array([1.0, 1.2, 1.5])
    np.testing.assert_allclose(np.reshape(volume.geometry.direction, (3, 3)), lps, atol=1e-6)


def test_a_synthetic_node_written_for_the_command_line_says_so_in_its_header(tmp_path):
    """A panel output taken as an input again: MRML's storage writes no header line, the bridge adds the node's."""
    scene = new_scene()
    bridge = SceneBridge(scene)
    node = add_volume(scene, np.random.default_rng(0).random(SHAPE, dtype=np.float32), "T2 synthetic")
    bridge.write_volume(node, str(tmp_path / "plain.nrrd"))
    bridge.mark_synthetic(node, {"synthetic": True, "description": "MRSynthesis synthetic T2 from T1 (tiny)"})
    bridge.write_volume(node, str(tmp_path / "marked.nrrd"))
    assert read_volume(tmp_path / "plain.nrrd").description == ""
    marked = read_volume(tmp_path / "marked.nrrd")
    assert marked.description == "MRSynthesis synthetic T2 from T1 (tiny)"
    np.testing.assert_array_equal(marked.array, read_volume(tmp_path / "plain.nrrd").array)


def test_a_result_becomes_a_new_node_on_the_input_grid(tmp_path):
    scene = new_scene()
    source = add_volume(scene, np.ones(SHAPE, np.float32), "T1")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    source.SetAndObserveTransformNodeID(transform.GetID())
    bridge = SceneBridge(scene)
    bridge.write_volume(source, str(tmp_path / "t1.nrrd"))
    result = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    written = read_volume(tmp_path / "t1.nrrd").with_array(result)
    write_volume(written, tmp_path / "flair.nrrd")  # as the command line writes its outputs
    before = node_ids(scene)

    node = bridge.load_volume(str(tmp_path / "flair.nrrd"), "FLAIR synthetic (T1)", like=source)

    assert node.GetName() == "FLAIR synthetic (T1)"
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), result)
    np.testing.assert_allclose(ijk_to_ras(node), OBLIQUE, atol=1e-6)
    assert node.GetTransformNodeID() == transform.GetID()
    assert node.GetStorageNode() is None  # no link to the temporary file
    assert node.GetDisplayNode() is not None
    assert node_ids(scene) - before == {node.GetID(), node.GetDisplayNode().GetID()}
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(source), 1.0)  # the input is untouched
    assert bridge.load_volume(str(tmp_path / "flair.nrrd"), "FLAIR synthetic (T1)", like=source).GetName() \
        != node.GetName()  # a second run does not reuse the name


def test_inputs_under_different_parent_transforms_are_refused_before_anything_is_written():
    scene = new_scene()
    t1 = add_volume(scene, np.ones(SHAPE, np.float32), "T1")
    t2 = add_volume(scene, np.ones(SHAPE, np.float32), "T2")
    moved = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
    t2.SetAndObserveTransformNodeID(moved.GetID())
    with pytest.raises(ValueError, match="different parent transforms.*'T2' \\(vtkMRMLLinearTransformNode"):
        PreparedRun(SceneBridge(scene), [(t1, "T1"), (t2, "T2")], ["FLAIR"])
    t1.SetAndObserveTransformNodeID(moved.GetID())  # both under the same transform: accepted
    PreparedRun(SceneBridge(scene), [(t1, "T1"), (t2, "T2")], ["FLAIR"]).close()


def test_a_painted_lesion_segment_becomes_the_lesion_mask_on_the_input_grid(tmp_path):
    scene = new_scene()
    t1 = add_volume(scene, np.ones(SHAPE, np.float32), "sub-01_T1")
    bridge = SceneBridge(scene)
    segmentation, segment_id = bridge.create_lesion_segment(t1)
    assert segmentation.GetSegmentation().GetSegment(segment_id).GetName() == "lesion"
    mask = np.zeros(SHAPE, np.uint8)
    mask[2:4, 3:5, 1:6] = 1
    paint(scene, segmentation, segment_id, mask, t1)
    before = node_ids(scene)

    bridge.write_segment_mask(segmentation, segment_id, t1, str(tmp_path / "lesion.nrrd"))

    lesion = read_volume(tmp_path / "lesion.nrrd")
    np.testing.assert_array_equal(check_mask(lesion), mask.astype(bool))  # 0/1, as --lesion-mask needs
    assert not lesion.geometry.differences(read_volume_of(bridge, t1, tmp_path).geometry)
    assert node_ids(scene) == before  # the temporary label map and its colours are gone


def read_volume_of(bridge, node, folder) -> Volume:
    bridge.write_volume(node, str(folder / "reference.nrrd"))
    return read_volume(folder / "reference.nrrd")


def test_a_second_lesion_segment_goes_into_the_chosen_segmentation():
    scene = new_scene()
    t1 = add_volume(scene, np.ones(SHAPE, np.float32), "T1")
    bridge = SceneBridge(scene)
    segmentation, first = bridge.create_lesion_segment(t1)
    same, second = bridge.create_lesion_segment(t1, segmentation)
    assert same is segmentation and first != second
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 2
    with pytest.raises(ValueError, match="no segment"):
        bridge.write_segment_mask(segmentation, "missing", t1, "unused.nrrd")


def test_saliency_maps_get_a_heat_colour_map_and_a_transparent_background():
    scene = new_scene()
    saliency = np.zeros(SHAPE, np.float32)
    saliency[3, 3, 3] = 2.0
    node = add_volume(scene, saliency, "P3S FLAIR from T1")
    SceneBridge(scene).style_saliency(node)
    display = node.GetDisplayNode()
    assert display.GetColorNodeID() == SALIENCY_COLOR_NODE_ID
    assert display.GetApplyThreshold() == 1
    assert 0.0 < display.GetLowerThreshold() < 2.0 and display.GetUpperThreshold() == 2.0


def test_the_panel_state_survives_saving_and_loading_the_scene():
    scene = new_scene()
    t1 = add_volume(scene, np.ones(SHAPE, np.float32), "T1")
    t2 = add_volume(scene, np.ones(SHAPE, np.float32), "T2")
    flair = add_volume(scene, np.ones(SHAPE, np.float32), "FLAIR")
    segmentation, segment_id = SceneBridge(scene).create_lesion_segment(t1)
    params = SynthesisParameters(scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode"))
    assert not params.resample and not params.native_spacing and not params.register  # off until chosen
    params.inputs = [(t1, "T1"), (None, "PD"), (t2, "T2")]
    params.model = ("tiny", "/models/tiny")
    params.targets = ["FLAIR", "T1c"]
    params.device = "cpu"
    params.saliency = True
    params.resample = True
    params.native_spacing = True
    params.register = True
    params.lesion = (segmentation, segment_id)
    params.reference = (flair, "FLAIR")

    scene.SetSaveToXMLString(1)
    scene.Commit()
    loaded = slicer.vtkMRMLScene()
    loaded.SetLoadFromXMLString(1)
    loaded.SetSceneXMLString(scene.GetSceneXMLString())
    loaded.Import()
    restored = SynthesisParameters(loaded.GetFirstNodeByClass("vtkMRMLScriptedModuleNode"))

    assert [(n.GetName() if n else None, m) for n, m in restored.inputs] == [("T1", "T1"), (None, "PD"), ("T2", "T2")]
    assert restored.model == ("tiny", "/models/tiny")
    assert restored.targets == ["FLAIR", "T1c"]
    assert (restored.device, restored.saliency, restored.resample, restored.native_spacing) == ("cpu", True, True, True)
    assert restored.register
    restored.saliency = False
    assert restored.node.GetParameter("Saliency") == "false" and not restored.saliency
    assert restored.lesion[0].GetName() == segmentation.GetName() and restored.lesion[1] == segment_id
    assert restored.reference[0].GetName() == "FLAIR" and restored.reference[1] == "FLAIR"

    restored.inputs = [(None, "T1")]  # fewer rows: the references of the others are dropped
    assert [(n, m) for n, m in restored.inputs] == [(None, "T1")]
    assert restored.node.GetNodeReference("input2") is None
