"""A synthetic node saved by Slicer's own writers (the Save dialog) says what it is, as the command line's outputs do.

Slicer calls ``SavedFileMarker`` from its IO manager's ``fileSaved`` signal after each file; here the file is
written the way that writer does (the node's MRML volume storage node), then the marker is called with the
parameters Slicer passes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("slicer", reason="the PyPI package slicer-core (real MRML classes) is not installed")

import slicer  # noqa: E402

from MRSynthesisLib.atomic import replacing  # noqa: E402
from MRSynthesisLib.volume import read_volume  # noqa: E402
from MRSynthesisModuleLib.saved_files import SavedFileMarker  # noqa: E402
from MRSynthesisModuleLib.scene import SceneBridge  # noqa: E402
from slicer_support import add_volume, new_scene  # noqa: E402

LINE = "MRSynthesis synthetic FLAIR from T1+T2 (tiny)"
RECORD = {"synthetic": True, "modality": "FLAIR", "image": "FLAIR_synthetic.nii.gz", "description": LINE,
          "software": "MRSynthesis 0.1", "model": {"name": "tiny", "sha256": "ab" * 32},
          "inputs": {"T1": "case_T1", "T2": "case_T2"}, "notes": []}


def synthetic_node(scene, marked=True):
    node = add_volume(scene, np.random.default_rng(0).random((6, 7, 9), dtype=np.float32), "FLAIR synthetic")
    if marked:
        SceneBridge(scene).mark_synthetic(node, RECORD)
    return node


def save(node, path):
    """What Slicer's node writer does for a volume: its archetype storage node writes the file."""
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    assert storage.WriteData(node)


@pytest.mark.parametrize("name", ["flair.nrrd", "flair.nii.gz", "flair.nii", "flair.mha"])
def test_a_saved_synthetic_node_gets_the_header_line_and_sidecar(tmp_path, name):
    scene, warnings = new_scene(), []
    node = synthetic_node(scene)
    path = tmp_path / name
    save(node, path)
    assert read_volume(path).description == ""  # what MRML's storage writes: no line
    before = read_volume(path)

    SavedFileMarker(scene, warnings.append)({"nodeID": node.GetID(), "fileName": str(path), "fileFormat": "x"})

    after = read_volume(path)
    assert after.description == LINE
    np.testing.assert_array_equal(after.array, before.array)
    assert after.geometry == before.geometry
    sidecar = json.loads((tmp_path / "flair.json").read_text())
    assert sidecar == {**RECORD, "image": name}
    assert warnings == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "flair.json"])  # no temporary left


def test_other_nodes_scene_files_and_batch_temporaries_are_left_as_saved(tmp_path):
    scene, warnings = new_scene(), []
    marker = SavedFileMarker(scene, warnings.append)
    plain = synthetic_node(scene, marked=False)
    save(plain, tmp_path / "t1.nrrd")
    content = (tmp_path / "t1.nrrd").read_bytes()
    marker({"nodeID": plain.GetID(), "fileName": str(tmp_path / "t1.nrrd")})
    marker({"fileName": str(tmp_path / "scene.mrml"), "fileType": "SceneFile"})
    marker({"nodeID": "vtkMRMLScalarVolumeNode404", "fileName": str(tmp_path / "gone.nrrd")})
    synthetic = synthetic_node(scene)
    with replacing(tmp_path / "FLAIR_synthetic.nrrd", suffix=".nrrd") as temporary:  # batch mode's own save
        save(synthetic, temporary)
        marker({"nodeID": synthetic.GetID(), "fileName": str(temporary)})
        assert read_volume(temporary).description == ""  # batch mode writes its line itself
    assert (tmp_path / "t1.nrrd").read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FLAIR_synthetic.nrrd", "t1.nrrd"]
    assert warnings == []


def test_the_users_json_is_left_alone_and_ours_replaced(tmp_path):
    scene, warnings = new_scene(), []
    marker = SavedFileMarker(scene, warnings.append)
    node = synthetic_node(scene)
    theirs = tmp_path / "sub-01_FLAIR.json"  # the acquired FLAIR's BIDS sidecar, say
    theirs.write_text('{"RepetitionTime": 9.0}')
    save(node, tmp_path / "sub-01_FLAIR.nii.gz")
    marker({"nodeID": node.GetID(), "fileName": str(tmp_path / "sub-01_FLAIR.nii.gz")})
    assert theirs.read_text() == '{"RepetitionTime": 9.0}'
    assert read_volume(tmp_path / "sub-01_FLAIR.nii.gz").description == LINE
    assert len(warnings) == 1 and str(theirs) in warnings[0] and "left alone" in warnings[0]

    ours = tmp_path / "flair.json"  # a sidecar of ours from an earlier save of the same file
    ours.write_text(json.dumps({**RECORD, "image": "flair.nrrd", "notes": ["old"]}))
    save(node, tmp_path / "flair.nrrd")
    marker({"nodeID": node.GetID(), "fileName": str(tmp_path / "flair.nrrd")})
    assert json.loads(ours.read_text()) == {**RECORD, "image": "flair.nrrd"}
    assert len(warnings) == 1


def test_a_format_without_our_header_line_still_gets_its_sidecar(tmp_path):
    scene, warnings = new_scene(), []
    node = synthetic_node(scene)
    save(node, tmp_path / "flair.nhdr")  # NRRD with a detached header: Slicer writes it, the command line does not
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    SavedFileMarker(scene, warnings.append)({"nodeID": node.GetID(), "fileName": str(tmp_path / "flair.nhdr")})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != "flair.json"} == files
    assert json.loads((tmp_path / "flair.json").read_text())["image"] == "flair.nhdr"
    assert len(warnings) == 1 and "its format has no header line" in warnings[0]


def test_a_header_that_cannot_be_rewritten_is_said_and_the_file_kept(tmp_path):
    scene, warnings = new_scene(), []
    node = synthetic_node(scene)
    path = tmp_path / "flair.nii"
    path.write_bytes(b"not a NIfTI file at all")  # whatever the writer left, it is not ours to break
    SavedFileMarker(scene, warnings.append)({"nodeID": node.GetID(), "fileName": str(path)})
    assert path.read_bytes() == b"not a NIfTI file at all"
    assert len(warnings) == 1 and "its header could not say so" in warnings[0] and str(path) in warnings[0]
    assert json.loads((tmp_path / "flair.json").read_text())["image"] == "flair.nii"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flair.json", "flair.nii"]


def test_a_saved_saliency_map_gets_its_header_line_and_no_sidecar(tmp_path):
    scene, warnings = new_scene(), []
    node = synthetic_node(scene, marked=False)
    line = "MRSynthesis P3S saliency of synthetic FLAIR to input T2 (tiny)"
    SceneBridge(scene).mark_saliency(node, line)
    save(node, tmp_path / "map.nii.gz")
    SavedFileMarker(scene, warnings.append)({"nodeID": node.GetID(), "fileName": str(tmp_path / "map.nii.gz")})
    assert read_volume(tmp_path / "map.nii.gz").description == line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.nii.gz"] and warnings == []


def test_a_relative_file_name_is_under_the_scenes_root_directory(tmp_path, monkeypatch):
    """slicer.util.saveNode(node, "flair.nrrd"): MRML writes it under the scene's root directory (Documents, or
    the loaded scene's folder), not the working directory, where an unrelated flair.nrrd may lie."""
    scene, warnings = new_scene(), []
    root, elsewhere = tmp_path / "root", tmp_path / "cwd"
    root.mkdir()
    elsewhere.mkdir()
    scene.SetRootDirectory(str(root))
    node = synthetic_node(scene)
    save(node, elsewhere / "flair.nrrd")
    unrelated = (elsewhere / "flair.nrrd").read_bytes()
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")  # as Slicer's node writer saves
    storage.SetFileName("flair.nrrd")
    assert storage.WriteData(node) and (root / "flair.nrrd").is_file()
    monkeypatch.chdir(elsewhere)

    SavedFileMarker(scene, warnings.append)({"nodeID": node.GetID(), "fileName": "flair.nrrd"})

    assert read_volume(root / "flair.nrrd").description == LINE
    assert json.loads((root / "flair.json").read_text())["image"] == "flair.nrrd"
    assert (elsewhere / "flair.nrrd").read_bytes() == unrelated and not (elsewhere / "flair.json").exists()
    assert warnings == []


def test_a_node_whose_record_cannot_be_read_is_said_not_raised(tmp_path):
    scene, warnings = new_scene(), []
    node = synthetic_node(scene)
    node.SetAttribute("MRSynthesis.Provenance", "{edited by hand")
    save(node, tmp_path / "flair.nrrd")
    content = (tmp_path / "flair.nrrd").read_bytes()

    SavedFileMarker(scene, warnings.append)({"nodeID": node.GetID(), "fileName": str(tmp_path / "flair.nrrd")})

    assert len(warnings) == 1 and str(tmp_path / "flair.nrrd") in warnings[0] and "JSONDecodeError" in warnings[0]
    assert (tmp_path / "flair.nrrd").read_bytes() == content
