"""Import the team's functions by the dotted paths in ``copml.yaml``.

The framework calls the team's code, never the reverse: user modules live in the project
folder and are imported fresh for that folder, so two projects may both have ``churn.py``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from copml.errors import UserCodeError


def load_function(root: Path, dotted: str, what: str) -> Callable[..., Any]:
    """``module:function`` from the project at ``root``; a clear error when it fails."""
    module_name, _, func_name = dotted.partition(":")
    root_str = str(root)
    top = module_name.split(".")[0]
    cached = sys.modules.get(top)
    cached_file = getattr(cached, "__file__", None) or ""
    if cached is not None and not cached_file.startswith(root_str):
        for name in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
            del sys.modules[name]
    if root_str in sys.path:
        sys.path.remove(root_str)
    sys.path.insert(0, root_str)  # this project's modules win over another project's
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure of user code
        raise UserCodeError(
            f"cannot import {what} {dotted!r} from {root}: {type(exc).__name__}: {exc}"
        ) from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise UserCodeError(f"{what} {dotted!r}: module {module_name!r} has no {func_name}()")
    return func
