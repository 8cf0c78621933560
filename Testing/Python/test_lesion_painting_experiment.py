"""The lesion-painting experiment (training/experiments/lesion_painting.py) end to end on a tiny phantom."""

from __future__ import annotations

import json
import math

import torch

from conftest import make_subject, tiny_card
from MRSynthesisLib.cards import save_model
from MRSynthesisLib.models.chartsias import ChartsiasMIMO
from training.experiments.lesion_painting import Settings, main, run_experiment

# Scaled to the 20 x 28 x 24 phantom (white matter about 8-10 mm deep).
TINY = Settings(lesions=2, radius_mm=2.0, seed=1, real_margin_mm=3.0, exclude_dilation_mm=1.0,
                spacing_mm=4.0, far_mm=3.0, surround_voxels=2)


def make_positive_tiny_model(folder):
    """A random tiny model whose FLAIR decoder ends with a positive bias.

    The decoder ends in a ReLU, so random weights often give an all-zero FLAIR in white
    matter, where lesion ratios are undefined; the bias keeps the output positive.
    """
    card = tiny_card()
    torch.manual_seed(0)
    network = ChartsiasMIMO(card.inputs, card.outputs, lesion_input=card.lesion_input, **card.params)
    with torch.no_grad():
        network.decoders["FLAIR"].out.bias.fill_(1.0)
    return save_model(card, network, folder)


def _numbers(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _numbers(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _numbers(item)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


def test_lesion_painting_on_phantom(tmp_path):
    subject = make_subject(tmp_path / "subject")
    model = make_positive_tiny_model(tmp_path / "model")
    out = tmp_path / "out"
    results = run_experiment(subject.folder, out, model=str(model), device="cpu", settings=TINY, command="test")

    for name in ("results.md", "results.json", "lesion_painting.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert not list(out.glob("*.nii*")), "the experiment must not write image volumes"
    assert json.loads((out / "results.json").read_text()) == results
    assert all(math.isfinite(v) for v in _numbers(results))
    assert results["painted"]["voxels"] > 0 and len(results["painted"]["centres_zyx"]) == 2
    assert results["real_lesions"]["lesion_voxels"] == int(subject.arrays["lesion"].sum())
    for region in ("inside", "near", "far"):
        assert results["change"][region]["voxels"] > 0
    markdown = (out / "results.md").read_text()
    assert f"{results['painted_ratios']['painted_synthetic']['ratio1']:.3f}" in markdown
    assert results["model"]["weights_sha256"] in markdown

    # Seeded: the same settings paint the same lesions.
    again = run_experiment(subject.folder, tmp_path / "again", model=str(model), device="cpu", settings=TINY)
    assert again["painted"]["centres_zyx"] == results["painted"]["centres_zyx"]


def test_command_line_records_its_command(tmp_path):
    subject = make_subject(tmp_path / "subject")
    model = make_positive_tiny_model(tmp_path / "model")
    out = tmp_path / "out"
    argv = ["--subject", str(subject.folder), "--out", str(out), "--model", str(model), "--device", "cpu",
            "--lesions", "1", "--radius-mm", "2", "--far-mm", "3", "--spacing-mm", "4", "--real-margin-mm", "3"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["command"].startswith("python -m training.experiments.lesion_painting --subject ")
