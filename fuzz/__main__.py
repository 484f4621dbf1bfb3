"""``python -m fuzz --seconds N [--target T]``: see :mod:`fuzz.runner`."""

from __future__ import annotations

import sys

from .runner import main

sys.exit(main())
