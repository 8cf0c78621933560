"""Where MRSynthesisLib and the shared Resources folder are, and how a subprocess finds them.

Installed as a Slicer extension, ``MRSynthesisLib/`` and ``Resources/`` are copied next to
``MRSynthesis.py`` in the ``qt-scripted-modules`` folder (see the top-level CMakeLists.txt).
In a source checkout they sit one level up, at the repository root. The command line runs
in a separate Python (PythonSlicer inside Slicer); the command itself puts that folder first
on ``sys.path``, so it does not depend on how PythonSlicer's launcher treats PYTHONPATH.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[1]


def shared_root(module_dir: Path = MODULE_DIR) -> Path:
    """The folder holding ``MRSynthesisLib/`` and ``Resources/``: installed layout first, then source."""
    for candidate in (module_dir, module_dir.parent):
        if (candidate / "MRSynthesisLib" / "__init__.py").is_file():
            return candidate
    raise FileNotFoundError(f"MRSynthesisLib was found neither in {module_dir} nor in {module_dir.parent}; "
                            "the extension is incompletely installed")


def resource(relative: str) -> str:
    """Absolute path of a file under the shared ``Resources`` folder."""
    return str(shared_root() / "Resources" / relative)


def ensure_importable() -> None:
    """Make ``import MRSynthesisLib`` work in this process (needed in a source checkout only)."""
    root = str(shared_root())
    if root not in sys.path:
        sys.path.append(root)


def cli_command(arguments: Sequence[str], python: str | None = None) -> list[str]:
    """What ``python -m MRSynthesisLib ...`` does, with MRSynthesisLib's folder first on sys.path.

    Inside Slicer ``sys.executable`` is PythonSlicer.
    """
    bootstrap = (f"import runpy, sys; sys.path.insert(0, {str(shared_root())!r}); "
                 "runpy.run_module('MRSynthesisLib', run_name='__main__', alter_sys=True)")
    return [python or sys.executable, "-c", bootstrap, *arguments]


def cli_environment(model_folders: Sequence[str] = (), base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The subprocess environment: extra model folders searched, UTF-8 and unbuffered output.

    Starts from the current environment, as ``slicer.util.executePythonModule`` does for
    PythonSlicer, so JSON lines arrive as they are printed, whatever the platform's locale.
    """
    env = dict(os.environ if base is None else base)
    if model_folders:
        env["MRSYNTHESIS_MODEL_PATH"] = os.pathsep.join(
            p for p in (*model_folders, env.get("MRSYNTHESIS_MODEL_PATH", "")) if p)
    env["PYTHONIOENCODING"] = "utf-8"
    env["PYTHONUNBUFFERED"] = "1"
    return env
