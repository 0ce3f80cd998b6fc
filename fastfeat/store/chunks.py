"""Chunk and compression policy of a store's datasets, and how each dataset is created.

Features are chunked along the sample axis only, with an explicit chunk shape (never h5py's
guess); uncompressed datasets get their whole extent allocated at creation, in one piece, so the
reader can memory-map them and appending never changes HDF5 metadata.
"""

from __future__ import annotations

import h5py
import numpy as np

from . import layout


COMPRESSIONS = ("none", "lzf", "gzip")


def parse_compression(spec: str | None) -> tuple[str | None, int | None]:
    """``"none"``, ``"lzf"``, ``"gzip"`` or ``"gzip:LEVEL"`` to h5py's (compression, opts)."""
    if spec in (None, "", "none"):
        return None, None
    name, _, level = str(spec).partition(":")
    if name not in COMPRESSIONS:
        raise ValueError(f"`compression` must be none, lzf, gzip or gzip:LEVEL. Received: compression={spec!r}")
    if name == "gzip":
        if level and not level.isdigit():
            raise ValueError(f"gzip level must be 0..9. Received: compression={spec!r}")
        lvl = int(level) if level else 4
        if not 0 <= lvl <= 9:
            raise ValueError(f"gzip level must be 0..9. Received: compression={spec!r}")
        return "gzip", lvl
    if level:
        raise ValueError(f"lzf takes no level. Received: compression={spec!r}")
    return "lzf", None


def chunk_rows_for(row_shape: tuple[int, ...], dtype, capacity: int, compressed: bool = False) -> int:
    """Rows per chunk for the training-time access pattern (whole samples, random order).

    About ``TARGET_CHUNK_BYTES`` per chunk: a few samples of a feature map (one 28x28x512
    float32 map is 1.6 MB: 2 per chunk), many pooled vectors (at most ``MAX_CHUNK_ROWS``).
    Compressed chunks aim at ``TARGET_COMPRESSED_CHUNK_BYTES``: a random row costs a whole
    chunk's decompression.
    """
    row_bytes = max(1, int(np.prod(row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
    target = layout.TARGET_COMPRESSED_CHUNK_BYTES if compressed else layout.TARGET_CHUNK_BYTES
    rows = min(target // row_bytes, layout.MAX_CHUNK_ROWS, max(int(capacity), 1))
    return int(max(1, rows))


def meta_block_size(features, rows_per, capacity) -> int:
    """Room for all B-tree nodes of the chunk indexes in one metadata block, so that HDF5 does
    not interleave index nodes with the chunks it allocates: the chunks then lie back to back."""
    total = 0
    for key, spec in features.items():
        shape = spec[0]
        total += (-(-capacity // rows_per[key]) + 1) * (40 + 16 * (len(shape) + 2))
    total += 16 * (-(-capacity // 65536) + 1) * 80 + 64 * 1024
    return int(min(max(2 * total, 256 * 1024), 256 * 1024 * 1024))


def _dcpl(early: bool) -> h5py.h5p.PropDCID:
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    if early:  # reserve the whole extent now, in one piece: memory-mappable, no metadata change later
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return dcpl


def make_dataset(group, name, shape, dtype, chunk_rows, compression=None, opts=None):
    shape = tuple(int(s) for s in shape)
    early = compression is None
    return group.create_dataset(
        name,
        shape=shape,
        maxshape=(None,) + shape[1:],
        dtype=dtype,
        chunks=(max(1, min(chunk_rows, shape[0])),) + shape[1:],
        compression=compression,
        compression_opts=opts,
        dcpl=_dcpl(early),
        fill_time="never" if early else None,
        track_times=False,
    )
