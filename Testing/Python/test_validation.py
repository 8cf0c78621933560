"""Input checks before a model sees anything: values, masks, and grids that must match."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import LAS, LPS, phantom
from MRSynthesisLib.errors import InputError
from MRSynthesisLib.validation import NEGATIVE_LIMIT, align, check_magnitude, check_mask, check_values, nan_as_no_data
from MRSynthesisLib.volume import Geometry, Volume

GRID = Geometry((24, 28, 20), (1.0, 1.0, 1.5), (-12.0, 14.0, -15.0), LAS)


def vol(array, source="/data/sub-01/T1.nii.gz", geometry=GRID) -> Volume:
    return Volume(np.asarray(array, np.float32), geometry, source)


def test_check_values_accepts_a_normal_image():
    check_values(vol(phantom()["T1"]))


@pytest.mark.parametrize("fill, words", [
    (0.0, "is empty (every voxel is 0)"),
    (7.5, "is constant (every voxel is 7.5)"),
    (-3.0, "is constant"),
])
def test_check_values_rejects_empty_and_constant(fill, words):
    with pytest.raises(InputError) as error:
        check_values(vol(np.full(GRID.shape, fill)))
    assert words in str(error.value)
    assert str(error.value).startswith("/data/sub-01/T1.nii.gz: ")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_check_values_rejects_nan_and_inf(bad):
    array = phantom()["T1"].copy()
    array[3, 4, 5] = bad
    array[10, 10, 10] = bad
    with pytest.raises(InputError, match="contains 2 NaN or infinite voxels") as error:
        check_values(vol(array, source="/x/FLAIR.nii.gz"))
    assert "/x/FLAIR.nii.gz" in str(error.value)


def test_nan_is_taken_as_no_data_but_not_everywhere():
    array = phantom()["T1"].copy()
    array[:3] = np.nan
    volume, note = nan_as_no_data(vol(array, source="/x/rT1.nii.gz"))
    assert not np.isnan(volume.array).any() and (volume.array[:3] == 0).all()
    np.testing.assert_array_equal(volume.array[3:], array[3:])
    assert note.startswith(f"/x/rT1.nii.gz: {3 * array[0].size} voxels (")
    clean = vol(phantom()["T1"])
    assert nan_as_no_data(clean) == (clean, None)
    with pytest.raises(InputError, match="/x/all.nii.gz: every voxel is NaN"):
        nan_as_no_data(vol(np.full(GRID.shape, np.nan), source="/x/all.nii.gz"))


def resampled(array: np.ndarray, interpolator: int) -> np.ndarray:
    """``array`` moved by a small rigid motion with ``interpolator``, as a registration tool writes it."""
    image = sitk.GetImageFromArray(np.asarray(array, np.float32))
    centre = image.TransformContinuousIndexToPhysicalPoint([n / 2 for n in image.GetSize()])
    motion = sitk.Euler3DTransform(centre, 0.05, 0.03, 0.08, (0.4, -0.6, 0.3))
    return sitk.GetArrayFromImage(sitk.Resample(image, image, motion, interpolator, 0.0))


@pytest.mark.parametrize("interpolator", [sitk.sitkLinear, sitk.sitkBSpline, sitk.sitkLanczosWindowedSinc])
def test_check_magnitude_takes_the_ringing_of_resampling(interpolator):
    """B-spline (elastix's default) and windowed-sinc resampling leave a third of the non-zero voxels a little
    below 0 on the shared scans; counting negative voxels refused them."""
    moved = resampled(phantom()["T1"], interpolator)
    if interpolator != sitk.sitkLinear:
        assert np.count_nonzero(moved < 0) > 0.1 * np.count_nonzero(moved)  # the case the voxel count refused
    check_magnitude(vol(moved))


def test_check_magnitude_refuses_shifted_intensities():
    t1 = phantom()["T1"]
    brain = t1 > 0
    z = np.where(brain, (t1 - t1[brain].mean()) / t1[brain].std(), 0.0)  # z-scored: its negatives sum to its positives
    with pytest.raises(InputError) as error:
        check_magnitude(vol(z))
    assert str(error.value).startswith("/data/sub-01/T1.nii.gz: its negative voxels sum to 100 % of its positive ones")
    with pytest.raises(InputError, match="not z-scored or shifted"):
        check_magnitude(vol(2 * (t1 - t1.min()) / (t1.max() - t1.min()) - 1))  # scaled to [-1, 1]
    with pytest.raises(InputError, match="T1.nii.gz: has no voxel above 0"):
        check_magnitude(vol(-t1))
    flipped = t1.copy()  # a tenth of the brain's signal below 0: twice the limit
    flipped.flat[np.flatnonzero(brain)[: int(2 * NEGATIVE_LIMIT * brain.sum())]] *= -1
    with pytest.raises(InputError, match="not z-scored or shifted"):
        check_magnitude(vol(flipped))


def test_check_values_allow_empty_is_for_masks():
    check_values(vol(np.zeros(GRID.shape)), allow_empty=True)
    with pytest.raises(InputError, match="NaN"):
        check_values(vol(np.full(GRID.shape, np.nan)), allow_empty=True)


def test_check_mask_binary():
    lesion = phantom()["lesion"]
    result = check_mask(vol(lesion, source="lesion.nii.gz"))
    assert result.dtype == bool and np.array_equal(result, lesion > 0)
    assert not check_mask(vol(np.zeros(GRID.shape))).any()  # an empty lesion mask is allowed


@pytest.mark.parametrize("inside", [255.0, 2.0])
def test_check_mask_takes_any_whole_inside_value(inside):
    """A 0/255 mask, as many tools write, or one label of a label map saved alone, is a mask all the same."""
    lesion = phantom()["lesion"]
    np.testing.assert_array_equal(check_mask(vol(np.where(lesion > 0, inside, 0.0))), lesion > 0)


def test_check_mask_rejects_a_label_map():
    labels = phantom()["labels"]  # 0..4
    with pytest.raises(InputError) as error:
        check_mask(vol(labels, source="/x/aseg.nii.gz"))
    message = str(error.value)
    assert message == "/x/aseg.nii.gz: a mask must hold 0 and one whole positive value (1, or 255 as some tools " \
                      "write), found values 0, 1, 2, 3, 4"


@pytest.mark.parametrize("inside", [0.5, -1.0])
def test_check_mask_rejects_a_soft_or_negative_mask(inside):
    with pytest.raises(InputError, match=f"found values {min(0, inside):g}, {max(0, inside):g}"):
        check_mask(vol(np.where(phantom()["brain"] > 0, inside, 0.0)))


# --- align ---------------------------------------------------------------------------------

def shifted(**changes) -> Geometry:
    fields = dict(size=GRID.size, spacing=GRID.spacing, origin=GRID.origin, direction=GRID.direction)
    fields.update(changes)
    return Geometry(**fields)


def subject_on(geometry_t2: Geometry):
    p = phantom()
    t2 = p["T2"] if geometry_t2.shape == GRID.shape else np.resize(p["T2"], geometry_t2.shape)
    return {"T1": vol(p["T1"], "/data/T1.nii.gz"), "T2": vol(t2, "/data/T2_other.nii.gz", geometry_t2)}


def test_align_same_grid_returns_the_inputs_unchanged():
    p = phantom()
    inputs = {"T1": vol(p["T1"], "a"), "T2": vol(p["T2"], "b")}
    lesion = vol(p["lesion"], "lesion")
    aligned, masks = align(inputs, "T1", masks={"lesion": lesion})
    assert all(aligned[n] is inputs[n] for n in inputs) and masks["lesion"] is lesion


@pytest.mark.parametrize("geometry, word", [
    (shifted(spacing=(1.0, 1.0, 1.2)), "spacing"),
    (shifted(origin=(-12.0, 14.0, -13.0)), "origin"),
    (shifted(size=(24, 28, 22)), "size"),
    (shifted(direction=LPS), "direction"),
])
def test_align_refuses_different_grids_naming_both_files(geometry, word):
    with pytest.raises(InputError) as error:
        align(subject_on(geometry), "T1")
    message = str(error.value)
    assert "/data/T1.nii.gz" in message and "/data/T2_other.nii.gz" in message
    assert word in message and "--resample-to T1" in message
    others = {"spacing", "origin", "size", "direction"} - {word}
    assert not any(f"{other} (" in message for other in others)  # only what differs is listed


def test_align_mask_on_another_grid_is_refused_too():
    p = phantom()
    inputs = {"T1": vol(p["T1"], "/data/T1.nii.gz")}
    lesion = vol(p["lesion"], "/data/lesion.nii.gz", shifted(origin=(0.0, 0.0, 0.0)))
    with pytest.raises(InputError, match="lesion.nii.gz and /data/T1.nii.gz are on different grids"):
        align(inputs, "T1", masks={"lesion": lesion})


def test_align_takes_the_same_grid_stored_in_another_voxel_order():
    """A mask (or image) written RAS beside a LAS image, or with its slice axis reversed as Slicer writes a LAS
    NIfTI: the same voxels, reordered without interpolation rather than refused."""
    p = phantom()
    inputs = {"T1": vol(p["T1"], "/data/T1.nii.gz")}
    for orientation in ("RAS", "LAI", "SPL"):
        lesion = Volume.from_sitk(sitk.DICOMOrient(vol(p["lesion"]).to_sitk(), orientation), "/data/lesion.nii.gz")
        t2 = Volume.from_sitk(sitk.DICOMOrient(vol(p["T2"]).to_sitk(), orientation), "/data/T2.nii.gz")
        assert lesion.geometry != GRID
        aligned, masks = align({**inputs, "T2": t2}, "T1", masks={"lesion": lesion})
        assert masks["lesion"].geometry == GRID and aligned["T2"].geometry == GRID
        np.testing.assert_array_equal(masks["lesion"].array, p["lesion"])
        np.testing.assert_array_equal(aligned["T2"].array, p["T2"])


def test_align_unknown_reference():
    with pytest.raises(InputError, match="reference modality 'FLAIR' is not among the inputs"):
        align(subject_on(GRID), "FLAIR")


def test_align_resamples_when_asked_and_masks_stay_binary():
    p = phantom()
    other = Geometry((30, 30, 25), (0.8, 0.9, 1.1), (-13.0, 15.0, -16.0), LAS)
    # The same phantom, sampled on another grid: resampling must bring it back near the original.
    from MRSynthesisLib.volume import resample_to

    t2_other = resample_to(vol(p["T2"]), other)
    lesion_other = resample_to(vol(p["lesion"]), other, nearest=True)
    inputs = {"T1": vol(p["T1"], "/data/T1.nii.gz"), "T2": Volume(t2_other.array, other, "/data/T2.nii.gz")}
    aligned, masks = align(inputs, "T1", resample=True,
                           masks={"lesion": Volume(lesion_other.array, other, "/data/lesion.nii.gz")})
    assert aligned["T1"] is inputs["T1"]
    assert aligned["T2"].geometry == GRID and masks["lesion"].geometry == GRID
    assert set(np.unique(masks["lesion"].array)) <= {0.0, 1.0}
    assert masks["lesion"].array.sum() > 0.5 * p["lesion"].sum()
    inside = p["brain"] > 0
    correlation = np.corrcoef(aligned["T2"].array[inside], p["T2"][inside])[0, 1]
    assert correlation > 0.5
