"""Tilted held-out heads (training/experiments/head_tilt.py) on the phantom."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import make_subject, make_tiny_model, write_image
from training.datasets import SubjectFiles
from training.experiments.head_tilt import main, rotation, run_head_tilt, tilt
from training.experiments.loso import run_loso

CUBE = (21, 21, 21)  # numpy (z, y, x), 1 mm isotropic, LAS: index y runs against physical y


def blob_at(offset: tuple[int, int, int]) -> np.ndarray:
    array = np.zeros(CUBE, np.float32)
    z, y, x = (10 + o for o in offset)
    array[z - 1:z + 2, y - 1:y + 2, x - 1:x + 2] = 1.0
    return array


def centre_of_mass(array: np.ndarray) -> np.ndarray:
    return np.argwhere(array > 0.5).mean(axis=0) - 10.0  # (z, y, x) offset from the cube's centre voxel


@pytest.mark.parametrize("plane, offset, moves_to", [("axial", (0, 0, 6), 1), ("sagittal", (0, 6, 0), 0),
                                                     ("coronal", (6, 0, 0), 2)])
def test_a_quarter_turn_moves_the_head_within_its_plane_on_its_own_grid(tmp_path, plane, offset, moves_to):
    source = write_image(blob_at(offset), tmp_path / "T1.nii.gz", spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    mask = write_image((blob_at(offset) > 0).astype(np.uint8), tmp_path / "lesion.nii.gz", spacing=(1.0, 1.0, 1.0),
                       origin=(0.0, 0.0, 0.0))
    centre = sitk.ReadImage(str(source)).TransformIndexToPhysicalPoint((10, 10, 10))
    moved = tilt(SubjectFiles("s", {"T1": source}, mask), ["T1"], rotation(plane, 90.0, centre), tmp_path / "out")
    image, lesion = sitk.ReadImage(str(moved.images["T1"])), sitk.ReadImage(str(moved.lesion))
    assert image.GetSize() == (21, 21, 21) and image.GetDirection() == sitk.ReadImage(str(source)).GetDirection()
    array = sitk.GetArrayFromImage(image)
    shift = centre_of_mass(array)
    assert abs(shift[moves_to]) == pytest.approx(6.0, abs=1e-3)  # same distance from the centre, on the other axis
    assert np.abs(np.delete(shift, moves_to)).max() < 1e-3
    assert set(np.unique(sitk.GetArrayFromImage(lesion))) == {0, 1}  # nearest neighbour keeps a mask binary
    assert lesion.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_allclose(np.abs(centre_of_mass(sitk.GetArrayFromImage(lesion))), np.abs(shift), atol=1e-3)
    back = tilt(SubjectFiles("s", {"T1": source}, mask), ["T1"], rotation(plane, 90.0, centre), tmp_path / "back",
                round_trip=True)
    np.testing.assert_allclose(centre_of_mass(sitk.GetArrayFromImage(sitk.ReadImage(str(back.images["T1"])))),
                               offset, atol=1e-3)  # where it was
    with pytest.raises(ValueError, match="unknown plane 'oblique'"):
        rotation("oblique", 10.0, centre)


def test_rows_as_acquired_are_the_loso_figures_and_tilts_change_them(tmp_path):
    for seed in range(3):
        make_subject(tmp_path / "data" / f"s{seed}", seed=seed)
    make_tiny_model(tmp_path / "models" / "s1")
    methods = ["poly", "chartsias+lesion:" + str(tmp_path / "models" / "{subject}")]
    results = run_head_tilt([str(tmp_path / "data")], ["T1", "T2"], "FLAIR", methods, ["axial", "sagittal"],
                            [0.0, 15.0], tmp_path / "out", command="test", round_trip=True, log=lambda m: None)
    loso = run_loso([str(tmp_path / "data")], ["T1", "T2"], "FLAIR", methods, command="test", log=lambda m: None)
    rows = {(r["held_out"], r["plane"], r["degrees"]): r["methods"] for r in results["rows"] if not r["round_trip"]}
    assert sorted(rows) == sorted((s, p, a) for s in ("s0", "s1", "s2")
                                  for p, a in (("none", 0.0), ("axial", 15.0), ("sagittal", 15.0)))
    backs = {(r["held_out"], r["plane"]): r["methods"] for r in results["rows"] if r["round_trip"]}
    assert sorted(backs) == sorted((s, p) for s in ("s0", "s1", "s2") for p in ("axial", "sagittal"))
    for fold in loso["folds"]:
        acquired = rows[(fold["held_out"], "none", 0.0)]
        for name in ("poly", "chartsias+lesion"):
            if "metrics" in fold["methods"][name]:
                assert acquired[name]["metrics"] == pytest.approx(fold["methods"][name]["metrics"])
            else:
                assert "no model folder" in acquired[name]["skipped"]
    for plane in ("axial", "sagittal"):
        tilted = rows[("s1", plane, 15.0)]["chartsias+lesion"]["metrics"]
        acquired = rows[("s1", "none", 0.0)]["chartsias+lesion"]["metrics"]
        back = backs[("s1", plane)]["chartsias+lesion"]["metrics"]
        assert len({tilted["ssim_brain"], acquired["ssim_brain"], back["ssim_brain"]}) == 3
        assert results["change"]["chartsias+lesion"][f"{plane} 15 there and back"] == pytest.approx(
            back["ssim_brain"] - acquired["ssim_brain"])
        assert results["change"]["chartsias+lesion"][f"{plane} 15"] == pytest.approx(
            tilted["ssim_brain"] - acquired["ssim_brain"])
        assert results["change"]["poly"][f"{plane} 15"] == pytest.approx(np.mean(
            [rows[(s, plane, 15.0)]["poly"]["metrics"]["ssim_brain"] - rows[(s, "none", 0.0)]["poly"]["metrics"]
             ["ssim_brain"] for s in ("s0", "s1", "s2")]))
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    for name in ("poly", "chartsias+lesion"):
        assert written["change"][name] == pytest.approx(results["change"][name])
    text = (tmp_path / "out" / "results.md").read_text()
    assert "| s1 | sagittal 15 |" in text and "| s1 | axial 15 there and back |" in text
    assert "| s0 | as acquired |" in text and "| chartsias+lesion |" in text


def test_bad_requests_are_refused(tmp_path, capsys):
    make_subject(tmp_path / "data" / "s0")
    assert main(["--data", str(tmp_path / "data"), "--methods", "poly", "--out", str(tmp_path / "o")]) == 2
    assert "at least 2 subjects" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--data", str(tmp_path / "data"), "--methods", "poly", "--planes", "oblique", "--out", "o"])
    with pytest.raises(ValueError, match="unknown method"):
        run_head_tilt([str(tmp_path / "data")], ["T1", "T2"], "FLAIR", ["unet:m"], ["axial"], [0.0])
    assert not (tmp_path / "o").exists()
