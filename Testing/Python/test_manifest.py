"""The CSV manifest reader that `mrsynthesis batch` and training share (MRSynthesisLib.manifest)."""

from __future__ import annotations

from pathlib import Path

import pytest

from MRSynthesisLib.errors import InputError
from MRSynthesisLib.manifest import PATIENT_COLUMN, ManifestSubject, read_manifest
from training.datasets import discover


def write(folder: Path, text: str, name: str = "cohort.csv", bom: bool = False) -> Path:
    path = folder / name
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def test_reads_aliases_paths_masks_and_blank_cells(tmp_path):
    path = write(tmp_path, "subject,t1n,T2W,Flair,lesion_mask\n"
                           "s1,a/T1.nii.gz,a/T2.nii.gz,a/FLAIR.nii.gz,a/lesion.nii.gz\n"
                           "\n"
                           " s2 ,/data/b/t1n.nii.gz,,b/t2f.nii.gz,,\n", bom=True)
    s1, s2 = read_manifest(path, ["lesion_mask"])
    assert s1 == ManifestSubject("s1", {"T1": tmp_path / "a/T1.nii.gz", "T2": tmp_path / "a/T2.nii.gz",
                                        "FLAIR": tmp_path / "a/FLAIR.nii.gz"},
                                 {"lesion_mask": tmp_path / "a/lesion.nii.gz"})
    # absolute paths kept, empty cells are files not given, a trailing empty cell is not an extra column
    assert s2 == ManifestSubject("s2", {"T1": Path("/data/b/t1n.nii.gz"), "FLAIR": tmp_path / "b/t2f.nii.gz"}, {})


def test_label_columns_are_text_and_other_columns_must_be_modalities(tmp_path):
    path = write(tmp_path, "subject,patient,T1\ns1,p1,a/T1.nii.gz\ns2,,b/T1.nii.gz\n")
    s1, s2 = read_manifest(path, (), [PATIENT_COLUMN])
    assert s1.labels == {"patient": "p1"} and s2.labels == {} and s1.images == {"T1": tmp_path / "a/T1.nii.gz"}
    with pytest.raises(InputError, match="column 'patient': unknown modality"):
        read_manifest(path)


@pytest.mark.parametrize("text, message", [
    ("", "needs a header with a 'subject' column"),
    ("subject,T1\n", "at least one row"),
    ("name,T1\ns1,a.nii.gz\n", "'subject' column"),
    ("subject,T1,T1\ns1,a.nii.gz,b.nii.gz\n", "the header repeats 'T1'"),
    ("subject,T1,,T2\ns1,a.nii.gz,,b.nii.gz\n", "column 3 of the header has no name"),
    ("subject,T7\ns1,a.nii.gz\n", "column 'T7'"),
    ("subject,T1,t1n\ns1,a.nii.gz,b.nii.gz\n", "columns 'T1' and 't1n' are both T1"),
    ("subject,T1\ns1,a.nii.gz\ns2,b.nii.gz,c.nii.gz\n", "cohort.csv:3: 3 cells but the header has 2 columns"),
    ("subject,T1\n,a.nii.gz\n", "cohort.csv:2: subject '' is empty"),
    ("subject,T1\ns1,a.nii.gz\ns1,b.nii.gz\n", "cohort.csv:3: subject 's1' is empty, repeated"),
    ("subject,T1\nx/s1,a.nii.gz\n", "subject 'x/s1'"),
    ("subject,T1\n..,a.nii.gz\n", "subject '..'"),
    ("subject,T1,lesion_mask\ns1,,l.nii.gz\n", "cohort.csv:2: subject 's1' has no image"),
    ("subject,T1,T2\ns1,a/t.nii.gz,a/../a/t.nii.gz\n", "cohort.csv:2: subject 's1' names one file for two"),
])
def test_refusals_name_the_file_and_line(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(InputError) as error:
        read_manifest(path, ["lesion_mask"])
    assert str(error.value).startswith(str(path)) and message in str(error.value)


def test_missing_or_unreadable_manifest(tmp_path):
    with pytest.raises(InputError, match="no such manifest"):
        read_manifest(tmp_path / "absent.csv")
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("subject,T1\nJosé,a.nii.gz\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin1\.csv: not a UTF-8 CSV file"):
        read_manifest(latin1)


def test_training_reads_the_same_manifest(tmp_path):
    """Training's data sources refuse what the batch command refuses (a repeated column used to let the
    last one win there) and keep the lesion column as the subject's mask."""
    (subject,) = discover([str(write(tmp_path, "subject,T1,lesion_mask\ns1,a/T1.nii.gz,a/l.nii.gz\n"))])
    assert subject.images == {"T1": tmp_path / "a/T1.nii.gz"} and subject.lesion == tmp_path / "a/l.nii.gz"
    with pytest.raises(ValueError, match="the header repeats 'T2'"):
        discover([str(write(tmp_path, "subject,T2,T2\ns1,a.nii.gz,b.nii.gz\n", name="repeated.csv"))])
