"""What a synthetic image is, said in the file and in a JSON sidecar beside it.

A synthetic FLAIR renamed into a study folder (``sub-01_FLAIR.nii.gz``) would otherwise pass for an
acquired scan: the file name was its only mark. So every output says what it is in the image header
(NIfTI's 80-byte ``descrip``, a NRRD or MetaImage field, through ITK's ``ITK_FileNotes``) and in a
sidecar named like it with ``.json`` (the BIDS convention): the model and its weights' SHA-256, the
inputs and masks, the options and the notes of the run, so that a result can be traced and reproduced.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .formats import WRITABLE_SUFFIXES, suffix_of

SIDECAR_SUFFIX = ".json"
OUTPUT_MARK = "MRSynthesis "  # how every output's header line starts (``description``, ``saliency_description``)


def sidecar_path(image: str | Path) -> Path:
    """``FLAIR_synthetic.nii.gz`` -> ``FLAIR_synthetic.json``, beside it; also for the formats only Slicer
    writes (``FLAIR.nhdr``, ``FLAIR.img.gz`` -> ``FLAIR.json``)."""
    image = Path(image)
    name = image.name
    if name.lower().endswith(WRITABLE_SUFFIXES):
        stem = name[: -len(suffix_of(image))]
    else:
        stem = Path(name[:-3] if name.lower().endswith(".gz") else name).stem
    return image.with_name(stem + SIDECAR_SUFFIX)


def is_ours(path: str | Path, image: str | Path) -> bool:
    """Whether ``path`` is an MRSynthesis sidecar of ``image``: it may be replaced without ``--overwrite``
    when the image itself is gone (deleted to be made again), since it describes nothing any more."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (isinstance(record, dict) and record.get("synthetic") is True and record.get("image") == Path(image).name
            and str(record.get("software", "")).startswith("MRSynthesis"))


def sidecars(images: Sequence[str | Path]) -> tuple[list[Path], list[Path]]:
    """The sidecars of ``images``: those that are not ours (the user's, or none yet: never replaced without
    ``--overwrite``), and ours left beside an image (``is_ours``: replaced)."""
    theirs: list[Path] = []
    ours: list[Path] = []
    for image in images:
        path = sidecar_path(image)
        (ours if is_ours(path, image) else theirs).append(path)
    return theirs, ours


def description(target: str, inputs: Sequence[str], model: str, lesion: bool = False) -> str:
    """The header's one line, ``MRSynthesis synthetic FLAIR from T1+T2+lesion (model)`` (``lesion``: a
    painted lesion mask was an input); ``volume.write_volume`` cuts it to what NIfTI holds."""
    return f"{OUTPUT_MARK}synthetic {target} from {'+'.join([*inputs, *(['lesion'] if lesion else [])])} ({model})"


def saliency_description(target: str, source: str, model: str) -> str:
    """The header's line of a P3S saliency map: what ``target`` took from the input ``source``."""
    return f"{OUTPUT_MARK}P3S saliency of synthetic {target} to input {source} ({model})"


def is_output(header_line: str) -> bool:
    """Whether an image's header line (``volume.Volume.description``) marks it as an MRSynthesis output."""
    return header_line.startswith(OUTPUT_MARK)


def run_description(target: str, run: Mapping[str, Any]) -> str:
    """``description`` of ``target`` from a run's record (``SynthesisResult.provenance``)."""
    return description(target, list(run["inputs"]), run["model"]["name"], run["lesion_mask"] is not None)


def located(source: Any) -> Any:
    """A file named relative to the working folder, as the user gave it, made absolute: the sidecar is read
    from elsewhere; anything else (a node name, None) as it is."""
    return os.path.abspath(source) if isinstance(source, str) and Path(source).is_file() else source


def sidecar(target: str, run: Mapping[str, Any], image: str | Path) -> dict[str, Any]:
    """The sidecar of ``image``, the synthetic ``target`` of a run whose record is ``run``
    (``SynthesisResult.provenance``)."""
    record = {**run, "inputs": {n: located(s) for n, s in run["inputs"].items()},
              **{k: located(run[k]) for k in ("lesion_mask", "brain_mask", "grid_of")}}
    return {"synthetic": True, "modality": target, "image": Path(image).name,
            "description": run_description(target, run),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **record}
