"""Algorithms 1-3 and the Dice filter of Qu et al. (MRSynthesisLib.structure_maps) on small arrays."""

from __future__ import annotations

import numpy as np
import pytest

from MRSynthesisLib import structure_maps as sm


def disc(size: int = 32, radius: float = 0.6, value: float = 1.0) -> np.ndarray:
    y, x = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    return np.where(np.hypot(y, x) < radius, value, 0.0)


def test_sobel_of_a_constant_image_is_zero_and_of_a_step_is_4_per_unit():
    assert not sm.sobel(np.full((8, 9), 3.0)).any()
    step = np.zeros((8, 8))
    step[:, 4:] = 1.0
    edges = sm.sobel(step)
    assert edges.shape == (8, 8, 2)
    assert not edges[..., 0].any()  # no vertical change
    assert edges[3, 3, 1] == pytest.approx(4.0) and edges[3, 4, 1] == pytest.approx(4.0)


def test_structure_map_marks_both_rising_and_falling_edges_only():
    x = np.zeros((16, 16))
    x[4:12, 4:12] = 1.0  # a square: left/top edges rise, right/bottom edges fall
    f = sm.structure_map(x, beta=0.5)
    assert set(np.unique(f)) == {0.0, 1.0} and f.dtype == np.float32
    assert f[8, 3] == 1 and f[8, 4] == 1  # left edge (rising in x)
    assert f[8, 11] == 1 and f[8, 12] == 1  # right edge (falling in x: found by reduce_min)
    assert f[3, 8] == 1 and f[12, 8] == 1
    assert f[8, 8] == 0 and f[0, 0] == 0  # flat inside and outside


def test_structure_map_threshold_beta_keeps_strong_edges_only():
    x = np.zeros((16, 64))
    x[:, 20:] = 1.0
    x[:, 40:] = 1.2  # a weak second step: Sobel response 0.8
    assert sm.structure_map(x, beta=0.1)[5, 40] == 1
    assert sm.structure_map(x, beta=1.0)[5, 40] == 0
    assert sm.structure_map(x, beta=1.0)[5, 20] == 1
    assert sm.structure_map(x, 0.1).sum() > sm.structure_map(x, 1.0).sum()


def test_structure_map_refuses_non_2d_and_nan():
    with pytest.raises(ValueError, match="2D"):
        sm.structure_map(np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="NaN"):
        sm.structure_map(np.full((4, 4), np.nan))


def test_background_mask_is_one_outside_and_expansion_grows_the_brain():
    x = disc(32, 0.5)
    background = sm.background_mask(x)
    np.testing.assert_array_equal(background, 1.0 - (x > 0))
    grown = sm.background_mask(x, expand=8)
    assert grown.shape == x.shape
    assert set(np.unique(grown)) <= {0.0, 1.0}
    assert grown.sum() < background.sum()  # fewer pixels outside
    assert np.all(grown <= background)  # the grown brain contains the original one
    # p = 8 on 32 pixels scales the brain by 40/32 about the centre: its radius 8 -> ~10 pixels
    brain_width = int((1 - grown[16]).sum())
    assert 18 <= brain_width <= 22
    np.testing.assert_array_equal(sm.brain_mask(x, 8), 1.0 - grown)
    with pytest.raises(ValueError, match="expand"):
        sm.background_mask(x, -1)


def test_remove_lesion_deletes_structure_under_the_source_lesion_only():
    f = np.ones((8, 8), np.float32)
    lesion = np.zeros((8, 8))
    lesion[2:4, 2:4] = 1
    out = sm.remove_lesion(f, lesion)
    assert out[2:4, 2:4].sum() == 0 and out.sum() == 64 - 4


def ring(size: int = 32, gap: bool = False) -> np.ndarray:
    y, x = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    r = np.hypot(y, x)
    f = ((r > 0.55) & (r < 0.68)).astype(np.float32)
    if gap:
        f[:, size // 2 - 3:size // 2 + 3] = 0.0  # cut the outline top and bottom
    return f


def test_contour_fill_mask_fills_a_closed_outline_but_not_an_open_one():
    closed, opened = sm.contour_fill_mask(ring()), sm.contour_fill_mask(ring(gap=True))
    assert closed[16, 16] == 0  # filled: the centre is inside the brain
    assert opened[16, 16] == 1  # hollow: the centre is outside
    assert closed[0, 0] == 1 and opened[0, 0] == 1


def test_structure_filter_keeps_closed_outlines_and_rejects_broken_ones():
    y, x = np.mgrid[-1:1:32j, -1:1:32j]
    generated_background = (np.hypot(y, x) >= 0.72).astype(np.float32)  # what MASK would say
    keep, error = sm.passes_structure_filter(ring(), generated_background)
    assert keep and error <= sm.DEFAULT_MAE_THRESHOLD
    keep, error = sm.passes_structure_filter(ring(gap=True), generated_background)
    assert not keep and error > sm.DEFAULT_MAE_THRESHOLD


def test_dice_and_dice_filter():
    a = np.zeros((8, 8), np.uint8)
    a[2:6, 2:6] = 1
    b = np.zeros_like(a)
    b[2:6, 2:4] = 1
    assert sm.dice(a, a) == 1.0
    assert sm.dice(a, b) == pytest.approx(2 * 8 / (16 + 8))
    assert sm.dice(np.zeros_like(a), np.zeros_like(a)) == 1.0  # nothing asked, nothing found
    assert sm.dice(np.zeros_like(a), a) == 0.0
    two = a.copy()
    two[6:, 6:] = 2
    assert sm.dice(two, a) == pytest.approx(0.5)  # class 1 perfect, class 2 missed
    assert sm.passes_dice_filter(a, a) == (True, 1.0)
    keep, score = sm.passes_dice_filter(b, a)
    assert not keep and score < sm.DEFAULT_DICE_THRESHOLD
    assert sm.passes_dice_filter(b, a, threshold=0.6)[0]
    with pytest.raises(ValueError, match="shapes"):
        sm.dice(a, a[:4])


def test_label_inside_brain():
    background = 1.0 - disc(16, 0.5)
    label = np.zeros((16, 16), np.uint8)
    label[7:9, 7:9] = 1
    assert sm.label_inside_brain(label, background)
    label[0, 0] = 1
    assert not sm.label_inside_brain(label, background)
