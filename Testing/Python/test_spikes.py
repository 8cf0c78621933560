"""Spikes: isolated voxels far outside an image's range are replaced by their neighbours' median before
normalisation (inference and training alike); a block of them (a fill value, a mark) is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import LAS, phantom
from MRSynthesisLib.errors import InputError
from MRSynthesisLib.spikes import NEIGHBOURHOOD, SPIKE_FACTOR, SPIKE_PERCENTILE, remove_spikes, spike_voxels
from MRSynthesisLib.volume import Geometry, Volume, read_volume
from training.datasets import discover, load_subject

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
SHAPE = (20, 28, 24)
GRID = Geometry(tuple(reversed(SHAPE)), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), LAS)


def vol(array: np.ndarray, source: str = "/data/T2.nii.gz") -> Volume:
    return Volume(np.asarray(array, np.float32), GRID, source)


def spiked(values: dict[tuple[int, int, int], float]) -> tuple[np.ndarray, np.ndarray]:
    """The phantom's T2 and a copy with ``values`` set at those voxels."""
    clean = phantom(SHAPE)["T2"]
    bad = clean.copy()
    for point, value in values.items():
        bad[point] = value
    return clean, bad


def neighbours_median(array: np.ndarray, spikes: np.ndarray, point: tuple[int, int, int]) -> float:
    """The median of the non-spike voxels in the cube around ``point`` (independent of the module's gather)."""
    half = NEIGHBOURHOOD // 2
    window = tuple(slice(max(c - half, 0), c + half + 1) for c in point)
    return float(np.median(array[window][~spikes[window]]))


def test_a_clean_image_is_returned_as_it_is():
    volume = vol(phantom(SHAPE)["T2"])
    assert not spike_voxels(volume.array)[0].any()
    repaired, note = remove_spikes(volume)
    assert repaired is volume and note is None
    empty = np.zeros(SHAPE, np.float32)
    assert not spike_voxels(empty)[0].any() and spike_voxels(empty)[1] == np.inf


def test_spikes_are_replaced_by_their_neighbours_median_and_said():
    points = {(10, 14, 12): 1e7, (3, 5, 6): -4e6, (10, 15, 12): 2e5, (0, 0, 0): 9e5}  # two side by side, a corner
    clean, bad = spiked(points)
    found, limit = spike_voxels(bad)
    assert set(map(tuple, np.argwhere(found))) == set(points)
    assert limit == pytest.approx(SPIKE_FACTOR * np.percentile(bad[bad > 0], SPIKE_PERCENTILE))
    repaired, note = remove_spikes(vol(bad))
    for point in points:
        assert repaired.array[point] == pytest.approx(neighbours_median(bad, found, point))
    untouched = ~found
    np.testing.assert_array_equal(repaired.array[untouched], bad[untouched])
    assert repaired.geometry == GRID and repaired.source == "/data/T2.nii.gz"
    assert note.startswith("/data/T2.nii.gz: 4 isolated voxels far outside its range (up to ")
    assert "replaced by the median of their neighbours" in note


def test_many_spikes_do_not_hide_in_the_percentile():
    """0.5 % of the brain spiked: the 99.9th percentile would lie among them, the 99th does not."""
    clean = phantom(SHAPE)["T2"]
    rng = np.random.default_rng(1)
    brain = np.flatnonzero(clean > 0)
    picked = rng.choice(brain, int(0.005 * brain.size), replace=False)
    bad = clean.copy().ravel()
    bad[picked] = 20 * clean.max()
    bad = bad.reshape(SHAPE)
    found, _ = spike_voxels(bad)
    assert np.array_equal(np.flatnonzero(found), np.sort(picked))
    repaired, _ = remove_spikes(vol(bad))
    assert repaired.array.max() <= clean.max()


def test_a_block_far_outside_the_range_is_refused_naming_the_file():
    clean = phantom(SHAPE)["T2"]
    bad = clean.copy()
    bad[:, :NEIGHBOURHOOD + 1, :NEIGHBOURHOOD + 1] = -32768  # a fill value outside a field of view
    with pytest.raises(InputError) as error:
        remove_spikes(vol(bad, "/data/filled.nii.gz"))
    assert str(error.value).startswith(f"/data/filled.nii.gz: {SHAPE[0] * (NEIGHBOURHOOD + 1) ** 2} voxels lie "
                                       f"beyond {SPIKE_FACTOR:g} times its {SPIKE_PERCENTILE:g}th percentile")
    assert "a fill value or a mark, not MR signal" in str(error.value)
    thin = clean.copy()
    thin[4, 10:14, 10:14] = 5e5  # one slice thick: every spike has neighbours above and below
    assert not spike_voxels(remove_spikes(vol(thin))[0].array)[0].any()


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is absent")
def test_no_voxel_of_the_shared_scans_is_a_spike():
    """The factor's margin: real tissue (fat, vessels, enhancement) peaks at 1.25-3.83 times the percentile."""
    files = sorted(p for p in SHARED.glob("*/*/*.nii.gz") if "mask" not in p.name and "seg" not in p.name)
    assert len(files) >= 12
    for path in files:
        found, _ = spike_voxels(read_volume(path).array)
        assert not found.any(), path


def test_training_repairs_spikes_as_inference_does(tmp_path):
    from test_training_data import write_ms_subject

    folder = write_ms_subject(tmp_path, "p", 1)
    image = sitk.ReadImage(str(folder / "T2.nii.gz"))
    t2 = sitk.GetArrayFromImage(image)
    point = tuple(int(c) for c in np.argwhere(t2 > 0)[len(np.argwhere(t2 > 0)) // 2])
    options = dict(lesion_input=False, lesion_fallback="zeros", flair_z=3.0, min_voxels=5,
                   min_slice_brain_fraction=0.05)
    clean, _, _ = load_subject(discover([str(tmp_path)])[0], ["T1", "T2"], ["FLAIR"], **options)
    assert clean.notes == ()
    t2[point] = 1e8
    bad = sitk.GetImageFromArray(t2)
    bad.CopyInformation(image)
    sitk.WriteImage(bad, str(folder / "T2.nii.gz"))
    subject, _, _ = load_subject(discover([str(tmp_path)])[0], ["T1", "T2"], ["FLAIR"], **options)
    (note,) = subject.notes
    assert note.startswith(f"{folder / 'T2.nii.gz'}: 1 isolated voxel far outside its range")
    assert np.abs(subject.images["T2"]).max() < 10  # normalised by a mean the spike did not raise
    changed = ~np.isclose(subject.images["T2"], clean.images["T2"], rtol=1e-3, atol=1e-3)
    assert np.count_nonzero(changed) <= 1  # the spike's voxel, now its neighbours' median
    np.testing.assert_array_equal(subject.brain, clean.brain)


def test_spikes_are_gathered_in_chunks_with_the_same_result(monkeypatch):
    """A -32768 fill over a million voxels gathered all their neighbourhoods at once: 7.6 GB and 51 s before the
    refusal (patient07's T2, ad hoc); in chunks, 0.55 GB and 3 s. Chunk edges change nothing."""
    from MRSynthesisLib import spikes as module

    points = {(10, 14, 12): 1e7, (3, 5, 6): -4e6, (10, 15, 12): 2e5, (0, 0, 0): 9e5, (19, 27, 23): 3e6}
    _, bad = spiked(points)
    whole, _ = remove_spikes(vol(bad))
    monkeypatch.setattr(module, "CHUNK", 2)
    chunked, _ = remove_spikes(vol(bad))
    np.testing.assert_array_equal(chunked.array, whole.array)
    filled = bad.copy()
    filled[:, :NEIGHBOURHOOD + 1, :NEIGHBOURHOOD + 1] = -32768
    with pytest.raises(InputError, match="some in a block at least"):
        remove_spikes(vol(filled))
