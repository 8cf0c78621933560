"""The ``mrsynthesis`` command line, run as real subprocesses (``python -m MRSynthesisLib``).

Independent runs are started side by side by one module fixture (``runs``); each test then
checks its own run. Runs that depend on an earlier one (batch resume) or on timing (SIGTERM)
run inside their test.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi

from conftest import (
    DATA,
    NO_DATA,
    REPO,
    cli_command,
    cli_env,
    make_subject,
    make_tiny_model,
    phantom,
    run_cli_many,
    write_image,
)
from MRSynthesisLib.volume import read_volume, write_volume


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def json_lines(stdout: str) -> list[dict]:
    lines = [line for line in stdout.splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # every line must be JSON


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """The files every run reads: a subject, bad inputs, model folders, a three-subject cohort."""
    root = tmp_path_factory.mktemp("cli")
    subject = make_subject(root / "subject")
    bad = root / "bad"
    shape = subject.arrays["T1"].shape
    (bad).mkdir()
    (bad / "garbage.nii.gz").write_bytes(b"\x1f\x8b this is not an image at all" * 10)
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((28, 24), np.float32)), str(bad / "slice2d.nii.gz"))
    nib.save(nib.Nifti1Image(np.ones((24, 28, 20, 3), np.float32), np.eye(4)), bad / "dwi4d.nii.gz")
    write_image(np.zeros(shape, np.float32), bad / "empty.nii.gz")
    write_image(np.full(shape, 42.0, np.float32), bad / "constant.nii.gz")
    infinite = subject.arrays["T2"].copy()
    infinite[5, 5, 5] = np.inf  # (NaN is taken as no data, with a note: test_logic)
    write_image(infinite, bad / "inf.nii.gz")
    write_image(subject.arrays["T2"], bad / "T2_shifted.nii.gz", origin=(-10.0, 14.0, -15.0))
    write_image(subject.arrays["labels"], bad / "labels.nii.gz")
    write_image(subject.arrays["FLAIR"], bad / "P3S_FLAIR_from_T1.nii.gz")  # a real FLAIR named like a saliency map
    t2, brain = subject.arrays["T2"], subject.arrays["T2"] > 0
    write_image(np.where(brain, (t2 - t2[brain].mean()) / t2[brain].std(), 0).astype(np.float32),
                bad / "T2_zscored.nii.gz")
    models = root / "models"
    make_tiny_model(models / "tiny")
    (models / "broken").mkdir()
    (models / "broken" / "card.json").write_text('{"schema_version": 1, "name": "broken", "architecture": "x"}')
    (models / "weightless").mkdir()  # a copy of tiny's card without its weights file
    (models / "weightless" / "card.json").write_bytes((models / "tiny" / "card.json").read_bytes())
    existing = root / "existing"
    existing.mkdir()
    (existing / "FLAIR.nii.gz").write_bytes(b"the user's own file, not to be touched")
    cohort = root / "cohort"
    rows = []
    for seed, name in enumerate(("s1", "s2", "s3"), start=1):
        s = make_subject(cohort / name, seed=seed)
        # "patient": training's column for sessions of one person; batch takes the same manifest
        rows.append({"subject": name, "patient": "" if name == "s3" else "p1", "t1n": f"{name}/T1.nii.gz",
                     "t2w": f"{name}/T2.nii.gz",
                     "t2f": "" if name == "s3" else f"{name}/FLAIR.nii.gz",
                     "lesion_mask": f"{name}/lesion_mask.nii.gz"})
        assert s.paths["T1"].is_file()
    with open(cohort / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with open(cohort / "manifest_with_bad.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows[:1] + [{**rows[1], "subject": "broken", "t2w": "nowhere/T2.nii.gz"}])
    (cohort / "repeated.csv").write_text("subject,t1n,t1n\ns1,s1/T1.nii.gz,s1/T2.nii.gz\n")
    return {"root": root, "subject": subject, "bad": bad, "model": models / "tiny", "models": models,
            "existing": existing, "cohort": cohort, "out": root / "out"}


def synth(ws, case, *inputs, extra=(), model=None):
    args = ["synthesize", "--model", model or ws["model"], "--out", ws["out"] / case]
    for item in inputs:
        args += ["--input", item]
    return args + list(extra)


def bad_cases(ws):
    s, b = ws["subject"], ws["bad"]
    t1, t2 = f"T1={s['T1']}", f"T2={s['T2']}"
    relative_t2 = os.path.relpath(s["T2"], REPO)
    return {
        "missing file": (synth(ws, "missing", t1, f"T2={b / 'absent.nii.gz'}"),
                         [f"{b / 'absent.nii.gz'}: no such file"]),
        "unreadable file": (synth(ws, "unreadable", t1, f"FLAIR={b / 'garbage.nii.gz'}"),
                            [f"{b / 'garbage.nii.gz'}: not a readable image"]),
        "2D image": (synth(ws, "2d", f"T1={b / 'slice2d.nii.gz'}"), ["slice2d.nii.gz: is 2D", "3D volume is expected"]),
        "4D image": (synth(ws, "4d", t1, f"T2={b / 'dwi4d.nii.gz'}"), ["dwi4d.nii.gz: is 4D with 3 volumes"]),
        "empty volume": (synth(ws, "empty", t1, f"T2={b / 'empty.nii.gz'}"), ["empty.nii.gz: is empty"]),
        "constant volume": (synth(ws, "constant", f"T1={b / 'constant.nii.gz'}", t2),
                            ["constant.nii.gz: is constant (every voxel is 42)"]),
        "infinite voxel": (synth(ws, "inf", t1, f"T2={b / 'inf.nii.gz'}"),
                           ["inf.nii.gz: contains 1 NaN or infinite voxels"]),
        "grids differ": (synth(ws, "grids", t1, f"T2={b / 'T2_shifted.nii.gz'}"),
                         [str(b / "T2_shifted.nii.gz"), str(s["T1"]), "different grids", "origin", "--resample-to T1"]),
        "unknown modality": (synth(ws, "unknown", t1, f"T2star={s['T2']}"), ["unknown modality 'T2star'"]),
        "modality not accepted": (synth(ws, "refused", t1, f"DWI={s['T2']}"),
                                  ["does not accept DWI", "it accepts T1, T1c, T2, FLAIR"]),
        "output exists": (["synthesize", "--model", ws["model"], "--input", t1, "--target", "FLAIR",
                           "--out", ws["existing"] / "FLAIR.nii.gz"], ["FLAIR.nii.gz: already exists", "--overwrite"]),
        # given relative to the working folder, the input absolute; refused even with --overwrite
        "output is an input": (["synthesize", "--model", ws["model"], "--input", t1, "--input", t2, "--target", "FLAIR",
                                "--out", relative_t2, "--overwrite"], ["is one of the inputs"]),
        # masks and saliency references are the user's files too (a brain mask was replaced by the output)
        "output is the brain mask": (["synthesize", "--model", ws["model"], "--input", t1, "--target", "FLAIR",
                                      "--brain-mask", s["brain_mask"], "--out", s["brain_mask"], "--overwrite"],
                                     [f"{s['brain_mask']}: is one of the inputs"]),
        "output is the lesion mask": (["synthesize", "--model", ws["model"], "--input", t1, "--target", "FLAIR",
                                       "--lesion-mask", s["lesion_mask"], "--out", s["lesion_mask"], "--overwrite"],
                                      [f"{s['lesion_mask']}: is one of the inputs"]),
        "saliency map onto its reference": (synth(ws, "map-ref", t1, extra=[
            "--target", "FLAIR", "--saliency-out", b, "--saliency-reference", f"FLAIR={b / 'P3S_FLAIR_from_T1.nii.gz'}",
            "--overwrite"]), [f"{b / 'P3S_FLAIR_from_T1.nii.gz'}: is one of the inputs"]),
        "malformed model": (synth(ws, "broken", t1, model=ws["models"] / "broken"), ["missing card fields"]),
        "usage error": (["synthesize", "--model", ws["model"], "--out", ws["out"] / "usage"],
                        ["the following arguments are required: --input"]),
        "bad pair": (synth(ws, "pair", "T1", extra=[]), ["'T1' is not MODALITY=PATH"]),
        # a dict of the options would keep the second file without a word
        "modality given twice": (synth(ws, "twice", t1, f"T1={s['T2']}"),
                                 [f"--input T1 is given 2 times ({s['T1']}, {s['T2']})"]),
        "aliases of one modality": (synth(ws, "aliases", t1, f"t1n={s['T2']}"),
                                    [str(s["T2"]), str(s["T1"]), "are both T1"]),
        "one file as two modalities": (synth(ws, "one-file", t1, f"T2={s['T1']}"),
                                       [f"{Path(s['T1']).resolve()}: is given as T1 and T2"]),
        "z-scored input": (synth(ws, "zscored", t1, f"T2={b / 'T2_zscored.nii.gz'}"),
                           ["T2_zscored.nii.gz: ", "% of its positive ones"]),
        # a new folder named like a file is a mistake for a file name
        "out named like a file": (["synthesize", "--model", ws["model"], "--input", t1, "--target", "FLAIR",
                                   "--out", ws["out"] / "flair.png"],
                                  ["flair.png: is neither a folder nor an image name the outputs can take"]),
        "batch out is an image name": (["batch", "--model", ws["model"], "--manifest", ws["cohort"] / "manifest.csv",
                                        "--out", ws["out"] / "cohort.nii.gz"],
                                       ["cohort.nii.gz: names an image file, but --out takes a folder of files"]),
        "demo out named like a file": (["demo", "--out", ws["out"] / "demo.png"],
                                       ["demo.png: looks like a file name, but --out takes a folder of files"]),
        # a file where an output folder must be: refused before the work, not as an internal error after it
        "out under a file": (["synthesize", "--model", ws["model"], "--input", t1, "--target", "FLAIR",
                              "--out", ws["existing"] / "FLAIR.nii.gz" / "out"],
                             [f"{ws['existing'] / 'FLAIR.nii.gz'} is a file, not a folder to write into"]),
        "demo out under a file": (["demo", "--out", ws["existing"] / "FLAIR.nii.gz" / "demo"],
                                  [f"{ws['existing'] / 'FLAIR.nii.gz'} is a file, not a folder to write into"]),
        # a folder named "sal.nii.gz" was made and filled
        "saliency out named like a file": (synth(ws, "sal-file", t1,
                                                 extra=["--saliency-out", ws["out"] / "sal.nii.gz"]),
                                           ["sal.nii.gz: names an image file, but --saliency-out takes a folder"]),
        # evaluate's --figure and --json are outputs too: neither replaces an input or a file without --overwrite
        "evaluate figure onto an input": (["evaluate", "--synthetic", s["T2"], "--reference", s["FLAIR"],
                                           "--figure", s["FLAIR"]], [f"{s['FLAIR']}: --figure writes a PNG"]),
        "evaluate json onto an input": (["evaluate", "--synthetic", s["T2"], "--reference", s["FLAIR"],
                                         "--json", s["T2"], "--overwrite"], [f"{s['T2']}: is one of the inputs"]),
        # a mask or T1 on another grid (here: shifted, same size) used to be compared voxel by voxel regardless
        "evaluate t1 on another grid": (["evaluate", "--synthetic", s["T2"], "--reference", s["FLAIR"],
                                         "--lesion-mask", s["lesion_mask"], "--t1", b / "T2_shifted.nii.gz"],
                                        [f"{b / 'T2_shifted.nii.gz'} and {s['FLAIR']} are on different grids",
                                         "origin"]),
        "saliency reference without maps": (synth(ws, "no-maps", t1, extra=["--saliency-reference",
                                                                          f"FLAIR={s['FLAIR']}"]),
                                            ["--saliency-reference: used by the saliency maps only"]),
        "evaluate json exists": (["evaluate", "--synthetic", s["T2"], "--reference", s["FLAIR"],
                                  "--json", ws["existing"] / "FLAIR.nii.gz"], ["FLAIR.nii.gz: already exists"]),
        # an empty mask was reported without its file ("lesion_mask is empty"), or under the synthetic's name
        "evaluate empty lesion mask": (["evaluate", "--synthetic", s["T2"], "--reference", s["FLAIR"],
                                        "--lesion-mask", b / "empty.nii.gz", "--t1", s["T1"]],
                                       [f"{b / 'empty.nii.gz'}: the lesion mask is empty"]),
        "evaluate empty brain mask": (["evaluate", "--synthetic", s["T2"], "--reference", s["FLAIR"],
                                       "--brain-mask", b / "empty.nii.gz"],
                                      [f"{b / 'empty.nii.gz'}: the brain mask is empty"]),
        # --lesion-mask-on names the input the lesion mask was drawn on: it needs the mask, and an input
        "lesion mask on without a mask": (synth(ws, "on-no-mask", t1, t2, extra=["--lesion-mask-on", "T2"]),
                                          ["--lesion-mask-on T2: no lesion mask was given; add --lesion-mask"]),
        "lesion mask on an unknown modality": (synth(ws, "on-unknown", t1, t2, extra=[
            "--lesion-mask", s["lesion_mask"], "--lesion-mask-on", "T2star"]),
            ["--lesion-mask-on: unknown modality 'T2star'", "the lesion mask was drawn on, one of T1, T2"]),
        "lesion mask on no input": (synth(ws, "on-no-input", t1, t2, extra=[
            "--lesion-mask", s["lesion_mask"], "--lesion-mask-on", "t2f"]),
            ["--lesion-mask-on t2f: FLAIR is not an input; it names the input the lesion mask was drawn on, one of "
             "T1, T2"]),
        "manifest repeats a column": (["batch", "--model", ws["model"], "--manifest", ws["cohort"] / "repeated.csv",
                                       "--out", ws["out"] / "repeated"],
                                      [f"{ws['cohort'] / 'repeated.csv'}: the header repeats 't1n'"]),
    }


JSON_BAD = ("missing file", "output exists")


@pytest.fixture(scope="module")
def runs(ws, cli_home):
    """Every independent run, started side by side."""
    s, out = ws["subject"], ws["out"]
    t1, t2 = f"T1={s['T1']}", f"T2={s['T2']}"
    commands = {f"bad: {k}": v[0] for k, v in bad_cases(ws).items()}
    commands.update({f"bad json: {k}": bad_cases(ws)[k][0] + ["--progress", "json"] for k in JSON_BAD})
    commands.update({
        "synthesize": synth(ws, "ok", t1, t2, extra=["--target", "FLAIR,T1c"]),
        "json": synth(ws, "json", "t1n=" + str(s["T1"]), "t2f=" + str(s["FLAIR"]),
                      extra=["--progress", "json", "--batch-size", "4", "--saliency-out", out / "json-saliency",
                             "--brain-mask", s["brain_mask"], "--format", ".nrrd"]),
        # default targets (every output that is not an input: T1c and FLAIR), with a lesion mask
        "resample": synth(ws, "resample", t1, f"T2={ws['bad'] / 'T2_shifted.nii.gz'}",
                          extra=["--resample-to", "T1", "--lesion-mask", s["lesion_mask"]]),
        "file name out": ["synthesize", "--model", ws["model"], "--input", t2, "--target", "t2f",
                          "--out", out / "single" / "my_flair.mha", "--plane", "coronal", "--tile", "32"],
        "help": ["--help"],
        "synthesize help": ["synthesize", "--help"],
        "models": ["models"],
        "evaluate": ["evaluate", "--synthetic", s["T2"], "--reference", s["FLAIR"], "--json", out / "metrics.json",
                     "--slice-plane", "axial", "--lesion-mask", s["lesion_mask"], "--t1", s["T1"],
                     "--brain-mask", s["brain_mask"], "--figure", out / "evaluate.png"],
        "evaluate zscore": ["evaluate", "--synthetic", s["T2"], "--reference", s["FLAIR"], "--normalisation", "zscore"],
        "batch": ["batch", "--model", ws["model"], "--manifest", ws["cohort"] / "manifest.csv", "--out", out / "batch",
                  "--progress", "json"],
        "batch with a bad subject": ["batch", "--model", ws["model"], "--manifest",
                                     ws["cohort"] / "manifest_with_bad.csv", "--out", out / "batch-bad",
                                     "--progress", "json"],
    })
    if DATA.is_dir():
        case = DATA / "ms" / "patient07"
        commands["real evaluate"] = ["evaluate", "--synthetic", case / "T2.nii.gz",
                                     "--reference", case / "FLAIR.nii.gz",
                                     "--lesion-mask", case / "lesion_mask.nii.gz", "--t1", case / "T1.nii.gz"]
    results = run_cli_many(commands, cli_home, env={"MRSYNTHESIS_MODEL_PATH": str(ws["models"])})
    rank = run_cli_many({"rank 1 of 2": ["batch", "--model", ws["model"], "--manifest", ws["cohort"] / "manifest.csv",
                                         "--out", out / "batch-rank1", "--progress", "json"]},
                        cli_home, env={"RANK": "1", "WORLD_SIZE": "2"})
    return {**results, **rank}


def explain(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


# --- synthesize ------------------------------------------------------------------------------------

def test_synthesize_writes_outputs_on_the_reference_grid(runs, ws):
    result = runs["synthesize"]
    assert result.returncode == 0, explain(result)
    out = ws["out"] / "ok"
    assert files_under(out) == ["FLAIR_synthetic.json", "FLAIR_synthetic.nii.gz", "T1c_synthetic.json",
                                "T1c_synthetic.nii.gz"]
    reference = read_volume(ws["subject"]["T1"])
    for name in ("FLAIR", "T1c"):
        volume = read_volume(out / f"{name}_synthetic.nii.gz")
        assert volume.geometry.differences(reference.geometry, 1e-5) == []
        assert np.isfinite(volume.array).all()
        assert not volume.array[ws["subject"].arrays["brain"] == 0].any()
        # a synthetic image says so in itself and beside itself, whatever it is renamed to
        said = f"MRSynthesis synthetic {name} from T1+T2 (tiny)"
        assert nib.load(out / f"{name}_synthetic.nii.gz").header["descrip"].item().decode() == said
        record = json.loads((out / f"{name}_synthetic.json").read_text())
        assert record["synthetic"] is True and record["modality"] == name and record["description"] == said
        assert record["image"] == f"{name}_synthetic.nii.gz"
        assert record["model"]["name"] == "tiny" and len(record["model"]["weights_sha256"]) == 64
        assert record["inputs"] == {"T1": str(ws["subject"]["T1"]), "T2": str(ws["subject"]["T2"])}
        assert record["lesion_mask"] is None and record["brain_mask"] is None
        assert record["options"]["device"] == "cpu" and record["software"].startswith("MRSynthesis ")
    assert f"FLAIR: {out / 'FLAIR_synthetic.nii.gz'}" in result.stdout
    assert result.stderr == ""


def test_progress_json(runs, ws):
    result = runs["json"]
    assert result.returncode == 0, explain(result)
    events = json_lines(result.stdout)
    progress = [e for e in events if e["event"] == "progress"]
    assert len(progress) >= 3
    fractions = [e["fraction"] for e in progress]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert all(isinstance(e["message"], str) for e in progress)
    done = events[-1]
    assert done["event"] == "done" and done["model"] == "tiny" and done["device"] == "cpu"
    out = ws["out"] / "json"
    assert done["outputs"] == {"T1c": str(out / "T1c_synthetic.nrrd"), "T2": str(out / "T2_synthetic.nrrd")}
    for path in done["outputs"].values():
        assert read_volume(path).geometry.differences(read_volume(ws["subject"]["T1"]).geometry, 1e-5) == []
    saliency = ws["out"] / "json-saliency"
    assert files_under(saliency) == sorted(["contributions.json", "P3S_T1c.png", "P3S_T2.png"]
                                           + [f"P3S_{t}_from_{n}.nrrd" for t in ("T1c", "T2") for n in ("T1", "FLAIR")])
    for target in ("T1c", "T2"):  # Wei et al.'s Fig. 6 layout per target
        assert (saliency / f"P3S_{target}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    contributions = json.loads((saliency / "contributions.json").read_text())
    assert "target-free" in contributions["objective"] and contributions["figures"] == done["saliency_figures"]
    for target in ("T1c", "T2"):
        assert sum(contributions["contributions"][target].values()) == pytest.approx(1.0)
    assert done["contributions"] == contributions["contributions"]


def test_resample_to_fixes_a_grid_mismatch_and_default_targets(runs, ws):
    result = runs["resample"]
    assert result.returncode == 0, explain(result)
    # the model outputs T1, T1c, T2, FLAIR; T1 and T2 were given
    assert files_under(ws["out"] / "resample") == ["FLAIR_synthetic.json", "FLAIR_synthetic.nii.gz",
                                                   "T1c_synthetic.json", "T1c_synthetic.nii.gz"]
    reference = read_volume(ws["subject"]["T1"]).geometry
    for path in (ws["out"] / "resample").glob("*.nii.gz"):
        assert read_volume(path).geometry.differences(reference, 1e-5) == []


def test_out_may_be_an_image_file_name(runs, ws):
    result = runs["file name out"]
    assert result.returncode == 0, explain(result)
    assert files_under(ws["out"] / "single") == ["my_flair.json", "my_flair.mha"]
    assert "tile 32 ignored" in result.stdout + result.stderr  # a 3D option given to a 2D model is said, not dropped


# --- bad inputs: exit 2, one clear line, nothing written ---------------------------------------------

@pytest.mark.parametrize("case", [
    "missing file", "unreadable file", "2D image", "4D image", "empty volume", "constant volume", "infinite voxel",
    "grids differ", "unknown modality", "modality not accepted", "output exists", "output is an input",
    "malformed model", "usage error", "bad pair", "modality given twice", "aliases of one modality",
    "manifest repeats a column", "one file as two modalities", "evaluate figure onto an input",
    "evaluate json onto an input", "evaluate json exists", "out named like a file", "batch out is an image name",
    "demo out named like a file", "z-scored input", "evaluate t1 on another grid", "saliency reference without maps",
    "evaluate empty lesion mask", "evaluate empty brain mask", "output is the brain mask", "output is the lesion mask",
    "saliency map onto its reference", "saliency out named like a file", "out under a file", "demo out under a file",
    "lesion mask on without a mask", "lesion mask on an unknown modality", "lesion mask on no input"])
def test_bad_input(runs, ws, case):
    result = runs[f"bad: {case}"]
    _, words = bad_cases(ws)[case]
    assert result.returncode == 2, explain(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mrsynthesis: error: "), explain(result)
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    assert "Traceback" not in result.stderr


def test_bad_inputs_leave_nothing_behind(runs, ws):
    assert all(runs[f"bad: {case}"].returncode == 2 for case in bad_cases(ws))
    for folder in ("missing", "unreadable", "2d", "4d", "empty", "constant", "nan", "grids", "unknown", "refused",
                   "broken", "usage", "pair", "twice", "aliases", "repeated", "one-file", "zscored",
                   "no-maps", "map-ref", "sal-file", "sal.nii.gz"):
        assert files_under(ws["out"] / folder) == [], folder
    assert files_under(ws["existing"]) == ["FLAIR.nii.gz"]
    assert (ws["existing"] / "FLAIR.nii.gz").read_bytes() == b"the user's own file, not to be touched"
    subject = ws["subject"]
    assert files_under(subject.folder) == sorted(p.name for p in subject.paths.values())
    np.testing.assert_array_equal(read_volume(subject["T2"]).array, subject.arrays["T2"])
    for mask in ("brain", "lesion"):
        np.testing.assert_array_equal(read_volume(subject[f"{mask}_mask"]).array, subject.arrays[mask])
    np.testing.assert_array_equal(read_volume(ws["bad"] / "P3S_FLAIR_from_T1.nii.gz").array, subject.arrays["FLAIR"])


@pytest.mark.parametrize("case", JSON_BAD)
def test_bad_input_with_progress_json(runs, ws, case):
    result = runs[f"bad json: {case}"]
    assert result.returncode == 2, explain(result)
    events = json_lines(result.stdout)
    assert events[-1]["event"] == "error" and events[-1]["kind"] == "input"
    assert events[-1]["message"] in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_overwrite_replaces_an_existing_output(run_cli, ws, tmp_path):
    target = tmp_path / "FLAIR.nii.gz"
    target.write_bytes(b"old")
    args = ["synthesize", "--model", ws["model"], "--input", f"T1={ws['subject']['T1']}", "--target", "FLAIR",
            "--out", target, "--overwrite"]
    result = run_cli(*args)
    assert result.returncode == 0, explain(result)
    assert read_volume(target).array.shape == ws["subject"].arrays["T1"].shape
    assert files_under(tmp_path) == ["FLAIR.json", "FLAIR.nii.gz"]


# --- other commands ---------------------------------------------------------------------------------

def test_help(runs):
    for key in ("help", "synthesize help"):
        assert runs[key].returncode == 0, explain(runs[key])
    assert "synthesize" in runs["help"].stdout and "batch" in runs["help"].stdout
    assert "--resample-to" in runs["synthesize help"].stdout
    assert "--lesion-mask-on MODALITY" in runs["synthesize help"].stdout


def test_help_does_not_import_torch(cli_home):
    """``--help`` and usage errors stay fast: torch is only imported by the commands."""
    for args in (["--help"], ["synthesize"]):
        result = subprocess.run([*cli_command(*args)[:1], "-X", "importtime", *cli_command(*args)[1:]], cwd=REPO,
                                env=cli_env(cli_home), capture_output=True, text=True, timeout=60)
        imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line}
        assert "MRSynthesisLib.cli" in imported
        assert "torch" not in imported, args


def test_models_lists_model_path(runs, ws):
    result = runs["models"]
    assert result.returncode == 0, explain(result)
    lines = result.stdout.splitlines()
    tiny = next(line for line in lines if line.startswith("tiny "))
    assert "[user]" in tiny and "T1+T1c+T2+FLAIR +lesion -> T1+T1c+T2+FLAIR" in tiny and "(2D axial)" in tiny
    assert str(ws["models"] / "tiny") in tiny
    bundled = next(line for line in lines if "[bundled]" in line)
    assert "(2D axial, 1 x 1 x 1 mm voxels)" in bundled  # the card's training voxels
    broken = next(line for line in lines if line.startswith("broken "))
    assert "unusable:" in broken
    weightless = next(line for line in lines if line.startswith("weightless "))
    assert "unusable:" in weightless and "which do not exist" in weightless


def test_models_marks_a_name_that_several_folders_carry(ws, tmp_path, monkeypatch, in_process_cli, capsys):
    """A run folder exporting a model under a name another folder carries: `models` listed both alike, and
    --model NAME silently took the first. Now both are marked, and the name is refused, naming the folders."""
    from MRSynthesisLib import registry

    mine = make_tiny_model(tmp_path / "run" / "tiny")
    monkeypatch.setenv("MRSYNTHESIS_MODEL_PATH", f"{tmp_path / 'run'}{os.pathsep}{ws['models']}")
    monkeypatch.setattr(registry, "USER_MODELS", tmp_path / "no-home-models")
    assert in_process_cli(["models"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("tiny ")]
    assert len(lines) == 2 and all(line.startswith("tiny  [user]  [name clash]  T1+") for line in lines)
    assert str(mine) in lines[0] and str(ws["models"] / "tiny") in lines[1]
    assert "[name clash]" not in next(line for line in out.splitlines() if "[bundled]" in line)
    assert "name clash: 2 model folders are named tiny; --model tiny is refused: pass the folder instead" in out
    assert in_process_cli(["models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [e["name_clash"] for e in listed if e["name"] == "tiny"] == [[str(ws["models"] / "tiny")], [str(mine)]]
    assert all(e["name_clash"] == [] for e in listed if e["name"] != "tiny")
    assert {"name", "folder", "origin", "problem", "card"} <= set(listed[0])  # the fields read before
    out_folder = tmp_path / "out"
    assert in_process_cli(["synthesize", "--model", "tiny", "--input", f"T1={ws['subject']['T1']}",
                           "--out", str(out_folder), "--progress", "none"]) == 2
    error = capsys.readouterr().err
    assert "'tiny' is carried by 2 model folders" in error and f"{mine} [user]" in error
    assert not out_folder.exists()


def table(stdout: str) -> dict[str, float]:
    """The rows of ``metrics.format_table`` output (after the 'metric value' header and its rule)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split() == ["metric", "value"])
    assert set(lines[start + 1]) <= {"-", " "}
    return {name: float(value) for name, value in (line.split() for line in lines[start + 2:] if line.strip())}


def test_evaluate_prints_a_table(runs, ws):
    result = runs["evaluate"]
    assert result.returncode == 0, explain(result)
    rows = table(result.stdout)
    for key in ("mse", "mae", "psnr", "ssim", "mse_brain", "mae_brain", "psnr_brain", "ssim_brain", "snr_brain"):
        assert key in rows and np.isfinite(rows[key]), result.stdout
    assert 0 < rows["ssim_brain"] < 1
    assert {f"lesion_ratio{i}_{w}" for i in (1, 2) for w in ("synthetic", "reference")} <= set(rows)
    assert rows["lesion_ratio1_reference"] > 1  # the phantom's lesion is bright on FLAIR
    assert any(k.startswith("offplane_") for k in rows)
    saved = json.loads((ws["out"] / "metrics.json").read_text())
    assert saved["ssim_brain"] == pytest.approx(rows["ssim_brain"], rel=1e-5)
    assert {"offplane_ssim_coronal", "offplane_ssim_sagittal"} <= set(rows)  # views named by anatomy
    figure = ws["out"] / "evaluate.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 5000
    assert not list(ws["out"].glob(".*partial*"))


def test_evaluate_takes_masks_stored_in_another_voxel_order(runs, ws, tmp_path, in_process_cli, capsys):
    """The masks and T1 written RAS beside the LAS images: the same figures as the LAS files give (they were
    refused as on different grids)."""
    s = ws["subject"]
    ras = {}
    for key in ("lesion_mask", "brain_mask", "T1"):
        ras[key] = tmp_path / f"{key}_ras.nii.gz"
        sitk.WriteImage(sitk.DICOMOrient(sitk.ReadImage(str(s[key])), "RAS"), str(ras[key]))
        assert read_volume(ras[key]).geometry != read_volume(s[key]).geometry
    assert in_process_cli(["evaluate", "--synthetic", str(s["T2"]), "--reference", str(s["FLAIR"]), "--lesion-mask",
                           str(ras["lesion_mask"]), "--t1", str(ras["T1"]), "--brain-mask", str(ras["brain_mask"]),
                           "--json", str(tmp_path / "metrics.json")]) == 0, capsys.readouterr().err
    reordered = json.loads((tmp_path / "metrics.json").read_text())
    original = json.loads((ws["out"] / "metrics.json").read_text())
    assert runs["evaluate"].returncode == 0
    assert {k: v for k, v in original.items() if not k.startswith("offplane_")} == pytest.approx(reordered)


def test_evaluate_leaves_out_snr_where_the_normalisation_zeroes_the_mean(runs):
    """zscore sets the reference's brain mean to 0, so 10 log10(mean^2 / MSE) was printed as about -200 dB."""
    result = runs["evaluate zscore"]
    assert result.returncode == 0, explain(result)
    rows = table(result.stdout)
    assert "snr_brain" not in rows and np.isfinite(rows["ssim_brain"])
    assert "snr_brain left out: it needs the reference's brain mean, which zscore sets to 0" in result.stdout


def test_evaluate_leaves_nan_voxels_out_of_every_figure(ws, tmp_path, in_process_cli, capsys):
    """A reference with a NaN slab (SPM's reslicing writes NaN outside a field of view) was refused whole; now
    it scores as the same comparison with those voxels left out of the brain mask."""
    s = ws["subject"]
    reference, brain = read_volume(s["FLAIR"]), read_volume(s["brain_mask"]).array > 0
    slab = np.zeros(brain.shape, bool)
    slab[brain.shape[0] // 2:brain.shape[0] // 2 + 2] = True
    assert (slab & brain).any()
    write_volume(reference.with_array(np.where(slab, np.nan, reference.array)), tmp_path / "nan.nii.gz")
    write_volume(reference.with_array((brain & ~slab).astype(np.float32)), tmp_path / "brain_cut.nii.gz")
    common = ["evaluate", "--synthetic", str(s["T2"]), "--json"]
    assert in_process_cli([*common, str(tmp_path / "nan.json"), "--reference", str(tmp_path / "nan.nii.gz"),
                           "--brain-mask", str(s["brain_mask"])]) == 0, capsys.readouterr().err
    said = capsys.readouterr().out
    assert f"NaN (no value) in {tmp_path / 'nan.nii.gz'}: {int((slab & brain).sum())} brain voxels left out" in said
    assert in_process_cli([*common, str(tmp_path / "cut.json"), "--reference", str(s["FLAIR"]),
                           "--brain-mask", str(tmp_path / "brain_cut.nii.gz")]) == 0, capsys.readouterr().err
    with_nan, cut = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("nan", "cut"))
    assert {k: v for k, v in with_nan.items() if k.endswith("_brain")} == pytest.approx(
        {k: v for k, v in cut.items() if k.endswith("_brain")})
    # infinite voxels are not "no value": still refused
    write_volume(reference.with_array(np.where(slab, np.inf, reference.array)), tmp_path / "inf.nii.gz")
    assert in_process_cli([*common, str(tmp_path / "inf.json"), "--reference", str(tmp_path / "inf.nii.gz")]) == 2
    assert "infinite" in capsys.readouterr().err


def test_evaluate_leaves_nan_voxels_out_of_the_lesion_ratios_and_whole_volume(ws, tmp_path, in_process_cli, capsys):
    """NaN voxels were left out of the brain figures only: the lesion and NAWM regions and the whole-volume figures
    still compared them as 0 against 0, and without --brain-mask the count of brain voxels left out read 0. A --t1
    with NaN gave an empty white matter and an error naming no file."""
    from MRSynthesisLib import metrics
    from MRSynthesisLib.preprocessing import NormalisationSpec, normalise

    s = ws["subject"]
    reference, brain = read_volume(s["FLAIR"]), read_volume(s["brain_mask"]).array > 0
    lesion = read_volume(s["lesion_mask"]).array > 0
    slab = np.zeros(brain.shape, bool)
    slab[brain.shape[0] // 2:] = True  # over part of the lesion
    assert (slab & lesion).any() and (lesion & ~slab).any()
    nawm = reference.with_array((s.arrays["labels"] == 3).astype(np.float32))
    write_volume(nawm, tmp_path / "nawm.nii.gz")
    write_volume(reference.with_array(np.where(slab, np.nan, reference.array)), tmp_path / "nan.nii.gz")
    for name, mask in (("lesion_cut", lesion & ~slab), ("nawm_cut", (nawm.array > 0) & ~slab),
                       ("brain_cut", brain & ~slab)):
        write_volume(reference.with_array(mask.astype(np.float32)), tmp_path / f"{name}.nii.gz")
    common = ["evaluate", "--synthetic", str(s["T2"]), "--json"]
    assert in_process_cli([*common, str(tmp_path / "nan.json"), "--reference", str(tmp_path / "nan.nii.gz"),
                           "--lesion-mask", str(s["lesion_mask"]), "--nawm-mask", str(tmp_path / "nawm.nii.gz")]
                          ) == 0, capsys.readouterr().err
    assert f"{int((slab & brain).sum())} brain voxels left out" in capsys.readouterr().out
    assert in_process_cli([*common, str(tmp_path / "cut.json"), "--reference", str(s["FLAIR"]),
                           "--lesion-mask", str(tmp_path / "lesion_cut.nii.gz"),
                           "--nawm-mask", str(tmp_path / "nawm_cut.nii.gz"),
                           "--brain-mask", str(tmp_path / "brain_cut.nii.gz")]) == 0, capsys.readouterr().err
    with_nan, cut = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("nan", "cut"))
    ratios = [k for k in cut if k.startswith("lesion_ratio")]
    assert len(ratios) == 4 and {k: with_nan[k] for k in ratios} == pytest.approx({k: cut[k] for k in ratios})
    # the whole-volume figures over the valued voxels only
    spec = NormalisationSpec.from_dict({"scheme": "mean_in_brain"})
    synth_n, ref_n = (normalise(np.where(slab, 0, read_volume(p).array), spec, brain & ~slab)[0]
                      for p in (s["T2"], s["FLAIR"]))
    assert with_nan["mse"] == pytest.approx(metrics.mse(synth_n, ref_n, ~slab))
    assert with_nan["mse"] != pytest.approx(metrics.mse(synth_n, ref_n))
    # --t1 with NaN: taken as no data, the white matter derived from its valued voxels
    t1 = read_volume(s["T1"])
    write_volume(t1.with_array(np.where(slab, np.nan, t1.array)), tmp_path / "t1_nan.nii.gz")
    capsys.readouterr()
    assert in_process_cli(["evaluate", "--synthetic", str(s["T2"]), "--reference", str(s["FLAIR"]),
                           "--lesion-mask", str(s["lesion_mask"]), "--t1", str(tmp_path / "t1_nan.nii.gz")]
                          ) == 0, capsys.readouterr().err
    assert np.isfinite(table(capsys.readouterr().out)["lesion_ratio1_reference"])
    # a white matter with nothing outside the lesions: the error names where it came from
    assert in_process_cli(["evaluate", "--synthetic", str(s["T2"]), "--reference", str(s["FLAIR"]),
                           "--lesion-mask", str(s["lesion_mask"]), "--nawm-mask", str(s["lesion_mask"])]) == 2
    assert f"{s['lesion_mask']}: holds no voxel outside the lesions" in capsys.readouterr().err
    # white matter nowhere near the lesions: the metrics' error comes with the files it concerns
    far = (nawm.array > 0) & ~ndi.binary_dilation(lesion, iterations=8)
    write_volume(reference.with_array(far.astype(np.float32)), tmp_path / "nawm_far.nii.gz")
    assert in_process_cli(["evaluate", "--synthetic", str(s["T2"]), "--reference", str(s["FLAIR"]),
                           "--lesion-mask", str(s["lesion_mask"]), "--nawm-mask", str(tmp_path / "nawm_far.nii.gz")]
                          ) == 2
    assert (f"{s['T2']}, {s['FLAIR']}, {s['lesion_mask']}, {tmp_path / 'nawm_far.nii.gz'}: no NAWM within 5 voxels "
            "of the lesions") in capsys.readouterr().err


@pytest.mark.skipif(not DATA.is_dir(), reason=NO_DATA)
def test_evaluate_on_real_data(runs):
    result = runs["real evaluate"]
    assert result.returncode == 0, explain(result)
    rows = table(result.stdout)
    for key in ("ssim_brain", "psnr_brain", "lesion_ratio1_synthetic", "lesion_ratio2_synthetic",
                "lesion_ratio1_reference", "lesion_ratio2_reference"):
        assert key in rows and np.isfinite(rows[key]), result.stdout
    # MS lesions are bright on FLAIR (the reference) and on T2 (standing in for a synthetic FLAIR)
    assert rows["lesion_ratio1_reference"] > 1 and rows["lesion_ratio1_synthetic"] > 1


# --- batch ------------------------------------------------------------------------------------------

def batch_events(result):
    events = json_lines(result.stdout)
    return ({e["subject"] for e in events if e["event"] == "subject_done"},
            {e["subject"] for e in events if e["event"] == "skipped"}, events[-1])


def test_batch_writes_all_then_resumes(runs, ws, run_cli):
    out = ws["out"] / "batch"
    first = runs["batch"]
    assert first.returncode == 0, explain(first)
    done, skipped, final = batch_events(first)
    assert done == {"s1", "s2", "s3"} and skipped == set()
    assert final == {"event": "done", "rank": 0, "world_size": 1, "subjects": 3, "failed": {}, "skipped": []}
    expected = ["mrsynthesis-batch.json", "s1", "s1/T1c_synthetic.json", "s1/T1c_synthetic.nii.gz", "s2",
                "s2/T1c_synthetic.json", "s2/T1c_synthetic.nii.gz", "s3", "s3/FLAIR_synthetic.json",
                "s3/FLAIR_synthetic.nii.gz", "s3/T1c_synthetic.json", "s3/T1c_synthetic.nii.gz"]  # s3: no FLAIR input
    assert files_under(out) == expected
    record = json.loads((out / "mrsynthesis-batch.json").read_text())
    assert record["made"] == ["s1", "s2", "s3"] and record["skipped"] == [] and record["failed"] == {}
    assert record["complete"] and record["manifest"] == str(ws["cohort"] / "manifest.csv")
    reference = read_volume(ws["cohort"] / "s2" / "T1.nii.gz").geometry
    assert read_volume(out / "s2" / "T1c_synthetic.nii.gz").geometry.differences(reference, 1e-5) == []
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}

    args = ["batch", "--model", ws["model"], "--manifest", ws["cohort"] / "manifest.csv", "--out", out,
            "--progress", "json"]
    second = run_cli(*args)
    assert second.returncode == 0, explain(second)
    done, skipped, final = batch_events(second)
    assert done == set() and skipped == {"s1", "s2", "s3"} and final["skipped"] == ["s1", "s2", "s3"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")} == stamps

    (out / "s2" / "T1c_synthetic.nii.gz").unlink()  # its sidecar stays, and is ours to replace
    third = run_cli(*args)
    assert third.returncode == 0, explain(third)
    done, skipped, _ = batch_events(third)
    assert done == {"s2"} and skipped == {"s1", "s3"}
    assert files_under(out) == expected
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if "s2" not in str(p))


def test_batch_shards_by_torchrun_rank(runs, ws):
    result = runs["rank 1 of 2"]
    assert result.returncode == 0, explain(result)
    done, skipped, final = batch_events(result)
    assert done == {"s2"} and final["rank"] == 1 and final["world_size"] == 2 and final["subjects"] == 1
    assert files_under(ws["out"] / "batch-rank1") == ["mrsynthesis-batch.rank1.json", "s2", "s2/T1c_synthetic.json",
                                                      "s2/T1c_synthetic.nii.gz"]


def test_batch_goes_on_after_a_bad_subject(runs, ws):
    result = runs["batch with a bad subject"]
    assert result.returncode == 2, explain(result)
    done, _, final = batch_events(result)
    assert done == {"s1"} and set(final["failed"]) == {"broken"} and "no such file" in final["failed"]["broken"]
    assert files_under(ws["out"] / "batch-bad") == ["mrsynthesis-batch.json", "s1", "s1/T1c_synthetic.json",
                                                    "s1/T1c_synthetic.nii.gz"]


def test_batch_says_what_it_made_skipped_and_failed(ws, tmp_path, in_process_cli, capsys):
    """The final line said "2 of 2 subjects done" when a rerun had skipped every subject, and a failed subject was a
    "note". Now the line counts made, skipped and failed subjects, and a failure reads as one (an event in JSON)."""
    args = ["batch", "--model", str(ws["model"]), "--manifest", str(ws["cohort"] / "manifest_with_bad.csv"),
            "--out", str(tmp_path / "out"), "--precision", "fp32"]
    assert in_process_cli([*args, "--progress", "none"]) == 2
    said = capsys.readouterr()
    missing = ws["cohort"] / "nowhere" / "T2.nii.gz"
    record = tmp_path / "out" / "mrsynthesis-batch.json"
    assert said.out.splitlines()[-1] == f"rank 0/1: 2 subjects: 1 made, 0 skipped, 1 failed: broken; record: {record}"
    assert json.loads(record.read_text())["failed"] == {"broken": f"{missing}: no such file"}
    assert f"failed: broken: {missing}: no such file" in said.err and "note: broken" not in said.err
    assert in_process_cli([*args, "--progress", "none"]) == 2  # the rerun: s1 exists, broken still fails
    assert capsys.readouterr().out.splitlines()[-1] == (
        "rank 0/1: 2 subjects: 0 made, 1 skipped (outputs exist; --overwrite redoes them), 1 failed: broken; "
        f"record: {record}")
    assert json.loads(record.read_text())["skipped"] == ["s1"]  # the record is the last run's
    assert in_process_cli([*args, "--progress", "json"]) == 2
    events = json_lines(capsys.readouterr().out)
    assert [(e["subject"], e["message"]) for e in events if e["event"] == "subject_failed"] == [
        ("broken", f"{missing}: no such file")]
    assert not any(e["event"] == "note" for e in events)
    assert events[-1] == {"event": "done", "rank": 0, "world_size": 1, "subjects": 2,
                          "failed": {"broken": f"{missing}: no such file"}, "skipped": ["s1"]}


def test_a_users_file_under_the_batch_records_name_is_refused_before_any_work(ws, tmp_path, in_process_cli, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mrsynthesis-batch.json").write_text('{"mine": true}')
    assert in_process_cli(["batch", "--model", str(ws["model"]), "--manifest", str(ws["cohort"] / "manifest.csv"),
                           "--out", str(out), "--progress", "none"]) == 2
    assert "mrsynthesis-batch.json: already exists and is not the record of an MRSynthesis batch" in (
        capsys.readouterr().err)
    assert files_under(out) == ["mrsynthesis-batch.json"] and (out / "mrsynthesis-batch.json").read_text() == (
        '{"mine": true}')


def test_register_onto_a_modality_not_given_is_a_bad_input(ws, tmp_path, in_process_cli, capsys):
    """--register read the --resample-to input's grid before anyone checked it was given: a KeyError (exit 1), and in
    a batch the first subject without that modality stopped the cohort. Now: exit 2, as without --register; the
    batch says so of that subject only and goes on."""
    s = ws["subject"]
    assert in_process_cli(["synthesize", "--model", str(ws["model"]), "--input", f"T1={s['T1']}",
                           "--input", f"T2={s['T2']}", "--target", "FLAIR", "--register", "--resample-to", "T1c",
                           "--out", str(tmp_path / "one"), "--progress", "none"]) == 2
    assert "reference modality 'T1c' is not among the inputs (T1, T2)" in capsys.readouterr().err
    assert not (tmp_path / "one").exists()
    assert in_process_cli(["batch", "--model", str(ws["model"]), "--manifest", str(ws["cohort"] / "manifest.csv"),
                           "--register", "--resample-to", "FLAIR", "--out", str(tmp_path / "cohort"),
                           "--precision", "fp32", "--progress", "json"]) == 2
    done, _, final = batch_events(subprocess.CompletedProcess([], 2, capsys.readouterr().out, ""))
    assert done == {"s1", "s2"} and list(final["failed"]) == ["s3"]
    assert "reference modality 'FLAIR' is not among the inputs" in final["failed"]["s3"]


def test_batch_goes_on_after_an_unexpected_error_and_says_it(ws, tmp_path, monkeypatch, in_process_cli, capsys):
    """An error other than an InputError (a bug, SimpleITK failing in registration) on one subject ended the whole
    batch with a traceback, the later subjects never run. Now that subject is failed with the error and its
    traceback said, the others are done, and the exit status is 1: something failed that was not the input."""
    from MRSynthesisLib import commands

    real = commands.SynthesisLogic.run

    def run(self, request):
        if "s2" in next(iter(request.inputs.values())).source:
            raise RuntimeError("ITK ERROR: registration diverged")
        return real(self, request)

    monkeypatch.setattr(commands.SynthesisLogic, "run", run)
    assert in_process_cli(["batch", "--model", str(ws["model"]), "--manifest", str(ws["cohort"] / "manifest.csv"),
                           "--out", str(tmp_path / "out"), "--precision", "fp32", "--progress", "json"]) == 1
    events = json_lines(capsys.readouterr().out)
    done, _, final = batch_events(subprocess.CompletedProcess([], 1, "\n".join(map(json.dumps, events)), ""))
    assert done == {"s1", "s3"} and list(final["failed"]) == ["s2"]
    assert "RuntimeError: ITK ERROR: registration diverged" in final["failed"]["s2"]
    failed = [e for e in events if e["event"] == "subject_failed"]
    assert [e["subject"] for e in failed] == ["s2"] and "Traceback (most recent call last)" in failed[0]["message"]
    assert not any(e["event"] == "note" and e["message"].startswith("s2:") for e in events)
    assert not (tmp_path / "out" / "s2").exists() or files_under(tmp_path / "out" / "s2") == []


# --- cancellation -----------------------------------------------------------------------------------

def test_sigterm_cancels_promptly_and_writes_nothing(tmp_path, cli_home):
    """The Slicer panel's Cancel: SIGTERM after the first progress line; exit 130 within 2 s, no file."""
    model = make_tiny_model(tmp_path / "wide", params={"filters": [32, 64, 64], "latent_channels": 8})
    t1 = write_image(phantom((64, 224, 192))["T1"], tmp_path / "T1.nii")  # about 5 s of inference here
    out = tmp_path / "out"
    process = subprocess.Popen(
        cli_command("synthesize", "--model", model, "--input", f"T1={t1}", "--target", "T2,FLAIR", "--out", out,
                    "--progress", "json", "--batch-size", "1", "--precision", "fp32"),
        cwd=REPO, env=cli_env(cli_home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = json.loads(process.stdout.readline())
        assert first["event"] == "progress", first
        process.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        stdout, stderr = process.communicate(timeout=30)
        elapsed = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, f"exit {process.returncode}\n{stdout}\n{stderr}"
    assert elapsed < 2.0, f"took {elapsed:.1f} s to stop"
    events = json_lines(stdout)
    assert events[-1]["event"] == "cancelled" and not any(e["event"] == "done" for e in events)
    assert "cancelled" in stderr
    assert files_under(out) == []  # no output, no partial (hidden temporary) file either
    assert [f for f in files_under(tmp_path) if f != "out"] == ["T1.nii", "wide", "wide/card.json",
                                                                "wide/model.safetensors"]


@pytest.fixture
def in_process_cli():
    """``cli.main`` in this process (it installs a SIGTERM handler: put pytest's back afterwards)."""
    from MRSynthesisLib import cli

    handler = signal.getsignal(signal.SIGTERM)
    yield cli.main
    signal.signal(signal.SIGTERM, handler)


def cancel_on_write(monkeypatch, when: int) -> list[Path]:
    """Make the ``when``-th output write be interrupted as the SIGTERM handler would interrupt it."""
    from MRSynthesisLib import commands
    from MRSynthesisLib.errors import Cancelled

    real, calls = commands.write_volume, []

    def write(volume, path, **options):
        calls.append(Path(path))
        if len(calls) == when:
            raise Cancelled("signal 15")
        return real(volume, path, **options)

    monkeypatch.setattr(commands, "write_volume", write)
    return calls


@pytest.mark.parametrize("when", [2, 3, 4])  # 2 outputs, then 2 saliency maps
def test_cancel_while_writing_leaves_no_output(ws, tmp_path, monkeypatch, in_process_cli, when):
    """Outputs are written one by one; a cancel between two of them must not leave the first behind."""
    s = ws["subject"]
    calls = cancel_on_write(monkeypatch, when)
    code = in_process_cli(["synthesize", "--model", str(ws["model"]), "--input", f"T1={s['T1']}",
                           "--target", "T2,FLAIR", "--out", str(tmp_path / "out"),
                           "--saliency-out", str(tmp_path / "saliency"),
                           "--precision", "fp32", "--progress", "none"])
    assert code == 130 and len(calls) == when
    assert files_under(tmp_path / "out") == [] and files_under(tmp_path / "saliency") == []


def test_a_json_beside_the_output_is_replaced_only_when_it_is_ours(ws, tmp_path, in_process_cli, capsys):
    """The sidecar takes the image's name with .json, as BIDS does: a scan's own sidecar there is the user's
    and is never replaced without --overwrite; one of ours left beside no image (the image deleted to be
    made again) describes nothing and is."""
    args = ["synthesize", "--model", str(ws["model"]), "--input", f"T1={ws['subject']['T1']}", "--target", "FLAIR",
            "--out", str(tmp_path / "sub-01_FLAIR.nii.gz"), "--precision", "fp32", "--progress", "none"]
    theirs = tmp_path / "sub-01_FLAIR.json"
    theirs.write_text('{"RepetitionTime": 9.0}')
    assert in_process_cli(args) == 2
    assert f"{theirs}: already exists; choose another name or pass --overwrite" in capsys.readouterr().err
    assert theirs.read_text() == '{"RepetitionTime": 9.0}' and files_under(tmp_path) == ["sub-01_FLAIR.json"]
    theirs.unlink()
    assert in_process_cli(args) == 0
    first = json.loads(theirs.read_text())
    assert first["synthetic"] is True and first["image"] == "sub-01_FLAIR.nii.gz"
    (tmp_path / "sub-01_FLAIR.nii.gz").unlink()
    first["created"] = "then"
    theirs.write_text(json.dumps(first))
    assert in_process_cli(args) == 0
    assert json.loads(theirs.read_text())["created"] != "then"
    assert files_under(tmp_path) == ["sub-01_FLAIR.json", "sub-01_FLAIR.nii.gz"]


def test_the_demo_writes_synthetic_images_that_say_so(ws, tmp_path, in_process_cli, capsys):
    """The demo's outputs carry the header line and the sidecar as the synthesize command's do."""
    assert in_process_cli(["demo", "--model", str(ws["model"]), "--out", str(tmp_path / "demo"), "--device", "cpu",
                           "--progress", "none"]) == 0, capsys.readouterr().err
    for name, lesion in (("FLAIR_synthetic", False), ("FLAIR_synthetic_lesion", True)):
        said = f"MRSynthesis synthetic FLAIR from T1{'+lesion' if lesion else ''} (tiny)"
        assert nib.load(tmp_path / "demo" / f"{name}.nii.gz").header["descrip"].item().decode() == said
        record = json.loads((tmp_path / "demo" / f"{name}.json").read_text())
        assert record["description"] == said and record["synthetic"] is True
        assert (record["lesion_mask"] is not None) == lesion
    assert not (tmp_path / "demo" / "demo_lesion_mask.json").exists()  # the painted mask is no synthesis


def test_the_demo_reruns_over_its_own_outputs_only(ws, tmp_path, in_process_cli, capsys):
    """The demo run twice (the README's first command) failed the second time: "T1c_synthetic.nii.gz: already
    exists". Now it replaces what it wrote itself and nobody changed since; any other file under an output's name
    is refused before any work, as before, and left byte for byte."""
    out = tmp_path / "demo"
    args = ["demo", "--model", str(ws["model"]), "--out", str(out), "--device", "cpu", "--progress", "none"]
    assert in_process_cli(args) == 0, capsys.readouterr().err
    first = {p.name: p.stat().st_ino for p in out.iterdir()}
    assert {"FLAIR_synthetic.nii.gz", "FLAIR_synthetic.json", "demo_lesion_mask.nii.gz", "report.png",
            "summary.json"} <= set(first)
    capsys.readouterr()
    assert in_process_cli(args) == 0, capsys.readouterr().err  # the rerun
    again = {p.name: p.stat().st_ino for p in out.iterdir()}
    assert set(again) == set(first)
    assert all(again[name] != first[name] for name in first), "every output was written anew"
    # one of its outputs changed since (the user saved their own figure under its name): refused, left as it is
    (out / "report.png").write_bytes(b"the user's own figure")
    capsys.readouterr()
    assert in_process_cli(args) == 2
    assert f"{out / 'report.png'}: already exists; choose another name or pass --overwrite" in capsys.readouterr().err
    assert (out / "report.png").read_bytes() == b"the user's own figure"
    assert {p.name: p.stat().st_ino for p in out.iterdir()} == again  # nothing else written either
    # a folder of the user's that the demo never wrote into: their file under an output's name is refused
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "FLAIR_synthetic.nii.gz").write_bytes(b"the user's own scan")
    assert in_process_cli([*args[:4], str(theirs), *args[5:]]) == 2
    assert f"{theirs / 'FLAIR_synthetic.nii.gz'}: already exists" in capsys.readouterr().err
    assert [p.name for p in theirs.iterdir()] == ["FLAIR_synthetic.nii.gz"]
    assert (theirs / "FLAIR_synthetic.nii.gz").read_bytes() == b"the user's own scan"


def test_batch_resumes_a_subject_cancelled_while_writing(ws, tmp_path, monkeypatch, in_process_cli):
    args = ["batch", "--model", str(ws["model"]), "--manifest", str(ws["cohort"] / "manifest.csv"),
            "--out", str(tmp_path / "out"), "--precision", "fp32", "--progress", "none"]
    cancel_on_write(monkeypatch, 4)  # s1 and s2 write one output each, s3 two: cancel between s3's two
    assert in_process_cli(args) == 130
    assert files_under(tmp_path / "out") == ["mrsynthesis-batch.json", "s1", "s1/T1c_synthetic.json",
                                             "s1/T1c_synthetic.nii.gz", "s2", "s2/T1c_synthetic.json",
                                             "s2/T1c_synthetic.nii.gz", "s3"]
    cut = json.loads((tmp_path / "out" / "mrsynthesis-batch.json").read_text())  # what was done until the stop
    assert cut["made"] == ["s1", "s2"] and not cut["complete"]
    monkeypatch.undo()
    assert in_process_cli(args) == 0  # s3 is redone, not refused because one of its outputs exists
    assert "s3/FLAIR_synthetic.nii.gz" in files_under(tmp_path / "out")


def test_batch_redoes_a_subject_killed_while_writing(ws, tmp_path, monkeypatch, in_process_cli):
    """kill -9 runs no clean-up: some outputs are renamed into place and the record of what the run was
    creating stays. The next run redoes that subject, replacing only those; without the record the same
    files are the user's and are refused."""
    from MRSynthesisLib import commands

    args = ["batch", "--model", str(ws["model"]), "--manifest", str(ws["cohort"] / "manifest.csv"),
            "--out", str(tmp_path / "out"), "--precision", "fp32", "--progress", "none"]
    real, seen = commands.write_volume, []

    def write(volume, path, **options):
        seen.append((Path(path).name, (Path(path).parent / commands.WRITING).is_file()))
        return real(volume, path, **options)

    monkeypatch.setattr(commands, "write_volume", write)
    assert in_process_cli(args) == 0
    assert seen and all(recorded for _, recorded in seen)  # the record exists while outputs are written
    s3 = tmp_path / "out" / "s3"
    both = ["FLAIR_synthetic.json", "FLAIR_synthetic.nii.gz", "T1c_synthetic.json", "T1c_synthetic.nii.gz"]
    assert sorted(p.name for p in s3.iterdir()) == both  # the record is gone
    # the state kill -9 leaves between s3's two image renames (a sidecar left beside no image is ours to replace)
    (s3 / "FLAIR_synthetic.nii.gz").unlink()
    (s3 / commands.WRITING).write_text('{"created": ["FLAIR_synthetic.nii.gz", "T1c_synthetic.nii.gz"]}')
    kept = (s3 / "T1c_synthetic.nii.gz").stat().st_mtime_ns
    seen.clear()
    assert in_process_cli(args) == 0
    assert [name for name, _ in seen] == ["T1c_synthetic.nii.gz", "FLAIR_synthetic.nii.gz"]  # s3 only, both
    assert sorted(p.name for p in s3.iterdir()) == both
    assert (s3 / "T1c_synthetic.nii.gz").stat().st_mtime_ns != kept
    # without the record the existing output may be the user's: kept as it is, only the missing one is made
    (s3 / "FLAIR_synthetic.nii.gz").unlink()
    kept = (s3 / "T1c_synthetic.nii.gz").read_bytes()
    seen.clear()
    assert in_process_cli(args) == 0
    assert [name for name, _ in seen] == ["FLAIR_synthetic.nii.gz"]
    assert sorted(p.name for p in s3.iterdir()) == both and (s3 / "T1c_synthetic.nii.gz").read_bytes() == kept



@pytest.mark.parametrize("name", ["sub-01.ses-1", "run.2024-01-05", "sub-01_ses-1.run-2", "v1.0"])
def test_check_out_takes_a_new_dotted_name_without_an_extension_as_a_folder(tmp_path, name):
    """BIDS-style and dated folder names have dots: ``Path.suffix`` of ``sub-01.ses-1`` is ``.ses-1``, and such a new
    --out was refused as a file name."""
    from MRSynthesisLib.commands import check_out, output_paths

    for folder_only in (False, True):
        check_out(tmp_path / name, folder_only=folder_only)
    assert output_paths(tmp_path / name, ["FLAIR"], ".nii.gz") == {"FLAIR": tmp_path / name / "FLAIR_synthetic.nii.gz"}


@pytest.mark.parametrize("name", ["flair.png", "t2.nhdr", "notes.txt", "summary.json", "scan.dcm", "x.jpeg",
                                  "maps.h5", "cohort.tar.gz", "sub-01.ses-1.png"])
def test_check_out_refuses_a_new_name_with_a_file_extension(tmp_path, name):
    from MRSynthesisLib.commands import check_out
    from MRSynthesisLib.errors import InputError

    with pytest.raises(InputError, match="is neither a folder nor an image name"):
        check_out(tmp_path / name)
    with pytest.raises(InputError, match="looks like a file name, but --out takes a folder"):
        check_out(tmp_path / name, folder_only=True)
    (tmp_path / name).mkdir()  # an existing folder is taken as it is
    check_out(tmp_path / name)
    check_out(tmp_path / name, folder_only=True)


@pytest.mark.parametrize("name", ["t2.nii.gz", "T2.NII", "t2.nrrd", "t2.mha"])
def test_check_out_takes_an_image_name_as_a_file_only_where_one_file_is_written(tmp_path, name):
    from MRSynthesisLib.commands import check_out
    from MRSynthesisLib.errors import InputError

    check_out(tmp_path / name)
    with pytest.raises(InputError, match="names an image file, but --out takes a folder of files"):
        check_out(tmp_path / name, folder_only=True)


def test_synthesize_and_batch_write_into_a_new_dotted_folder(ws, tmp_path, in_process_cli, capsys):
    out = tmp_path / "derivatives.2024-01-05"
    assert in_process_cli(["synthesize", "--model", str(ws["model"]), "--input", f"T1={ws['subject']['T1']}",
                           "--target", "FLAIR", "--out", str(out / "sub-01.ses-1"), "--precision", "fp32",
                           "--progress", "none"]) == 0, capsys.readouterr().err
    assert files_under(out) == ["sub-01.ses-1", "sub-01.ses-1/FLAIR_synthetic.json",
                                "sub-01.ses-1/FLAIR_synthetic.nii.gz"]
    assert in_process_cli(["batch", "--model", str(ws["model"]), "--manifest", str(ws["cohort"] / "manifest.csv"),
                           "--target", "FLAIR", "--out", str(out / "cohort.run-1"), "--precision", "fp32",
                           "--progress", "none"]) == 0, capsys.readouterr().err
    assert [f for f in files_under(out / "cohort.run-1") if f.endswith(".nii.gz")] == [
        f"{n}/FLAIR_synthetic.nii.gz" for n in ("s1", "s2", "s3")]


def test_contributions_name_the_region_file_absolute(ws, tmp_path, monkeypatch, in_process_cli, capsys):
    """contributions.json named the region as typed (``masks/../masks/lesion.nii.gz``, relative to a working folder
    long gone); now the file itself, absolute and resolved."""
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / "lesion.nii.gz").write_bytes(Path(ws["subject"]["lesion_mask"]).read_bytes())
    monkeypatch.chdir(tmp_path)
    assert in_process_cli(["synthesize", "--model", str(ws["model"]), "--input", f"T1={ws['subject']['T1']}",
                           "--target", "FLAIR", "--out", "out", "--saliency-out", "maps",
                           "--saliency-region", "masks/../masks/lesion.nii.gz", "--precision", "fp32",
                           "--progress", "none"]) == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "maps" / "contributions.json").read_text())
    assert summary["region"] == str((tmp_path / "masks" / "lesion.nii.gz").resolve())
    assert Path(summary["region"]).is_file() and summary["contributions_in_region"]["FLAIR"]


def test_batch_adds_a_target_to_a_finished_cohort(ws, tmp_path, in_process_cli, capsys):
    """Rerun with a --target added, every finished subject failed: "T1c_synthetic.nii.gz: already exists". Now the
    missing outputs are made and the existing ones kept byte for byte, and said so. An image without its sidecar is
    kept as it is (it may be the user's); a sidecar that is not ours, beside no image, is still refused."""
    out = tmp_path / "out"
    args = ["batch", "--model", str(ws["model"]), "--manifest", str(ws["cohort"] / "manifest.csv"), "--out", str(out),
            "--precision", "fp32", "--progress", "json", "--target", "T1c"]
    assert in_process_cli(args) == 0
    (out / "s2" / "FLAIR_synthetic.json").write_text('{"the user\'s": true}')
    (out / "s3" / "T1c_synthetic.json").unlink()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "mrsynthesis-batch.json"}
    capsys.readouterr()
    assert in_process_cli([*args, "--target", "FLAIR"]) == 2
    events = json_lines(capsys.readouterr().out)
    done = {e["subject"]: e for e in events if e["event"] == "subject_done"}
    assert set(done) == {"s1", "s3"} and list(events[-1]["failed"]) == ["s2"]
    assert f"{out / 's2' / 'FLAIR_synthetic.json'}: already exists" in events[-1]["failed"]["s2"]
    for name in ("s1", "s3"):
        assert done[name]["outputs"] == {"FLAIR": str(out / name / "FLAIR_synthetic.nii.gz")}
        assert done[name]["kept"] == {"T1c": str(out / name / "T1c_synthetic.nii.gz")}
    assert {e["message"] for e in events if e["event"] == "note" and "kept" in e["message"]} == {
        f"{n}: kept the existing T1c output (T1c_synthetic.nii.gz; --overwrite redoes it), made FLAIR"
        for n in ("s1", "s3")}
    assert {p: p.read_bytes() for p in before} == before
    assert json.loads((out / "mrsynthesis-batch.json").read_text())["kept"] == {"s1": ["T1c"], "s3": ["T1c"]}
    assert files_under(out) == ["mrsynthesis-batch.json", "s1", "s1/FLAIR_synthetic.json", "s1/FLAIR_synthetic.nii.gz",
                                "s1/T1c_synthetic.json", "s1/T1c_synthetic.nii.gz", "s2", "s2/FLAIR_synthetic.json",
                                "s2/T1c_synthetic.json", "s2/T1c_synthetic.nii.gz", "s3", "s3/FLAIR_synthetic.json",
                                "s3/FLAIR_synthetic.nii.gz", "s3/T1c_synthetic.nii.gz"]
    (out / "s2" / "FLAIR_synthetic.json").unlink()
    assert in_process_cli([*args, "--target", "FLAIR"]) == 0  # s2 now; nothing is left to do for the others
    done, skipped, _ = batch_events(subprocess.CompletedProcess([], 0, capsys.readouterr().out, ""))
    assert done == {"s2"} and skipped == {"s1", "s3"}


def test_batch_resumes_a_killed_run_that_added_a_target(ws, tmp_path, in_process_cli, capsys):
    """The run adding FLAIR is killed (kill -9) after its image was renamed into place: the next run redoes FLAIR
    (its record says so) and keeps T1c, made by an earlier run, as it is; it was refused as existing."""
    from MRSynthesisLib import commands

    out = tmp_path / "out"
    args = ["batch", "--model", str(ws["model"]), "--manifest", str(ws["cohort"] / "manifest.csv"), "--out", str(out),
            "--precision", "fp32", "--progress", "json", "--target", "T1c"]
    assert in_process_cli(args) == 0
    assert in_process_cli([*args, "--target", "FLAIR"]) == 0
    s1 = out / "s1"
    (s1 / "FLAIR_synthetic.json").unlink()
    (s1 / commands.WRITING).write_text('{"created": ["FLAIR_synthetic.json", "FLAIR_synthetic.nii.gz"]}')
    kept, half = (s1 / "T1c_synthetic.nii.gz").read_bytes(), (s1 / "FLAIR_synthetic.nii.gz").stat().st_mtime_ns
    capsys.readouterr()
    assert in_process_cli([*args, "--target", "FLAIR"]) == 0
    done, skipped, _ = batch_events(subprocess.CompletedProcess([], 0, capsys.readouterr().out, ""))
    assert done == {"s1"} and skipped == {"s2", "s3"}
    assert sorted(p.name for p in s1.iterdir()) == ["FLAIR_synthetic.json", "FLAIR_synthetic.nii.gz",
                                                    "T1c_synthetic.json", "T1c_synthetic.nii.gz"]
    assert (s1 / "T1c_synthetic.nii.gz").read_bytes() == kept
    assert (s1 / "FLAIR_synthetic.nii.gz").stat().st_mtime_ns != half


def test_batch_resume_removes_the_temporary_files_a_killed_run_left(ws, tmp_path, in_process_cli):
    """kill -9 while an output was being written leaves its hidden temporary file: the resume redid the subject but
    left that file for good. It removes those of the subject it redoes now, and nothing else."""
    from MRSynthesisLib import commands

    args = ["batch", "--model", str(ws["model"]), "--manifest", str(ws["cohort"] / "manifest.csv"),
            "--out", str(tmp_path / "out"), "--precision", "fp32", "--progress", "none"]
    assert in_process_cli(args) == 0
    s3 = tmp_path / "out" / "s3"
    (s3 / "FLAIR_synthetic.nii.gz").unlink()
    (s3 / commands.WRITING).write_text('{"created": ["FLAIR_synthetic.nii.gz", "T1c_synthetic.nii.gz"]}')
    (s3 / ".FLAIR_synthetic.nii.gz.k2j4x9.partial.nii.gz").write_bytes(b"half an image")
    (s3 / ".partial_notes.txt").write_text("the user's")  # hidden, but not named as our temporary files are
    assert in_process_cli(args) == 0
    assert sorted(p.name for p in s3.iterdir()) == [".partial_notes.txt", "FLAIR_synthetic.json",
                                                    "FLAIR_synthetic.nii.gz", "T1c_synthetic.json",
                                                    "T1c_synthetic.nii.gz"]


def test_a_read_only_output_folder_fails_before_inference(ws, read_only, monkeypatch, in_process_cli, capsys):
    """The folder was found read-only only when the first output was written, after inference (in a batch, after
    every subject's in turn)."""
    from MRSynthesisLib import commands

    ran = []
    monkeypatch.setattr(commands.SynthesisLogic, "run", lambda self, request: ran.append(request))
    assert in_process_cli(["batch", "--model", str(ws["model"]), "--manifest", str(ws["cohort"] / "manifest.csv"),
                           "--out", str(read_only / "cohort"), "--progress", "none"]) == 2
    assert f"{read_only / 'cohort'}: cannot be written into" in capsys.readouterr().err
    assert in_process_cli(["synthesize", "--model", str(ws["model"]), "--input", f"T1={ws['subject']['T1']}",
                           "--target", "FLAIR", "--out", str(read_only / "out"), "--progress", "none"]) == 2
    assert f"{read_only / 'out'}: cannot be written into" in capsys.readouterr().err
    assert ran == [] and list(read_only.iterdir()) == []


@pytest.mark.parametrize("case", ["sidecar vs contributions", "map vs output", "json vs figure"])
def test_outputs_colliding_with_each_other_are_refused_before_the_run(ws, tmp_path, in_process_cli, capsys, case):
    """An output's sidecar was replaced by the saliency contributions.json without a word; an output named like a P3S
    map failed after inference as "already exists"; evaluate's --json replaced its --figure."""
    s = ws["subject"]
    synthesize = ["synthesize", "--model", str(ws["model"]), "--input", f"T1={s['T1']}", "--target", "FLAIR",
                  "--saliency-out", str(tmp_path), "--progress", "none", "--out"]
    args, said = {
        "sidecar vs contributions": (synthesize + [str(tmp_path / "contributions.nii.gz")],
                                     f"{tmp_path / 'contributions.json'}: would be written twice, as the sidecar of "
                                     "output FLAIR and as the saliency summary"),
        "map vs output": (synthesize + [str(tmp_path / "P3S_FLAIR_from_T1.nii.gz")],
                          f"{tmp_path / 'P3S_FLAIR_from_T1.nii.gz'}: would be written twice, as output FLAIR and as "
                          "the P3S map of FLAIR from T1"),
        "json vs figure": (["evaluate", "--synthetic", str(s["T2"]), "--reference", str(s["FLAIR"]),
                            "--figure", str(tmp_path / "same.png"), "--json", str(tmp_path / "same.png")],
                           f"{tmp_path / 'same.png'}: would be written twice, as --figure and as --json")}[case]
    assert in_process_cli(args) == 2
    assert said in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_coarse_voxels_are_said_and_native_spacing_keeps_them(ws, tmp_path, in_process_cli, capsys):
    """The subject's voxels are 1 x 1 x 1.5 mm; a model trained on voxels half that size resamples them
    (its slices' two axes), says so, and writes on the input grid; --native-spacing keeps the input grid."""
    model = make_tiny_model(tmp_path / "fine", spacing_mm=[0.5, 0.5, 0.75])
    t1 = ws["subject"]["T1"]
    base = ["synthesize", "--model", str(model), "--input", f"T1={t1}", "--target", "FLAIR", "--precision", "fp32",
            "--progress", "none"]
    assert in_process_cli([*base, "--out", str(tmp_path / "a.nii.gz")]) == 0
    said = capsys.readouterr().err
    assert "coarser than the 0.5 x 0.5 x 0.75 mm" in said and "synthesised on voxels of 0.5 x 0.5 x 1.5 mm" in said
    assert read_volume(tmp_path / "a.nii.gz").geometry.differences(read_volume(t1).geometry, 1e-5) == []
    assert in_process_cli([*base, "--out", str(tmp_path / "b.nii.gz"), "--native-spacing"]) == 0
    assert "synthesised on them as asked (--native-spacing)" in capsys.readouterr().err


def test_batch_passes_every_run_option(ws, tmp_path, in_process_cli, capsys):
    """--tile reached the logic from synthesize but not from batch (it was dropped without a word), and batch
    printed none of the logic's notes (a lesion off the brain, an oblique grid, coarse voxels)."""
    args = ["batch", "--model", str(ws["model"]), "--manifest", str(ws["cohort"] / "manifest.csv"),
            "--out", str(tmp_path / "out"), "--precision", "fp32", "--progress", "none", "--tile", "8", "--register"]
    assert in_process_cli(args) == 0
    said = capsys.readouterr().err
    assert all(f"{s}: tile 8 ignored" in said for s in ("s1", "s2", "s3"))
    assert all(f"{s}: {ws['cohort'] / s / 'T2.nii.gz'}: registered rigidly onto " in said for s in ("s1", "s2", "s3"))
    assert json.loads((tmp_path / "out" / "s1" / "T1c_synthetic.json").read_text())["options"]["registered"] is True


def test_lesion_mask_on_moves_the_mask_with_its_input_in_synthesize_and_batch(ws, tmp_path, in_process_cli, capsys):
    """--lesion-mask-on (a manifest's lesion_mask_on column) reaches the logic: with --register the mask moves with
    that input's registration, said in a note and recorded in the sidecar; a subject whose column names no input
    fails alone."""
    s = ws["subject"]
    assert in_process_cli(["synthesize", "--model", str(ws["model"]), "--input", f"T1={s['T1']}", "--input",
                           f"T2={s['T2']}", "--target", "FLAIR", "--lesion-mask", str(s["lesion_mask"]),
                           "--lesion-mask-on", "t2w", "--register", "--precision", "fp32", "--progress", "none",
                           "--out", str(tmp_path / "one.nii.gz")]) == 0
    assert (f"lesion mask {s['lesion_mask']}: drawn on T2: moved with T2's registration onto T1 (--lesion-mask-on T2)"
            in capsys.readouterr().err)
    options = json.loads((tmp_path / "one.json").read_text())["options"]
    assert options["lesion_mask_on"] == "T2" and options["registered"] is True
    cohort = ws["cohort"]
    rows = [f"{n},{cohort / n / 'T1.nii.gz'},{cohort / n / 'T2.nii.gz'},{cohort / n / 'lesion_mask.nii.gz'},{on}\n"
            for n, on in (("s1", "T2"), ("s2", ""), ("s3", "FLAIR"))]
    (tmp_path / "manifest.csv").write_text("subject,T1,T2,lesion_mask,lesion_mask_on\n" + "".join(rows))
    assert in_process_cli(["batch", "--model", str(ws["model"]), "--manifest", str(tmp_path / "manifest.csv"),
                           "--target", "FLAIR", "--out", str(tmp_path / "cohort"), "--precision", "fp32",
                           "--progress", "json"]) == 2
    done, _, final = batch_events(subprocess.CompletedProcess([], 2, capsys.readouterr().out, ""))
    assert done == {"s1", "s2"} and list(final["failed"]) == ["s3"]
    assert final["failed"]["s3"].startswith("--lesion-mask-on FLAIR: FLAIR is not an input")
    recorded = {n: json.loads((tmp_path / "cohort" / n / "FLAIR_synthetic.json").read_text())["options"]
                for n in ("s1", "s2")}
    assert recorded["s1"]["lesion_mask_on"] == "T2" and recorded["s2"]["lesion_mask_on"] is None


def test_batch_never_writes_over_a_subjects_mask(ws, tmp_path, in_process_cli, capsys):
    """A manifest whose brain mask lies where the subject's output goes: refused even with --overwrite, and the
    other subjects are done."""
    subject = make_subject(tmp_path / "cohort" / "s1")
    out = tmp_path / "out"
    (out / "s1").mkdir(parents=True)
    mask = out / "s1" / "FLAIR_synthetic.nii.gz"
    mask.write_bytes(subject["brain_mask"].read_bytes())
    (tmp_path / "cohort" / "manifest.csv").write_text(
        f"subject,t1n,brain_mask\ns1,s1/T1.nii.gz,{mask}\ns2,s1/T1.nii.gz,s1/brain_mask.nii.gz\n")
    args = ["batch", "--model", str(ws["model"]), "--manifest", str(tmp_path / "cohort" / "manifest.csv"),
            "--out", str(out), "--target", "FLAIR", "--overwrite", "--progress", "none"]
    assert in_process_cli(args) == 2
    assert f"{mask}: is one of the inputs" in capsys.readouterr().err
    assert mask.read_bytes() == subject["brain_mask"].read_bytes()
    assert (out / "s2" / "FLAIR_synthetic.nii.gz").is_file()


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd"])
def test_a_full_disk_is_said_and_leaves_nothing(ws, full_disk, in_process_cli, capsys, suffix):
    """On a real full disk ITK's NIfTI writer prints a short write and returns: the truncated file used to be
    renamed into place and the run said it had succeeded (exit 0)."""
    s = ws["subject"]
    code = in_process_cli(["synthesize", "--model", str(ws["model"]), "--input", f"T1={s['T1']}",
                           "--target", "T2,FLAIR", "--out", str(full_disk), "--format", suffix,
                           "--precision", "fp32", "--progress", "none"])
    error = capsys.readouterr().err
    assert code == 2, error
    assert f"mrsynthesis: error: {full_disk}{os.sep}" in error  # T2's or FLAIR's file, whichever filled the disk
    # an image's file or its sidecar, whichever met the full disk
    assert f"_synthetic{suffix}: could not be written (" in error or "_synthetic.json: could not be written (" in error
    assert "nothing was left under that name" in error
    assert files_under(full_disk) == [".filler"]
