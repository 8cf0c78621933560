"""Training checkpoints: one safetensors file, written atomically, never unpickled.

Every tensor (model weights, Adam moments, torch's RNG state) is a safetensors entry;
everything else (epoch, best metric, the metrics log, Adam's hyper-parameters, the RNG
states of Python and numpy) is JSON in the file's metadata header. One file means one
``os.replace``: a run killed at any moment leaves either the previous checkpoint or the
new one, never half of each. Reading goes through safetensors only, so a checkpoint that
someone replaced by a pickle is refused instead of executed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from MRSynthesisLib.atomic import replacing
from MRSynthesisLib.errors import InputError

FORMAT = "mrsynthesis-training-checkpoint/1"


class CheckpointError(InputError):
    """A checkpoint that cannot be used: not safetensors, another format, or another model."""


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    with replacing(path) as temporary:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(temporary), metadata=metadata)


def save_weights(model: nn.Module, path: Path) -> None:
    """Model weights alone (the best epoch's, for the final model folder)."""
    _atomic_save(dict(model.state_dict()), path, {"format": FORMAT + ":weights"})


def _rng_states() -> tuple[dict[str, Any], torch.Tensor]:
    name, keys, position, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {"numpy": [name, keys.tolist(), int(position), int(has_gauss), float(cached)],
             "python": [version, list(internal), gauss]}
    return state, torch.get_rng_state()


def _set_rng_states(state: dict[str, Any], torch_state: torch.Tensor) -> None:
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(torch_state)


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any],
                    average: nn.Module | None = None) -> None:
    """Model, optimiser, RNG states, the running weight average if any (``training.averaging``)
    and the JSON-able ``state`` (epoch, best, log...) in one file."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if average is not None:
        tensors.update({f"average.{k}": v for k, v in average.state_dict().items()})
    optim = optimizer.state_dict()
    for index, values in optim["state"].items():
        for key, value in values.items():
            tensors[f"optimizer.{index}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    rng, torch_rng = _rng_states()
    tensors["rng.torch"] = torch_rng
    meta = {"state": state, "param_groups": optim["param_groups"], "rng": rng}
    _atomic_save(tensors, path, {"format": FORMAT, "json": json.dumps(meta)})


def _open(path: Path, with_tensors: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {k: handle.get_tensor(k) for k in handle.keys()} if with_tensors else {}
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: not a safetensors checkpoint ({error}); pickled checkpoints are "
                              "refused because reading a pickle runs whatever code it holds") from None
    return tensors, metadata


def load_weights(path: Path, model: nn.Module) -> None:
    tensors, metadata = _open(path)
    if not metadata.get("format", "").startswith(FORMAT):
        raise CheckpointError(f"{path}: not an MRSynthesis training file (format {metadata.get('format')!r})")
    model.load_state_dict(tensors)


def _checkpoint(path: Path, with_tensors: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, metadata = _open(path, with_tensors)
    if metadata.get("format") != FORMAT or "json" not in metadata:
        raise CheckpointError(f"{path}: not an MRSynthesis training checkpoint (format {metadata.get('format')!r})")
    return tensors, json.loads(metadata["json"])


def checkpoint_state(path: Path) -> dict[str, Any]:
    """The JSON state saved with a checkpoint, without its tensors: what --resume checks before it
    loads any data."""
    return _checkpoint(path, with_tensors=False)[1]["state"]


def _load_model(path: Path, tensors: dict[str, torch.Tensor], model: nn.Module) -> None:
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: the checkpoint's weights do not fit this config's network: {error}") from None


def load_checkpoint_weights(path: Path, model: nn.Module) -> None:
    """Only the model's weights (those of the last step checkpointed), e.g. to export them."""
    _load_model(path, _checkpoint(path)[0], model)


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    average: nn.Module | None = None) -> dict[str, Any]:
    """Restore model, optimiser, RNG states and ``average`` (when given and saved: a run resumed
    before its averaging window keeps the empty average it starts with) in place; return the
    JSON ``state`` saved with them."""
    tensors, meta = _checkpoint(path)
    _load_model(path, tensors, model)
    averaged = {k[len("average."):]: v for k, v in tensors.items() if k.startswith("average.")}
    if average is not None and averaged:
        average.load_state_dict(averaged)
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            per_param.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": per_param, "param_groups": meta["param_groups"]})
    _set_rng_states(meta["rng"], tensors["rng.torch"])
    return meta["state"]
