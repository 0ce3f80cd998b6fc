"""Byte-string columns of a store (paths, failure reasons): one ``ends`` entry per row and one
``bytes`` blob, both preallocated (see :mod:`fastfeat.store.layout`).
"""

from __future__ import annotations

import h5py
import numpy as np

from . import layout
from .chunks import make_dataset


class StringColumn:
    """A column of byte strings as ``ends`` (one per row) and one ``bytes`` blob, both preallocated."""

    def __init__(self, group: h5py.Group):
        self.ends = group[layout.ENDS]
        self.blob = group[layout.BYTES]

    @staticmethod
    def create(parent: h5py.Group, name: str, rows: int, nbytes: int) -> None:
        g = parent.create_group(name, track_order=False)
        make_dataset(g, layout.ENDS, (rows,), np.int64, 65536)
        make_dataset(g, layout.BYTES, (max(nbytes, 1),), np.uint8, 1 << 20)

    def write(self, start: int, used: int, items: list[bytes], grow) -> int:
        """Write ``items`` as rows ``start...`` after ``used`` blob bytes; returns the new byte count."""
        lengths = np.fromiter((len(b) for b in items), np.int64, len(items))
        ends = used + np.cumsum(lengths)
        total = int(ends[-1]) if len(items) else used
        if total > self.blob.shape[0]:
            grow(self.blob, max(total, 2 * self.blob.shape[0]))
        if total > used:
            self.blob[used:total] = np.frombuffer(b"".join(items), np.uint8)
        self.ends[start : start + len(items)] = ends
        return total
