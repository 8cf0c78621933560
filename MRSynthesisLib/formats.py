"""The image formats MRSynthesis writes, told by file name.

Standard library only: Slicer's batch script names the outputs' sidecars (``provenance``) with it
before Slicer's Python may have nibabel or torch, which ``volume`` needs.
"""

from __future__ import annotations

import os

from .errors import InputError

WRITABLE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


def suffix_of(path: str | os.PathLike) -> str:
    name = str(path).lower()
    for suffix in WRITABLE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise InputError(f"{path}: unsupported output format; use one of {', '.join(WRITABLE_SUFFIXES)}")
