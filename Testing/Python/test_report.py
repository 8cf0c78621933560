"""The PNG figures (``MRSynthesisLib.report``)."""

from __future__ import annotations

import numpy as np

from conftest import LAS, phantom
from MRSynthesisLib.report import saliency_figure
from MRSynthesisLib.volume import Geometry, Volume


def test_a_one_input_saliency_figure_is_readable(tmp_path):
    """Wei et al.'s Fig. 6 layout for one input was 286 x 594 pixels (a 1 mm brain at 1.5 pixels a voxel): each
    column is now about 400 pixels wide, the whole at least 550, and grows with the inputs."""
    import matplotlib.image

    images = phantom((40, 60, 50), seed=1)
    grid = Geometry((50, 60, 40), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), LAS)
    t1 = Volume(images["T1"], grid, "T1")
    saliency = t1.with_array(np.abs(np.gradient(images["T1"])[0]).astype(np.float32))
    one = matplotlib.image.imread(saliency_figure({"T1": t1}, {"T1": saliency}, tmp_path / "one.png", title="P3S"))
    three = matplotlib.image.imread(saliency_figure({n: t1 for n in "ABC"}, {n: saliency for n in "ABC"},
                                                    tmp_path / "three.png"))
    assert one.shape[1] >= 550 and one.shape[0] >= 800
    assert three.shape[1] >= 3 * 380 and three.shape[0] == one.shape[0]
