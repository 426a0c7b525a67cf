"""Import a user's object named by a spec: `module:name` (an importable module) or `file.py:name` (a file).

Reward functions (`rewards.sources`) and environments (`envs.base`) are given this way on the command line
and in recipes; a spec that does not resolve is one AlignkitError line naming what is missing.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

from alignkit.errors import AlignkitError


def load_object(spec: str, what: str) -> Any:
    """The object `name` of `module:name` or `file.py:name`; `what` names it in errors ("reward", ...)."""
    target, colon, name = spec.rpartition(":")
    if not colon or not target or not name:
        raise AlignkitError(f"{what}: {spec!r} is not module:name or file.py:name")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise AlignkitError(f"{target}: file: {what} file does not exist")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as e:  # noqa: BLE001 - the user's file: one line, not a traceback
            raise AlignkitError(f"{target}: {what}: the file failed to load ({type(e).__name__}: {e})") from None
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise AlignkitError(f"{what}: cannot import {target!r} ({e})") from None
    found = getattr(module, name, None)
    if found is None:
        raise AlignkitError(f"{what}: {target!r} has no {name!r}; the spec is module:name or file.py:name")
    return found
