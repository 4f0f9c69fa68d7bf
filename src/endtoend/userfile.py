"""Importing a user's own Python file by path: a recipe for `e2e compare my_recipe.py`, a
model factory for `e2e audit model.py:make`."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from types import ModuleType

from endtoend.errors import UsageError



def import_file(path: str, what: str) -> ModuleType:
    """Import the .py file at `path` as its own module and return it.

    The module is registered in sys.modules (dataclasses and pickles defined in it need
    that), and its folder is importable while it runs, so it may import its siblings. A
    missing file or a failed import is one UsageError line naming `what` ("recipe file",
    "model file"); the file's own exception is chained to it for its traceback.
    """
    if not os.path.isfile(path):
        raise UsageError(f"no such {what}: {path}")
    try:
        return _exec_file(path)
    except Exception as error:
        raise UsageError(f"could not import {what} {path}: {one_line(error)}") from error


def _exec_file(path: str) -> ModuleType:
    module_name = "_endtoend_user_" + re.sub(r"\W", "_", os.path.abspath(path))
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    folder = os.path.dirname(os.path.abspath(path))
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    return module


def one_line(error: BaseException) -> str:
    """`TypeName: first line of the message`, for a one-line error."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")
