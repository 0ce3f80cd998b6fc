"""Feature rows for the probes: memory budgets, streamed standardization, bounded loading.

Nothing here holds more than one chunk of rows in float64; the whole training matrix is only ever
loaded as float32, and only when it fits the memory budget.
"""

from __future__ import annotations

import os
import re

import numpy as np

#: Bytes of float64 rows handled per step when streaming over a store.
CHUNK_BYTES = 2 * 2**20
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_memory(value) -> int:
    """Bytes from an int or a string such as ``"512M"``, ``"2G"``, ``"1.5GB"``."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0:
        return int(value)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(value), re.IGNORECASE)
    if isinstance(value, bool) or m is None or float(m.group(1)) <= 0:
        raise ValueError(
            f"`max_memory` must be a positive number of bytes or e.g. '512M', '2G'. Received: max_memory={value!r}"
        )
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def default_memory_budget() -> int:
    """Half of the memory available now (Linux ``sysconf``), or 2 GiB where that is unknown."""
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")) // 2
    except (ValueError, OSError, AttributeError):
        return 2 * 2**30


def layer_key(store, layer: str | None) -> str:
    """The feature key ``layer`` names (the only one when ``None``); ValueError listing the layers."""
    try:
        store.shape(layer)
    except KeyError as e:
        raise ValueError(e.args[0]) from None
    return layer if layer is not None else store.layers[0]


def chunk_rows(width: int, itemsize: int = 8) -> int:
    """Rows per step so that one step of ``width`` values per row stays near :data:`CHUNK_BYTES`."""
    return max(8, min(4096, CHUNK_BYTES // max(1, width * itemsize)))


def check_rows(store, rows, what: str) -> np.ndarray:
    """Sorted labelled rows among ``rows`` (unlabelled rows, label -1, cannot train or evaluate)."""
    rows = np.asarray(rows, np.int64)
    labels = np.asarray(store.labels)
    kept = np.sort(rows[labels[rows] >= 0])
    if len(kept) == 0:
        raise ValueError(f"The {what} rows of {store.path!r} have no labelled row (a folder of class "
                         f"subfolders gives labels). Received: {len(rows)} rows")  # fmt: skip
    return kept


def feature_stats(view, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation (float32; 1 where a feature is constant) of the
    given rows of a flattened store view, one chunk at a time (Chan's parallel merge in float64)."""
    d = view.shape[1]
    count, mean, m2 = 0, np.zeros(d), np.zeros(d)
    step = chunk_rows(d)
    for start in range(0, len(rows), step):
        x = np.asarray(view[rows[start : start + step]], np.float64)
        n = len(x)
        cm = x.mean(axis=0)
        x -= cm
        cm2 = np.einsum("ij,ij->j", x, x)
        delta = cm - mean
        total = count + n
        mean += delta * (n / total)
        m2 += cm2 + delta**2 * (count * n / total)
        count = total
    scale = np.sqrt(m2 / max(count, 1))
    scale[~(scale > 1e-12)] = 1.0
    return mean.astype(np.float32), scale.astype(np.float32)


def load_rows(view, rows: np.ndarray, mean=None, scale=None) -> np.ndarray:
    """(len(rows), D) float32 copy of the given rows, standardized in place when mean/scale are given."""
    out = np.empty((len(rows), view.shape[1]), np.float32)
    step = chunk_rows(view.shape[1], 4)
    for start in range(0, len(rows), step):
        block = out[start : start + step]
        block[...] = view[rows[start : start + step]]
        if mean is not None:
            block -= mean
            block /= scale
    return out


def encode(labels: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Position of each store label among ``columns`` (the classes the model has)."""
    return np.searchsorted(columns, labels).astype(np.int64)
