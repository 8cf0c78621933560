"""MRSynthesisLib: multi-contrast brain MRI synthesis without Slicer or Qt.

Every front end (the Slicer panel, Slicer batch mode, the ``mrsynthesis`` command
line and ``training/``) goes through this package; see ``docs/architecture.md``.
"""

__version__ = "0.1.0"
