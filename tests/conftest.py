"""Settings for the whole suite."""

from __future__ import annotations

import os
import sys

# The suite starts the real ``scopegate`` process several hundred times. Where the environment sets
# PYTHONDONTWRITEBYTECODE (these CI machines do), every one of them compiled every project module again:
# 0.5 s of CPU per start when idle, 3.9 s measured on a loaded machine (issue 12's crash test, 40 restarts).
# The processes inherit this environment, so they write and reuse ``__pycache__`` (git-ignored) instead.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False
