"""Adding an output to a trained model (config "extend", Chartsias et al. Sec. VI-E), on phantoms.

A tiny base model without FLAIR output is extended with a FLAIR decoder through
``python -m training.train --config``'s entry point: the base weights must come out bit for
bit, the new decoder trained, the card complete, and the command line able to use it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from safetensors.torch import load_file

from MRSynthesisLib.cards import WEIGHTS_NAME, load_model
from MRSynthesisLib.cli import main as cli_main
from test_training_data import write_dataset
from test_training_run import tiny
from training.config import TrainConfig, load_config
from training.extend import load_base
from training.loop import train
from training.train import main as train_main


@pytest.fixture(scope="module")
def extended(tmp_path_factory) -> tuple[list[str], Path, Path, Path]:
    """(sources, base model folder, extension config file, extended model folder)."""
    root = tmp_path_factory.mktemp("extend")
    sources = write_dataset(root)
    base = train(TrainConfig.from_dict(tiny(sources, root / "base", outputs=["T2"])), command="test")
    config = root / "configs" / "add-flair.json"
    config.parent.mkdir()
    # relative to the config file, like "data"
    recipe = tiny(sources, root / "ext", name="tiny-flair", outputs=["T2", "FLAIR"],
                  extend=os.path.relpath(base, config.parent))
    config.write_text(json.dumps(recipe))
    assert train_main(["--config", str(config)]) == 0
    return sources, base, config, root / "ext" / "tiny-flair"


def test_extension_keeps_the_base_weights_and_trains_the_new_decoder(extended):
    _, base, config, folder = extended
    old, new = load_file(str(base / WEIGHTS_NAME)), load_file(str(folder / WEIGHTS_NAME))
    added = {k for k in new if k.startswith("decoders.FLAIR.")}
    assert added and set(new) == set(old) | added
    assert all(torch.equal(old[k], new[k]) for k in old)  # encoders and the T2 decoder, bit for bit
    # the FLAIR decoder as the run initialised it (same seed, same sequence of draws) has moved
    recipe = load_config(config)
    torch.manual_seed(recipe.seed)
    initial = load_base(recipe).network.decoders["FLAIR"].state_dict()
    assert all(not torch.equal(initial[k], new[f"decoders.FLAIR.{k}"]) for k in initial if k.endswith("weight"))


def test_extension_takes_the_config_output_gradient(extended):
    _, _, config, _ = extended
    network = load_base(load_config(config, {"output_gradient": "pass_through"})).network
    assert network.output_gradient == "pass_through"
    assert {d.output_gradient for d in network.decoders.values()} == {"pass_through"}  # the new FLAIR one too


def test_extended_card_lists_all_outputs_with_provenance(extended):
    _, base, _, folder = extended
    old, card = load_model(base).card, load_model(folder).card
    assert card.name == "tiny-flair" and card.outputs == ["T2", "FLAIR"] and card.inputs == old.inputs
    assert card.normalisation == old.normalisation and card.params == old.params
    assert set(card.output_intensity) == {"T2", "FLAIR"} and card.output_intensity["T2"] == old.output_intensity["T2"]
    extends = card.training["extends"]
    assert (extends["name"], extends["weights_sha256"], extends["new_outputs"]) == ("tiny", old.weights_sha256,
                                                                                  ["FLAIR"])
    assert card.training["recipe"]["config"]["extend"] == str(base.resolve())
    # validated on the new output only, without the constant c2
    assert "mse[T1->FLAIR]" in card.metrics and not any(k.endswith("->T2]") for k in card.metrics)
    assert "val_c2" not in card.metrics


def test_cli_synthesizes_the_new_output(extended, tmp_path):
    sources, _, _, folder = extended
    subject = Path(sources[0]) / "patient02"
    code = cli_main(["synthesize", "--model", str(folder), "--target", "FLAIR",
                     "--input", f"T1={subject / 'T1.nii.gz'}", "--input", f"T2={subject / 'T2.nii.gz'}",
                     "--out", str(tmp_path / "synth"), "--progress", "none"])
    assert code == 0
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "synth" / "FLAIR_synthetic.nii.gz")))
    assert np.isfinite(array).all() and array.max() > 0


def test_a_config_for_another_network_is_refused(extended, tmp_path):
    sources, base, _, _ = extended
    recipe = tiny(sources, tmp_path / "bad", outputs=["FLAIR"], extend=str(base), filters=[4, 8, 16], fusion="mean")
    with pytest.raises(ValueError, match=r"fusion: config 'mean' but card 'max'; "
                                         r"filters: config \[4, 8, 16\] but card \[4, 8, 8\]"):
        train(TrainConfig.from_dict(recipe), command="test")
    recipe = tiny(sources, tmp_path / "bad", outputs=["FLAIR"], extend=str(base), inputs=["T1", "T2"])
    with pytest.raises(ValueError, match=r"inputs: config \['T1', 'T2'\] but card \['T1', 'T2', 'FLAIR'\]"):
        train(TrainConfig.from_dict(recipe), command="test")
    recipe = tiny(sources, tmp_path / "bad", outputs=["FLAIR"], extend=str(base), spacing_mm=[0.8, 0.8, 1.0])
    with pytest.raises(ValueError, match=r"spacing_mm: config \[0.8, 0.8, 1.0\] but card \[1.0, 1.0, 1.0\]"):
        train(TrainConfig.from_dict(recipe), command="test")  # the frozen encoders learnt the card's scale
    recipe = tiny(sources, tmp_path / "none", outputs=["T2"], extend=str(base))
    with pytest.raises(ValueError, match="already an output"):
        train(TrainConfig.from_dict(recipe), command="test")
    assert not (tmp_path / "bad").exists() and not (tmp_path / "none").exists()
