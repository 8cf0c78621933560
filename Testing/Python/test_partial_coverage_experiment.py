"""The partial-coverage experiment: its cuts take the superior or anterior third of the brain, the
product's arm equals the run without the cut input where a slab removed it, and the table renders."""

from __future__ import annotations

import numpy as np

from conftest import LAS, make_subject
from MRSynthesisLib.cards import load_model
from MRSynthesisLib.coverage import Coverage, input_coverage
from MRSynthesisLib.logic import SynthesisLogic
from MRSynthesisLib.preprocessing import foreground_mask
from MRSynthesisLib.volume import Geometry, Volume, read_volume
from training.experiments import partial_coverage as pc


def test_the_cuts_take_the_superior_and_the_anterior_third():
    brain = np.ones((30, 30, 30), bool)
    volume = Volume(np.ones((30, 30, 30), np.float32), Geometry((30, 30, 30), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), LAS))
    slab = pc.cut_mask(volume, brain, "slab")
    assert slab[20:].all() and not slab[:20].any()  # numpy axis 0 (ITK z) runs superior
    front = pc.cut_mask(volume, brain, "field of view")
    assert front[:, 20:].all() and not front[:, :20].any()  # LAS: ITK y runs anterior


def test_the_product_arm_is_the_run_without_the_input_where_a_slab_removed_it(tmp_path, tiny_model):
    subject = make_subject(tmp_path / "subject")
    t1, t2 = read_volume(subject["T1"]), read_volume(subject["T2"])
    brain = foreground_mask([t1.array, t2.array])
    removed = pc.cut_mask(t1, brain, "slab") & brain
    given = {"T1": t1, "T2": t2.with_array(np.where(removed, 0.0, t2.array).astype(np.float32))}
    logic = SynthesisLogic(load_model(tiny_model))
    without = pc.synthesise(logic, {"T1": t1}, "FLAIR")
    left_out = pc.synthesise(logic, given, "FLAIR")
    zero_filled = pc.synthesise(logic, given, "FLAIR", lambda *a, **k: Coverage())
    np.testing.assert_array_equal(left_out[removed], without[removed])
    assert np.abs(zero_filled[removed] - without[removed]).max() > 1e-2
    assert logic.coverage is input_coverage  # the product's rule, injected by default


def test_the_experiment_runs_every_arm_on_both_cuts_and_renders(tmp_path, tiny_model):
    make_subject(tmp_path / "subject")
    results = pc.run(tmp_path / "subject", ["T1", "T2"], "T2", "FLAIR", str(tiny_model), log=lambda *_: None)
    assert [row["cut"] for row in results["rows"]] == list(pc.CUTS)
    arms = {"all data", "without it", "zero-filled", *(f"left out, edge {e}" for e in pc.EDGES)}
    for row in results["rows"]:
        assert set(row["scores"]) == arms and 0.1 < row["share_of_brain"] < 0.5
        assert all(set(v) == {"cut", "band", "kept"} for v in row["scores"].values())
    assert results["clipped"] == {f"{m} at {p} %": [] for p in pc.CLIP_PERCENTILES for m in ("T1", "T2")}
    text = pc.markdown([results], "tiny", "python -m x")
    assert "- subject: T1 at 1 %: none; T2 at 1 %: none;" in text
    share = results["rows"][0]["share_of_brain"]
    assert f"| subject ({100 * share:.0f} % cut) | left out, edge {pc.EDGE_VOXELS} (default) |" in text
