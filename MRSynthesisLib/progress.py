"""How a long run tells its caller where it is.

``json`` prints one JSON object per line on stdout (``{"event": "progress", ...}``) so
another program — the Slicer panel — can follow a run it started as a subprocess;
``bar`` draws a progress bar on a terminal (stderr); ``none`` stays quiet.
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

MODES = ("auto", "bar", "json", "none")


class Reporter:
    """Progress, notes and the final summary, in one of the ``MODES``."""

    def __init__(self, mode: str = "auto", stream: TextIO | None = None) -> None:
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "none"
        self.mode = mode
        self.stream = stream or sys.stdout
        self._bar = None

    def event(self, kind: str, /, **payload: Any) -> None:
        # kind is positional-only: payloads carry their own "kind" (e.g. error kind="input")
        if self.mode == "json":
            self.stream.write(json.dumps({"event": kind, **payload}) + "\n")
            self.stream.flush()

    def progress(self, fraction: float, message: str) -> None:
        if self.mode == "json":
            self.event("progress", fraction=round(float(fraction), 4), message=message)
        elif self.mode == "bar":
            from tqdm import tqdm

            if self._bar is None:
                self._bar = tqdm(total=1000, file=sys.stderr, bar_format="{l_bar}{bar}| {elapsed}<{remaining}")
            self._bar.n = int(fraction * 1000)
            self._bar.set_description_str(message[:40])
            self._bar.refresh()

    def note(self, message: str) -> None:
        """Something the user should know (a fallback, a skipped subject)."""
        if self.mode == "json":
            self.event("note", message=message)
        else:
            self.close()
            print(f"note: {message}", file=sys.stderr)

    def failure(self, subject: str, reason: str) -> None:
        """One part of a run that failed while the rest went on (a subject of a batch): ``failed: SUBJECT: REASON``
        on stderr, or a ``subject_failed`` event. An error that ends the whole run is the ``error`` event (cli)."""
        if self.mode == "json":
            self.event("subject_failed", subject=subject, message=reason)
        else:
            self.close()
            print(f"failed: {subject}: {reason}", file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
