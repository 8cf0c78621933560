"""What a synthetic image says of itself: the header line, the sidecar's name and record, and which JSON files
beside an output are ours to replace."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from MRSynthesisLib.provenance import description, is_ours, sidecar, sidecar_path

RUN = {"software": "MRSynthesis 0.1.0", "model": {"name": "tiny"}, "inputs": {"T1": "t1.nii.gz", "T2": "/x/t2.nrrd"},
       "lesion_mask": None, "brain_mask": None, "grid_of": "t1.nii.gz", "options": {}, "notes": ["a note"]}


@pytest.mark.parametrize("name, expected", [("FLAIR_synthetic.nii.gz", "FLAIR_synthetic.json"),
                                            ("a.b.nii", "a.b.json"), ("x.NRRD", "x.json"), ("y.mha", "y.json"),
                                            ("z.nhdr", "z.json"), ("a.b.img.gz", "a.b.json")])  # Slicer's too
def test_the_sidecar_takes_the_image_name_with_json(tmp_path, name, expected):
    assert sidecar_path(tmp_path / name) == tmp_path / expected


def test_the_header_line_names_the_inputs_and_a_painted_lesion():
    assert description("FLAIR", ["T1", "T2"], "tiny") == "MRSynthesis synthetic FLAIR from T1+T2 (tiny)"
    assert description("FLAIR", ["T1"], "tiny", lesion=True) == "MRSynthesis synthetic FLAIR from T1+lesion (tiny)"


def test_the_record_names_files_absolutely_and_says_synthetic(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("t1.nii.gz").write_bytes(b"")
    record = sidecar("FLAIR", RUN, tmp_path / "out" / "FLAIR_synthetic.nii.gz")
    assert record["synthetic"] is True and record["modality"] == "FLAIR" and record["image"] == "FLAIR_synthetic.nii.gz"
    assert record["inputs"] == {"T1": os.path.join(str(tmp_path), "t1.nii.gz"), "T2": "/x/t2.nrrd"}  # not a file here
    assert record["grid_of"] == os.path.join(str(tmp_path), "t1.nii.gz") and record["notes"] == ["a note"]
    assert record["description"] == "MRSynthesis synthetic FLAIR from T1+T2 (tiny)" and record["created"]


def test_only_our_record_of_that_image_is_ours(tmp_path):
    image = tmp_path / "FLAIR.nii.gz"
    path = sidecar_path(image)
    assert not is_ours(path, image)  # none there
    path.write_text(json.dumps(sidecar("FLAIR", RUN, image)))
    assert is_ours(path, image)
    assert not is_ours(path, tmp_path / "other.nii.gz")
    for text in ('{"RepetitionTime": 2.0}', "not json", '["synthetic"]',
                 json.dumps({**sidecar("FLAIR", RUN, image), "software": "another tool"})):
        path.write_text(text)
        assert not is_ours(path, image), text
