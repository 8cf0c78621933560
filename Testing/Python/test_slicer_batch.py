"""Batch mode (MRSynthesis/Scripts/batch.py) with MRML storage nodes standing in for Slicer's file I/O
and the real command line doing the work."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("slicer", reason="the PyPI package slicer-core (real MRML classes) is not installed")

import slicer  # noqa: E402

import slicer_support as support  # noqa: E402
from conftest import cli_command, cli_env, make_subject, make_tiny_model, write_image  # noqa: E402

# isort: split
# batch.py (MRSynthesis/Scripts) is importable once slicer_support has put its folder on sys.path
import batch  # noqa: E402

from MRSynthesisLib.volume import Geometry, read_volume, resample_to  # noqa: E402
from MRSynthesisModuleLib.process import CliLauncher, Outcome  # noqa: E402
from MRSynthesisModuleLib.scene import SceneBridge  # noqa: E402


def test_batch_synthesises_and_saves_the_results(tmp_path, tiny_model, cli_home, capsys):
    subject = make_subject(tmp_path / "subject")
    out, saliency, direct = tmp_path / "out", tmp_path / "saliency", tmp_path / "direct.nii.gz"
    reference = subprocess.Popen(  # the command line on the same files, for comparison (runs alongside)
        cli_command("synthesize", "--input", f"T1={subject['T1']}", "--input", f"T2={subject['T2']}", "--target",
                    "FLAIR", "--out", direct, "--model", tiny_model, "--device", "cpu"),
        cwd=support.REPO, env=cli_env(cli_home), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    status = batch.run(["--input", f"t1n={subject['T1']}", "--input", f"T2={subject['T2']}", "--target", "flair",
                        "--out", str(out), "--model", str(tiny_model), "--device", "cpu",
                        "--saliency-out", str(saliency)],
                       support.CoreFiles(support.new_scene()), CliLauncher(base_env=cli_env(cli_home)))

    printed = capsys.readouterr()
    assert status == 0, printed.err
    assert reference.wait(timeout=120) == 0, reference.stderr.read()
    flair, expected = read_volume(out / "FLAIR_synthetic.nii.gz"), read_volume(direct)
    # MRML reads this left-handed (LAS) file with its slice axis reversed (same physical grid,
    # other voxel order), so compare where things are, not how the voxels are stored.
    assert corners(flair.geometry) == corners(expected.geometry)
    np.testing.assert_allclose(resample_to(flair, expected.geometry, nearest=True).array, expected.array, atol=1e-5)
    assert np.abs(expected.array).max() > 0
    assert sorted(p.name for p in saliency.iterdir()) == ["P3S_FLAIR_from_T1.nii.gz", "P3S_FLAIR_from_T2.nii.gz"]
    assert sorted(p.name for p in out.iterdir()) == ["FLAIR_synthetic.json", "FLAIR_synthetic.nii.gz"]
    record = json.loads((out / "FLAIR_synthetic.json").read_text())  # the inputs named as given, not temporary
    assert record["synthetic"] is True and record["image"] == "FLAIR_synthetic.nii.gz"
    assert record["inputs"] == {"T1": str(subject["T1"]), "T2": str(subject["T2"])}
    assert record["description"] == "MRSynthesis synthetic FLAIR from T1+T2 (tiny)"
    reader = sitk.ImageFileReader()  # MRML storage writes no header note: the same line as the command line's
    for path, line in ((out / "FLAIR_synthetic.nii.gz", record["description"]), (direct, record["description"]),
                       (saliency / "P3S_FLAIR_from_T2.nii.gz", "MRSynthesis P3S saliency of synthetic FLAIR to input "
                                                               "T2 (tiny)")):
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        assert reader.GetMetaData("descrip") == line, path
    assert f"FLAIR synthetic (T1+T2): {out / 'FLAIR_synthetic.nii.gz'}" in printed.out
    assert "FLAIR contributions: T1 " in printed.out
    assert "saliency maps: FLAIR: |d sum(prediction in brain) / d input| (target-free P3S variant)" in printed.out


def test_batch_computes_the_papers_p3s_against_a_real_target(tmp_path, tiny_model, cli_home, capsys):
    """As the panel's real volume and the command line's --saliency-reference; the real scan is never replaced."""
    subject = make_subject(tmp_path / "subject")
    saliency = tmp_path / "saliency"
    launcher = RecordingLauncher(base_env=cli_env(cli_home))
    common = ["--input", f"T1={subject['T1']}", "--input", f"T2={subject['T2']}", "--target", "FLAIR",
              "--model", str(tiny_model), "--device", "cpu", "--saliency-reference", f"flair={subject['FLAIR']}"]
    assert batch.run([*common, "--out", str(tmp_path / "out"), "--saliency-out", str(saliency)],
                     support.CoreFiles(support.new_scene()), launcher) == 0, capsys.readouterr().err
    arguments = launcher.arguments[-1]
    assert arguments[arguments.index("--saliency-reference") + 1] == f"FLAIR={subject['FLAIR']}"
    assert "(P3S, Wei et al. 2019 eq. 3)" in capsys.readouterr().out
    assert sorted(p.name for p in saliency.iterdir()) == ["P3S_FLAIR_from_T1.nii.gz", "P3S_FLAIR_from_T2.nii.gz"]
    files = support.CoreFiles(support.new_scene())
    assert batch.run([*common, "--out", str(tmp_path / "other")], files) == 2  # no maps to shape
    assert "--saliency-reference: used by the saliency maps only" in capsys.readouterr().err
    before = subject["FLAIR"].read_bytes()
    assert batch.run([*common, "--out", str(subject["FLAIR"]), "--overwrite", "--saliency-out", str(saliency)],
                     files) == 2
    assert f"{subject['FLAIR']}: is one of the inputs" in capsys.readouterr().err
    assert subject["FLAIR"].read_bytes() == before


def test_batch_says_what_the_command_line_says_of_coarse_voxels(tmp_path, cli_home, capsys):
    """A model trained on voxels half the subject's: the note comes through, and --native-spacing reaches the
    command line."""
    subject = make_subject(tmp_path / "subject")
    model = make_tiny_model(tmp_path / "fine", spacing_mm=[0.5, 0.5, 0.75])
    said = []
    for extra, out in (([], "a"), (["--native-spacing"], "b")):
        status = batch.run(["--input", f"T1={subject['T1']}", "--target", "FLAIR", "--out", str(tmp_path / out),
                            "--model", str(model), "--device", "cpu", *extra],
                           support.CoreFiles(support.new_scene()), CliLauncher(base_env=cli_env(cli_home)))
        printed = capsys.readouterr()
        assert status == 0, printed.err
        said.append(printed.out)
    assert f"note: {subject['T1']}: voxels of 1 x 1 x 1.5 mm, coarser than the 0.5 x 0.5 x 0.75 mm" in said[0]
    assert "resampled back" in said[0]
    assert "synthesised on them as asked (--native-spacing)" in said[1]


class RecordingLauncher(CliLauncher):
    """The real launcher, keeping the arguments of each run."""

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.arguments: list[list[str]] = []

    def run(self, arguments, *rest, **callbacks):
        self.arguments.append(list(arguments))
        return super().run(arguments, *rest, **callbacks)


def test_batch_takes_a_brain_mask_a_precision_and_a_slice_plane(tmp_path, tiny_model, cli_home, capsys):
    """As `mrsynthesis synthesize`: the result is zero outside the given brain mask (here half the brain). The
    subject's files are LAS, which Slicer writes back with the slice axis reversed: the masks, read from their
    files as stored, are the same grid in another voxel order (they were refused as "different grids")."""
    subject = make_subject(tmp_path / "subject")
    half = subject.arrays["brain"].copy()
    half[: half.shape[0] // 2] = 0
    mask = write_image(half, tmp_path / "half_brain.nii.gz")
    launcher = RecordingLauncher(base_env=cli_env(cli_home))
    status = batch.run(["--input", f"T1={subject['T1']}", "--input", f"T2={subject['T2']}", "--target", "FLAIR",
                        "--out", str(tmp_path / "out"), "--model", str(tiny_model), "--device", "cpu",
                        "--brain-mask", str(mask), "--lesion-mask", str(subject["lesion_mask"]),
                        "--precision", "fp32", "--plane", "coronal"],
                       support.CoreFiles(support.new_scene()), launcher)
    assert status == 0, capsys.readouterr().err
    arguments = launcher.arguments[-1]
    for option, value in (("--brain-mask", str(mask)), ("--precision", "fp32"), ("--plane", "coronal")):
        assert arguments[arguments.index(option) + 1] == value
    flair = read_volume(tmp_path / "out" / "FLAIR_synthetic.nii.gz")
    brain = resample_to(read_volume(subject["brain_mask"]), flair.geometry, nearest=True).array > 0
    inside = resample_to(read_volume(mask), flair.geometry, nearest=True).array > 0
    assert not flair.array[brain & ~inside].any()  # the foreground would have kept the other half

    empty = write_image(np.zeros_like(half), tmp_path / "empty.nii.gz")
    assert batch.run(["--input", f"T1={subject['T1']}", "--target", "FLAIR", "--out", str(tmp_path / "none"),
                      "--model", str(tiny_model), "--device", "cpu", "--brain-mask", str(empty)],
                     support.CoreFiles(support.new_scene()), launcher) == 2
    assert f"{empty}: the brain mask is empty" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_batch_passes_the_input_the_lesion_mask_was_drawn_on(tmp_path, tiny_model, cli_home, capsys):
    """--lesion-mask-on goes to the command line as it was given: with --register the mask moves with that input's
    registration (its note printed); without --lesion-mask the command line refuses it."""
    subject = make_subject(tmp_path / "subject")
    launcher = RecordingLauncher(base_env=cli_env(cli_home))
    base = ["--input", f"T1={subject['T1']}", "--input", f"T2={subject['T2']}", "--target", "FLAIR", "--model",
            str(tiny_model), "--device", "cpu", "--precision", "fp32", "--lesion-mask-on", "T2"]
    status = batch.run([*base, "--out", str(tmp_path / "out"), "--lesion-mask", str(subject["lesion_mask"]),
                        "--register"], support.CoreFiles(support.new_scene()), launcher)
    printed = capsys.readouterr()
    assert status == 0, printed.err
    arguments = launcher.arguments[-1]
    assert arguments[arguments.index("--lesion-mask-on") + 1] == "T2"
    assert (f"note: lesion mask {subject['lesion_mask']}: drawn on T2: moved with T2's registration onto T1 "
            "(--lesion-mask-on T2)") in printed.out
    assert batch.run([*base, "--out", str(tmp_path / "none")], support.CoreFiles(support.new_scene()), launcher) == 2
    assert "--lesion-mask-on T2: no lesion mask was given" in capsys.readouterr().err


def test_batch_resamples_inputs_on_another_grid_only_when_told(tmp_path, cli_home, capsys):
    """As the panel's "Resample other inputs onto the first input's grid": refused by default, naming both files."""
    subject = make_subject(tmp_path / "subject")
    image = sitk.ReadImage(str(subject["T2"]))
    image.SetOrigin(tuple(o + 2.5 for o in image.GetOrigin()))
    shifted = tmp_path / "T2_shifted.nii.gz"
    sitk.WriteImage(image, str(shifted))
    common = ["--input", f"T1={subject['T1']}", "--input", f"T2={shifted}", "--target", "FLAIR", "--model",
              "tiny", "--device", "cpu"]
    launcher = CliLauncher(base_env=cli_env(cli_home, MRSYNTHESIS_MODEL_PATH=str(tmp_path / "models")))
    make_tiny_model(tmp_path / "models" / "tiny")
    assert batch.run([*common, "--out", str(tmp_path / "refused")], support.CoreFiles(support.new_scene()),
                     launcher) == 2
    said = capsys.readouterr().err
    assert f"{shifted} and {subject['T1']} are on different grids" in said  # the user's files, not temporary ones
    assert "MRSynthesis-" not in said and "In batch mode: register the inputs first, or pass --resample" in said
    assert not (tmp_path / "refused").exists()
    assert batch.run([*common, "--out", str(tmp_path / "resampled"), "--resample"],
                     support.CoreFiles(support.new_scene()), launcher) == 0, capsys.readouterr().err
    assert (tmp_path / "resampled" / "FLAIR_synthetic.nii.gz").is_file()


def corners(geometry: Geometry) -> set[tuple[float, ...]]:
    """The physical positions of a grid's corner voxels."""
    direction = np.reshape(geometry.direction, (3, 3)) * geometry.spacing
    ends = [(0, n - 1) for n in geometry.size]
    return {tuple(np.round(direction @ np.array([i, j, k]) + geometry.origin, 4))
            for i in ends[0] for j in ends[1] for k in ends[2]}


@pytest.mark.parametrize("arguments, message", [
    (["--input", "T1=missing.nii.gz", "--target", "FLAIR", "--out", "o"], "cannot load --input T1=missing.nii.gz"),
    (["--input", "T9=t.nii.gz", "--target", "FLAIR", "--out", "o"], "unknown modality 'T9'"),
    (["--input", "T1", "--target", "FLAIR", "--out", "o"], "is not MODALITY=PATH"),
    (["--input", "T1=t.nii.gz", "--target", "FLAIR", "--target", "T2", "--out", "o.nii.gz"], "give a folder"),
    (["--input", "T1=a.nii.gz", "--input", "t1n=b.nii.gz", "--target", "FLAIR", "--out", "o"],
     "--input T1 is given 2 times (a.nii.gz, b.nii.gz)"),
    (["--input", "T1=a.nii.gz", "--input", "T2=./a.nii.gz", "--target", "FLAIR", "--out", "o"],
     "a.nii.gz: is given as T1 and T2"),
    # new folders named like files were made and filled
    (["--input", "T1=t.nii.gz", "--target", "FLAIR", "--out", "flair.png"],
     "--out flair.png: looks like a file name, but it names a folder to write into; name a folder without an "
     "extension or an image file (.nii.gz, .nii, .nrrd, .mha)"),
    (["--input", "T1=t.nii.gz", "--target", "FLAIR", "--out", "o", "--saliency-out", "maps.nii.gz"],
     "--saliency-out maps.nii.gz: looks like a file name"),
])
def test_bad_input_exits_with_2_and_says_why(arguments, message, capsys):
    assert batch.run(arguments, support.CoreFiles(support.new_scene())) == 2
    assert message in capsys.readouterr().err


def test_a_new_folder_may_have_dots_in_its_name():
    """BIDS-style (``sub-01.ses-1``) and dated folder names were refused as file names, as on the command line."""
    for folder in ("sub-01.ses-1", "run.2024-01-05", "out/sub-01.ses-1/"):
        assert batch.output_path(folder, "FLAIR", ["FLAIR"]) == os.path.join(folder, "FLAIR_synthetic.nii.gz")
    with pytest.raises(ValueError, match="looks like a file name"):
        batch.output_path("flair.jpeg", "FLAIR", ["FLAIR"])


def test_existing_files_and_inputs_are_never_replaced(tmp_path, capsys):
    """Refused before anything is loaded: the user's file stays as it was, an input even with --overwrite."""
    subject = make_subject(tmp_path / "subject")
    out = tmp_path / "out"
    out.mkdir()
    (out / "FLAIR_synthetic.nii.gz").write_bytes(b"the user's own file")
    common = ["--input", f"T1={subject['T1']}", "--target", "FLAIR"]
    files = support.CoreFiles(support.new_scene())
    assert batch.run([*common, "--out", str(out)], files) == 2
    assert f"{out / 'FLAIR_synthetic.nii.gz'}: already exists" in capsys.readouterr().err
    assert (out / "FLAIR_synthetic.nii.gz").read_bytes() == b"the user's own file"
    before = subject["T1"].read_bytes()
    assert batch.run([*common, "--out", str(subject["T1"]), "--overwrite"], files) == 2
    assert "is one of the inputs" in capsys.readouterr().err and subject["T1"].read_bytes() == before
    for mask in ("--brain-mask", "--lesion-mask"):  # masks are the user's files too
        path = subject["brain_mask" if mask == "--brain-mask" else "lesion_mask"]
        before = path.read_bytes()
        assert batch.run([*common, mask, str(path), "--out", str(path), "--overwrite"], files) == 2
        assert f"{path}: is one of the inputs" in capsys.readouterr().err and path.read_bytes() == before
    assert batch.run([*common, "--out", str(tmp_path / "flair.nhdr")], files) == 2
    assert "a detached-header format" in capsys.readouterr().err


def test_a_truncated_input_is_refused_before_slicer_loads_it(tmp_path, capsys):
    """Slicer's reader, as ITK's, would fill the missing half with zeros and synthesise from it."""
    subject = make_subject(tmp_path / "subject")
    data = subject["T1"].read_bytes()
    cut = tmp_path / "T1_cut.nii.gz"
    cut.write_bytes(data[:len(data) // 2])
    out = tmp_path / "out"
    status = batch.run(["--input", f"T1={cut}", "--target", "FLAIR", "--out", str(out)],
                       support.CoreFiles(support.new_scene()))
    assert status == 2
    assert f"batch.py: error: --input T1={cut}: is truncated: its header announces" in capsys.readouterr().err
    assert not out.exists()


def test_a_full_disk_is_said_and_leaves_nothing(tmp_path, tiny_model, cli_home, full_disk, capsys):
    """MRML's NIfTI storage node, as ITK's writer under it, reports a short write as a success. Whichever file
    the disk fills on (the tiny first image may fit in the 4 kB left, its sidecar then not), the run says so and
    removes what it had written."""
    subject = make_subject(tmp_path / "subject")
    status = batch.run(["--input", f"T1={subject['T1']}", "--target", "FLAIR", "--target", "T2",
                        "--out", str(full_disk), "--model", str(tiny_model), "--device", "cpu"],
                       support.CoreFiles(support.new_scene()), CliLauncher(base_env=cli_env(cli_home)))
    error = capsys.readouterr().err
    assert status == 2, error
    assert ("could not save" in error and "is the disk full?" in error) or "(No space left on device)" in error
    assert sorted(p.name for p in full_disk.iterdir()) == [".filler"]


class FailingSecondSave(support.CoreFiles):
    """Slicer's saveNode returns False (it never raises) when a write fails: the second one fails here."""

    def __init__(self, scene: object) -> None:
        super().__init__(scene)
        self.saves: list[str] = []

    def save_node(self, node: object, path: str) -> bool:
        self.saves.append(path)
        return len(self.saves) != 2 and super().save_node(node, path)


def test_a_failed_save_leaves_no_output_behind(tmp_path, tiny_model, cli_home, capsys):
    subject = make_subject(tmp_path / "subject")
    out, saliency = tmp_path / "out", tmp_path / "saliency"
    files = FailingSecondSave(support.new_scene())
    status = batch.run(["--input", f"T1={subject['T1']}", "--input", f"T2={subject['T2']}", "--target", "FLAIR",
                        "--out", str(out), "--model", str(tiny_model), "--device", "cpu",
                        "--saliency-out", str(saliency)], files, CliLauncher(base_env=cli_env(cli_home)))
    assert status == 1 and "could not save" in capsys.readouterr().err
    assert len(files.saves) == 2 and all(os.path.basename(p).startswith(".") for p in files.saves)  # temporary names
    assert sorted(os.listdir(out)) == [] and sorted(os.listdir(saliency)) == []


@pytest.mark.parametrize("suffix", batch.OUTPUT_SUFFIXES)
def test_every_output_format_saved_through_mrml_carries_the_header_note_and_reads_back_in_slicer(tmp_path, suffix):
    """Slicer's storage writes NIfTI and MetaImage through ITK and NRRD through teem, none of them with a note."""
    scene = support.new_scene()
    array = np.random.default_rng(0).normal(size=(6, 7, 8)).astype(np.float32)
    node = support.add_volume(scene, array, "FLAIR synthetic")
    path = str(tmp_path / f"FLAIR{suffix}")
    line = "MRSynthesis P3S saliency of synthetic FLAIR to input T2 (tiny)"
    SceneBridge(scene).mark_saliency(node, line)  # a node whose header line is known, without a sidecar record
    files = support.CoreFiles(scene)
    batch.save_all(files, [(node, path)])
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.ReadImageInformation()
    assert reader.GetMetaData("ITK_FileNotes") == line
    again = files.load_volume(path, "again")
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(again), array)
    np.testing.assert_allclose(support.ijk_to_ras(again), support.OBLIQUE, atol=1e-6)
    assert sorted(os.listdir(tmp_path)) == [f"FLAIR{suffix}"]  # no sidecar: the node has no record


def test_help_documents_the_arguments(capsys):
    assert batch.run(["--help"], files=None) == 0
    usage = capsys.readouterr().out
    for option in ("--input MODALITY=PATH", "--target MODALITY", "--out", "--model", "--device", "--lesion-mask",
                   "--saliency-out", "--native-spacing", "--resample", "--register", "--brain-mask", "--precision",
                   "--plane", "--lesion-mask-on MODALITY",
                   "--saliency-reference TARGET=PATH"):
        assert option in usage
    assert batch.run([], files=None) == 2  # --input, --target and --out are required


def test_the_script_finds_its_module_code_when_run_as_slicer_runs_it(tmp_path):
    """`Slicer --python-script Scripts/batch.py` executes it in __main__ with only Scripts/ on
    sys.path; a stand-in ``slicer`` records the exit status that slicer.util.exit gets."""
    stub = tmp_path / "slicer"
    stub.mkdir()
    (stub / "__init__.py").write_text("from . import util\nmrmlScene = None\n")
    (stub / "util.py").write_text("import sys\n\ndef exit(status=0):\n    sys.exit(status)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(tmp_path)  # the stand-in, and not MRSynthesis/ or the repository
    script = support.REPO / "MRSynthesis" / "Scripts" / "batch.py"
    shown = subprocess.run([sys.executable, str(script), "--help"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "--input MODALITY=PATH" in shown.stdout
    refused = subprocess.run([sys.executable, str(script), "--input", "T9=t.nii.gz", "--target", "FLAIR", "--out", "o"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "unknown modality 'T9'" in refused.stderr


class KilledLauncher:
    """A command line that ended without a word of its own, as a process killed by a signal does."""

    def __init__(self, code: int) -> None:
        self.code = code

    def run(self, arguments, *rest, **callbacks):
        outcome = Outcome("failed", message=f"the MRSynthesis command line stopped with exit code {self.code}",
                          exit_code=self.code)
        return type("Run", (), {"wait": lambda run: outcome})()


@pytest.mark.parametrize("code, status", [(-9, 1), (247, 1), (3, 1), (2, 2), (130, 130)])
def test_batch_exits_only_with_its_documented_codes(tmp_path, tiny_model, code, status, capsys):
    subject = make_subject(tmp_path / "subject")
    arguments = ["--input", f"T1={subject['T1']}", "--target", "FLAIR", "--out", str(tmp_path / "out"),
                 "--model", str(tiny_model)]
    assert batch.run(arguments, support.CoreFiles(support.new_scene()), KilledLauncher(code)) == status
    assert f"exit code {code}" in capsys.readouterr().err  # the command line's own code is still said
