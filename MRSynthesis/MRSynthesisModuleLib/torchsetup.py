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
import importlib.util
from collections.abc import Callable

REQUIRED = ("torch", "safetensors", "nibabel", "matplotlib", "tqdm")  # import names, which are also the pip names


def missing_packages() -> list[str]:
    importlib.invalidate_caches()
    return [name for name in REQUIRED if importlib.util.find_spec(name) is None]


def consent_text(missing: list[str]) -> str:
    return (f"MRSynthesis needs {', '.join(missing)}, which Slicer's Python does not have. "
            "Install now? This downloads several hundred megabytes (PyTorch) and may take minutes; "
            "Slicer may need a restart afterwards.")


def install(missing: list[str], confirm: Callable[[str], bool]) -> bool:
    """Ask once for everything, then install; True when nothing is missing any more."""
    if not missing or not confirm(consent_text(missing)):
        return False
    import slicer

    rest = [name for name in missing if name != "torch"]
    if "torch" in missing:
        try:
            import PyTorchUtils  # the PyTorch extension
        except ImportError:
            rest.insert(0, "torch")
        else:  # consent was given above, as SlicerTotalSegmentator does before calling it
            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
                return False
    if rest:
        slicer.util.pip_install(rest)
    return not missing_packages()
