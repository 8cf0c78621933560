"""The MRSynthesisLib command line in a background process: start, follow, cancel.

Reader threads move the process's output into a queue; the GUI thread empties it with
``poll()`` (from a timer in the panel, or a loop in batch mode), so the GUI never waits
on a pipe. Cancel terminates the whole process group: inside Slicer the interpreter is
the PythonSlicer launcher, and stopping only the launcher would leave Python running.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from .paths import cli_command, cli_environment

# SIGTERM lets the command line stop cleanly (exit 130); after this the group is killed,
# so a cancel always completes within the 2 s.
CANCEL_GRACE_S = 1.5
EXIT_CANCELLED = 130


class CliProcess:
    """One command run with its stdout and stderr read line by line in the background."""

    def __init__(self, command: Sequence[str], env: Optional[Mapping[str, str]] = None) -> None:
        self.command = list(command)
        self.env = dict(env) if env is not None else None
        self._queue: queue.Queue = queue.Queue()
        self._popen: Optional[subprocess.Popen] = None
        self._open_streams = 0
        self.returncode: Optional[int] = None
        self.cancel_requested = False

    def start(self) -> None:
        group = ({"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW}
                 if os.name == "nt" else {"start_new_session": True})
        self._popen = subprocess.Popen(self.command, env=self.env, stdin=subprocess.DEVNULL,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                       encoding="utf-8", errors="replace", bufsize=1, **group)
        self._open_streams = 2
        for name, stream in (("out", self._popen.stdout), ("err", self._popen.stderr)):
            threading.Thread(target=self._read, args=(name, stream), daemon=True).start()

    def _read(self, name: str, stream: Any) -> None:
        for line in stream:
            self._queue.put((name, line.rstrip("\r\n")))
        stream.close()
        self._queue.put((name, None))

    @property
    def running(self) -> bool:
        return self._popen is not None and self.returncode is None

    def poll(self) -> tuple[list[tuple[str, str]], Optional[int]]:
        """``(stream, line)`` pairs printed since the last call, and the exit code once all output is read."""
        lines = []
        while True:
            try:
                name, line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self._open_streams -= 1
            else:
                lines.append((name, line))
        if self._popen is not None and self._open_streams == 0 and self.returncode is None:
            self.returncode = self._popen.wait()
        return lines, self.returncode

    def cancel(self) -> None:
        """Ask the process group to stop; kill it if it is still there after ``CANCEL_GRACE_S``."""
        if not self.running or self.cancel_requested:
            return
        self.cancel_requested = True
        pid = self._popen.pid
        if os.name == "nt":  # no SIGTERM for a console process group: end the tree at once
            subprocess.run(["taskkill", "/PID", str(pid), "/T", "/F"], capture_output=True,
                           creationflags=subprocess.CREATE_NO_WINDOW)
            return
        _signal_group(pid, signal.SIGTERM)
        timer = threading.Timer(CANCEL_GRACE_S, self._kill_if_alive)
        timer.daemon = True
        timer.start()

    def _kill_if_alive(self) -> None:
        # Not `self._popen.poll()`: that is only the launcher, which SIGTERM ends at once (the
        # PythonSlicer launcher has no handler) while its Python child may still be inside a
        # long native call that delays the Python-level SIGTERM handler. Until the output is
        # read to the end (returncode set) some member of the group may be alive, and the
        # unreaped launcher keeps the group id from being reused.
        if self.returncode is None:
            _signal_group(self._popen.pid, signal.SIGKILL)


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)  # the group id is the pid: start_new_session made it a leader
    except (ProcessLookupError, PermissionError):
        pass  # already gone


def parse_event(line: str) -> Optional[dict[str, Any]]:
    """The JSON event on a ``--progress json`` line, or None for any other line."""
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


@dataclass
class Outcome:
    """How a run ended: ``status`` is "done", "failed" or "cancelled"."""

    status: str
    result: dict[str, Any] = field(default_factory=dict)  # the "done" event
    message: str = ""  # what to tell the user when it failed
    notes: list[str] = field(default_factory=list)
    stdout: str = ""  # plain (non-event) output, e.g. `models --json`
    exit_code: int = 0  # the command line's: 2 bad input, 1 internal error, 130 cancelled


class CliRun:
    """A ``CliProcess`` whose JSON events become progress calls and, at the end, one ``Outcome``."""

    LOG_LINES_KEPT = 20

    def __init__(self, process: CliProcess, on_progress: Callable[[float, str], None] = lambda f, m: None,
                 on_log: Callable[[str], None] = lambda line: None) -> None:
        self.process = process
        self.on_progress = on_progress
        self.on_log = on_log
        self._done: dict[str, Any] = {}
        self._error: Optional[dict[str, Any]] = None
        self._cancelled = False
        self._notes: list[str] = []
        self._stdout: list[str] = []
        self._log: list[str] = []

    def start(self) -> "CliRun":
        self.process.start()
        return self

    def cancel(self) -> None:
        self.process.cancel()

    def poll(self) -> Optional[Outcome]:
        """Handle new output; the ``Outcome`` once the process has ended, else None."""
        lines, code = self.process.poll()
        for stream, line in lines:
            event = parse_event(line) if stream == "out" else None
            if event is None:
                (self._stdout if stream == "out" else self._log).append(line)
                self._log = self._log[-self.LOG_LINES_KEPT:]
                self.on_log(line)
            else:
                self._handle(event)
        return None if code is None else self._outcome(code)

    def wait(self, poll_interval_s: float = 0.05, idle: Callable[[], None] = lambda: None) -> Outcome:
        """Block until the end (batch mode, self-test); ``idle`` runs between polls."""
        while True:
            outcome = self.poll()
            if outcome is not None:
                return outcome
            idle()
            time.sleep(poll_interval_s)

    def _handle(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "progress":
            self.on_progress(float(event.get("fraction", 0.0)), str(event.get("message", "")))
        elif kind == "note":
            self._notes.append(str(event.get("message", "")))
        elif kind == "done":
            self._done = event
        elif kind == "error":
            self._error = event
        elif kind == "cancelled":
            self._cancelled = True

    def _outcome(self, code: int) -> Outcome:
        notes = list(dict.fromkeys([*self._notes, *self._done.get("notes", [])]))
        stdout = "\n".join(self._stdout)
        if self.process.cancel_requested or self._cancelled or code == EXIT_CANCELLED:
            return Outcome("cancelled", notes=notes, exit_code=EXIT_CANCELLED)
        if self._error is not None:
            message = str(self._error.get("message", ""))
            if self._error.get("kind") == "internal":
                message += " (an internal error of MRSynthesis; its traceback is in the log)"
            return Outcome("failed", message=message, notes=notes, exit_code=code or 1)
        if code != 0:
            tail = "\n".join(self._log[-5:]) or "no output"
            return Outcome("failed", message=f"the MRSynthesis command line stopped with exit code {code}:\n{tail}",
                           notes=notes, exit_code=code)
        return Outcome("done", result=self._done, notes=notes, stdout=stdout)


class CliLauncher:
    """Starts runs of the command line; the one object the panel, batch mode and tests share.

    ``python`` defaults to ``sys.executable``, which inside Slicer is PythonSlicer; ``base_env``
    to this process's environment.
    """

    def __init__(self, python: Optional[str] = None, base_env: Optional[Mapping[str, str]] = None) -> None:
        self.python = python
        self.base_env = base_env

    def run(self, arguments: Sequence[str], model_folders: Sequence[str] = (),
            on_progress: Callable[[float, str], None] = lambda f, m: None,
            on_log: Callable[[str], None] = lambda line: None) -> CliRun:
        process = CliProcess(cli_command(arguments, self.python), cli_environment(model_folders, self.base_env))
        return CliRun(process, on_progress, on_log).start()
