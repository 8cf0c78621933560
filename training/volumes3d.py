"""Whole preprocessed volumes for the 3D models, in the order the 3D inference tiler uses.

Loading goes through ``training.datasets.load_subject`` (the inference code's brain mask and
normalisation, the lesion channel's fallbacks), with the architecture's normalisation
instead of the 2D model's. That function puts the axial axis first for slice sampling; a 3D
network is run by ``MRSynthesisLib.tiling`` on the array in the file's own (z, y, x) order,
so the volumes are put back in that order: the network trains on the axis order it meets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from MRSynthesisLib.errors import InputError

from .config3d import Train3DConfig
from .datasets import SubjectFiles, load_subject, resampled
from .loop import missing_sequences


@dataclass
class Volume3D:
    """One subject: normalised images by modality (those it holds, ``incomplete_subjects``), lesion channel (0/1)
    and brain mask, file order."""

    name: str
    images: dict[str, np.ndarray]
    lesion: np.ndarray
    brain: np.ndarray
    lesion_source: str
    spacing_mm: tuple[float, float, float] | None = None  # ``Geometry.anatomical_spacing`` of its images
    scans: dict[str, tuple[str, str]] = field(default_factory=dict)  # ``Subject.scans``
    axial_axis: int = 0  # the (z, y, x) axis nearest superior-inferior (``Subject.axial_axis``), never flipped


def _file_order(array: np.ndarray, axis: int) -> np.ndarray:
    """Undo ``load_subject``'s move of the axial axis (``axis`` of the file) to the front."""
    return np.ascontiguousarray(np.moveaxis(array, 0, axis))


def load_volumes(config: Train3DConfig, names: Sequence[str], files: Mapping[str, SubjectFiles], verbose: bool
                 ) -> tuple[list[Volume3D], list[dict[str, np.ndarray]], list[np.ndarray]]:
    """The named subjects, plus their raw output images and brain masks (for the card's output intensity)."""
    volumes, raws, brains = [], [], []
    for name in names:
        subject, raw, brain = load_subject(
            files[name], config.inputs, config.outputs, lesion_input=config.lesion_input,
            lesion_fallback=config.lesion_fallback, flair_z=config.lesion_flair_z, min_voxels=config.lesion_min_voxels,
            min_slice_brain_fraction=0.0, normalisation=config.normalisation, spacing_mm=config.spacing_mm,
            plane=None, incomplete=config.incomplete_subjects)
        absent = [m for m in config.inputs if m not in subject.images]
        if absent and not config.input_dropout:
            raise InputError(f"subject {name} has no {', '.join(absent)} image; this network takes every input "
                             "stacked as channels and cannot learn without one, unless trained with \"input_dropout\": "
                             "true (then an absent input is a zero channel it is told of)")
        axis = subject.axial_axis
        volume = Volume3D(name, {m: _file_order(a, axis) for m, a in subject.images.items()},
                          _file_order(subject.lesion, axis), brain, subject.lesion_source, subject.spacing_mm,
                          subject.scans, axis)
        volumes.append(volume)
        raws.append(raw)
        brains.append(brain)
        if verbose:
            lacks = missing_sequences(volume, config)
            print(f"  {name}: {volume.brain.shape} voxels{resampled(subject)}, {int(volume.brain.sum())} in the "
                  f"brain, {subject.lesion_said()}"
                  + (f", without {', '.join(lacks)}" if lacks else ""), flush=True)
            for note in subject.notes:
                print(f"warning: {note}", flush=True)
    return volumes, raws, brains
