"""Decoding HDF5 chunk filters outside h5py, so chunks decompress in parallel threads.

h5py serialises every call behind one lock; here a chunk's bytes are read with ``os.pread`` and
decoded by code that releases the GIL (zlib for deflate, a Numba ``nogil`` kernel for LZF).
Only the filters fastfeat writes are supported: deflate, shuffle and LZF.
"""

from __future__ import annotations

import zlib

import h5py
import numpy as np

FILTER_DEFLATE = h5py.h5z.FILTER_DEFLATE
FILTER_SHUFFLE = h5py.h5z.FILTER_SHUFFLE
FILTER_LZF = 32000
SUPPORTED = {FILTER_DEFLATE, FILTER_SHUFFLE, FILTER_LZF}

_lzf_kernel = None


def _lzf_decompress_py(src: np.ndarray, dst: np.ndarray) -> int:
    """LZF (liblzf) decompression of ``src`` into ``dst``; returns the bytes written."""
    ip, op, n = 0, 0, src.shape[0]
    while ip < n:
        ctrl = int(src[ip])
        ip += 1
        if ctrl < 32:  # a literal run of ctrl + 1 bytes
            ctrl += 1
            for k in range(ctrl):
                dst[op + k] = src[ip + k]
            ip += ctrl
            op += ctrl
        else:  # a back reference, possibly overlapping the bytes it produces
            length = ctrl >> 5
            ref = op - ((ctrl & 0x1F) << 8) - 1
            if length == 7:
                length += int(src[ip])
                ip += 1
            ref -= int(src[ip])
            ip += 1
            length += 2
            for k in range(length):
                dst[op + k] = dst[ref + k]
            op += length
    return op


def lzf_decompress(data: bytes, nbytes: int, jit: bool = True) -> np.ndarray:
    """Decompress one LZF chunk of ``nbytes`` decoded bytes (Numba-compiled unless ``jit=False``)."""
    global _lzf_kernel
    src = np.frombuffer(data, np.uint8)
    dst = np.empty(nbytes, np.uint8)
    if jit:
        if _lzf_kernel is None:
            import numba

            _lzf_kernel = numba.njit(nogil=True, cache=True)(_lzf_decompress_py)
        written = _lzf_kernel(src, dst)
    else:
        written = _lzf_decompress_py(src, dst)
    if written != nbytes:
        raise ValueError(f"LZF chunk decoded to {written} bytes, expected {nbytes}")
    return dst


def unshuffle(data: np.ndarray, itemsize: int) -> np.ndarray:
    """Undo HDF5's byte shuffle (byte k of every element stored together)."""
    if itemsize == 1:
        return data
    n = data.size // itemsize
    body = data[: n * itemsize].reshape(itemsize, n).T.reshape(-1)
    return np.concatenate([body, data[n * itemsize :]]) if data.size % itemsize else np.ascontiguousarray(body)


def filter_pipeline(ds: h5py.Dataset) -> list[int] | None:
    """The dataset's filter ids in write order, or ``None`` if one cannot be decoded here."""
    dcpl = ds.id.get_create_plist()
    filters = [dcpl.get_filter(i)[0] for i in range(dcpl.get_nfilters())]
    return filters if all(f in SUPPORTED for f in filters) else None


def decode_chunk(raw: bytes, filters: list[int], mask: int, nbytes: int, itemsize: int) -> np.ndarray:
    """Decode one stored chunk: apply the filters in reverse, skipping those set in ``mask``."""
    data: bytes | np.ndarray = raw
    for position in range(len(filters) - 1, -1, -1):
        if mask & (1 << position):
            continue
        fid = filters[position]
        if fid == FILTER_DEFLATE:
            # the output size is known: one buffer of the right size, no regrowing
            data = zlib.decompress(data if isinstance(data, bytes) else data.tobytes(), 15, nbytes)
        elif fid == FILTER_LZF:
            data = lzf_decompress(data if isinstance(data, bytes) else data.tobytes(), nbytes)
        elif fid == FILTER_SHUFFLE:
            arr = data if isinstance(data, np.ndarray) else np.frombuffer(data, np.uint8)
            data = unshuffle(arr, itemsize)
    out = data if isinstance(data, np.ndarray) else np.frombuffer(data, np.uint8)
    if out.size != nbytes:
        raise ValueError(f"chunk decoded to {out.size} bytes, expected {nbytes}")
    return out
