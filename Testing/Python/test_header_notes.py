"""The note in an image header, written into a file another program saved (MRSynthesisLib.header_notes)."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from MRSynthesisLib.header_notes import DESCRIPTION_BYTES, header_line, write_note
from MRSynthesisLib.volume import Geometry, Volume, write_volume

SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
GEOMETRY = Geometry((7, 6, 5), (0.9, 1.1, 2.5), (10.0, -20.0, 30.5), (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))


def notes(path) -> dict[str, str]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return {k: reader.GetMetaData(k) for k in ("ITK_FileNotes", "descrip") if reader.HasMetaDataKey(k)}


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_the_note_reads_back_as_ites_own_and_nothing_else_changes(tmp_path, suffix):
    volume = Volume(np.random.default_rng(0).normal(size=(5, 6, 7)).astype(np.float32), GEOMETRY, "x")
    plain = write_volume(volume, tmp_path / f"plain{suffix}")
    before = sitk.ReadImage(str(plain))
    write_note(plain, "MRSynthesis synthetic T2 from T1 (old)")
    text = "MRSynthesis synthetic FLAIR from T1+T2+lesion (n\u00e4me-" + "x" * 60 + ")"
    write_note(plain, text)  # a second note replaces the first
    after = sitk.ReadImage(str(plain))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(after), sitk.GetArrayFromImage(before))
    assert (after.GetOrigin(), after.GetSpacing(), after.GetDirection()) == \
        (before.GetOrigin(), before.GetSpacing(), before.GetDirection())
    described = write_volume(volume, tmp_path / f"described{suffix}", description=text)
    assert notes(plain) == notes(described)  # as ITK writes it
    assert notes(plain)["ITK_FileNotes"] == header_line(text) and len(header_line(text)) == DESCRIPTION_BYTES


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_a_file_not_laid_out_as_its_format_is_refused_by_name_and_left_as_it_was(tmp_path, suffix):
    path = tmp_path / f"odd{suffix}"
    content = b"not an image\n" * 40
    path.write_bytes(gzip.compress(content) if suffix == ".nii.gz" else content)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=f"{path}: not a .*its header note was not written"):
        write_note(path, "note")
    assert path.read_bytes() == before
