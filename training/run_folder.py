"""What a training run's folder (``--out``) holds, and what depends on knowing it.

The 2D and 3D trainers write the same entries; the model folder is written beside them as
``out / name``. A recipe ``name`` that is one of these entries, or that is not a plain folder
name (``"."`` is the run folder itself), would make exporting the model replace the run's own
checkpoint and log, after which the run could not be resumed or extended: ``check_model_name``
refuses it when the recipe is read.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

from MRSynthesisLib.atomic import is_temporary

CHECKPOINT = "checkpoint.safetensors"
BEST = "best.safetensors"
METRICS = "metrics.csv"
CONFIG = "config.json"
TENSORBOARD = "tensorboard"
ENTRIES = (CHECKPOINT, BEST, METRICS, CONFIG, TENSORBOARD)


def check_model_name(name: str) -> None:
    """A recipe's ``name``: the model folder's name inside the run folder (ValueError otherwise)."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"name must be a plain folder name (no '/', not starting with '.'), got {name!r}")
    if name in ENTRIES:
        raise ValueError(f"name {name!r} is a file of the run folder itself; the model folder takes another name")


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """The metrics log, written whole to a temporary name and renamed (never a torn file)."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns)
    writer.writeheader()
    writer.writerows(rows)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(buffer.getvalue(), encoding="utf-8")
    os.replace(partial, path)


def tidy_resumed(out: Path, log: list[dict[str, Any]]) -> list[str]:
    """Make a resumed run's folder what the checkpoint says it is; returns the temporaries removed.

    A kill -9 while a file was being written leaves its temporary (``atomic.replacing``'s hidden
    ``.partial`` name) for good; and one between the checkpoint and the metrics log leaves the log
    an epoch short, which no later epoch rewrites when that was the last one (or the one early
    stopping ended on). The checkpoint's log is the record, so the CSV is rewritten from it.
    """
    removed = []
    for entry in sorted(out.iterdir()):
        if entry.is_file() and is_temporary(entry):
            entry.unlink()
            removed.append(entry.name)
    write_csv(out / METRICS, log)
    return removed
