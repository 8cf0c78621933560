"""The background process runner on small real processes: events, messages, cancelling a tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

import slicer_paths  # noqa: F401  (puts MRSynthesis/ on sys.path)
from MRSynthesisModuleLib.job import SynthesisJob
from MRSynthesisModuleLib.paths import cli_command
from MRSynthesisModuleLib.process import CANCEL_GRACE_S, CliProcess, CliRun, parse_event


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_parse_event_takes_json_event_lines_only():
    assert parse_event('{"event": "progress", "fraction": 0.5, "message": "m"}')["fraction"] == 0.5
    assert parse_event("note: something") is None
    assert parse_event('{"not": "an event"}') is None
    assert parse_event("{broken") is None


def test_progress_comes_from_stdout_and_a_failure_keeps_the_message_not_the_traceback():
    code = """
        import json, sys
        print(json.dumps({"event": "progress", "fraction": 0.25, "message": "4/16 slices"}), flush=True)
        print("Traceback (most recent call last):\\n  ...\\nValueError: x", file=sys.stderr)
        print(json.dumps({"event": "error", "kind": "internal", "message": "ValueError: x"}), flush=True)
        sys.exit(1)
    """
    progress, logged = [], []
    outcome = CliRun(CliProcess(python(code)), on_progress=lambda f, m: progress.append((f, m)),
                     on_log=logged.append).start().wait()
    assert progress == [(0.25, "4/16 slices")]
    assert outcome.status == "failed" and outcome.exit_code == 1
    assert outcome.message.startswith("ValueError: x") and "internal error" in outcome.message
    assert "Traceback" not in outcome.message and "Traceback (most recent call last):" in logged


def test_a_crash_without_an_event_is_reported_with_the_last_log_lines():
    outcome = CliRun(CliProcess(python("import sys; print('No module named torch', file=sys.stderr); sys.exit(1)"))
                     ).start().wait()
    assert outcome.status == "failed" and "exit code 1" in outcome.message
    assert "No module named torch" in outcome.message


def test_plain_output_is_kept_for_listings():
    outcome = CliRun(CliProcess(python("import json; print(json.dumps([{'name': 'a'}], indent=2))"))).start().wait()
    assert outcome.status == "done" and json.loads(outcome.stdout) == [{"name": "a"}]


@pytest.mark.skipif(os.name == "nt", reason="checks POSIX process groups")
@pytest.mark.parametrize("launcher_ignores_sigterm", [True, False], ids=["launcher-ignores", "launcher-dies"])
def test_cancel_ends_the_whole_process_tree_within_two_seconds(launcher_ignores_sigterm):
    """Like PythonSlicer, a launcher whose child does the work and ignores SIGTERM (a long native
    call delays Python's handler). The launcher either ignores SIGTERM too, or dies at once as
    the real launcher does; either way the child must be gone within two seconds."""
    ignore = "signal.signal(signal.SIGTERM, signal.SIG_IGN)" if launcher_ignores_sigterm else ""
    code = f"""
        import json, signal, subprocess, sys
        {ignore}
        child = subprocess.Popen([sys.executable, "-c",
                                  "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
        print(json.dumps({{"event": "progress", "fraction": 0.1, "message": str(child.pid)}}), flush=True)
        child.wait()
    """
    started = []
    run = CliRun(CliProcess(python(code)), on_progress=lambda f, m: started.append(int(m))).start()
    while not started:
        assert run.poll() is None
        time.sleep(0.02)
    time.sleep(0.3)  # the child has set its SIGTERM handler
    begin = time.monotonic()
    run.cancel()
    outcome = run.wait(poll_interval_s=0.02)
    elapsed = time.monotonic() - begin
    assert outcome.status == "cancelled"
    assert elapsed < 2.0
    if launcher_ignores_sigterm:
        assert elapsed >= CANCEL_GRACE_S  # SIGKILL comes only after the grace period
    time.sleep(0.1)
    assert not alive(started[0])  # the grandchild is gone too


def alive(pid: int) -> bool:
    """Running (a zombie left for a container's init to reap counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    if not os.path.isdir("/proc"):
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:  # ended meanwhile
        return False


def test_the_job_asks_the_command_line_for_json_progress_and_names_outputs_for_their_inputs():
    job = SynthesisJob({"T1": "/t/t1.nrrd", "T2": "/t/t2.nrrd"}, ["FLAIR"], "/t/out", model="/m/tiny",
                       device="cpu", lesion_mask="/t/lesion.nrrd", brain_mask="/t/brain.nrrd",
                       saliency_dir="/t/saliency", precision="fp32", plane="coronal")
    args = job.arguments()
    assert args[:5] == ["synthesize", "--input", "T1=/t/t1.nrrd", "--input", "T2=/t/t2.nrrd"]
    for option, value in (("--progress", "json"), ("--target", "FLAIR"), ("--model", "/m/tiny"),
                          ("--device", "cpu"), ("--lesion-mask", "/t/lesion.nrrd"), ("--brain-mask", "/t/brain.nrrd"),
                          ("--saliency-out", "/t/saliency"), ("--precision", "fp32"), ("--plane", "coronal")):
        assert args[args.index(option) + 1] == value
    with_reference = SynthesisJob({"T1": "a"}, ["FLAIR"], "o", saliency_dir="s",
                                  saliency_references={"FLAIR": "/t/real.nrrd"}).arguments()
    assert with_reference[with_reference.index("--saliency-reference") + 1] == "FLAIR=/t/real.nrrd"
    no_maps = SynthesisJob({"T1": "a"}, ["FLAIR"], "o", saliency_references={"FLAIR": "/t/real.nrrd"}).arguments()
    assert "--saliency-reference" not in no_maps  # the command line refuses it without --saliency-out
    plain = SynthesisJob({"T1": "a"}, ["T2"], "o").arguments()  # the command line's own defaults
    assert "--brain-mask" not in plain and "--plane" not in plain and plain[plain.index("--precision") + 1] == "auto"
    assert job.output_name("FLAIR") == "FLAIR synthetic (T1+T2, lesion)"
    assert SynthesisJob({"T1": "a"}, ["T2"], "o").output_name("T2") == "T2 synthetic (T1)"


def test_the_job_asks_to_resample_onto_the_chosen_input_only_when_told():
    assert "--resample-to" not in SynthesisJob({"T1": "a", "T2": "b"}, ["FLAIR"], "o").arguments()
    args = SynthesisJob({"T2": "b", "T1": "a"}, ["FLAIR"], "o", resample_to="T2").arguments()
    assert args[args.index("--resample-to") + 1] == "T2"


def test_the_job_asks_for_the_inputs_own_voxels_only_when_told():
    assert "--native-spacing" not in SynthesisJob({"T1": "a"}, ["FLAIR"], "o").arguments()
    assert "--native-spacing" in SynthesisJob({"T1": "a"}, ["FLAIR"], "o", native_spacing=True).arguments()
    assert "--register" not in SynthesisJob({"T1": "a", "T2": "b"}, ["FLAIR"], "o").arguments()
    assert "--register" in SynthesisJob({"T1": "a", "T2": "b"}, ["FLAIR"], "o", register=True).arguments()


def test_the_job_says_which_input_the_lesion_mask_was_drawn_on_only_when_known():
    lesion = SynthesisJob({"T1": "a", "T2": "b"}, ["FLAIR"], "o", lesion_mask="l", lesion_mask_on="T2").arguments()
    assert lesion[lesion.index("--lesion-mask-on") + 1] == "T2"
    assert "--lesion-mask-on" not in SynthesisJob({"T1": "a", "T2": "b"}, ["FLAIR"], "o", lesion_mask="l").arguments()


def test_the_command_finds_mrsynthesislib_from_any_folder_without_pythonpath(tmp_path):
    """As PythonSlicer started by Slicer would: another working folder, no PYTHONPATH of ours."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(cli_command(["--version"]), cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("mrsynthesis ")
