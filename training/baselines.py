"""Classical synthesis baselines the Chartsias model must beat (issue 3).

Two regressors from input intensities to a target contrast, fitted on training subjects and
applied to an unseen one, with one tiny interface::

    model = make_baseline("rf")                      # or "poly", or PolynomialBaseline(...)
    model.fit([(inputs, target, brain), ...])         # inputs: dict name -> (z, y, x) array
    synthetic = model.predict(inputs, brain)          # (z, y, x) float32, 0 outside the brain

Arrays are expected preprocessed as inference does (``training.datasets.load_subject``:
``foreground_mask`` over the inputs, every volume normalised ``mean_in_brain`` inside it, 0
outside), so a baseline sees exactly what the network sees and predicts the target in the
same normalised units. Inputs are matched by name, so the dict order does not matter; ``fit``
fixes the input names and ``predict`` requires the same ones.

* ``PolynomialBaseline``: voxel-wise polynomial regression of the target on the inputs'
  intensities at the same voxel (the simplest intensity-mapping baseline: no spatial context).
* ``RandomForestBaseline``: random forest on the 3x3x3 neighbourhood of every input
  (27 x n_inputs features), as REPLICA (Jog et al. 2017) and Wei et al. 2019 (60 trees,
  3x3x3 patches) used.

Training voxels are a seeded random subsample of the brain voxels, drawn as an equal share
from every training subject (a larger field of view or brain does not outweigh a smaller one;
the same rule as the network's sampler, uniform over subjects).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import PolynomialFeatures

__all__ = [
    "BASELINES",
    "PolynomialBaseline",
    "RandomForestBaseline",
    "TrainingSubject",
    "make_baseline",
    "patch_features",
    "sample_voxels",
]

# (inputs by name, target, brain mask), all (z, y, x) and on one grid
TrainingSubject = tuple[Mapping[str, np.ndarray], np.ndarray, np.ndarray]

PREDICT_CHUNK = 200_000  # voxels per predict call: bounds the patch-feature memory (~43 MB for 2 inputs)


def _check_subject(inputs: Mapping[str, np.ndarray], brain: np.ndarray,
                   names: Sequence[str] | None = None) -> np.ndarray:
    if not inputs:
        raise ValueError("a baseline needs at least one input")
    brain = np.asarray(brain).astype(bool)
    if names is not None and sorted(inputs) != sorted(names):
        raise ValueError(f"the model was fitted on inputs {sorted(names)}, got {sorted(inputs)}")
    for name, image in inputs.items():
        if np.shape(image) != brain.shape:
            raise ValueError(f"input {name} has shape {np.shape(image)}, the brain mask {brain.shape}")
    if not brain.any():
        raise ValueError("the brain mask is empty")
    return brain


def sample_voxels(subjects: Sequence[TrainingSubject], max_voxels: int | None,
                  seed: int) -> list[np.ndarray]:
    """Flat indices of the brain voxels to train on, per subject.

    ``max_voxels`` in all, an equal share per subject (fewer where a brain has fewer voxels),
    drawn without replacement with ``seed``; ``None`` takes every brain voxel.
    """
    rng = np.random.default_rng(seed)
    share = None if max_voxels is None else max(1, int(max_voxels) // len(subjects))
    chosen = []
    for inputs, target, brain in subjects:
        brain = _check_subject(inputs, brain)
        if np.shape(target) != brain.shape:
            raise ValueError(f"target has shape {np.shape(target)}, the brain mask {brain.shape}")
        index = np.flatnonzero(brain.ravel())
        if share is not None and index.size > share:
            index = np.sort(rng.choice(index, size=share, replace=False))
        chosen.append(index)
    return chosen


def patch_features(inputs: Mapping[str, np.ndarray], flat_index: np.ndarray, names: Sequence[str],
                   radius: int = 1) -> np.ndarray:
    """(n, (2r+1)^3 x len(names)) float32: every input's cube around each voxel of ``flat_index``.

    Built with a sliding-window view of the zero-padded volume (no copy of the volume per
    offset, no Python loop over voxels): the inputs are 0 outside the brain, so zero padding
    continues the background. Column order: input by input, then the cube in C order (z, y, x).
    """
    shape = np.shape(inputs[names[0]])
    coords = np.unravel_index(flat_index, shape)
    width = 2 * radius + 1
    blocks = []
    for name in names:
        padded = np.pad(np.asarray(inputs[name], np.float32), radius)
        windows = sliding_window_view(padded, (width,) * 3)  # (Z, Y, X, w, w, w), a view
        blocks.append(windows[coords].reshape(len(flat_index), width ** 3))
    return np.concatenate(blocks, axis=1)


def _voxel_features(inputs: Mapping[str, np.ndarray], flat_index: np.ndarray, names: Sequence[str]) -> np.ndarray:
    return np.stack([np.asarray(inputs[n], np.float32).ravel()[flat_index] for n in names], axis=1)


class _Baseline:
    """Shared fit/predict plumbing; subclasses give ``_features`` and ``_regressor``."""

    name = "baseline"
    max_voxels: int | None
    seed: int

    def __init__(self) -> None:
        self.inputs: list[str] | None = None
        self.model = None

    def _features(self, inputs: Mapping[str, np.ndarray], flat_index: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _regressor(self):
        raise NotImplementedError

    def fit(self, subjects: Sequence[TrainingSubject]) -> _Baseline:
        if not subjects:
            raise ValueError("fit needs at least one training subject")
        names = sorted(subjects[0][0])
        for inputs, _, _ in subjects:
            if sorted(inputs) != names:
                raise ValueError(f"every training subject needs the inputs {names}, one has {sorted(inputs)}")
        chosen = sample_voxels(subjects, self.max_voxels, self.seed)
        self.inputs = names
        features = np.concatenate([self._features(inputs, index) for (inputs, _, _), index in zip(subjects, chosen)])
        target = np.concatenate([np.asarray(t, np.float32).ravel()[index]
                                 for (_, t, _), index in zip(subjects, chosen)])
        if not np.isfinite(features).all() or not np.isfinite(target).all():
            raise ValueError("training inputs or target hold NaN or infinite values in the brain")
        self.model = self._regressor().fit(features, target)
        self.training_voxels = int(target.size)
        return self

    def predict(self, inputs: Mapping[str, np.ndarray], brain: np.ndarray) -> np.ndarray:
        if self.model is None:
            raise RuntimeError(f"{self.name}: call fit before predict")
        brain = _check_subject(inputs, brain, self.inputs)
        index = np.flatnonzero(brain.ravel())
        output = np.zeros(brain.size, np.float32)
        for start in range(0, index.size, PREDICT_CHUNK):
            part = index[start:start + PREDICT_CHUNK]
            output[part] = self.model.predict(self._features(inputs, part))
        return output.reshape(brain.shape)


@dataclass
class _PolySettings:
    # Degree 2: the intensity map from T1/T2 to FLAIR is not linear (CSF is bright on T2 but
    # dark on FLAIR, so FLAIR needs the T1 x T2 interaction and curvature); degree 2 captures
    # that with 6 terms for 2 inputs, higher degrees extrapolate wildly on the intensity tails
    # of an unseen scanner/subject. Configurable for ablations.
    degree: int = 2
    # alpha 0 = ordinary least squares (exact for a target that is a polynomial of the inputs);
    # alpha > 0 = Ridge, for many inputs or high degrees where the design becomes ill-conditioned.
    alpha: float = 0.0
    # Voxels to fit on: 1M (an equal share per training subject). A 6-parameter model is
    # determined to 3-4 digits by far fewer; 1M keeps the fit a few seconds and the design
    # matrix ~50 MB. None = every brain voxel.
    max_voxels: int | None = 1_000_000
    seed: int = 0


class PolynomialBaseline(_Baseline):
    """Voxel-wise polynomial regression: target(v) = poly(inputs(v)), no spatial context."""

    name = "poly"

    def __init__(self, degree: int = _PolySettings.degree, alpha: float = _PolySettings.alpha,
                 max_voxels: int | None = _PolySettings.max_voxels, seed: int = _PolySettings.seed) -> None:
        super().__init__()
        if degree < 1:
            raise ValueError(f"degree must be >= 1, got {degree}")
        self.degree, self.alpha, self.max_voxels, self.seed = int(degree), float(alpha), max_voxels, int(seed)

    def _features(self, inputs, flat_index):
        # float64: squares and products of float32 intensities would lose digits in least squares
        return _voxel_features(inputs, flat_index, self.inputs).astype(np.float64)

    def _regressor(self):
        linear = LinearRegression() if self.alpha == 0 else Ridge(alpha=self.alpha)
        return make_pipeline(PolynomialFeatures(self.degree), linear)

    def settings(self) -> dict:
        return {"degree": self.degree, "alpha": self.alpha, "max_voxels": self.max_voxels, "seed": self.seed}


class RandomForestBaseline(_Baseline):
    """Random forest on 3x3x3 patches of every input (REPLICA / Wei et al. 2019 style)."""

    name = "rf"

    def __init__(self, trees: int = 60, radius: int = 1, min_samples_leaf: int = 5,
                 max_features: float | str | None = 1 / 3, max_voxels: int | None = 100_000,
                 seed: int = 0, n_jobs: int = 2) -> None:
        # trees 60 and radius 1 (3x3x3 patches): Wei et al. 2019's RF baseline.
        # min_samples_leaf 5: leaves average >= 5 voxels, which smooths the voxel noise the
        #   target carries (a leaf of 1 reproduces training noise) and keeps the trees shallow
        #   enough to fit and predict a whole brain in seconds; the 60-tree average does the rest.
        # max_features 1/3: Breiman's default for regression forests (R randomForest's p/3);
        #   decorrelates the trees and makes each split 3x cheaper than scanning all 54 features.
        # max_voxels 100k (50k per training subject in a 2-subject fold, ~5% of their brain
        #   voxels): measured on the 2-core development machine, 200k took 154 s to fit (54
        #   features, 60 trees), 100k about half that, within the ~1-minute budget per fit that
        #   keeps a 3-fold LOSO run a few minutes. Neighbouring voxels are strongly correlated,
        #   so a 5% random sample still covers every tissue and contrast combination; raise it
        #   (--rf-voxels) on a bigger machine.
        super().__init__()
        if trees < 1 or radius < 0 or min_samples_leaf < 1:
            raise ValueError("trees and min_samples_leaf must be >= 1 and radius >= 0")
        self.trees, self.radius, self.min_samples_leaf = int(trees), int(radius), int(min_samples_leaf)
        self.max_features, self.max_voxels, self.seed, self.n_jobs = max_features, max_voxels, int(seed), n_jobs

    def _features(self, inputs, flat_index):
        return patch_features(inputs, flat_index, self.inputs, self.radius)

    def _regressor(self):
        return RandomForestRegressor(n_estimators=self.trees, min_samples_leaf=self.min_samples_leaf,
                                     max_features=self.max_features, n_jobs=self.n_jobs, random_state=self.seed)

    def settings(self) -> dict:
        return {"trees": self.trees, "patch": f"{2 * self.radius + 1}^3", "min_samples_leaf": self.min_samples_leaf,
                "max_features": self.max_features, "max_voxels": self.max_voxels, "seed": self.seed,
                "n_jobs": self.n_jobs}


BASELINES = {"poly": PolynomialBaseline, "rf": RandomForestBaseline}


def make_baseline(name: str, **settings) -> _Baseline:
    """A new, unfitted baseline by name (``poly`` or ``rf``); ``settings`` go to its constructor."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
    return BASELINES[name](**settings)
