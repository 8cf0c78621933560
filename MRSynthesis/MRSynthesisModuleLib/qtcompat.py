"""One ``qt`` namespace for the panel: Slicer's PythonQt ``qt`` inside Slicer, Qt.py outside.

Outside Slicer (tests, screenshots) Qt.py over PySide6 stands in, so the same panel code
runs on real Qt widgets in both. PythonQt exposes Qt properties as attributes while
PySide6 exposes getter methods, so code that reads a property goes through ``prop``.
"""

from __future__ import annotations

import types
from typing import Any

try:  # inside Slicer
    import qt  # type: ignore[import-not-found]

    IN_SLICER = True
except ImportError:  # outside Slicer: Qt.py over PySide6
    from Qt import QtCore, QtGui, QtWidgets

    qt = types.SimpleNamespace(**{name: getattr(module, name)
                                  for module in (QtCore, QtGui, QtWidgets)
                                  for name in dir(module) if name.startswith("Q")})
    IN_SLICER = False


def load_ui(path: str) -> Any:
    """The top widget of a Qt Designer file (plain Qt widgets only, so both loaders can build it)."""
    if IN_SLICER:
        import slicer

        return slicer.util.loadUI(path)
    from Qt import QtCompat

    return QtCompat.loadUi(path)


def prop(widget: Any, name: str) -> Any:
    """Read a Qt property: an attribute in PythonQt, a getter method in PySide6."""
    value = getattr(widget, name)
    return value() if callable(value) else value


def child(widget: Any, name: str) -> Any:
    """The descendant named ``name`` (``findChild`` works in both bindings)."""
    found = widget.findChild(qt.QWidget, name)  # as Slicer does (DICOM.py)
    if found is None:
        raise LookupError(f"the panel has no widget named {name!r}")
    return found
