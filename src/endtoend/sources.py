"""Where code lives: torch's, endtoend's and Python's own files, told apart from the user's.

The audit reports a cut at the user's own file and line, and `fit` tells the user's own
exceptions from torch's refusals of a shape or dtype; both ask the same question of a frame.
"""

from __future__ import annotations

import os
import sysconfig

import torch

TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
ENDTOEND_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
STDLIB_DIR = sysconfig.get_paths()["stdlib"] + os.sep

_library_cache: dict[str, bool] = {}


def in_torch_or_endtoend(filename: str) -> bool:
    return filename.startswith((TORCH_DIR, ENDTOEND_DIR))


def is_library(filename: str) -> bool:
    """Whether code in `filename` is torch's, endtoend's or Python's own, not the user's."""
    known = _library_cache.get(filename)
    if known is None:
        known = _library_cache[filename] = filename.startswith((TORCH_DIR, ENDTOEND_DIR, STDLIB_DIR, "<frozen"))
    return known
