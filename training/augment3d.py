"""Geometric and intensity augmentation of the 3D models' training windows (``augment`` in a 3D recipe).

Neither Wei et al. nor Klingelhoefer & Rousseau augment; with a handful of subjects (the shared data has
three) the 2D model's recipe does, and the same ``AugmentConfig`` serves here, off unless the recipe asks:

- **Flips**: each axis of the window but the superior-inferior one, with probability 1/2 (left-right, and
  anterior-posterior since the data come LAS and LPS, as in 2D). Upside-down heads are not flipped in.
- **Rotation and zoom**: about the window's centre, a rotation about each of the three axes uniform in
  [-r, r] and a zoom in [1 - s, 1 + s], each with ``probability``, in voxel axes (as the 2D crops turn in
  pixel axes; the recipes train on about isotropic voxels). The window is read from the whole volume
  through that transform (``patches3d.window_through``: trilinear for images, nearest for the lesion mask,
  0 outside the volume as the tiler pads), so tissue turned in from outside the window is real tissue.
  The target is the central crop of the same transformed window, as without augmentation.
- **Intensity**: gamma, scale and bias field (``augment.jitter_intensity``, MONAI) on each input window,
  never the targets, applied to its non-zero voxels only: a z-scored (Wei) image is negative in dark
  tissue, and the background must stay 0, the value the network meets outside the head at inference.

Without any geometric change a window is cut by indexing (``patches3d.window``): exactly the unaugmented
sample. Every draw comes from ``default_rng([seed, AUGMENT_STREAM, step, index])``, so a sample stays a
pure function of the run's seed and its place in the run (resume and determinism as before).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .augment import jitter_intensity
from .config import AugmentConfig
from .patches3d import Geometry3D, Patch, PatchBatch, cut_batch
from .volumes3d import Volume3D

AUGMENT_STREAM = 3  # beside batches.TRAIN_STREAM, SUBSET_STREAM, VALIDATION_STREAM


def rotation(angles: Sequence[float]) -> np.ndarray:
    """The rotation by ``angles`` (radians) about the three voxel axes in turn."""
    matrix = np.eye(3)
    for axis, angle in enumerate(angles):
        i, j = [a for a in range(3) if a != axis]
        turn = np.eye(3)
        turn[i, i] = turn[j, j] = math.cos(angle)
        turn[i, j], turn[j, i] = -math.sin(angle), math.sin(angle)
        matrix = turn @ matrix
    return matrix


def draw_geometry(rng: np.random.Generator, config: AugmentConfig, axial_axis: int) -> Geometry3D | None:
    """Random flips, rotation and zoom as ``config`` says; None when the draw changes nothing."""
    flips = tuple(bool(rng.random() < 0.5) and config.flip and axis != axial_axis for axis in range(3))
    matrix = np.eye(3)
    if config.rotate_degrees and rng.random() < config.probability:
        matrix = rotation(np.radians(rng.uniform(-config.rotate_degrees, config.rotate_degrees, 3)))
    if config.scale and rng.random() < config.probability:
        matrix = matrix / rng.uniform(1 - config.scale, 1 + config.scale)
    if not any(flips) and np.allclose(matrix, np.eye(3)):
        return None
    return Geometry3D(flips, tuple(map(tuple, matrix.tolist())))  # type: ignore[arg-type]


def augmented_batch(volumes: Sequence[Volume3D], patches: Sequence[Patch], config: AugmentConfig, *, seed: int,
                    step: int, size: int, margin: int, inputs: Sequence[str], outputs: Sequence[str],
                    lesion_input: bool) -> PatchBatch:
    """``cut_batch`` of ``patches`` with each sample's random geometry, and its inputs' intensities jittered."""
    rngs = [np.random.default_rng([seed, AUGMENT_STREAM, step, index]) for index in range(len(patches))]
    geometries = [draw_geometry(rng, config, volumes[patch.volume].axial_axis) for rng, patch in zip(rngs, patches)]
    batch = cut_batch(volumes, patches, size=size, margin=margin, inputs=inputs, outputs=outputs,
                      lesion_input=lesion_input, geometries=geometries)
    for name, windows in batch.inputs.items():
        for index, rng in enumerate(rngs):
            image = windows[index]
            windows[index] = jitter_intensity(image, rng, config) * (image != 0)
    return batch
