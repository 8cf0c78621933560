"""Installing what the command line needs into Slicer's Python (``MRSynthesisModuleLib.torchsetup``).

A torch older than pyproject.toml's lower bound, put there by another extension, imports but would fail a run
half-way: it counts as missing, and the PyTorch extension or pip is asked for the bound, not for any torch.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
import types

import pytest

import slicer_paths  # noqa: F401  (puts MRSynthesis/ on sys.path)
from MRSynthesisModuleLib import torchsetup


@pytest.fixture
def installed(monkeypatch):
    """Slicer's Python as the test says: name -> version (None: not importable)."""
    packages: dict[str, str | None] = {name: "1.0" for name in torchsetup.REQUIRED}

    def find_spec(name, *args, **kwargs):
        return object() if packages.get(name) is not None else None

    def version(name):
        if packages.get(name) is None:
            raise importlib.metadata.PackageNotFoundError(name)
        return packages[name]

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(importlib.metadata, "version", version)
    return packages


@pytest.mark.parametrize("torch, missing", [
    ("2.13.0+cpu", []), ("2.2.0", []), ("2.10.1+cu128", []),
    ("2.1.2+cu121", ["torch>=2.2"]), ("1.13.1", ["torch>=2.2"]), ("2.2.0rc1", []), (None, ["torch>=2.2"]),
])
def test_a_torch_older_than_the_projects_bound_is_missing(installed, torch, missing):
    installed["torch"] = torch
    assert torchsetup.missing_packages() == missing


def test_other_packages_are_missing_only_when_absent(installed):
    installed.update(nibabel=None, torch="0.4.1")
    assert torchsetup.missing_packages() == ["torch>=2.2", "nibabel"]


def install_with(monkeypatch, installed, extension: bool):
    """Runs ``install`` with stand-ins for Slicer's pip and the PyTorch extension; returns what each was asked."""
    asked: dict[str, list] = {"pip": [], "installTorch": []}

    def pip_install(requirements):
        asked["pip"].append(list(requirements))
        for r in requirements:
            installed[r.split(">=")[0]] = "2.13.0"

    slicer = types.ModuleType("slicer")
    slicer.util = types.SimpleNamespace(pip_install=pip_install)
    monkeypatch.setitem(sys.modules, "slicer", slicer)
    if extension:
        class PyTorchUtilsLogic:
            def installTorch(self, **kwargs):  # noqa: N802 - the extension's name
                asked["installTorch"].append(kwargs)
                installed["torch"] = "2.13.0"
                return types.ModuleType("torch")

        monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=PyTorchUtilsLogic))
    else:
        monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # import fails: the extension is not installed
    assert torchsetup.install(torchsetup.missing_packages(), lambda text: "torch>=2.2" in text)
    return asked


def test_an_old_torch_is_upgraded_through_the_pytorch_extension_to_the_bound(monkeypatch, installed):
    installed.update(torch="1.13.1", tqdm=None)
    asked = install_with(monkeypatch, installed, extension=True)
    assert asked["installTorch"] == [{"askConfirmation": False, "torchVersionRequirement": ">=2.2"}]
    assert asked["pip"] == [["tqdm"]] and torchsetup.missing_packages() == []


def test_without_the_extension_pip_is_asked_for_the_bound(monkeypatch, installed):
    installed.update(torch="1.13.1")
    asked = install_with(monkeypatch, installed, extension=False)
    assert asked == {"pip": [["torch>=2.2"]], "installTorch": []} and torchsetup.missing_packages() == []
