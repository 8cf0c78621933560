"""Which input to use where, when one holds data over part of the brain only (MRSynthesisLib.coverage)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from conftest import DATA, NO_DATA
from MRSynthesisLib.coverage import EDGE_VOXELS, PARTIAL_FRACTION, input_coverage, outside_own_mask, percent

SHAPE = (30, 40, 40)  # (z, y, x)
SOURCES = {"T1": "t1.nii.gz", "T2": "t2.nii.gz"}


def brain_and_inputs():
    brain = np.zeros(SHAPE, bool)
    brain[2:28, 4:36, 4:36] = True
    rng = np.random.default_rng(0)
    inputs = {n: np.where(brain, rng.uniform(50, 100, SHAPE), 0.0).astype(np.float32) for n in SOURCES}
    return brain, inputs


def test_complete_inputs_and_a_few_dark_voxels_change_nothing():
    brain, inputs = brain_and_inputs()
    assert not input_coverage(inputs, brain, SOURCES, slice_axis=0).partial
    spots = np.flatnonzero(brain)[:int(0.5 * PARTIAL_FRACTION * brain.sum())]  # under the fraction
    inputs["T2"].flat[spots] = 0
    coverage = input_coverage(inputs, brain, SOURCES, slice_axis=0)
    assert not coverage.partial and coverage.notes == [] and coverage.uncovered is None


def test_zeros_of_clipped_dark_tissue_are_data_not_a_missing_field_of_view():
    """Intensities clipped at a low percentile and shifted to 0: zeros scattered through the brain and a solid
    block inside it (a ventricle) are tissue; taken for missing data they would leave the input out around them."""
    brain, inputs = brain_and_inputs()
    rng = np.random.default_rng(1)
    inputs["T1"][brain & (rng.uniform(size=SHAPE) < 0.05)] = 0  # 5 % of the brain, scattered
    inputs["T1"][12:18, 16:24, 16:24] = 0  # a solid dark block that does not reach the brain's edge
    assert np.count_nonzero(brain & (inputs["T1"] == 0)) > 5 * PARTIAL_FRACTION * brain.sum()
    assert not input_coverage(inputs, brain, SOURCES, slice_axis=0).partial
    inputs["T1"][20:] = 0  # a slab limit as well: that part, and only that, is missing
    coverage = input_coverage(inputs, brain, SOURCES, slice_axis=0)
    missing = brain & ~coverage.held["T1"]
    assert missing[20:].sum() == brain[20:].sum()
    assert missing[:20].sum() < 0.01 * brain[:20].sum()  # only dark voxels touching the slab's zeros join it


def test_an_oblique_limit_counts_and_a_dark_band_across_the_brain_does_not():
    """Beyond an oblique limit the zeros fill about half their bounding box; a solid dark tube that crosses
    the brain diagonally from corner to corner (tissue clipped to 0) fills a tenth of its box."""
    brain, inputs = brain_and_inputs()
    z, y, x = np.indices(SHAPE)
    points = np.stack([z - 2, y - 4, x - 4], -1).astype(float)
    axis = np.array([26.0, 32.0, 32.0]) / np.linalg.norm([26.0, 32.0, 32.0])
    tube = brain & (np.linalg.norm(points - (points @ axis)[..., None] * axis, axis=-1) < 4.5)
    inputs["T1"][tube] = 0
    assert np.count_nonzero(tube) > 5 * PARTIAL_FRACTION * brain.sum()
    assert not input_coverage(inputs, brain, SOURCES, slice_axis=0).partial
    oblique = brain & (z + y > 45)
    inputs["T2"][oblique] = 0
    coverage = input_coverage(inputs, brain, SOURCES, slice_axis=0)
    assert list(coverage.used) == ["T2"]
    np.testing.assert_array_equal(brain & ~coverage.held["T2"], oblique)


def test_a_slab_is_left_out_where_it_holds_no_data_and_its_margin_stays_in_the_slice_plane():
    brain, inputs = brain_and_inputs()
    inputs["T2"][20:] = 0  # a slab ending between slices 19 and 20
    inputs["T2"][:20, :, 30:] = 0  # and a field of view ending inside the slices
    coverage = input_coverage(inputs, brain, SOURCES, slice_axis=0)
    assert list(coverage.used) == ["T2"] and coverage.uncovered is None
    used, held = coverage.used["T2"], coverage.held["T2"]
    np.testing.assert_array_equal(held & brain, brain & (inputs["T2"] != 0))
    assert not held[20:].any() and held[2:20, :, :30].all()  # around the brain: as its nearest voxel in the slice
    assert not used[20:].any()
    assert used[19, 20, 4:30 - EDGE_VOXELS].all() and not used[19, 20, 30 - EDGE_VOXELS:].any()  # in-plane margin
    assert used[19, 20, 10] and used[18, 20, 10]  # no margin across slices
    share = round(100 * np.count_nonzero(brain & ~held) / brain.sum())
    assert coverage.notes == [f"t2.nii.gz: holds no data (zeros) in {share} % of the brain, outside its field of view "
                              "or slab; synthesised there from T1 alone"]


def test_a_3d_model_gets_its_margin_in_3d():
    brain, inputs = brain_and_inputs()
    inputs["T2"][20:] = 0
    used = input_coverage(inputs, brain, SOURCES, slice_axis=None).used["T2"]
    assert not used[20 - EDGE_VOXELS:].any() and used[20 - EDGE_VOXELS - 1, 20, 20]  # in every direction
    assert used[:20 - EDGE_VOXELS].all()


def test_when_every_input_is_partial_the_margin_never_leaves_a_voxel_without_one():
    brain, inputs = brain_and_inputs()
    inputs["T1"][15:] = 0  # T1 below, T2 above, and slices 13-16 in neither
    inputs["T2"][:17] = 0
    inputs["T2"][:, :, :6] = 0  # T2's field of view also stops short of a strip of its slices
    coverage = input_coverage(inputs, brain, SOURCES, slice_axis=0)
    held_by_any = brain & ((inputs["T1"] != 0) | (inputs["T2"] != 0))
    used_by_any = coverage.used["T1"] | coverage.used["T2"]
    np.testing.assert_array_equal(used_by_any & brain, held_by_any)  # the margins are given back at the edges
    np.testing.assert_array_equal(coverage.uncovered, brain & ~held_by_any)
    share = 100 * np.count_nonzero(coverage.uncovered) / brain.sum()
    assert coverage.notes[-1] == f"{share:.1f} % of the brain holds data in no input: the outputs are 0 there"
    assert coverage.notes[0].endswith("synthesised there from T2 where it holds data")  # not "T2 alone"


def test_a_single_partial_input_says_nothing_is_synthesised_where_it_holds_none():
    brain, inputs = brain_and_inputs()
    inputs["T1"][20:] = 0
    coverage = input_coverage({"T1": inputs["T1"]}, brain, SOURCES, slice_axis=0)
    assert coverage.notes[0].endswith("nothing is synthesised there") and len(coverage.notes) == 1
    np.testing.assert_array_equal(coverage.uncovered, brain & (inputs["T1"] == 0))


def test_a_slab_that_misses_a_few_slices_at_the_top_of_the_brain_is_found():
    """Too thin for the solid-block rule and under PARTIAL_FRACTION: the vertex a slab did not reach. A brain
    section in which an input is 0 throughout is not measured whatever its size."""
    brain, inputs = brain_and_inputs()
    brain[28, 18:22, 18:22] = True  # the vertex: a small top section
    for n in inputs:
        inputs[n][28, 18:22, 18:22] = 60.0
    inputs["T2"][26:] = 0  # the top three brain sections
    missing = np.count_nonzero(brain[26:])
    assert missing > PARTIAL_FRACTION * brain.sum()  # 8 % of this brain: only the thickness hid it before
    coverage = input_coverage(inputs, brain, SOURCES, slice_axis=0)
    assert list(coverage.used) == ["T2"]
    np.testing.assert_array_equal(brain & ~coverage.held["T2"], brain & (np.arange(SHAPE[0]) >= 26)[:, None, None])
    inputs["T2"][:28] = np.where(brain[:28], 70.0, 0.0)  # now only the 16 voxels of the top section
    coverage = input_coverage(inputs, brain, SOURCES, slice_axis=0)
    assert np.count_nonzero(brain & ~coverage.held["T2"]) == 16
    assert coverage.notes == ["t2.nii.gz: holds no data (zeros) in 0.06 % of the brain, outside its field of view "
                              "or slab; synthesised there from T1 alone"]


def test_an_empty_section_counts_only_beside_sections_that_hold_data():
    """A dropped slice inside the brain is missing; the outermost section of an image clipped at a low
    percentile is 0 throughout too, but so is much of the section beside it: that is dark tissue."""
    brain, inputs = brain_and_inputs()
    inputs["T2"][14] = 0  # one slice of a 2D acquisition lost
    coverage = input_coverage(inputs, brain, SOURCES, slice_axis=0)
    np.testing.assert_array_equal(brain & ~coverage.held["T2"], brain & (np.arange(SHAPE[0]) == 14)[:, None, None])
    share = percent(np.count_nonzero(brain[14]) / np.count_nonzero(brain))
    assert coverage.notes == [f"t2.nii.gz: holds no data (zeros) in {share} of the brain, in sections lost between "
                              "sections that hold data; synthesised there from T1 alone"]
    brain, inputs = brain_and_inputs()
    inputs["T1"][2] = 0  # the outermost section, dark edge tissue clipped to 0
    inputs["T1"][3, :, 4:20] = 0  # and half of the next one
    assert not input_coverage(inputs, brain, SOURCES, slice_axis=0).partial


def test_regions_known_beforehand_count_and_a_tilted_band_of_lost_slices_is_said_as_lost_slices():
    """After ``--register`` a band of lost slices lies across the grid's sections, and registration hands it over
    (``known``): too thin to be found in the resampled image, it is left out and said as lost slices; a notch in
    the brain's side is not."""
    brain, inputs = brain_and_inputs()
    z, y, _ = np.indices(SHAPE)
    band = brain & (np.abs(z - 14 - 0.06 * (y - 20)) < 1.0)  # 2 voxels thick, tilted by 3.4 degrees
    assert not input_coverage(inputs, brain, SOURCES, slice_axis=0).partial  # no zeros: nothing found by itself
    coverage = input_coverage(inputs, brain, SOURCES, slice_axis=0, known={"T2": band})
    np.testing.assert_array_equal(brain & ~coverage.held["T2"], band)
    share = percent(np.count_nonzero(band) / np.count_nonzero(brain))
    assert coverage.notes == [f"t2.nii.gz: holds no data (zeros) in {share} of the brain, in sections lost between "
                              "sections that hold data; synthesised there from T1 alone"]
    notch = brain & (np.abs(z - 14) < 4) & (y < 12)
    said = input_coverage(inputs, brain, SOURCES, slice_axis=0, known={"T2": notch}).notes
    assert "outside its field of view or slab" in said[0]


def test_an_input_stripped_with_a_tighter_mask_is_left_out_in_the_shell_around_the_brain():
    """T1 zero in a 2-voxel shell where T2 holds data: thinner than the solid-block rule sees, it is the brain beyond
    T1's own mask; an input zero on part of the brain's surface only (clipped dark CSF) is data."""
    brain, inputs = brain_and_inputs()
    inner = np.zeros(SHAPE, bool)
    inner[4:26, 6:34, 6:34] = True
    inputs["T1"][~inner] = 0
    coverage = input_coverage(inputs, brain, SOURCES, slice_axis=0)
    np.testing.assert_array_equal(brain & ~coverage.held["T1"], brain & ~inner)
    share = percent(np.count_nonzero(brain & ~inner) / np.count_nonzero(brain))
    assert coverage.notes == [f"t1.nii.gz: holds no data (zeros) in {share} of the brain, in a shell around its edge, "
                              "as if skull-stripped with a tighter mask than the brain taken (the other inputs' "
                              "foreground, or the brain mask given); synthesised there from T2 alone"]
    brain, inputs = brain_and_inputs()
    surface = brain & ~inner
    rng = np.random.default_rng(2)
    inputs["T1"][surface & (rng.uniform(size=SHAPE) < 0.8)] = 0  # most of the surface, not all of it
    assert not input_coverage(inputs, brain, SOURCES, slice_axis=0).partial


def test_a_brain_mask_beyond_every_input_leaves_that_shell_unsynthesised():
    brain, inputs = brain_and_inputs()
    wider = np.zeros(SHAPE, bool)
    wider[1:29, 3:37, 3:37] = True
    coverage = input_coverage(inputs, wider, SOURCES, slice_axis=0)
    np.testing.assert_array_equal(coverage.uncovered, wider & ~brain)
    assert coverage.notes[-1].endswith("of the brain holds data in no input: the outputs are 0 there")


@pytest.mark.skipif(not DATA.is_dir(), reason=NO_DATA)
def test_on_the_shared_scans_only_a_tighter_mask_is_taken_for_one():
    """As given (one mask per subject) and clipped at their 3rd-10th percentile (zeros on up to 0.60 of the brain's
    surface) they hold data everywhere; stripped one voxel tighter, the shell is found."""
    from MRSynthesisLib.preprocessing import foreground_mask
    from MRSynthesisLib.volume import read_volume

    for folder in sorted(p for p in DATA.glob("*/*") if p.is_dir()):
        images = {p.name: read_volume(p).array for p in folder.glob("*.nii.gz") if "mask" not in p.name}
        brain = foreground_mask(list(images.values()))
        inner = ndi.binary_erosion(brain)
        for name, image in images.items():
            assert not outside_own_mask(image, brain).any(), (folder, name)
            for percentile in (3, 10):
                low = np.percentile(image[brain], percentile)
                clipped = np.where(brain, np.maximum(image, low) - low, 0.0)
                assert not outside_own_mask(clipped, brain).any(), (folder, name, percentile)
        for name, image in images.items():
            found = outside_own_mask(np.where(inner, image, 0), brain)
            assert (found >= (brain & ~inner)).all(), (folder, name)
            # and the few voxels inside that are 0 in the scan itself where they now open onto the shell
            assert np.count_nonzero(found & inner) < 1e-3 * np.count_nonzero(brain), (folder, name)


@pytest.mark.skipif(not DATA.is_dir(), reason=NO_DATA)
def test_on_real_data_a_t1_stripped_tighter_is_left_out_in_its_shell():
    """patient07's T1 stripped 2 voxels tighter than its T2: the bundled model's FLAIR from T1 + T2 scored SSIM
    0.639 in the brain with the shell fed as dark tissue, 0.681 with T1 left out there (0.692 as given)."""
    from MRSynthesisLib import registry
    from MRSynthesisLib.cards import load_model
    from MRSynthesisLib.logic import SynthesisLogic, SynthesisRequest
    from MRSynthesisLib.metrics import ssim
    from MRSynthesisLib.preprocessing import foreground_mask
    from MRSynthesisLib.volume import read_volume

    folder = DATA / "ms" / "patient07"
    t1, t2, flair = (read_volume(folder / f"{m}.nii.gz") for m in ("T1", "T2", "FLAIR"))
    brain = foreground_mask([t1.array, t2.array])
    tighter = t1.with_array(np.where(ndi.distance_transform_edt(brain) > 2, t1.array, 0).astype(np.float32))
    result = SynthesisLogic(load_model(registry.resolve(None))).run(
        SynthesisRequest({"T1": tighter, "T2": t2}, ["FLAIR"], device="cpu"))
    assert any("as if skull-stripped with a tighter mask" in n for n in result.notes)
    synthetic = result.outputs["FLAIR"].array
    assert ssim(synthetic / synthetic[brain].mean(), flair.array / flair.array[brain].mean(), brain) > 0.67
