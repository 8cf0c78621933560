"""Canonical modality names, the aliases of real data sets, and guessing from file/node names."""

from __future__ import annotations

import pytest

from MRSynthesisLib import modalities
from MRSynthesisLib.modalities import CANONICAL, canonical, guess, is_known

ALIAS_FAMILIES = {
    "T1": ["T1", "t1", "t1n", "T1W", "t1w", "T1-native", "MPRAGE", "t1_pre"],
    "T1c": ["T1c", "t1c", "t1ce", "T1CE", "T1POST", "t1_post", "T1 POST", "t1gd", "T1-Gd", "t1wce", "T1contrast",
            "T1w_post"],
    "T2": ["T2", "t2", "t2w", "T2W", "T2-w", "t2wi"],
    "PD": ["PD", "pd", "PDw", "pd_w"],
    "FLAIR": ["FLAIR", "flair", "Flair", "fla", "FLA", "t2f", "T2F", "T2-FLAIR", "t2_flair", "T2w FLAIR"],
    "DWI": ["DWI", "dwi", "dw"],
    "DIR": ["DIR", "dir"],
}


def test_canonical_names_are_their_own_canonical():
    assert set(CANONICAL) == set(ALIAS_FAMILIES)
    for name in CANONICAL:
        assert canonical(name) == name
        assert is_known(name)


@pytest.mark.parametrize("expected, alias", [(e, a) for e, aliases in ALIAS_FAMILIES.items() for a in aliases])
def test_every_alias_family(expected, alias):
    assert canonical(alias) == expected
    assert is_known(alias)


@pytest.mark.parametrize("variant", ["t1ce", "T1CE", "T1-CE", "t1_ce", "T1 ce", " t1ce ", "t1--ce"])
def test_case_and_separators_are_ignored(variant):
    assert canonical(variant) == "T1c"


def test_families_do_not_overlap():
    # T2 and FLAIR are distinct contrasts even though FLAIR is "T2-weighted"; likewise T1 and T1c.
    assert canonical("t2") != canonical("t2f")
    assert canonical("t1") != canonical("t1c")


@pytest.mark.parametrize("name", ["T3", "flare", "", "t1cc", "swi", "T2*", "t2-star*", "ADC"])
def test_unknown_name_lists_the_known_ones(name):
    assert not is_known(name)
    with pytest.raises(ValueError) as error:
        canonical(name)
    message = str(error.value)
    assert repr(name) in message
    for known in CANONICAL:
        assert known in message
    assert "t2f" in message and "t1ce" in message  # the aliases are listed too


@pytest.mark.parametrize("name, expected", [
    ("sub-01_t2f.nii.gz", "FLAIR"),
    ("sub-01_T1w.nii.gz", "T1"),
    ("sub-01_ses-2_T2w.nii", "T2"),
    ("T1 POST", "T1c"),
    ("T1_POST.nrrd", "T1c"),
    ("patient07_FLAIR", "FLAIR"),
    ("patient07_FLAIR.nii.gz", "FLAIR"),
    ("/data/ms/patient07/T1POST.nii.gz", "T1c"),
    ("BraTS-GLI-00001-000-t1n.nii.gz", "T1"),
    ("BraTS-GLI-00001-000-t1c.nii.gz", "T1c"),
    ("BraTS-GLI-00001-000-t2w.nii.gz", "T2"),
    ("BraTS-GLI-00001-000-t2f.nii.gz", "FLAIR"),
    ("case3_T2_FLAIR.mha", "FLAIR"),
    ("T2 FLAIR", "FLAIR"),
    ("t1_gd", "T1c"),
    # a contrast agent named beside a T1 (these were guessed as the native T1)
    ("sub-01_ce-gadolinium_T1w.nii.gz", "T1c"),
    ("sub-01_ce-Gd_run-1_T1w.nii.gz", "T1c"),
    ("T1w_gd.nii.gz", "T1c"),
    ("T1_MPRAGE_GD.nii.gz", "T1c"),
    ("MPRAGE post contrast", "T1c"),
    ("T1_pre_gd.nii.gz", "T1"),
    ("sub-01_ce-none_T1w.nii.gz", "T1"),
    ("FLAIR_post_gd.nii.gz", "FLAIR"),
    ("flair", "FLAIR"),
    ("T2", "T2"),
])
def test_guess_from_file_and_node_names(name, expected):
    assert guess(name) == expected


@pytest.mark.parametrize("name", ["lesion_mask.nii.gz", "brain_mask", "segmentation.nrrd", "patient07", "image.mha",
                                  "sub-01_bold.nii.gz", "sub-01_T2*.nii.gz", "sub-01_T2star.nii.gz", "T2* GRE",
                                  "UCSF-PDGM-004_ADC.nii.gz"])  # ADC: derived from DWI, its contrast near inverse
def test_guess_returns_none_when_nothing_matches(name):
    assert guess(name) is None


def test_guess_prefers_the_last_token():
    # BIDS-like names put the contrast last, after entities that may look like one.
    assert guess("sub-t1_run-1_FLAIR.nii.gz") == "FLAIR"


def test_module_exports():
    assert modalities.CANONICAL == ("T1", "T1c", "T2", "PD", "FLAIR", "DWI", "DIR")
