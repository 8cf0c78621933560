"""PNG figures a person looks at: orthogonal views of volumes side by side.

Volumes are reoriented to LPS for display so every figure follows the radiological
convention whatever the file's orientation: axial and coronal views show the patient's
left on the image's right, anterior (axial) and superior (coronal, sagittal) at the top.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .atomic import replacing
from .volume import Volume

VIEWS = ("axial", "coronal", "sagittal")


@dataclass
class Panel:
    title: str
    volume: Volume
    overlay: Volume | None = None  # a binary mask drawn as a red contour
    cmap: str = "gray"


def _display_array(volume: Volume) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.DICOMOrient(volume.to_sitk(), "LPS"))


def _view(array: np.ndarray, view: str, point: Sequence[int]) -> np.ndarray:
    k, j, i = point
    if view == "axial":
        return array[k]
    if view == "coronal":
        return array[:, j, :][::-1]
    return array[:, :, i][::-1]


def centre_of(mask: np.ndarray) -> tuple[int, int, int]:
    """The voxel at the centre of mass of ``mask`` (the middle of the volume when empty)."""
    if not mask.any():
        return tuple(s // 2 for s in mask.shape)  # type: ignore[return-value]
    return tuple(int(round(c)) for c in np.argwhere(mask).mean(axis=0))  # type: ignore[return-value]


def orthogonal_views(panels: Sequence[Panel], path: str | os.PathLike, *, focus: Volume | None = None,
                     title: str = "", views: Sequence[str] = VIEWS) -> Path:
    """One column per panel, one row per view, through the centre of ``focus`` (a mask) or of the volume.

    Each panel is windowed to its own 1st-99.5th percentile inside its foreground.
    Written atomically (temporary name, then rename).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arrays = [_display_array(p.volume) for p in panels]
    overlays = [None if p.overlay is None else _display_array(p.overlay) > 0.5 for p in panels]
    point = centre_of(_display_array(focus) > 0.5) if focus is not None else centre_of(arrays[0] != 0)
    figure, axes = plt.subplots(len(views), len(panels), figsize=(2.6 * len(panels), 2.6 * len(views)),
                                squeeze=False, facecolor="black")
    for column, (panel, array, overlay) in enumerate(zip(panels, arrays, overlays)):
        foreground = array[array != 0]
        low, high = np.percentile(foreground, (1, 99.5)) if foreground.size else (0.0, 1.0)
        for row, view in enumerate(views):
            axis = axes[row][column]
            axis.imshow(_view(array, view, point), cmap=panel.cmap, vmin=low, vmax=max(high, low + 1e-6),
                        interpolation="nearest")
            if overlay is not None and overlay.any():
                axis.contour(_view(overlay, view, point), levels=[0.5], colors="red", linewidths=0.8)
            axis.set_axis_off()
            if row == 0:
                axis.set_title(panel.title, color="white", fontsize=9)
    if title:
        figure.suptitle(title, color="white", fontsize=10)
    figure.tight_layout()
    return save_figure(figure, path)


def saliency_figure(inputs: Mapping[str, Volume], maps: Mapping[str, Volume], path: str | os.PathLike, *,
                    focus: Volume | None = None, title: str = "", view: str = "axial") -> Path:
    """Wei et al.'s Fig. 6: P3S maps of each input on top, the inputs below, one slice.

    The maps share one colour scale (0 to the 99.5th percentile of all of them inside their
    support), so a brighter map means a larger contribution, as in the paper; each input
    image is windowed on its own. The slice goes through the centre of ``focus`` (e.g. the
    lesion) or of the first map's support. Written atomically.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(maps)
    saliency = {n: _display_array(maps[n]) for n in names}
    images = {n: _display_array(inputs[n]) for n in names}
    support = np.any([a > 0 for a in saliency.values()], axis=0)
    point = centre_of(_display_array(focus) > 0.5) if focus is not None else centre_of(support)
    values = np.concatenate([a[support] for a in saliency.values()]) if support.any() else np.zeros(1)
    top = max(float(np.percentile(values, 99.5)), 1e-12)
    # about 2 pixels per voxel of a 1 mm brain at the 110 dpi of save_figure, and room for the title and colour bar
    # with one input (2.6 inches a column made a one-input figure 286 pixels wide)
    figure, axes = plt.subplots(2, len(names), figsize=(max(3.6 * len(names), 5.0), 7.4), squeeze=False,
                                facecolor="black")
    for column, name in enumerate(names):
        image = images[name]
        foreground = image[image != 0]
        low, high = np.percentile(foreground, (1, 99.5)) if foreground.size else (0.0, 1.0)
        shown = axes[0][column].imshow(_view(saliency[name], view, point), cmap="inferno", vmin=0, vmax=top,
                                       interpolation="nearest")
        axes[1][column].imshow(_view(image, view, point), cmap="gray", vmin=low, vmax=max(high, low + 1e-6),
                               interpolation="nearest")
        axes[0][column].set_title(f"P3S {name}", color="white", fontsize=9)
        axes[1][column].set_title(name, color="white", fontsize=9)
        for row in (0, 1):
            axes[row][column].set_axis_off()
    bar = figure.colorbar(shown, ax=list(axes[0]), fraction=0.03, pad=0.01)
    bar.ax.tick_params(colors="white", labelsize=7)
    if title:
        figure.suptitle(title, color="white", fontsize=10)
    return save_figure(figure, path)


def save_figure(figure, path: str | os.PathLike) -> Path:
    """Write ``figure`` as PNG atomically (temporary name, then rename) and release it."""
    import matplotlib.pyplot as plt

    try:
        with replacing(path, ".png") as partial:
            figure.savefig(partial, dpi=110, facecolor="black")
    finally:
        plt.close(figure)
    return Path(path)
