"""Argument checks shared by the public functions: one message style, one place each.

Every check names the argument and ends with ``Received: name=value``. This module imports
nothing from fastfeat and nothing heavy, so any layer can use it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np


def is_int(value) -> bool:
    """An int (NumPy's too), never a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def positive_int(value, name: str, allow_none: bool = False) -> int | None:
    """``value`` as an int >= 1 (or ``None`` when allowed)."""
    if value is None and allow_none:
        return None
    if not is_int(value) or value < 1:
        alternative = " or None" if allow_none else ""
        raise ValueError(f"`{name}` must be a positive int{alternative}. Received: {name}={value!r}")
    return int(value)


def choice(value, name: str, allowed: Sequence):
    """``value`` if it is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {', '.join(map(str, allowed))}. Received: {name}={value!r}")
    return value


def image_size(value, name: str = "image_size", allow_none: bool = True) -> tuple[int, int] | None:
    """An image size as (height, width): an int N (N x N), a pair, or the text ``"N"``,
    ``"HxW"`` or ``"H,W"``; ``None`` (the model's own size) when allowed."""
    if value is None and allow_none:
        return None
    size = None
    if is_int(value):
        size = (int(value), int(value))
    elif isinstance(value, str):
        parts = [p.strip() for p in value.lower().replace("x", ",").split(",")]
        if parts and all(p.isdigit() for p in parts) and len(parts) in (1, 2):
            size = (int(parts[0]), int(parts[-1]))
    elif isinstance(value, (tuple, list, np.ndarray)) and len(value) == 2 and all(is_int(v) for v in value):
        size = (int(value[0]), int(value[1]))
    if size is None or min(size) < 1:
        raise ValueError(
            f"`{name}` must be a positive int, a (height, width) pair of positive ints, or 'HxW'. "
            f"Received: {name}={value!r}"
        )
    return size


def output_dir(path) -> None:
    """Raise if the folder a file is to be written in is missing or not writable."""
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"The output directory does not exist: {parent!r}. Received: output={path!r}")
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"The output directory is not writable: {parent!r}. Received: output={path!r}")
