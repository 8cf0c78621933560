"""Qu et al. slices, structure maps and masks on the real development data (skipped without it)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import DATA, NO_DATA
from MRSynthesisLib.structure_maps import brain_mask, structure_map
from training.qu.data import label_bank, load_subject_slices

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=NO_DATA)
MODALITIES = ["T1", "T1c", "T2", "FLAIR"]


@pytest.mark.parametrize("folder, labelled", [("ms/patient07", True), ("brats/BraTS-GLI-00001-000", False)])
def test_real_slices_give_structure_maps_inside_the_brain(folder, labelled):
    slices = load_subject_slices(DATA / folder, MODALITIES, 64, [0.35, 0.68], 0.1, labelled)
    assert len(slices) > 20 and slices.images.shape[1:] == (len(slices), 64, 64)
    assert slices.images.min() == 0 and slices.images.max() == pytest.approx(1.0)
    if labelled:
        assert len(label_bank(slices)) > 0
    for image in slices.images[:, len(slices) // 2]:
        f = structure_map(image)
        inside = brain_mask(image, expand=4)
        assert 0.05 < f.mean() < 0.6  # edges, not nothing and not everything
        assert (f * (1 - inside)).sum() <= 0.05 * f.sum()  # edges lie on the brain, not in the background


def test_las_and_lps_collections_come_out_in_the_same_orientation():
    """MS is LAS and BraTS is LPS on disk; after loading, the front of the head is at the same end."""
    ms = load_subject_slices(DATA / "ms/patient07", ["T1"], 64, [0.45, 0.55], 0.1, False).brain
    brats = load_subject_slices(DATA / "brats/BraTS-GLI-00001-000", ["T1"], 64, [0.45, 0.55], 0.1, False).brain

    def front_minus_back(brain):  # a mid-axial brain is egg-shaped: narrower at the front than at the back
        rows = brain.mean(axis=(0, 2))
        occupied = np.nonzero(rows)[0]
        first, last = occupied[0], occupied[-1]
        quarter = (last - first) // 4
        return int(brain[:, first:first + quarter].sum()) - int(brain[:, last - quarter:last + 1].sum())

    assert front_minus_back(ms) < 0 and front_minus_back(brats) < 0  # LPS: row 0 is anterior
