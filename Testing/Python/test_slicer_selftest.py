"""The module's own self-test (MRSynthesisTest in MRSynthesis.py) needs the Slicer application.

Inside Slicer it runs from the module's "Reload and Test" button, or as the ctest that
MRSynthesis/CMakeLists.txt registers (Slicer --testing). Here it runs only when Slicer's
PythonQt ``qt`` module is importable, i.e. under Slicer's own Python.
"""

from __future__ import annotations

import pytest


def test_module_self_test_inside_slicer():
    pytest.importorskip("qt", reason="runs inside 3D Slicer only (MRSynthesisTest: load, synthesise, saliency, "
                                     "lesion painting); outside it, the test_slicer_* files cover the same code")
    import slicer

    slicer.selfTests["MRSynthesis"]()
