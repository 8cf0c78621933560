"""`pip install .`: the wheel holds every package and the bundled model, which the installed registry finds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_the_package_list_holds_every_package_folder():
    """pyproject.toml lists the packages (it maps Resources/Models in as one): a new subpackage left off the list
    would be missing from every installed copy."""
    tomllib = pytest.importorskip("tomllib")
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts)
             for top in ("MRSynthesisLib", "training") for p in (REPO / top).rglob("__init__.py")}
    assert found <= listed and listed - found == {"MRSynthesisLib.bundled_models"}


def test_an_installed_wheel_finds_the_bundled_model(tmp_path):
    """The wheel used to hold no model: installed, `mrsynthesis models` listed none and the README's commands
    ended with "no bundled model is installed"."""
    pytest.importorskip("setuptools", minversion="77", reason="the wheel is built here without isolation")
    source = tmp_path / "source"  # a copy: setuptools writes build/ and *.egg-info beside what it builds
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE.txt"):
        shutil.copy2(REPO / name, source / name)
    for folder in ("MRSynthesisLib", "training", "Resources/Models"):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                            "--wheel-dir", str(tmp_path / "dist"), str(source)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("mrsynthesis-*.whl")
    bundled = sorted(p.relative_to(REPO / "Resources" / "Models").as_posix()
                     for p in (REPO / "Resources" / "Models").glob("*/*") if p.suffix in (".json", ".safetensors"))
    assert bundled
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert {f"MRSynthesisLib/bundled_models/{name}" for name in bundled} <= names
        archive.extractall(tmp_path / "site")
    code = ("import MRSynthesisLib, MRSynthesisLib.registry as r; "
            "print(MRSynthesisLib.__file__); print(r.resolve(None))")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "MRSYNTHESIS_MODEL_PATH": ""}
    shown = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=120)
    assert shown.returncode == 0, shown.stderr[-2000:]
    package, model = shown.stdout.split()
    assert Path(package).is_relative_to(tmp_path / "site")  # the installed copy, not this checkout
    assert Path(model).parent == tmp_path / "site" / "MRSynthesisLib" / "bundled_models"
