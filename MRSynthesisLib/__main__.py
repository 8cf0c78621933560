"""``python -m MRSynthesisLib`` is the same program as ``mrsynthesis``."""

import sys

from .cli import main

sys.exit(main())
