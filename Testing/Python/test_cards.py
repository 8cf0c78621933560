"""Model folders (card.json + safetensors weights) and the registry that finds them."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import make_tiny_model, tiny_card
from MRSynthesisLib import registry
from MRSynthesisLib.cards import CARD_NAME, WEIGHTS_NAME, ModelCard, file_sha256, load_model, read_card, save_model
from MRSynthesisLib.errors import InputError, ModelCardError
from MRSynthesisLib.models.chartsias import ChartsiasMIMO


@pytest.fixture
def model(tmp_path) -> Path:
    return make_tiny_model(tmp_path / "tiny")


def edit_card(folder: Path, **changes) -> None:
    path = folder / CARD_NAME
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is ...:
            del data[key]
        else:
            data[key] = value
    path.write_text(json.dumps(data))


def replace_weights(folder: Path, state: dict[str, torch.Tensor]) -> None:
    """New weights with a matching checksum, so that the check under test is the one that fires."""
    save_file(state, str(folder / WEIGHTS_NAME))
    edit_card(folder, weights_sha256=file_sha256(folder / WEIGHTS_NAME))


# --- save / load -------------------------------------------------------------------------

def test_save_load_round_trip(tmp_path):
    card = tiny_card()
    torch.manual_seed(3)
    network = ChartsiasMIMO(card.inputs, card.outputs, lesion_input=True, **card.params)
    folder = save_model(card, network, tmp_path / "m")
    assert sorted(p.name for p in folder.iterdir()) == [CARD_NAME, WEIGHTS_NAME]
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no staging folder left
    loaded = load_model(folder)
    assert loaded.folder == folder and not loaded.network.training
    assert loaded.card.to_dict() == card.to_dict()  # save_model filled in the checksum
    assert card.weights_sha256 == file_sha256(folder / WEIGHTS_NAME)
    expected, got = network.state_dict(), loaded.network.state_dict()
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    x = {m: torch.rand(2, 1, 16, 12) for m in ("T1", "FLAIR")}
    lesion = (torch.rand(2, 1, 16, 12) > 0.8).float()
    network.eval()
    with torch.no_grad():
        a, b = network(x, lesion=lesion), loaded.network(x, lesion=lesion)
    assert all(torch.equal(a[t], b[t]) for t in a)


def test_save_refuses_an_existing_folder_unless_asked(model):
    before = (model / WEIGHTS_NAME).read_bytes()
    card = tiny_card(name="other")
    network = ChartsiasMIMO(card.inputs, card.outputs, lesion_input=True, **card.params)
    with pytest.raises(ModelCardError, match="already exists"):
        save_model(card, network, model)
    assert (model / WEIGHTS_NAME).read_bytes() == before
    save_model(card, network, model, overwrite=True)
    assert read_card(model).name == "other"
    assert sorted(p.name for p in model.parent.iterdir()) == ["tiny"]


def test_save_validates_the_card(tmp_path):
    card = tiny_card(inputs=["t2w"])
    network = ChartsiasMIMO(["T1"], ["T2"], **tiny_card().params)
    with pytest.raises(ModelCardError, match="not a canonical modality"):
        save_model(card, network, tmp_path / "bad")
    assert list(tmp_path.iterdir()) == []


def test_loading_never_unpickles(model, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:  # unpickling this creates ``marker``
        def __reduce__(self):
            return (open, (str(marker), "w"))

    payload = pickle.dumps({"encoders.T1.conv0a.weight": Payload()})
    pickle.loads(payload)  # the payload works when unpickled ...
    assert marker.exists()
    marker.unlink()
    (model / WEIGHTS_NAME).write_bytes(payload)
    edit_card(model, weights_sha256=file_sha256(model / WEIGHTS_NAME))
    with pytest.raises(ModelCardError, match="not a readable safetensors file") as error:
        load_model(model)  # ... but loading the model does not run it
    assert str(model / WEIGHTS_NAME) in str(error.value)
    assert not marker.exists()


def test_torch_save_file_renamed_is_refused(model):
    torch.save(ChartsiasMIMO(["T1", "T1c", "T2", "FLAIR"], ["T1", "T1c", "T2", "FLAIR"], lesion_input=True,
                             **tiny_card().params).state_dict(), model / WEIGHTS_NAME)
    edit_card(model, weights_sha256=None)
    with pytest.raises(ModelCardError, match="not a readable safetensors file"):
        load_model(model)


# --- malformed cards --------------------------------------------------------------------

@pytest.mark.parametrize("changes, words", [
    ({"schema_version": 2}, "schema_version 2 is not supported"),
    ({"schema_version": ...}, "schema_version None is not supported"),
    ({"colour": "blue"}, "unknown card fields ['colour']"),
    ({"inputs": ...}, "missing card fields ['inputs']"),
    ({"normalisation": ...}, "missing card fields ['normalisation']"),
    ({"inputs": ["T1", "t2w"]}, "'inputs' holds 't2w', which is not a canonical modality"),
    ({"outputs": ["FLAIR", "Flair"]}, "'outputs' holds 'Flair'"),
    ({"inputs": []}, "'inputs' must be a non-empty list"),
    ({"inputs": "T1"}, "'inputs' must be a non-empty list"),
    ({"outputs": ["T2", "T2"]}, "repeats a modality"),
    ({"architecture": "pix2pix9000"}, "unknown architecture 'pix2pix9000'; known: chartsias2018"),
    ({"plane": "oblique"}, "needs 'plane'"),
    ({"spatial_dims": 4}, "spatial_dims must be 2 or 3"),
    ({"missing_inputs": "zero_fill"}, "missing_inputs must be one of"),
    ({"params": [4, 8, 8]}, "'params' must be an object"),
    ({"normalisation": {"scheme": "histogram"}}, "unknown normalisation scheme 'histogram'"),
    ({"normalisation": "mean_in_brain"}, "bad normalisation"),
    ({"output_intensity": {"DWI": {"offset": 0, "scale": 1}}}, "'DWI', which is not an output"),
    ({"output_intensity": {"T2": {"offset": 0, "scale": -1}}}, "scale must be finite and > 0"),
    ({"output_intensity": {"T2": {"offset": 0}}}, "missing key(s) scale"),
    # wrongly typed fields must be card errors too, not crashes deeper down
    ({"output_intensity": [["T2", 1.0]]}, "output_intensity"),
    ({"output_intensity": None}, "output_intensity"),
    ({"weights": 5}, "weights"),
    ({"lesion_input": "no"}, "lesion_input"),
    ({"name": 5}, "'name' must be a non-empty string"),
    ({"weights_sha256": 12}, "weights_sha256"),
    ({"spacing_mm": [1.0, 1.0]}, "'spacing_mm' must be null or three voxel sizes"),
    ({"spacing_mm": [1.0, 0.0, 1.0]}, "'spacing_mm' must be null or three voxel sizes"),
    ({"spacing_mm": "1x1x1"}, "'spacing_mm' must be null or three voxel sizes"),
    ({"spacing_mm": [1.0, True, 1.0]}, "'spacing_mm' must be null or three voxel sizes"),
])
def test_malformed_card(model, changes, words):
    edit_card(model, **changes)
    with pytest.raises(ModelCardError) as error:
        read_card(model)
    assert words in str(error.value)
    assert str(model / CARD_NAME) in str(error.value)
    with pytest.raises(ModelCardError):
        load_model(model)


@pytest.mark.parametrize("text", ["{not json", "", "\xff\xfe", '{"name": "x",}'])
def test_card_that_is_not_json(model, text):
    (model / CARD_NAME).write_bytes(text.encode("latin-1"))
    with pytest.raises(ModelCardError, match="not valid JSON"):
        load_model(model)


@pytest.mark.parametrize("text", ["[]", "42", "null", '"card"'])
def test_card_that_is_not_an_object(model, text):
    (model / CARD_NAME).write_text(text)
    with pytest.raises(ModelCardError, match="must be a JSON object"):
        read_card(model)


def test_folder_without_card(tmp_path):
    with pytest.raises(ModelCardError, match="not a model folder"):
        load_model(tmp_path)


@pytest.mark.parametrize("params, words", [
    ({"filters": [4, 8, 8], "latent_channels": 4, "dropout": 0.5}, "unexpected keyword argument 'dropout'"),
    ({"filters": [4, 8], "latent_channels": 4}, "filters must be 3 positive widths"),
    ({"filters": [4, 8, 8], "latent_channels": 4, "fusion": "sum"}, "unknown fusion 'sum'"),
])
def test_params_that_do_not_fit_the_architecture(model, params, words):
    edit_card(model, params=params)
    with pytest.raises(ModelCardError) as error:
        load_model(model)
    assert "architecture parameters do not fit 'chartsias2018'" in str(error.value) and words in str(error.value)


def test_weights_missing(model):
    (model / WEIGHTS_NAME).unlink()
    with pytest.raises(ModelCardError, match="names weights 'model.safetensors', which do not exist"):
        load_model(model)


def test_weights_named_by_the_card(model):
    (model / WEIGHTS_NAME).rename(model / "v2.safetensors")
    edit_card(model, weights="v2.safetensors")
    assert load_model(model).card.weights == "v2.safetensors"


def test_checksum_mismatch(model):
    state = load_file(str(model / WEIGHTS_NAME))
    state["decoders.T2.out.bias"] = state["decoders.T2.out.bias"] + 1.0
    save_file(state, str(model / WEIGHTS_NAME))
    with pytest.raises(ModelCardError, match="checksum differs from the card's weights_sha256"):
        load_model(model)
    edit_card(model, weights_sha256=None)  # without a checksum the same file loads
    bias = load_model(model).network.decoders["T2"].out.bias
    assert torch.equal(bias.detach(), state["decoders.T2.out.bias"])


def test_missing_and_unexpected_keys(model):
    state = load_file(str(model / WEIGHTS_NAME))
    state["encoders.PD.conv0a.weight"] = state.pop("encoders.T1.conv0a.weight")
    replace_weights(model, state)
    with pytest.raises(ModelCardError) as error:
        load_model(model)
    message = str(error.value)
    assert "does not match the card's architecture" in message
    assert "missing ['encoders.T1.conv0a.weight']" in message and "unexpected ['encoders.PD.conv0a.weight']" in message


def test_many_missing_keys_are_abbreviated(model):
    state = load_file(str(model / WEIGHTS_NAME))
    replace_weights(model, {k: v for k, v in state.items() if not k.startswith("decoders.")})
    with pytest.raises(ModelCardError, match=r"missing \[.*\] \.\.\., unexpected \[\]"):
        load_model(model)


def test_shape_mismatch(model):
    edit_card(model, params={"filters": [4, 8, 16], "latent_channels": 4})
    with pytest.raises(ModelCardError, match="tensor shapes do not match") as error:
        load_model(model)
    assert "encoders.T1.conv2a.weight: (8, 8, 3, 3) vs (16, 8, 3, 3)" in str(error.value)


def test_lesion_channel_mismatch_is_a_shape_error(model):
    edit_card(model, lesion_input=False)
    with pytest.raises(ModelCardError, match="tensor shapes do not match"):
        load_model(model)


def test_card_from_dict_outside_a_file():
    with pytest.raises(ModelCardError, match="^card: "):
        ModelCard.from_dict({"schema_version": 1})


# --- registry -----------------------------------------------------------------------------

@pytest.fixture
def model_path(tmp_path, monkeypatch):
    """Two MRSYNTHESIS_MODEL_PATH folders; no user or bundled models."""
    first, second = tmp_path / "first", tmp_path / "second"
    make_tiny_model(first / "alpha", name="alpha")
    make_tiny_model(second / "beta", name="beta", inputs=["T1", "T2"], outputs=["FLAIR"], lesion_input=False,
                    output_intensity={"FLAIR": {"offset": 0, "scale": 400}})
    (second / "broken").mkdir()
    (second / "broken" / CARD_NAME).write_text('{"schema_version": 1, "name": "broken"}')
    (second / "not-a-model").mkdir()  # a folder without card.json is not listed
    monkeypatch.setenv("MRSYNTHESIS_MODEL_PATH", f"{first}:{tmp_path / 'absent'}:{second}")
    monkeypatch.setattr(registry, "USER_MODELS", tmp_path / "home" / ".mrsynthesis" / "models")
    monkeypatch.setattr(registry, "BUNDLED_MODELS", tmp_path / "bundled")
    return first, second


def test_registry_lists_model_path_folders(model_path):
    first, second = model_path
    entries = registry.list_models()
    assert [(e.name, e.folder, e.origin) for e in entries] == [
        ("alpha", first / "alpha", "user"), ("beta", second / "beta", "user"), ("broken", second / "broken", "user")]
    assert entries[0].card.name == "alpha" and entries[0].problem is None
    assert entries[1].card.outputs == ["FLAIR"]


def test_registry_lists_an_unusable_card_with_its_problem(model_path):
    broken = next(e for e in registry.list_models() if e.name == "broken")
    assert broken.card is None
    assert "missing card fields" in broken.problem and "broken" in broken.problem


def test_registry_resolves_by_name_and_by_path(model_path, tmp_path):
    first, second = model_path
    assert registry.resolve("alpha") == first / "alpha"
    assert registry.resolve("beta") == second / "beta"
    elsewhere = make_tiny_model(tmp_path / "elsewhere" / "gamma")
    assert registry.resolve(str(elsewhere)) == elsewhere
    assert load_model(registry.resolve("beta")).card.name == "beta"


def test_registry_unknown_name_lists_the_known_ones(model_path):
    with pytest.raises(InputError) as error:
        registry.resolve("delta")
    message = str(error.value)
    assert "'delta'" in message and "known models: alpha, beta, broken" in message


def test_registry_refuses_a_name_that_several_folders_carry(model_path, tmp_path, monkeypatch):
    """A training run exported under the bundled model's name, its folder on MRSYNTHESIS_MODEL_PATH: --model NAME
    silently took the first folder searched (the user's). Now the name is refused, every folder carrying it named;
    a folder path still resolves, and the default (no name) stays the bundled model."""
    first, second = model_path
    make_tiny_model(second / "alpha", name="alpha-again")
    bundled = make_tiny_model(tmp_path / "bundled" / "alpha")
    with pytest.raises(InputError) as error:
        registry.resolve("alpha")
    message = str(error.value)
    assert "'alpha' is carried by 3 model folders" in message
    for folder, origin in ((first, "user"), (second, "user"), (tmp_path / "bundled", "bundled")):
        assert f"{folder / 'alpha'} [{origin}]" in message
    assert "pass the folder" in message
    assert registry.resolve(str(second / "alpha")) == second / "alpha"
    assert registry.resolve(None) == bundled
    assert registry.resolve("beta") == second / "beta"  # other names are as before
    assert registry.name_clashes(registry.list_models()) == {
        "alpha": [first / "alpha", second / "alpha", bundled]}


def test_registry_one_folder_found_twice_is_no_clash(model_path, monkeypatch):
    first, second = model_path
    monkeypatch.setenv("MRSYNTHESIS_MODEL_PATH", f"{first}:{second}:{first / 'alpha'}")
    assert [e.folder for e in registry.list_models()].count(first / "alpha") == 2
    assert registry.name_clashes(registry.list_models()) == {}
    assert registry.resolve("alpha") == first / "alpha"


def test_registry_default_model_needs_a_bundled_one(model_path, tmp_path, monkeypatch):
    with pytest.raises(InputError, match="no bundled model is installed"):
        registry.resolve(None)
    bundled = tmp_path / "bundled"
    make_tiny_model(bundled / "default")
    assert registry.resolve(None) == bundled / "default"
    assert next(e for e in registry.list_models() if e.name == "default").origin == "bundled"


def test_registry_without_any_model(tmp_path, monkeypatch):
    monkeypatch.delenv("MRSYNTHESIS_MODEL_PATH", raising=False)
    monkeypatch.setattr(registry, "USER_MODELS", tmp_path / "none")
    monkeypatch.setattr(registry, "BUNDLED_MODELS", tmp_path / "none2")
    assert registry.list_models() == []
    with pytest.raises(InputError, match="known models: none"):
        registry.resolve("alpha")


def test_save_model_cleans_up_on_failure(tmp_path, monkeypatch):
    import safetensors.torch

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", fail)
    card = tiny_card()
    with pytest.raises(OSError, match="disk full"):
        save_model(card, ChartsiasMIMO(card.inputs, card.outputs, lesion_input=True, **card.params), tmp_path / "m")
    assert list(tmp_path.iterdir()) == []
    shutil.rmtree(tmp_path, ignore_errors=True)
