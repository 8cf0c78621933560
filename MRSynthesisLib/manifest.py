"""CSV manifests of a cohort: one row per subject, one column per modality (any alias), mask columns.

``mrsynthesis batch`` and training read cohorts through this one reader, so that a manifest means
the same to both and both refuse the same mistakes with the file and line named: a repeated
column (``csv.DictReader`` alone lets the last of two same-named columns win without a word), two
columns for one modality (``T1`` and ``t1n``), a row with more cells than the header, an empty,
repeated or path-like subject name (it becomes an output folder), a subject without any image or
with one file under two modalities.
Relative paths are relative to the manifest's folder; an empty cell is a file not given.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import modalities
from .errors import InputError

SUBJECT_COLUMN = "subject"
# Rows that are sessions of one person name it here: training keeps them on one side of its split, and
# ``mrsynthesis batch`` takes the column (and leaves it alone), so one manifest serves both.
PATIENT_COLUMN = "patient"


@dataclass(frozen=True)
class ManifestSubject:
    """One row: canonical modality -> image file, mask column -> file for the masks given, and label
    column -> text for the labels given (training's ``patient``)."""

    subject: str
    images: dict[str, Path]
    masks: dict[str, Path]
    labels: dict[str, str] = field(default_factory=dict)


def read_manifest(path: str | os.PathLike, mask_columns: Sequence[str] = (),
                  label_columns: Sequence[str] = ()) -> list[ManifestSubject]:
    """Every subject of the manifest at ``path``; columns other than ``subject``, ``mask_columns`` (files)
    and ``label_columns`` (text) must name modalities. Any problem is an ``InputError`` naming the file
    (and line)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such manifest")
    # utf-8-sig: a spreadsheet's byte-order mark would otherwise become part of the first column's name
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = [cell.strip() for cell in next(reader, [])]
            rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    except (UnicodeDecodeError, csv.Error) as error:  # e.g. a spreadsheet saved in Latin-1
        raise InputError(f"{path}: not a UTF-8 CSV file ({error})") from None
    if SUBJECT_COLUMN not in header or not rows:
        raise InputError(f"{path}: a manifest needs a header with a {SUBJECT_COLUMN!r} column and at least one row")
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise InputError(f"{path}: the header repeats {', '.join(map(repr, repeated))}; give each column once")
    if "" in header:
        raise InputError(f"{path}: column {header.index('') + 1} of the header has no name")
    modality_of: dict[str, str] = {}
    for column in header:
        if column == SUBJECT_COLUMN or column in mask_columns or column in label_columns:
            continue
        try:
            modality = modalities.canonical(column)
        except ValueError as error:
            raise InputError(f"{path}: column {column!r}: {error}") from None
        twin = next((c for c, m in modality_of.items() if m == modality), None)
        if twin is not None:
            raise InputError(f"{path}: columns {twin!r} and {column!r} are both {modality}; keep one")
        modality_of[column] = modality

    subjects: list[ManifestSubject] = []
    seen: set[str] = set()
    for line, row in rows:
        if any(cell.strip() for cell in row[len(header):]):
            raise InputError(f"{path}:{line}: {len(row)} cells but the header has {len(header)} columns")
        cells = dict(zip(header, (cell.strip() for cell in row)))

        def file(column: str) -> Path | None:
            value = cells.get(column, "")
            return (path.parent / value) if value else None  # an absolute value stays as it is

        subject = cells.get(SUBJECT_COLUMN, "")
        if not subject or subject in seen or Path(subject).name != subject or subject == "..":
            raise InputError(f"{path}:{line}: subject {subject!r} is empty, repeated or not a plain name")
        seen.add(subject)
        images = {m: f for c, m in modality_of.items() if (f := file(c)) is not None}
        if not images:
            raise InputError(f"{path}:{line}: subject {subject!r} has no image")
        if len({f.resolve() for f in images.values()}) < len(images):
            raise InputError(f"{path}:{line}: subject {subject!r} names one file for two modalities")
        masks = {c: f for c in mask_columns if (f := file(c)) is not None}
        labels = {c: cells[c] for c in label_columns if cells.get(c)}
        subjects.append(ManifestSubject(subject, images, masks, labels))
    return subjects
