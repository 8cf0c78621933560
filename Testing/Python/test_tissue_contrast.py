"""Grey/white contrast of synthetic images (training/experiments/tissue_contrast.py) on the phantom."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import CONTRASTS, make_subject, make_tiny_model, phantom, write_image
from MRSynthesisLib.cards import load_model
from MRSynthesisLib.logic import SynthesisLogic, SynthesisRequest
from MRSynthesisLib.preprocessing import foreground_mask
from MRSynthesisLib.volume import read_volume
from training.experiments.tissue_contrast import main, tissue_masks

GREY, WHITE = 2, 3  # phantom labels


def test_otsu_classes_of_the_t1_are_the_phantoms_grey_and_white_matter():
    p = phantom((40, 48, 44))
    healthy = (p["brain"] > 0) & (p["lesion"] == 0)
    grey, white = tissue_masks(p["T1"], healthy)
    # Otsu's upper threshold sits nearer grey matter's mean: a few noisy voxels change sides
    assert np.count_nonzero(grey != (healthy & (p["labels"] == GREY))) < 0.002 * healthy.sum()
    assert np.count_nonzero(white != (healthy & (p["labels"] == WHITE))) < 0.002 * healthy.sum()
    with pytest.raises(ValueError, match="fewer than 3"):
        tissue_masks(p["T1"], np.zeros_like(healthy))


def test_ratios_of_the_real_and_the_synthetic_images(tmp_path):
    subject = make_subject(tmp_path / "s0", shape=(24, 28, 26))
    model = make_tiny_model(tmp_path / "m", inputs=["T1", "T2", "FLAIR"], outputs=["T1", "T2", "FLAIR"],
                            output_intensity={m: {"offset": 0.0, "scale": 500.0} for m in ("T1", "T2", "FLAIR")})
    out = tmp_path / "out"
    assert main(["--model", str(model), "--inputs", "T1", "--subjects", str(subject.folder), "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    (case,) = results["cases"]
    assert case["case"] == "s0" and case["role"] == "unseen" and set(case["synthetic"]) == {"T2", "FLAIR"}
    assert case["classes"] == "Otsu of the T1"
    for target in ("T2", "FLAIR"):  # the phantom's class means, up to its 5 % noise
        expected = CONTRASTS[target][GREY] / CONTRASTS[target][WHITE]
        assert case["real"][target] == pytest.approx(expected, rel=0.01)
    assert case["t1"] == pytest.approx(CONTRASTS["T1"][GREY] / CONTRASTS["T1"][WHITE], rel=0.01)
    # the synthetic figure is the product's output averaged over the same masks
    t1 = read_volume(subject["T1"])
    flair = SynthesisLogic(load_model(model)).run(SynthesisRequest(inputs={"T1": t1}, targets=["FLAIR"],
                                                                   precision="fp32", device="cpu")).outputs["FLAIR"]
    healthy = foreground_mask([t1.array]) & (subject.arrays["lesion"] == 0)
    grey, white = tissue_masks(t1.array, healthy)
    assert case["synthetic"]["FLAIR"] == pytest.approx(flair.array[grey].mean() / flair.array[white].mean(), rel=1e-5)
    assert "| s0 | Otsu of the T1 | unseen |" in (out / "results.md").read_text()


def test_bad_requests_are_refused(tmp_path, capsys):
    subject = make_subject(tmp_path / "s0", shape=(24, 28, 26))
    model = make_tiny_model(tmp_path / "m", inputs=["T1", "T2", "FLAIR"], outputs=["T1", "T2", "FLAIR"],
                            output_intensity={})
    assert main(["--model", str(model), "--inputs", "T1c", "--subjects", str(subject.folder),
                 "--out", str(tmp_path / "o")]) == 2
    assert "s0: no T1c image" in capsys.readouterr().err
    write_image(np.zeros((24, 28, 20), np.float32), subject.folder / "FLAIR.nii.gz")
    assert main(["--model", str(model), "--inputs", "T1", "--subjects", str(subject.folder),
                 "--out", str(tmp_path / "o")]) == 2
    assert "FLAIR.nii.gz: (24, 28, 20) voxels" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", str(model), "--inputs", "T2", "--template", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit):
        main(["--model", str(model), "--out", str(tmp_path / "o")])


def test_the_demo_template_is_a_case(tmp_path):
    model = make_tiny_model(tmp_path / "m", inputs=["T1", "T2", "FLAIR"], outputs=["T1", "T2", "FLAIR"],
                            output_intensity={})
    out = tmp_path / "out"
    assert main(["--model", str(model), "--template", "--out", str(out)]) == 0
    otsu, maps = json.loads((out / "results.json").read_text())["cases"]
    assert [otsu["classes"], maps["classes"]] == ["Otsu of the T1", "tissue maps > 0.5"]
    for case in (otsu, maps):
        assert case["case"] == "MNI152 template" and case["role"] == "unseen" and case["real"] == {}
        assert 0.6 < case["t1"] < 0.95  # a T1: grey matter darker than white matter
        assert case["grey_voxels"] > 100_000 and case["white_voxels"] > 100_000
    assert otsu["t1"] < maps["t1"]  # intensity classes separate the T1 more than anatomy does in an average
    assert otsu["synthetic"] != maps["synthetic"]
