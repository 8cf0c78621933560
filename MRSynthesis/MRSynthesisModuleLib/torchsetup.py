"""PyTorch and the other packages the command line imports, installed only with the user's consent.

The subprocess runs in Slicer's own Python, so what it imports must be installed there.
Slicer bundles numpy, scipy and SimpleITK (its SuperBuild/External_python-*.cmake), not
nibabel, which ``MRSynthesisLib.volume`` imports for every command, nor matplotlib, which
writes the P3S and off-plane figures (saliency and off-plane runs from the panel), nor tqdm
(the progress bar of a command run in a terminal with PythonSlicer). PyTorch comes through
the PyTorch extension's ``PyTorchUtils`` when that extension is installed (it picks the
build for the machine's GPU), otherwise with pip.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import re
from collections.abc import Callable

REQUIRED = ("torch", "safetensors", "nibabel", "matplotlib", "tqdm")  # import names, which are also the pip names
# pyproject.toml's lower bounds that an older package, installed in Slicer's Python by another extension, can miss.
MINIMUM = {"torch": "2.2"}


def requirement(name: str) -> str:
    """What pip (and the PyTorch extension) is asked for: ``torch>=2.2``, or the bare name."""
    return f"{name}>={MINIMUM[name]}" if name in MINIMUM else name


def _release(version: str) -> tuple[int, ...]:
    """The leading numbers of a version: ``2.13.0+cu121`` -> (2, 13, 0), ``2.2.0rc1`` -> (2, 2, 0)."""
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0].split("rc")[0])[:3])


def _too_old(name: str) -> bool:
    """True when ``name`` is installed below its ``MINIMUM``: it imports, and would fail a run half-way."""
    if name not in MINIMUM:
        return False
    try:
        installed = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:  # importable without metadata (a source tree): taken as it is
        return False
    return _release(installed) < _release(MINIMUM[name])


def missing_packages() -> list[str]:
    """The requirements (``requirement``) of what is not installed, or installed older than MRSynthesis needs."""
    importlib.invalidate_caches()
    return [requirement(name) for name in REQUIRED if importlib.util.find_spec(name) is None or _too_old(name)]


def consent_text(missing: list[str]) -> str:
    return (f"MRSynthesis needs {', '.join(missing)}, which Slicer's Python does not have. "
            "Install now? This downloads several hundred megabytes (PyTorch) and may take minutes; "
            "Slicer may need a restart afterwards.")


def install(missing: list[str], confirm: Callable[[str], bool]) -> bool:
    """Ask once for everything, then install; True when nothing is missing any more."""
    if not missing or not confirm(consent_text(missing)):
        return False
    import slicer

    torch = requirement("torch")
    rest = [name for name in missing if name != torch]
    if torch in missing:
        try:
            import PyTorchUtils  # the PyTorch extension
        except ImportError:
            rest.insert(0, torch)
        else:  # consent was given above, as SlicerTotalSegmentator does before calling it. installTorch has had
            # askConfirmation since 2021-08 and torchVersionRequirement since 2023-06 (SlicerPyTorch 763bbcc,
            # fe2e92e), before Slicer 5.8, the oldest this module supports
            if PyTorchUtils.PyTorchUtilsLogic().installTorch(
                    askConfirmation=False, torchVersionRequirement=f">={MINIMUM['torch']}") is None:
                return False
    if rest:
        slicer.util.pip_install(rest)
    return not missing_packages()
