"""Rigid registration of an input onto the reference (``--register``): a known motion is found and undone,
an input in register stays (nearly) where it is, and the logic says what it moved."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import DATA, LAS, NO_DATA, phantom
from MRSynthesisLib.registration import (
    OUT_OF_REGISTER_MM,
    apparent_motion,
    largest_displacement,
    register_onto,
    rigid_transform,
)
from MRSynthesisLib.volume import Geometry, Volume

SHAPE = (48, 56, 52)  # (z, y, x): large enough for the 4-voxel level of the pyramid
GRID = Geometry(tuple(reversed(SHAPE)), (1.0, 1.0, 1.0), (-26.0, 28.0, -24.0), LAS)


def moved(volume: Volume, degrees: float, shift_mm: tuple[float, float, float]) -> tuple[Volume, sitk.Transform]:
    """``volume`` moved rigidly (about its centre), on its own grid, and the transform that undoes it."""
    image = volume.to_sitk()
    motion = sitk.Euler3DTransform()
    motion.SetCenter(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()]))
    motion.SetRotation(np.radians(degrees), 0.0, 0.0)
    motion.SetTranslation(shift_mm)
    array = sitk.GetArrayFromImage(sitk.Resample(image, image, motion, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    return volume.with_array(array, source="/data/T2_moved.nii.gz"), motion


@pytest.fixture(scope="module")
def pair() -> tuple[Volume, Volume]:
    images = phantom(SHAPE, seed=3)
    return (Volume(images["T1"], GRID, "/data/T1.nii.gz"), Volume(images["T2"], GRID, "/data/T2.nii.gz"))


def test_a_known_motion_of_another_contrast_is_found_and_undone(pair):
    t1, t2 = pair
    moving, motion = moved(t2, 4.0, (0.0, 2.0, 1.0))
    truth = largest_displacement(motion, t1)
    assert truth > 3.0
    result = register_onto(t1, moving)
    registered, found = result.volume, result.moved_mm
    assert found == pytest.approx(truth, abs=0.8) and result.unmeasured is None
    brain = t1.array > 0
    undone = sitk.GetArrayFromImage(sitk.Resample(moving.to_sitk(), t1.to_sitk(), motion.GetInverse(),
                                                  sitk.sitkLinear, 0.0, sitk.sitkFloat32))  # the truth's best
    before, after, best = (np.corrcoef(a[brain], t2.array[brain])[0, 1] for a in (moving.array, registered.array,
                                                                                    undone))
    # back where the T2 was acquired, up to interpolation and the pyramid's finest level (2 voxels)
    assert after > best - 0.05 and before < best - 0.2
    assert registered.geometry == t1.geometry and registered.source == "/data/T2_moved.nii.gz (registered)"


def test_an_input_in_register_stays_where_it_is(pair):
    t1, t2 = pair
    assert largest_displacement(rigid_transform(t1, t2), t1) < 0.5


def test_slices_the_moving_input_lost_are_carried_onto_the_reference_grid(pair):
    """Two slices lost on the moving input's own grid: found there and carried through the transform, where
    interpolation had blurred them into a band across the reference's sections that was no longer found."""
    t1, t2 = pair
    moving, motion = moved(t2, 4.0, (0.0, 2.0, 1.0))
    brain = moving.array > 0
    zs = np.flatnonzero(brain.any(axis=(1, 2)))
    lost = moving.array.copy()
    lost[zs[len(zs) // 2]:zs[len(zs) // 2] + 2] = 0
    result = register_onto(t1, moving.with_array(lost))
    truth = sitk.GetArrayFromImage(sitk.Resample(moving.with_array((lost == 0).astype(np.float32)).to_sitk(),
                                                 t1.to_sitk(), motion.GetInverse(), sitk.sitkLinear, 0.0)) >= 0.5
    truth &= t1.array > 0
    found = result.unmeasured & (t1.array > 0)
    assert np.count_nonzero(found & truth) > 0.8 * np.count_nonzero(truth)
    assert np.count_nonzero(found & ~truth) < 0.2 * np.count_nonzero(truth)


def test_without_register_an_input_far_out_of_register_is_said(pair, tiny_model):
    """The quick check on 4 mm voxels: an input in register stays quiet, one moved by 10 degrees and 4 mm (7.4 mm
    at most in the brain) is said, with --register it is aligned instead."""
    from MRSynthesisLib.cards import load_model
    from MRSynthesisLib.logic import SynthesisLogic, SynthesisRequest

    t1, t2 = pair
    far, _ = moved(t2, 10.0, (0.0, 4.0, 0.0))
    assert apparent_motion(t1, t2) < 1.0 and apparent_motion(t1, far) > OUT_OF_REGISTER_MM
    logic = SynthesisLogic(load_model(tiny_model))

    def said(inputs, register=False):
        notes = logic.run(SynthesisRequest(inputs, ["FLAIR"], device="cpu", precision="fp32", register=register)).notes
        return [n for n in notes if "out of register" in n]

    assert said({"T1": t1, "T2": t2}) == []
    (note,) = said({"T1": t1, "T2": far})
    assert note.startswith("/data/T2_moved.nii.gz: seems out of register with /data/T1.nii.gz: a quick rigid "
                           "registration moves its brain by about ") and "--register aligns it first" in note
    assert said({"T1": t1, "T2": far}, register=True) == []
    small = Volume(t1.array[:20, :20, :20].copy(), Geometry((20, 20, 20), (1.0, 1.0, 1.0), GRID.origin, LAS), "small")
    assert apparent_motion(small, small) is None  # 5 coarse voxels a side: too few to tell


@pytest.mark.parametrize("partial", ["T2", "T1"])  # the moving input, or the reference the others are checked on
def test_an_input_holding_data_over_part_of_the_brain_is_checked_away_from_its_edge(tiny_model, partial):
    """Its zeroed part's edge is an edge the other image lacks: the check reads it only away from it."""
    from MRSynthesisLib.cards import load_model
    from MRSynthesisLib.logic import SynthesisLogic, SynthesisRequest

    shape = (64, 64, 64)  # the pair's 48 sections, a third lost and the margin taken, leave too few to tell
    images = phantom(shape, seed=3)
    grid = Geometry(shape, (1.0, 1.0, 1.0), (-32.0, 32.0, -32.0), LAS)
    t1, t2 = Volume(images["T1"], grid, "/data/T1.nii.gz"), Volume(images["T2"], grid, "/data/T2.nii.gz")
    far, _ = moved(t2, 10.0, (0.0, 4.0, 0.0))
    logic = SynthesisLogic(load_model(tiny_model))

    def said(moving):
        inputs = {"T1": t1, "T2": moving}
        top = inputs[partial].array.copy()
        top[: top.shape[0] // 3] = 0  # a third of its sections lost: part of the brain
        inputs[partial] = inputs[partial].with_array(top)
        notes = logic.run(SynthesisRequest(inputs, ["FLAIR"], device="cpu", precision="fp32")).notes
        assert any(n.startswith(f"/data/{partial}") and "holds no data (zeros)" in n for n in notes)
        return [n for n in notes if "out of register" in n]

    assert said(t2) == []
    (note,) = said(far)
    assert "a quick rigid registration moves its brain by about" in note


@pytest.mark.skipif(not DATA.is_dir(), reason=NO_DATA)
def test_on_real_data_a_slab_is_checked_without_its_edges():
    """BraTS's T2 (then its T1, the reference) kept in a 60 mm axial slab: the T2 slab's edges drew the unmasked
    check 4.1 mm off as given, 29.7 mm moved by 3 degrees and 2 mm; masked as ``logic`` masks it, in and out of
    register are told apart."""
    from MRSynthesisLib.coverage import input_coverage
    from MRSynthesisLib.preprocessing import foreground_mask
    from MRSynthesisLib.volume import read_volume

    folder = DATA / "brats" / "BraTS-GLI-00001-000"
    t1, t2 = read_volume(folder / "t1n.nii.gz"), read_volume(folder / "t2w.nii.gz")
    axis = t1.geometry.axis_for("axial")

    def slab(volume: Volume) -> Volume:
        array = np.moveaxis(volume.array.copy(), axis, 0)
        sections = np.flatnonzero(np.moveaxis(foreground_mask([volume.array]), axis, 0).any(axis=(1, 2)))
        middle, half = int(sections.mean()), int(round(30 / volume.geometry.spacing[::-1][axis]))
        array[:middle - half] = 0
        array[middle + half:] = 0
        return volume.with_array(np.moveaxis(array, 0, axis))

    def check(moving: Volume) -> float:
        arrays = {"T1": t1.array, "T2": moving.array}
        brain = foreground_mask(list(arrays.values()))
        cover = input_coverage(arrays, brain, {"T1": "T1", "T2": "T2"}, slice_axis=axis)
        return apparent_motion(t1, moving, brain & ~cover.held["T2"])

    assert check(slab(t2)) < OUT_OF_REGISTER_MM < check(slab(moved(t2, 3.0, (0.0, 2.0, 0.0))[0]))

    # The reference in a slab, the T2 whole: 4.0 mm as given unmasked (a note on the threshold), 3.1 masked.
    reference = slab(t1)
    arrays = {"T1": reference.array, "T2": t2.array}
    brain = foreground_mask(list(arrays.values()))
    lost = brain & ~input_coverage(arrays, brain, {"T1": "T1", "T2": "T2"}, slice_axis=axis).held["T1"]
    assert apparent_motion(reference, t2, reference_unmeasured=lost) < OUT_OF_REGISTER_MM < apparent_motion(
        reference, moved(t2, 3.0, (0.0, 2.0, 0.0))[0], reference_unmeasured=lost)


def test_the_logic_registers_onto_the_reference_and_says_how_far(pair, tiny_model):
    from MRSynthesisLib.cards import load_model
    from MRSynthesisLib.logic import SynthesisLogic, SynthesisRequest

    t1, t2 = pair
    moving, _ = moved(t2, 4.0, (0.0, 2.0, 1.0))
    logic = SynthesisLogic(load_model(tiny_model))
    asked = logic.run(SynthesisRequest({"T1": t1, "T2": moving}, ["FLAIR"], device="cpu", precision="fp32",
                                       register=True))
    said = [n for n in asked.notes if "registered rigidly" in n]
    assert len(said) == 1 and said[0].startswith("/data/T2_moved.nii.gz: registered rigidly onto /data/T1.nii.gz, "
                                                 "which moved its brain by up to ")
    assert asked.provenance["options"]["registered"] is True
    plain = logic.run(SynthesisRequest({"T1": t1, "T2": moving}, ["FLAIR"], device="cpu", precision="fp32"))
    assert not any("registered" in n for n in plain.notes)
    assert not np.allclose(plain.outputs["FLAIR"].array, asked.outputs["FLAIR"].array)


@pytest.mark.skipif(not DATA.is_dir(), reason=NO_DATA)
def test_on_real_data_a_moved_t2_is_brought_back_and_its_synthesis_with_it():
    """patient07's T2 moved by 3 degrees and 2 mm and two of its axial slices lost: the bundled model's FLAIR from
    T1 + T2 scored SSIM 0.573 in the brain (0.692 with the T2 as given); registered first, 0.692, where carrying
    none of the lost slices over gave 0.649 (the module's figures)."""
    from MRSynthesisLib import registry
    from MRSynthesisLib.cards import load_model
    from MRSynthesisLib.logic import SynthesisLogic, SynthesisRequest
    from MRSynthesisLib.metrics import ssim
    from MRSynthesisLib.volume import read_volume

    folder = DATA / "ms" / "patient07"
    t1, t2, flair = (read_volume(folder / f"{m}.nii.gz") for m in ("T1", "T2", "FLAIR"))
    moving, _ = moved(t2, 3.0, (0.0, 2.0, 0.0))
    middle = int(np.mean(np.flatnonzero(moving.array.any(axis=(1, 2)))))
    lost = moving.array.copy()
    lost[middle:middle + 2] = 0  # and two axial slices lost on its own grid: carried through the registration
    moving = moving.with_array(lost)
    logic = SynthesisLogic(load_model(registry.resolve(None)))
    brain = flair.array > 0
    real = flair.array / flair.array[brain].mean()

    def score(register: bool) -> tuple[float, list[str]]:
        out = logic.run(SynthesisRequest({"T1": t1, "T2": moving}, ["FLAIR"], device="cpu", register=register))
        synthetic = out.outputs["FLAIR"].array
        return ssim(synthetic / synthetic[brain].mean(), real, brain), out.notes

    (plain, notes), (aligned, _) = score(register=False), score(register=True)
    assert plain < 0.60 and aligned > 0.68
    # with its lost slices it holds data over part of the brain: checked away from them, and said
    assert any("seems out of register with" in n for n in notes)


def drawn_on(moving_like: Volume, lesion: np.ndarray, motion: sitk.Transform) -> Volume:
    """``lesion`` (on the reference's anatomy) as painted on an input moved by ``motion`` (``moved``): where that
    input shows it."""
    image = moving_like.with_array(lesion.astype(np.float32)).to_sitk()
    array = sitk.GetArrayFromImage(sitk.Resample(image, image, motion, sitk.sitkNearestNeighbor, 0.0,
                                                 sitk.sitkFloat32))
    return moving_like.with_array(array, source="/data/lesion_on_T2.nii.gz")


def centroid_mm(mask: np.ndarray, volume: Volume) -> np.ndarray:
    """The physical centre of ``mask`` on ``volume``'s grid."""
    image = volume.to_sitk()
    return np.mean([image.TransformIndexToPhysicalPoint([int(i) for i in q[::-1]]) for q in np.argwhere(mask)],
                   axis=0)


def test_a_mask_drawn_on_the_moving_input_is_carried_with_its_registration(pair):
    """``mask_onto`` takes a mask through the transform registration found: by nearest neighbour, its values kept
    (a label of 255 stays 255), back onto the reference's anatomy, to the voxel for a whole-voxel shift and within
    a voxel's edge for a rotation."""
    from MRSynthesisLib.registration import mask_onto
    from MRSynthesisLib.validation import check_mask

    t1, t2 = pair
    lesion = phantom(SHAPE, seed=3)["lesion"] > 0
    shifted, motion = moved(t2, 0.0, (0.0, 4.0, 0.0))
    drawn = drawn_on(shifted, lesion, motion)
    assert not np.array_equal(drawn.array > 0, lesion) and np.count_nonzero(drawn.array) == np.count_nonzero(lesion)
    carried = mask_onto(t1, drawn.with_array(drawn.array * 255), motion.GetInverse())
    assert carried.geometry == t1.geometry and carried.source == "/data/lesion_on_T2.nii.gz"
    assert set(np.unique(carried.array)) == {0.0, 255.0}
    np.testing.assert_array_equal(check_mask(carried), lesion)
    turned, motion = moved(t2, 4.0, (0.0, 2.0, 1.0))
    carried = mask_onto(t1, drawn_on(turned, lesion, motion), motion.GetInverse()).array > 0
    assert np.linalg.norm(centroid_mm(carried, t1) - centroid_mm(lesion, t1)) < 0.5
    assert abs(np.count_nonzero(carried) - np.count_nonzero(lesion)) < 0.1 * np.count_nonzero(lesion)


def test_with_register_a_lesion_drawn_on_a_moved_input_moves_with_it(pair, tiny_model, monkeypatch):
    """The T2 moved by 4 voxels, a lesion painted on its anatomy: with --register and --lesion-mask-on T2 the mask
    the network gets lies within a voxel of where the same lesion painted on the T1 lies (it stayed 4 voxels off,
    where it was painted, before: the anatomy moved, the mask did not); without --lesion-mask-on, or without
    --register, it stays where it was painted."""
    from MRSynthesisLib import logic as logic_module
    from MRSynthesisLib.cards import load_model
    from MRSynthesisLib.logic import SynthesisLogic, SynthesisRequest

    t1, t2 = pair
    lesion = phantom(SHAPE, seed=3)["lesion"] > 0
    shifted, motion = moved(t2, 0.0, (0.0, 4.0, 0.0))
    on_t1 = t1.with_array(lesion.astype(np.float32), source="/data/lesion_on_T1.nii.gz")
    on_t2 = drawn_on(shifted, lesion, motion)
    used = []
    real = logic_module.run_slicewise
    monkeypatch.setattr(logic_module, "run_slicewise", lambda *a, **k: used.append(k["lesion"]) or real(*a, **k))
    model = SynthesisLogic(load_model(tiny_model))

    def lesion_used(mask: Volume, **options) -> tuple[np.ndarray, list[str], dict]:
        result = model.run(SynthesisRequest({"T1": t1, "T2": shifted}, ["FLAIR"], lesion_mask=mask, device="cpu",
                                            precision="fp32", **options))
        return used[-1], result.notes, result.provenance["options"]

    truth, _, _ = lesion_used(on_t1, register=True)
    assert truth.any()
    grid = Volume(truth.astype(np.float32), Geometry(tuple(reversed(truth.shape)), (1.0, 1.0, 1.0), (0.0,) * 3, LAS))

    def off_by(mask: np.ndarray) -> float:  # in voxels of 1 mm
        return float(np.linalg.norm(centroid_mm(mask, grid) - centroid_mm(truth, grid)))

    carried, notes, options = lesion_used(on_t2, register=True, lesion_mask_on="t2w")
    assert off_by(carried) < 1.0 and np.count_nonzero(carried & truth) > 0.8 * np.count_nonzero(truth)
    assert options["lesion_mask_on"] == "T2" and options["registered"] is True
    assert "lesion mask /data/lesion_on_T2.nii.gz: drawn on T2: moved with T2's registration onto T1 " \
           "(--lesion-mask-on T2)" in notes
    stayed, notes, options = lesion_used(on_t2, register=True)
    assert off_by(stayed) > 3.0 and options["lesion_mask_on"] is None and not any("moved with" in n for n in notes)
    unregistered, notes, _ = lesion_used(on_t2, lesion_mask_on="T2")  # masks are world-space: nothing to move with
    assert np.array_equal(unregistered, stayed) and not any("moved with" in n for n in notes)
    reference, _, _ = lesion_used(on_t1, register=True, lesion_mask_on="T1")  # the reference does not move
    assert np.array_equal(reference, truth)


@pytest.mark.parametrize("options, message", [
    ({"lesion_mask_on": "T2"}, "--lesion-mask-on T2: no lesion mask was given; add --lesion-mask"),
    ({"lesion_mask_on": "T9", "lesion_mask": True}, "--lesion-mask-on: unknown modality 'T9'"),
    ({"lesion_mask_on": "flair", "lesion_mask": True},
     "--lesion-mask-on flair: FLAIR is not an input; it names the input the lesion mask was drawn on, one of T1, T2"),
])
def test_lesion_mask_on_must_name_an_input_and_come_with_a_mask(pair, tiny_model, options, message):
    from MRSynthesisLib.cards import load_model
    from MRSynthesisLib.errors import InputError
    from MRSynthesisLib.logic import SynthesisLogic, SynthesisRequest

    t1, t2 = pair
    if options.pop("lesion_mask", False):
        options["lesion_mask"] = t1.with_array((t1.array > t1.array.max() / 2).astype(np.float32))
    with pytest.raises(InputError, match="^" + re.escape(message)) as raised:
        SynthesisLogic(load_model(tiny_model)).run(SynthesisRequest({"T1": t1, "T2": t2}, ["FLAIR"], device="cpu",
                                                                    register=True, **options))
    assert "one of T1, T2" in str(raised.value) or "add --lesion-mask" in str(raised.value)


def test_the_saliency_figure_draws_each_map_over_its_input_as_registered(pair, tiny_model, tmp_path, monkeypatch):
    """With --register the P3S figure drew a moved input as given under maps that lie on the reference's anatomy,
    and the lesion outline where it was painted on that input: it now draws the registered scan, and the lesion
    as --lesion-mask-on moved it (contributions.json still names the user's mask file)."""
    from MRSynthesisLib import commands
    from MRSynthesisLib.cli import main
    from MRSynthesisLib.volume import write_volume

    t1, t2 = pair
    lesion = phantom(SHAPE, seed=3)["lesion"] > 0
    shifted, motion = moved(t2, 0.0, (0.0, 4.0, 0.0))
    files = {name: write_volume(volume, tmp_path / f"{name}.nii.gz") for name, volume in
             {"T1": t1, "T2": shifted, "lesion": drawn_on(shifted, lesion, motion)}.items()}
    drawn = []
    monkeypatch.setattr(commands, "saliency_figure",
                        lambda shown, maps, path, **options: drawn.append((shown, options["focus"])) or path)
    code = main(["synthesize", "--model", str(tiny_model), "--input", f"T1={files['T1']}", "--input",
                 f"T2={files['T2']}", "--target", "FLAIR", "--lesion-mask", str(files["lesion"]), "--lesion-mask-on",
                 "T2", "--register", "--saliency-out", str(tmp_path / "maps"), "--out", str(tmp_path / "out"),
                 "--device", "cpu", "--precision", "fp32", "--progress", "none"])
    assert code == 0 and len(drawn) == 1
    shown, focus = drawn[0]
    brain = t2.array > 0

    def likeness(array: np.ndarray) -> float:  # to the T2 where it was acquired, on the T1's anatomy
        return float(np.corrcoef(array[brain], t2.array[brain])[0, 1])

    assert likeness(shown["T2"].array) > 0.95 and likeness(shifted.array) < 0.8
    assert np.linalg.norm(centroid_mm(focus.array > 0, t1) - centroid_mm(lesion, t1)) < 1.0
    region = json.loads((tmp_path / "maps" / "contributions.json").read_text())["region"]
    assert region == str(files["lesion"].resolve())
