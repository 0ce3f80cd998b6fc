"""Optional dependencies of the probes (``pip install "fastfeat[probe]"``), imported lazily."""

from __future__ import annotations

import contextlib
import importlib

_PIP = {"sklearn": "scikit-learn", "matplotlib": "matplotlib"}


def require(module: str):
    """Import ``module`` or raise ImportError saying what to install."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module.split(".")[0]:
            raise
        raise ModuleNotFoundError(
            f"This needs {_PIP.get(module, module)}, which is not installed: pip install \"fastfeat[probe]\"",
            name=module,
        ) from None


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, never a window)."""
    require("matplotlib")
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


@contextlib.contextmanager
def missing_as_runtime_error():
    """For the CLI: a missing optional dependency becomes a one-line error, not a traceback."""
    try:
        yield
    except ModuleNotFoundError as e:
        if "fastfeat[probe]" in str(e):
            raise RuntimeError(str(e)) from None
        raise
