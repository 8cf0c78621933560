"""Canonical MR contrast names and the aliases real data sets use.

Data sets disagree on names (BraTS ``t2f`` vs the MS set's ``FLAIR``); everything
inside MRSynthesis uses the canonical name, so a model trained on one naming runs on
the other.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from .errors import InputError

CANONICAL: tuple[str, ...] = ("T1", "T1c", "T2", "PD", "FLAIR", "DWI", "DIR")

_ALIASES: dict[str, str] = {
    # T1-weighted, native
    "t1": "T1", "t1n": "T1", "t1w": "T1", "t1native": "T1", "mprage": "T1", "t1pre": "T1",
    # T1-weighted after gadolinium
    "t1c": "T1c", "t1ce": "T1c", "t1gd": "T1c", "t1post": "T1c", "t1wce": "T1c",
    "t1contrast": "T1c", "t1wpost": "T1c",
    # T2-weighted
    "t2": "T2", "t2w": "T2", "t2wi": "T2",
    # proton density
    "pd": "PD", "pdw": "PD",
    # FLAIR (T2-weighted with fluid suppression)
    "flair": "FLAIR", "fla": "FLAIR", "t2f": "FLAIR", "t2flair": "FLAIR", "t2wflair": "FLAIR",
    # diffusion-weighted images. Not the ADC map computed from them: its contrast is near the inverse (an
    # acute infarct is bright in DWI, dark in ADC), so a DWI encoder fed one would read the lesion backwards;
    # and a folder holding both (ISLES 2022, UCSF-PDGM) would hold two "DWI" images.
    "dwi": "DWI", "dw": "DWI",
    # double inversion recovery
    "dir": "DIR",
}


# A contrast agent named anywhere in a T1's name makes it the post-contrast T1: BIDS's ``ce-<agent>``
# entity (``sub-01_ce-gadolinium_T1w``) or a marker beside the sequence's name (``T1w_gd``, ``MPRAGE_post``).
# Guessed as the native T1, such a scan would be read by the wrong encoder, or trained on as a native T1.
# A "pre"/"native" token keeps it native (``T1_pre_gd``: before gadolinium).
_CONTRAST_AGENT = frozenset({"ce", "gd", "gad", "gado", "gadolinium", "post", "postcontrast", "postgd", "contrast",
                             "enhanced"})
_NATIVE = frozenset({"pre", "precontrast", "native", "nc", "noncontrast", "none"})


def _key(name: str) -> str:
    # '*' is kept: T2* (T2-star, gradient echo) is a different contrast from T2.
    return re.sub(r"[^a-z0-9*]", "", name.lower())


def canonical(name: str) -> str:
    """Return the canonical name of ``name`` (case, '-', '_' and spaces ignored).

    Raises ``ValueError`` listing the known names when ``name`` is not one of them.
    """
    found = _ALIASES.get(_key(name))
    if found is None:
        known = ", ".join(CANONICAL)
        aliases = ", ".join(sorted(_ALIASES))
        raise ValueError(f"unknown modality {name!r}; known modalities: {known} (aliases: {aliases})")
    return found


def is_known(name: str) -> bool:
    return _key(name) in _ALIASES


def guess(name: str) -> str | None:
    """Guess a modality from a file or node name such as ``sub-01_t2f.nii.gz`` or ``T1 POST``.

    Tries the whole stem first, then its '_'/'-'/'.'/space separated tokens from the
    right (BIDS-like names put the contrast last). A T1 whose name also names a contrast agent
    is the post-contrast T1 (``_CONTRAST_AGENT``). Returns None when nothing matches.
    """
    stem = Path(name).name
    for ext in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
            break
    tokens = [t for t in re.split(r"[_\-. ]+", stem) if t]
    found = canonical(stem) if is_known(stem) else next(
        (canonical("".join(tokens[i:i + j])) for i in range(len(tokens) - 1, -1, -1)
         for j in (2, 1) if i + j <= len(tokens) and is_known("".join(tokens[i:i + j]))), None)  # "T1 POST" before "T1"
    keys = {_key(t) for t in tokens}
    if found == "T1" and keys & _CONTRAST_AGENT and not keys & _NATIVE:
        return "T1c"
    return found


def check_given_once(pairs: Sequence[tuple[str, str]], option: str) -> None:
    """Each name of ``MODALITY=PATH`` options once, and each file under one name: a dict of them would
    silently keep the last, and one scan as T1 and T2 is a mistake (the Slicer panel refuses one
    volume in two rows). Aliases of one modality are for the caller to catch after ``canonical``."""
    for name in dict(pairs):
        paths = [p for n, p in pairs if n == name]
        if len(paths) > 1:
            raise InputError(f"{option} {name} is given {len(paths)} times ({', '.join(paths)}); give each once")
    files = [os.path.realpath(p) for _, p in pairs]
    for file in dict.fromkeys(files):
        names = [n for (n, _), f in zip(pairs, files) if f == file]
        if len(names) > 1:
            raise InputError(f"{file}: is given as {' and '.join(names)} ({option}); give each file once")
