"""Makes the Slicer module's code importable in tests: MRSynthesis/ (its MRSynthesisModuleLib),
MRSynthesis/Scripts (batch.py) and the repository root (MRSynthesisLib) on sys.path; Qt drawn offscreen."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "MRSynthesis"
for folder in (MODULE_DIR / "Scripts", MODULE_DIR, REPO):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
