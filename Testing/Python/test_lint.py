"""The code's own checks, run with the tests: pyflakes (unused or undefined names), lines over 120 characters and
import order, as configured in pyproject.toml ([tool.ruff]); the test extra installs ruff."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_ruff_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
