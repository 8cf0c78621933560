"""Reading and writing volumes without losing voxels or geometry; geometry helpers."""

from __future__ import annotations

import math
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from conftest import DATA, LAS, LPS, NO_DATA, write_image
from MRSynthesisLib import volume as volume_module
from MRSynthesisLib.errors import InputError
from MRSynthesisLib.header_notes import DESCRIPTION_BYTES
from MRSynthesisLib.volume import Geometry, Volume, read_volume, reoriented_onto, resample_to, suffix_of, write_volume


def rotation(ax: float, ay: float, az: float) -> tuple[float, ...]:
    cx, sx, cy, sy, cz, sz = math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay), math.cos(az), math.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return tuple((rz @ ry @ rx).ravel())


OBLIQUE = rotation(0.3, -0.2, 0.5)
# Sagittally acquired: voxel axis i runs posterior, j inferior, k left (orientation "PIL").
SAGITTAL = (0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
DIRECTIONS = {"LAS": LAS, "LPS": LPS, "oblique": OBLIQUE}
SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")


def random_volume(shape=(5, 6, 7), direction=LPS, spacing=(0.9, 1.1, 2.5), origin=(10.5, -20.25, 33.0), seed=0):
    array = np.random.default_rng(seed).normal(100, 30, shape).astype(np.float32)
    geometry = Geometry(tuple(reversed(shape)), spacing, origin, direction)
    return Volume(array, geometry, "generated")


def assert_same_geometry(a: Geometry, b: Geometry, tol: float = 1e-5):
    assert a.size == b.size
    np.testing.assert_allclose(a.spacing, b.spacing, rtol=0, atol=tol)
    np.testing.assert_allclose(a.origin, b.origin, rtol=0, atol=tol)
    np.testing.assert_allclose(a.direction, b.direction, rtol=0, atol=tol)


# --- round trips --------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("orientation", DIRECTIONS)
def test_round_trip_keeps_array_and_geometry(tmp_path, suffix, orientation):
    original = random_volume(direction=DIRECTIONS[orientation])
    path = write_volume(original, tmp_path / f"image{suffix}")
    assert path == tmp_path / f"image{suffix}" and path.is_file()
    back = read_volume(path)
    assert back.array.dtype == np.float32
    np.testing.assert_array_equal(back.array, original.array)
    assert_same_geometry(back.geometry, original.geometry)
    assert back.source == str(path)
    if orientation != "oblique":
        assert back.geometry.orientation() == orientation


def test_nifti_orientation_agrees_with_nibabel(tmp_path):
    # SimpleITK stores LPS physical space; nibabel reads the NIfTI's RAS affine. Both must name the same axes.
    for name, direction in (("LAS", LAS), ("LPS", LPS), ("PIL", (0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0))):
        path = write_volume(random_volume(direction=direction), tmp_path / f"{name}.nii.gz")
        assert "".join(nib.aff2axcodes(nib.load(path).affine)) == name
        assert read_volume(path).geometry.orientation() == name


def test_int16_is_read_as_float32_with_values_unchanged(tmp_path):
    values = np.random.default_rng(1).integers(-32768, 32767, (4, 5, 6), dtype=np.int16)
    values[0, 0, :3] = (-32768, 32767, 0)
    path = write_image(values, tmp_path / "int16.nii.gz", spacing=(1, 1, 1), origin=(0, 0, 0), direction=LPS)
    assert nib.load(path).get_data_dtype() == np.int16
    read = read_volume(path)
    assert read.array.dtype == np.float32
    np.testing.assert_array_equal(read.array, values.astype(np.float32))


def test_write_dtype_option(tmp_path):
    mask = random_volume().with_array(np.ones((5, 6, 7), np.float32))
    path = write_volume(mask, tmp_path / "mask.nii.gz", dtype=np.uint8)
    assert nib.load(path).get_data_dtype() == np.uint8


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_write_puts_the_description_in_the_header(tmp_path, suffix):
    """A synthetic image says so in itself (provenance.description), in every output format."""
    said = "MRSynthesis synthetic FLAIR from T1+T2 (tiny)"
    path = write_volume(random_volume(), tmp_path / f"a{suffix}", description=said)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    key = "descrip" if suffix.startswith(".nii") else "ITK_FileNotes"
    assert reader.GetMetaData(key) == said
    plain = write_volume(random_volume(), tmp_path / f"b{suffix}")
    reader.SetFileName(str(plain))
    reader.ReadImageInformation()
    assert not reader.HasMetaDataKey(key) or reader.GetMetaData(key) == ""
    long = "MRSynthesis P3S saliency of synthetic FLAIR to input T1 (a-model-n\u00e4me-" + "x" * 40 + ")"
    reader.SetFileName(str(write_volume(random_volume(), tmp_path / f"c{suffix}", description=long)))
    reader.ReadImageInformation()  # ITK's NIfTI writer refuses more than 79 bytes: every format gets them cut
    assert reader.GetMetaData(key) == long.encode("ascii", "replace")[:DESCRIPTION_BYTES].decode()
    read = read_volume(path)  # what the file says it is comes back with it, and leaves with its voxels
    assert read.description == said and read_volume(plain).description == ""
    assert read.with_array(read.array * 2).description == ""


# --- writing safely -------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", SUFFIXES)
def test_write_is_atomic(tmp_path, monkeypatch, suffix):
    target = tmp_path / "out" / f"synthetic{suffix}"
    calls = []

    def half_write(image, name, *args, **kwargs):  # writes some bytes, then fails like a full disk
        calls.append(name)
        Path(name).write_bytes(b"\x00" * 100)
        raise RuntimeError("Exception thrown in SimpleITK WriteImage: .../itkNrrdImageIO.cxx:1090:\n"
                           "simulated failure in the middle of writing")  # ITK's message, over lines

    monkeypatch.setattr(volume_module.sitk, "WriteImage", half_write)
    with pytest.raises(InputError) as error:  # the user's to fix (disk, permissions), with the file named
        write_volume(random_volume(), target)
    assert str(error.value) == (f"{target}: could not be written (simulated failure in the middle of writing; is "
                                "the disk full or the folder read-only?); nothing was left under that name")
    assert calls and Path(calls[0]) != target and Path(calls[0]).parent == target.parent  # a temporary name
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # no temporary leftovers


def test_write_is_atomic_when_interrupted(tmp_path, monkeypatch):
    """A KeyboardInterrupt (Ctrl-C, or the CLI's SIGTERM handler) during writing also leaves nothing."""
    target = tmp_path / "synthetic.nii.gz"
    real = sitk.WriteImage

    def interrupted(image, name, *args, **kwargs):
        real(image, name, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(volume_module.sitk, "WriteImage", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_volume(random_volume(), target)
    assert list(tmp_path.iterdir()) == []


def test_write_refuses_to_overwrite_unless_asked(tmp_path):
    target = tmp_path / "existing.nii.gz"
    target.write_bytes(b"precious")
    with pytest.raises(InputError, match="already exists"):
        write_volume(random_volume(), target)
    assert target.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.nii.gz"]
    write_volume(random_volume(seed=3), target, overwrite=True)
    np.testing.assert_array_equal(read_volume(target).array, random_volume(seed=3).array)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.nii.gz"]


def test_written_file_has_the_usual_mode(tmp_path):
    path = write_volume(random_volume(), tmp_path / "mode.nii.gz")
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


@pytest.mark.parametrize("name", ["out.png", "out.nii.zip", "out", "out.gz", "out.dcm"])
def test_unsupported_suffix(tmp_path, name):
    with pytest.raises(InputError, match="unsupported output format") as error:
        write_volume(random_volume(), tmp_path / name)
    assert name in str(error.value) and ".nii.gz" in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_suffix_of_is_case_insensitive():
    assert suffix_of("A.NII.GZ") == ".nii.gz"
    assert suffix_of("a.Nrrd") == ".nrrd"


# --- reading errors name the file ---------------------------------------------------------

def test_missing_file(tmp_path):
    path = tmp_path / "nowhere" / "T1.nii.gz"
    with pytest.raises(InputError, match="no such file") as error:
        read_volume(path)
    assert str(path) in str(error.value)


def test_folder_is_not_a_file(tmp_path):
    """Most often a DICOM series: say what to give instead of "no such file"."""
    with pytest.raises(InputError) as error:
        read_volume(tmp_path)
    assert str(error.value).startswith(f"{tmp_path}: is a folder, not an image file") and "DICOM" in str(error.value)


def test_one_dicom_file_is_one_slice_of_a_series(tmp_path):
    """ITK reads a DICOM file as a volume of one slice, which would be synthesised as one: refused, saying what
    to give instead."""
    image = random_volume((1, 12, 10)).to_sitk(np.int16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(tmp_path / "IM0001.dcm"))
    writer.Execute(image[:, :, 0])
    with pytest.raises(InputError) as error:
        read_volume(tmp_path / "IM0001.dcm")
    assert str(error.value).startswith(f"{tmp_path / 'IM0001.dcm'}: is one DICOM file, one slice of a series")
    assert "dcm2niix" in str(error.value)
    path = write_volume(random_volume((1, 12, 10)), tmp_path / "one_slice.nii.gz")
    assert read_volume(path).array.shape == (1, 12, 10)  # a one-slice NIfTI is what it says it is


def test_unreadable_file(tmp_path):
    path = tmp_path / "garbage.nii.gz"
    path.write_bytes(os.urandom(64) + b"this is not an image" * 20)
    with pytest.raises(InputError, match="not a readable image") as error:
        read_volume(path)
    assert str(path) in str(error.value)
    assert "\n" not in str(error.value)


def test_2d_image(tmp_path):
    path = tmp_path / "slice.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((6, 5), np.float32)), str(path))
    with pytest.raises(InputError, match="is 2D") as error:
        read_volume(path)
    assert str(path) in str(error.value) and "3D volume is expected" in str(error.value)


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_complex_image_is_refused(tmp_path, dtype):
    """Reading it as float would keep the real part and drop the phase without a word (it did)."""
    path = tmp_path / "raw.nii.gz"
    nib.save(nib.Nifti1Image((np.ones((5, 6, 7)) * (3 + 4j)).astype(dtype), np.eye(4)), path)
    with pytest.raises(InputError, match="holds complex values; give a magnitude image") as error:
        read_volume(path)
    assert str(path) in str(error.value)


def test_4d_with_several_volumes(tmp_path):
    path = tmp_path / "dwi.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((5, 6, 7, 3), np.float32), np.eye(4)), path)
    with pytest.raises(InputError, match="4D with 3 volumes") as error:
        read_volume(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha"])
def test_4d_with_one_volume_is_accepted(tmp_path, suffix):
    inner = random_volume(direction=LAS)
    four_d = sitk.JoinSeries([inner.to_sitk()])
    assert four_d.GetDimension() == 4 and four_d.GetSize()[3] == 1
    path = tmp_path / f"single{suffix}"
    sitk.WriteImage(four_d, str(path))
    read = read_volume(path)
    np.testing.assert_array_equal(read.array, inner.array)
    assert_same_geometry(read.geometry, inner.geometry)


def test_vector_image(tmp_path):
    path = tmp_path / "rgb.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((5, 6, 7, 3), np.float32), isVector=True), str(path))
    with pytest.raises(InputError, match="3 components per voxel") as error:
        read_volume(path)
    assert str(path) in str(error.value)


# --- geometry ---------------------------------------------------------------------------------

@pytest.mark.parametrize("direction, expected", [
    (LPS, {"axial": 0, "coronal": 1, "sagittal": 2}),
    (LAS, {"axial": 0, "coronal": 1, "sagittal": 2}),
    ((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0), {"axial": 0, "coronal": 1, "sagittal": 2}),  # RAS
    # voxel i (numpy axis 2) runs A-P, j (axis 1) I-S, k (axis 0) L-R
    (SAGITTAL, {"axial": 1, "coronal": 2, "sagittal": 0}),
    # voxel i runs I-S, j L-R, k A-P: an axial slice is numpy axis 2
    ((0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0), {"axial": 2, "coronal": 0, "sagittal": 1}),
    (rotation(0.2, 0.1, -0.25), {"axial": 0, "coronal": 1, "sagittal": 2}),  # mildly oblique
])
def test_axis_for(direction, expected):
    geometry = Geometry((7, 6, 5), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(float(d) for d in direction))
    assert {plane: geometry.axis_for(plane) for plane in expected} == expected
    with pytest.raises(ValueError, match="unknown plane"):
        geometry.axis_for("transverse")


def test_plane_tilt_is_the_angle_between_the_slices_and_the_plane():
    def geometry(direction):
        return Geometry((7, 6, 5), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(float(d) for d in direction))

    assert geometry(LPS).plane_tilt("axial") == pytest.approx(0.0, abs=1e-6)
    assert geometry(SAGITTAL).plane_tilt("axial") == pytest.approx(0.0, abs=1e-6)
    assert geometry(rotation(math.radians(30), 0, 0)).plane_tilt("axial") == pytest.approx(30.0)  # a nod of 30
    assert geometry(rotation(0, 0, math.radians(30))).plane_tilt("axial") == pytest.approx(0.0, abs=1e-6)  # in plane
    assert geometry(rotation(math.radians(45), 0, 0)).plane_tilt("axial") == pytest.approx(45.0)


def test_anatomical_spacing_follows_the_patient_axes_not_the_voxel_order():
    spacing = (0.5, 0.8, 3.0)  # voxel i, j, k
    assert Geometry((7, 6, 5), spacing, (0.0,) * 3, LPS).anatomical_spacing() == (0.5, 0.8, 3.0)
    # SAGITTAL: voxel i runs A-P, j I-S, k L-R
    assert Geometry((7, 6, 5), spacing, (0.0,) * 3, SAGITTAL).anatomical_spacing() == (3.0, 0.5, 0.8)


@pytest.mark.parametrize("direction", [LPS, SAGITTAL, rotation(0.2, 0.1, -0.25)])
def test_respaced_keeps_the_field_of_view(direction):
    """The grid's outer corners stay where they were; a volume resampled onto it and back keeps a smooth image."""
    geometry = Geometry((20, 16, 12), (2.0, 2.0, 3.0), (10.0, -4.0, 7.0), tuple(float(d) for d in direction))
    finer = geometry.respaced((1.0, 2.0, 1.5))
    assert finer.size == (40, 16, 24) and finer.spacing == (1.0, 2.0, 1.5) and finer.direction == geometry.direction

    def corners(g: Geometry) -> np.ndarray:
        rotation_ = np.asarray(g.direction).reshape(3, 3)
        low = np.asarray(g.origin) - rotation_ @ (np.asarray(g.spacing) / 2)
        return np.stack([low, low + rotation_ @ (np.asarray(g.size) * np.asarray(g.spacing))])

    np.testing.assert_allclose(corners(finer), corners(geometry), atol=1e-9)
    z, y, x = np.meshgrid(*(np.linspace(0, 1, n) for n in geometry.shape), indexing="ij")
    smooth = Volume((1 + x + 2 * y + 3 * z).astype(np.float32), geometry)
    back = resample_to(resample_to(smooth, finer), geometry)
    inner = (slice(1, -1),) * 3  # the edge voxels interpolate against the zero outside
    np.testing.assert_allclose(back.array[inner], smooth.array[inner], atol=1e-4)


def test_orientation_codes():
    def code(direction):
        return Geometry((2, 2, 2), (1.0,) * 3, (0.0,) * 3, direction).orientation()

    assert code(LPS) == "LPS"
    assert code(LAS) == "LAS"
    assert code((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)) == "RAS"
    assert code(SAGITTAL) == "PIL"


def test_geometry_shape_is_numpy_order():
    assert Geometry((7, 6, 5), (1.0,) * 3, (0.0,) * 3, LPS).shape == (5, 6, 7)
    with pytest.raises(ValueError, match="does not match"):
        Volume(np.zeros((7, 6, 5), np.float32), Geometry((7, 6, 5), (1.0,) * 3, (0.0,) * 3, LPS))


def test_differences_lists_each_kind():
    base = Geometry((7, 6, 5), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), LPS)
    assert base.differences(base) == []
    assert base.differences(Geometry((7, 6, 5), (1.0, 1.0, 1.0 + 1e-6), (1e-6, 0.0, 0.0), LPS)) == []
    other = Geometry((7, 6, 6), (1.0, 1.0, 2.0), (0.0, 5.0, 0.0), LAS)
    text = "; ".join(base.differences(other))
    for word in ("size", "spacing", "origin", "direction"):
        assert word in text


def test_grids_apart_by_far_less_than_a_voxel_are_one_and_differences_show_the_digits():
    """Headers of one scan written by two tools differ by 1e-4 to 1e-3 mm (float32 quaternion against sform): a
    0.001 mm origin difference was refused at an absolute 1e-4 mm, the message printing two equal triples. The
    tolerance is 1 % of the voxel now; a twentieth of a voxel stays a different grid, its numbers shown apart."""
    base = Geometry((7, 6, 5), (1.0, 1.0, 1.0), (-90.0, 126.0, -2.0), LPS)
    moved = Geometry((7, 6, 5), (1.0, 1.0, 1.0), (-90.001, 126.0, -2.0), LPS)
    assert base.differences(moved) == []
    volume = Volume(np.ones(moved.shape, np.float32), moved, "t2.nii.gz")
    assert reoriented_onto(volume, base).geometry == base  # the same grid: taken as the reference's, not resampled
    apart = Geometry((7, 6, 5), (1.0, 1.0, 1.0), (-90.05, 126.0, -2.0), LPS)
    (text,) = base.differences(apart)
    assert "origin (-90, 126, -2) vs (-90.05, 126, -2): 0.05 apart, more than the 0.01 taken as equal" == text
    fine = Geometry((7, 6, 5), (0.5, 0.5, 0.5), (-90.0, 126.0, -2.0), LPS)  # relative to the smaller voxel
    assert fine.differences(Geometry((7, 6, 5), (0.5, 0.5, 0.5), (-90.004, 126.0, -2.0), LPS)) == []
    assert fine.differences(Geometry((7, 6, 5), (0.5, 0.5, 0.5), (-90.006, 126.0, -2.0), LPS))
    assert base.differences(moved, tolerance=1e-4)  # an explicit tolerance is in mm, as before


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_a_nifti_sform_is_taken_over_a_disagreeing_qform_and_its_code_kept(tmp_path, suffix):
    """A registration tool's file: an MNI sform (code 4), the scanner qform 5 mm away (code 1). ITK took the qform
    without a word, FSL, SPM and nibabel the sform, so an output sat 5 mm from its input in their viewers, and was
    written with sform code 1. Now the sform is read, and the output keeps the MNI code."""
    affine = np.diag([-1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = (90.0, -126.0, -72.0)
    qform = affine.copy()
    qform[0, 3] += 5.0
    image = nib.Nifti1Image(np.random.default_rng(0).random((10, 11, 12)).astype(np.float32) + 1, affine)
    image.set_sform(affine, 4)
    image.set_qform(qform, 1)
    nib.save(image, tmp_path / f"in{suffix}")
    volume = read_volume(tmp_path / f"in{suffix}")
    assert volume.geometry.origin == pytest.approx((-90.0, 126.0, -72.0))  # nibabel's affine, in ITK's LPS
    assert volume.nifti_codes == (4, 4)
    write_volume(volume.with_array(volume.array * 2), tmp_path / f"out{suffix}")
    written = nib.load(tmp_path / f"out{suffix}")
    assert (int(written.header["qform_code"]), int(written.header["sform_code"])) == (4, 4)
    np.testing.assert_allclose(written.affine, affine, atol=1e-5)
    np.testing.assert_allclose(written.header.get_qform(), affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(written.dataobj), np.asarray(image.dataobj) * 2)
    # codes that agree are kept as they were (aligned sform beside the scanner qform)
    image.set_qform(affine, 1)
    image.set_sform(affine, 2)
    nib.save(image, tmp_path / f"agree{suffix}")
    volume = read_volume(tmp_path / f"agree{suffix}")
    write_volume(volume.with_array(volume.array), tmp_path / f"agree_out{suffix}")
    written = nib.load(tmp_path / f"agree_out{suffix}").header
    assert (int(written["qform_code"]), int(written["sform_code"])) == (1, 2)
    # a sheared sform that disagrees with the qform cannot be held by ITK's grid: refused with both named
    sheared = affine.copy()
    sheared[0, 1] = 0.3
    image.set_sform(sheared, 2)
    nib.save(image, tmp_path / f"sheared{suffix}")
    with pytest.raises(InputError, match=r"its qform \(code 1, .*\) and sform \(code 2, .*\) disagree.*sheared"):
        read_volume(tmp_path / f"sheared{suffix}")


@pytest.mark.parametrize("orientation", ["RAS", "RPI", "SPL", "AIR"])
def test_reoriented_onto_reorders_the_same_grid_losslessly(orientation):
    """An oblique grid stored with its axes swapped or reversed comes back voxel for voxel; a grid whose
    voxel centres differ (by half a voxel, or in extent) does not."""
    turn = np.radians(10.0)
    oblique = (np.cos(turn), -np.sin(turn), 0.0, np.sin(turn), np.cos(turn), 0.0, 0.0, 0.0, 1.0)
    geometry = Geometry((7, 6, 5), (1.0, 1.2, 1.5), (3.0, -2.0, 5.0), oblique)
    volume = Volume(np.random.default_rng(0).random(geometry.shape).astype(np.float32), geometry, "mask.nii.gz")
    stored = Volume.from_sitk(sitk.DICOMOrient(volume.to_sitk(), orientation), "mask.nii.gz")
    assert stored.geometry.differences(geometry)
    back = reoriented_onto(stored, geometry)
    assert back.geometry == geometry and back.source == "mask.nii.gz"
    np.testing.assert_array_equal(back.array, volume.array)
    assert reoriented_onto(volume, geometry) is volume
    half_voxel = Geometry(stored.geometry.size, stored.geometry.spacing,
                          tuple(np.add(stored.geometry.origin, (0.5, 0.0, 0.0))), stored.geometry.direction)
    assert reoriented_onto(Volume(stored.array, half_voxel), geometry) is None
    wider = Geometry((8, 6, 5), geometry.spacing, geometry.origin, geometry.direction)
    assert reoriented_onto(Volume(np.zeros(wider.shape, np.float32), wider), geometry) is None


def test_resample_onto_another_grid():
    # A linear ramp along physical x survives linear resampling exactly (inside the source's extent).
    source_geometry = Geometry((20, 18, 16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), LPS)
    z, y, x = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in source_geometry.shape], indexing="ij")
    source = Volume((3.0 * x + 2.0 * y - z + 50.0).astype(np.float32), source_geometry, "ramp")
    target = Geometry((8, 7, 6), (2.0, 1.5, 1.25), (2.5, 1.0, 3.0), LPS)
    moved = resample_to(source, target)
    assert moved.geometry == target and moved.array.shape == target.shape and moved.array.dtype == np.float32
    assert "resampled" in moved.source
    k, j, i = np.meshgrid(*[np.arange(n) for n in target.shape], indexing="ij")
    px, py, pz = 2.5 + 2.0 * i, 1.0 + 1.5 * j, 3.0 + 1.25 * k  # physical = voxel coordinates of the source
    np.testing.assert_allclose(moved.array, 3.0 * px + 2.0 * py - pz + 50.0, rtol=0, atol=1e-3)


def test_resample_nearest_keeps_labels_and_fills_outside_with_zero():
    geometry = Geometry((10, 10, 10), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), LAS)
    mask = np.zeros(geometry.shape, np.float32)
    mask[3:7, 2:8, 4:9] = 1
    target = Geometry((12, 12, 12), (0.7, 0.7, 0.7), (-2.0, 1.0, -1.0), LAS)
    moved = resample_to(Volume(mask, geometry, "mask"), target, nearest=True)
    assert set(np.unique(moved.array)) == {0.0, 1.0}
    linear = resample_to(Volume(mask, geometry, "mask"), target)
    assert len(np.unique(linear.array)) > 2  # the test can tell the two apart


# --- real data ------------------------------------------------------------------------------------

@pytest.mark.skipif(not DATA.is_dir(), reason=NO_DATA)
@pytest.mark.parametrize("relative, orientation, dtype", [
    ("ms/patient07/T1.nii.gz", "LAS", np.float32),
    ("brats/BraTS-GLI-00001-000/t1n.nii.gz", "LPS", np.int16),
])
def test_real_data_round_trip(tmp_path, relative, orientation, dtype):
    path = DATA / relative
    if not path.is_file():
        pytest.skip(f"{path} is not available")
    raw = nib.load(path)
    assert raw.get_data_dtype() == dtype
    original = read_volume(path)
    assert original.geometry.orientation() == orientation == "".join(nib.aff2axcodes(raw.affine))
    # voxels as nibabel reads them (x, y, z order, no scaling for these files)
    np.testing.assert_array_equal(original.array, np.asarray(raw.dataobj).astype(np.float32).transpose(2, 1, 0))
    copy = write_volume(original, tmp_path / "copy.nii.gz")
    back = read_volume(copy)
    np.testing.assert_array_equal(back.array, original.array)
    assert_same_geometry(back.geometry, original.geometry)
    np.testing.assert_allclose(nib.load(copy).affine, raw.affine, rtol=0, atol=1e-5)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_nan_and_inf_survive_reading(tmp_path, suffix):
    """ITK's NIfTI reader turns NaN/Inf into 0; read_volume must hand them on so that they can be refused."""
    volume = random_volume(direction=LAS)
    array = volume.array.copy()
    array[1, 2, 3], array[2, 3, 4], array[4, 5, 6] = np.nan, np.inf, -np.inf
    path = tmp_path / f"nan{suffix}"
    sitk.WriteImage(volume.with_array(array).to_sitk(), str(path))
    read = read_volume(path)
    assert np.isnan(read.array[1, 2, 3]) and read.array[2, 3, 4] == np.inf and read.array[4, 5, 6] == -np.inf
    finite = np.isfinite(array)
    np.testing.assert_array_equal(read.array[finite], array[finite])


def test_nan_in_a_4d_nifti_with_one_volume(tmp_path):
    data = np.ones((5, 6, 7, 1), np.float32)
    data[1, 2, 3, 0] = np.nan
    path = tmp_path / "one.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    read = read_volume(path)
    assert read.array.shape == (7, 6, 5) and np.isnan(read.array[3, 2, 1]) and np.isfinite(read.array).sum() == 209


def _cut(path: Path, keep: float) -> Path:
    """The first ``keep`` of a file's bytes, as an interrupted copy leaves it."""
    data = path.read_bytes()
    cut = path.with_name("cut_" + path.name)
    cut.write_bytes(data[:int(len(data) * keep)])
    return cut


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_a_truncated_nifti_is_refused(tmp_path, suffix):
    """ITK's NIfTI reader fills the missing voxels with zeros without a word: half a scan entered the model."""
    path = tmp_path / f"T1{suffix}"
    write_volume(random_volume(shape=(40, 50, 60)), path)
    cut = _cut(path, 0.5)
    with pytest.raises(InputError) as error:
        read_volume(cut)
    message = str(error.value)
    assert message.startswith(f"{cut}: is truncated: its header announces 480,352 bytes of header and voxels")
    share = int(message.split("holds about ")[1].split(" %")[0])
    assert 40 <= share <= 60 if suffix == ".nii" else 0 < share < 100
    assert "copy it again" in message
    read_volume(path)  # the whole file reads


def test_a_damaged_gzip_stream_is_refused(tmp_path):
    path = tmp_path / "T1.nii.gz"
    write_volume(random_volume(shape=(40, 50, 60)), path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = bytes(64)  # a corrupted block inside the deflate stream
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="its gzip stream is damaged") as error:
        read_volume(path)
    assert str(error.value).startswith(f"{path}: ")


def test_an_uncompressed_nifti_named_nii_gz_is_told_to_be_renamed(tmp_path):
    """A plain .nii renamed .nii.gz was "damaged; copy or download it again": it is intact, its name is wrong."""
    write_image(np.ones((4, 5, 6), np.float32), tmp_path / "plain.nii")
    (tmp_path / "plain.nii").rename(tmp_path / "plain.nii.gz")
    with pytest.raises(InputError) as error:
        read_volume(tmp_path / "plain.nii.gz")
    assert str(error.value) == (f"{tmp_path / 'plain.nii.gz'}: is not gzip-compressed, although its name ends in "
                                ".nii.gz: an uncompressed NIfTI; rename it to .nii")


def test_the_voxel_offset_is_honoured(tmp_path):
    """A header extension moves the voxels back: the complete file reads, cutting even its last voxel is refused."""
    data = np.random.default_rng(0).normal(100, 30, (6, 7, 8)).astype(np.float32)
    image = nib.Nifti1Image(data, np.eye(4))
    image.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"an extension of 32 bytes" + bytes(8)))
    path = tmp_path / "T1.nii"
    nib.save(image, path)
    assert path.stat().st_size - data.nbytes > 352  # the voxels start after the extension
    np.testing.assert_array_equal(read_volume(path).array, data.transpose(2, 1, 0))
    cut = tmp_path / "cut.nii"
    cut.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(InputError, match="is truncated"):
        read_volume(cut)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti2_is_refused_with_the_conversion(tmp_path, suffix):
    """ITK only says "Unable to determine ImageIO reader"; the message says what the file is and what to do."""
    path = tmp_path / f"T1{suffix}"
    nib.save(nib.Nifti2Image(np.ones((6, 7, 8), np.float32), np.eye(4)), path)
    with pytest.raises(InputError) as error:
        read_volume(path)
    assert str(error.value).startswith(f"{path}: is NIfTI-2, which ITK (and so Slicer) does not read; save it as "
                                       "NIfTI-1")


def test_other_formats_are_left_to_their_readers(tmp_path):
    """ITK's NRRD and MetaImage readers raise on a truncated file themselves."""
    for suffix in (".nrrd", ".mha"):
        path = tmp_path / f"T1{suffix}"
        write_volume(random_volume(shape=(40, 50, 60)), path)
        with pytest.raises(InputError, match="not a readable image"):
            read_volume(_cut(path, 0.5))


def test_a_short_nifti_write_is_an_error_and_leaves_nothing(tmp_path, monkeypatch):
    """On a full disk ITK's NIfTI writer prints "NWAD: wrote only ..." and returns: the short file was renamed
    into place under the output's name, and the run said it had succeeded."""
    real = sitk.WriteImage

    def short_write(image, name, *args, **kwargs):
        real(image, name, *args, **kwargs)
        data = Path(name).read_bytes()
        Path(name).write_bytes(data[:len(data) // 2])

    path = tmp_path / "FLAIR.nii.gz"
    path.write_bytes(b"the user's earlier result")
    monkeypatch.setattr(volume_module.sitk, "WriteImage", short_write)
    with pytest.raises(InputError) as error:
        write_volume(random_volume(shape=(40, 50, 60)), path, overwrite=True)
    assert str(error.value) == (f"{path}: could not be written (the file came out short; is the disk full or the "
                                "folder read-only?); nothing was left under that name")
    assert path.read_bytes() == b"the user's earlier result" and sorted(tmp_path.iterdir()) == [path]

