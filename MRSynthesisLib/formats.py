"""The image formats MRSynthesis writes, told by file name.

Standard library only: Slicer's batch script names the outputs' sidecars (``provenance``) with it
before Slicer's Python may have nibabel or torch, which ``volume`` needs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import InputError

WRITABLE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


def suffix_of(path: str | os.PathLike) -> str:
    name = str(path).lower()
    for suffix in WRITABLE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise InputError(f"{path}: unsupported output format; use one of {', '.join(WRITABLE_SUFFIXES)}")


# A new --out whose last suffix matches this is taken for a file name, not a folder: a letter, then at most four
# letters or digits (.png, .nhdr, .json, .txt, .jpeg, .dcm, .nrrd, .h5, .gz). File extensions look like that; the
# dotted parts of BIDS-style or dated folder names do not (.ses-1, .2024-01-05, .run-2: a hyphen, or a digit first).
FILE_EXTENSION = re.compile(r"\.[A-Za-z][A-Za-z0-9]{0,4}")


def looks_like_a_file(path: str | os.PathLike) -> bool:
    """Whether ``path``'s last suffix is a file extension (``FILE_EXTENSION``): ``flair.png`` and ``t2.nhdr`` are,
    ``sub-01.ses-1`` and ``run.2024-01-05`` are not (``Path.suffix`` alone is no test: it is ``.ses-1`` there)."""
    return FILE_EXTENSION.fullmatch(Path(path).suffix) is not None
