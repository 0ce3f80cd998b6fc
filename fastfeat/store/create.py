"""Creating a store: every dataset at its full size, written under a temporary name and renamed
into place, so a store either exists whole or not at all (see :mod:`fastfeat.store.layout`).
"""

from __future__ import annotations

import json
import os

import h5py
import numpy as np

from . import layout
from .chunks import chunk_rows_for, make_dataset, meta_block_size, parse_compression
from .guards import UNCLOSABLE, reserve, space_error
from .strings import StringColumn


def encode_meta(meta: dict) -> bytes:
    encoded = json.dumps(meta).encode("utf-8")  # ASCII: json escapes the rest, surrogates included
    if len(encoded) > layout.META_BYTES:
        raise ValueError(
            f"`meta` must encode to at most {layout.META_BYTES} bytes of JSON. Received: {len(encoded)} bytes"
        )
    return encoded


def create_store(path: str, features: dict, capacity: int, class_names: list[str], meta: dict, compression=None,
                 chunk_rows: int | None = None, fill=None) -> h5py.File:
    """Write the whole empty store under a temporary name, then rename it into place.

    ``features`` values are (row shape, dtype) or (row shape, dtype, chunk rows, compression);
    ``fill(f)`` may copy rows into the new file before it replaces ``path``.
    Returns the file, open for writing.
    """
    capacity = max(int(capacity), 1)
    specs = {}
    for key, spec in features.items():
        shape, dtype = tuple(int(d) for d in spec[0]), np.dtype(spec[1])
        if len(spec) > 2:
            rows = spec[2]
        else:
            rows = int(chunk_rows) if chunk_rows else chunk_rows_for(
                shape, dtype, capacity, compressed=parse_compression(compression)[0] is not None
            )
        specs[key] = (shape, dtype, rows, parse_compression(spec[3] if len(spec) > 3 else compression))
    tmp = path + ".creating"
    if os.path.exists(tmp):
        os.unlink(tmp)
    block = meta_block_size(specs, {k: v[2] for k, v in specs.items()}, capacity)
    f = h5py.File(tmp, "w", libver=layout.LIBVER, track_order=False, meta_block_size=block)
    try:
        encoded = encode_meta(meta)
        state = np.zeros(layout.STATE_SIZE, np.int64)
        state[layout.S_CAPACITY] = capacity
        state[layout.S_META_LEN] = len(encoded)
        f.create_dataset(layout.STATE, data=state, track_times=False)  # contiguous: one small write
        slots = np.zeros((2, layout.META_BYTES), np.uint8)
        slots[0, : len(encoded)] = np.frombuffer(encoded, np.uint8)
        f.create_dataset(layout.META_JSON, data=slots, track_times=False)
        group = f.create_group(layout.FEATURES)
        for key, (shape, dtype, rows, (comp, opts)) in specs.items():
            make_dataset(group, key, (capacity,) + shape, dtype, rows, comp, opts)
        make_dataset(f, layout.LABELS, (capacity,), np.int64, 65536)
        make_dataset(f, layout.INDEX, (capacity,), np.int64, 65536)
        make_dataset(f, layout.COPY, (capacity,), np.int32, 65536)
        StringColumn.create(f, layout.PATHS, capacity, capacity * layout.PATH_BYTES_PER_ROW)
        fail = f.create_group(layout.FAILURES)
        make_dataset(fail, "index", (capacity,), np.int64, 65536)
        StringColumn.create(fail, "paths", capacity, capacity * layout.PATH_BYTES_PER_ROW // 4)
        StringColumn.create(fail, "reasons", capacity, capacity * layout.REASON_BYTES_PER_ROW // 4)
        names = np.empty(len(class_names), dtype=object)  # bytes: any folder name, even non-UTF-8
        names[:] = [os.fsencode(str(c)) for c in class_names]
        f.create_dataset(layout.CLASS_NAMES, data=names, dtype=h5py.vlen_dtype(bytes), track_times=False)
        f.attrs[layout.ATTR_FORMAT] = layout.FORMAT_VERSION
        f.attrs[layout.ATTR_META] = json.dumps(meta)
        f.flush()
        reserve(tmp)
        if fill is not None:
            fill(f)
            f.flush()
        os.replace(tmp, path)
    except BaseException as e:
        try:
            f.close()
        except (OSError, RuntimeError):
            UNCLOSABLE.append(f)  # HDF5 cannot flush what the disk refused; the temporary file goes anyway
        if os.path.exists(tmp):
            os.unlink(tmp)
        full = space_error(path, e, created=fill is None)  # a rebuild (fill) leaves the old store as it was
        if full is not None:
            raise full from e
        raise
    return f
