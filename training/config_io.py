"""Reading a training recipe from JSON strictly: the file named in every error, each key's type checked.

Shared by the 2D (``training.config``), 3D (``training.config3d``) and Qu et al.
(``training.qu.config``) recipes. A value of the wrong type must not reach a run: ``"data":
"folder"`` would be iterated letter by letter (and its ``"/"`` walks the whole disk),
``"epochs": "10"`` fails deep inside a comparison with a bare TypeError, ``"epochs": true``
trains one epoch and ``"epochs": 2.5`` a fraction of a schedule.
Types come from the dataclass fields' annotations, which these modules keep as strings
(``from __future__ import annotations``); they are read here rather than through
``typing.get_type_hints``, which cannot evaluate ``int | None`` on Python 3.9.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, TypeVar

from MRSynthesisLib.atomic import read_json
from MRSynthesisLib.errors import InputError

Config = TypeVar("Config")

_SCALARS: dict[str, Callable[[Any], bool]] = {
    "bool": lambda v: isinstance(v, bool),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    # JSON writes 1.0 as 1 too; Python's json reads NaN and Infinity, which no recipe key means
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
    "str": lambda v: isinstance(v, str),
}


def _accepts(annotation: str, value: Any) -> bool:
    for part in (p.strip() for p in annotation.split("|")):
        if part == "None":
            ok = value is None
        elif part.startswith("list[") and part.endswith("]"):
            ok = isinstance(value, list) and all(_accepts(part[5:-1], v) for v in value)
        elif part.startswith("dict[") and part.endswith("]"):
            key, item = (t.strip() for t in part[5:-1].split(",", 1))
            ok = isinstance(value, dict) and all(_accepts(key, k) and _accepts(item, v) for k, v in value.items())
        elif part == "Any":  # free-form (e.g. architecture params, checked by the architecture)
            ok = True
        elif part in _SCALARS:
            ok = _SCALARS[part](value)
        else:
            raise TypeError(f"config annotation {annotation!r} is not one that config_io checks")
        if ok:
            return True
    return False


def check_keys(cls: type, values: Mapping[str, Any], section: str = "", custom: tuple[str, ...] = ()) -> None:
    """Refuse unknown keys, missing required ones and values of the wrong type for dataclass ``cls``
    (``section``: the name of a nested sub-config such as ``augment``, for the messages; ``custom``:
    fields holding sub-configs, whose values the caller checks)."""
    label, where = (f"{section} ", f"{section}.") if section else ("config ", "")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown {label}keys {unknown}; known keys: {sorted(known)}")
    missing = [name for name, f in known.items()
               if f.default is MISSING and f.default_factory is MISSING and name not in values]
    if missing:
        raise ValueError(f"missing {label}keys {missing}")
    for name, value in values.items():
        if name not in custom and not _accepts(str(known[name].type), value):
            raise ValueError(f"{where}{name} must be {known[name].type}, got {value!r}")


def load_config_file(path: str | os.PathLike, overrides: dict[str, Any] | None,
                     parse: Callable[[dict[str, Any], Path], Config]) -> Config:
    """``parse(keys, folder of the file)`` of the JSON config at ``path``, with ``overrides`` (from the
    command line, None = not given) applied; whatever it refuses is an ``InputError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such config file")
    data = read_json(path)
    if not isinstance(data, dict):
        raise InputError(f"{path}: a config is a JSON object of keys, not a {type(data).__name__}")
    replaced = {k: (data.get(k), v) for k, v in (overrides or {}).items() if v is not None and data.get(k) != v}
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return parse(data, path.parent)
    except InputError:
        raise
    except ValueError as error:
        # a value the command line gave may be what the file's others do not fit (--epochs 1 under average_epochs 5)
        given = "; ".join(f"{k} {new!r} from the command line, {old!r} in the file" for k, (old, new) in
                          replaced.items())
        raise InputError(f"{path}: {error}" + (f" ({given})" if given else "")) from None
