"""Reading HDF5 chunks outside h5py (the chunk index and the filters), so chunks decompress in
parallel threads.

h5py serialises every call behind one lock; here a chunk's bytes are read with ``os.pread`` and
decoded by code that releases the GIL (zlib for deflate, a Numba ``nogil`` kernel for LZF).
Only the filters fastfeat writes are supported: deflate, shuffle and LZF.

Store files are untrusted input: every decoder checks each length and reference before it
copies, never writes more than the chunk's declared size, and reports damage as a
:class:`DamagedStoreError`.
"""

from __future__ import annotations

import zlib

import h5py
import numpy as np

FILTER_DEFLATE = h5py.h5z.FILTER_DEFLATE
FILTER_SHUFFLE = h5py.h5z.FILTER_SHUFFLE
FILTER_LZF = 32000
SUPPORTED = {FILTER_DEFLATE, FILTER_SHUFFLE, FILTER_LZF}
#: Filters that never produce more bytes than they are given (HDF5 may read them itself).
NON_EXPANDING = {FILTER_SHUFFLE, h5py.h5z.FILTER_FLETCHER32}


class DamagedStoreError(ValueError):
    """A store's bytes are damaged (or crafted): a chunk, the chunk index, ``/state``, the run
    description or a string column does not hold what the format says.

    Attributes:
        reason: what is wrong.
        path: the store file (``None`` if not known where it was raised).
        dataset: the HDF5 dataset, e.g. ``"features/block4_conv2"`` (or ``None``).
        rows: ``(first, stop)`` rows of the damaged chunk (or ``None``).
    """

    def __init__(self, reason: str, path: str | None = None, dataset: str | None = None, rows=None):
        self.reason = str(reason)
        self.path = path
        self.dataset = dataset
        self.rows = None if rows is None else (int(rows[0]), int(rows[1]))
        where = []
        if path is not None:
            where.append(f"{path!r}")
        if dataset is not None:
            where.append(f"dataset {dataset!r}")
        if self.rows is not None:
            first, last = self.rows[0], self.rows[1] - 1
            where.append(f"row {first}" if first == last else f"rows {first}..{last}")
        prefix = "damaged store " + ", ".join(where) + ": " if where else "damaged store: "
        super().__init__(prefix + self.reason)

    def __reduce__(self):  # pickled whole (e.g. from a worker process), location included
        return type(self), (self.reason, self.path, self.dataset, self.rows)


_lzf_kernel = None

#: Return codes of the LZF kernel (a negative "bytes written").
LZF_TRUNCATED, LZF_TOO_LONG, LZF_BAD_REFERENCE = -1, -2, -3
_LZF_REASONS = {
    LZF_TRUNCATED: "LZF data ends in the middle of a literal run or back reference",
    LZF_TOO_LONG: "LZF data decodes to more bytes than the chunk holds",
    LZF_BAD_REFERENCE: "LZF back reference points before the start of the chunk",
}


def _lzf_decompress_py(src: np.ndarray, dst: np.ndarray) -> int:
    """LZF (liblzf) decompression of ``src`` into ``dst``, bounds-checked as liblzf's
    ``CHECK_INPUT`` build: returns the bytes written, or a negative ``LZF_*`` code before any
    read past ``src`` or write past ``dst``."""
    ip, op, n, out_end = 0, 0, src.shape[0], dst.shape[0]
    while ip < n:
        ctrl = np.int64(src[ip])
        ip += 1
        if ctrl < 32:  # a literal run of ctrl + 1 bytes
            ctrl += 1
            if op + ctrl > out_end:
                return LZF_TOO_LONG
            if ip + ctrl > n:
                return LZF_TRUNCATED
            for k in range(ctrl):
                dst[op + k] = src[ip + k]
            ip += ctrl
            op += ctrl
        else:  # a back reference, possibly overlapping the bytes it produces
            length = ctrl >> 5
            ref = op - ((ctrl & 0x1F) << 8) - 1
            if ip >= n:
                return LZF_TRUNCATED
            if length == 7:
                length += np.int64(src[ip])
                ip += 1
                if ip >= n:
                    return LZF_TRUNCATED
            ref -= np.int64(src[ip])
            ip += 1
            length += 2
            if op + length > out_end:
                return LZF_TOO_LONG
            if ref < 0:
                return LZF_BAD_REFERENCE
            for k in range(length):
                dst[op + k] = dst[ref + k]
            op += length
    return op


def _kernel():
    global _lzf_kernel
    if _lzf_kernel is None:
        import numba

        _lzf_kernel = numba.njit(nogil=True, cache=True, boundscheck=False)(_lzf_decompress_py)
    return _lzf_kernel


def lzf_decompress(data: bytes, nbytes: int, jit: bool = True) -> np.ndarray:
    """Decompress one LZF chunk of ``nbytes`` decoded bytes (Numba-compiled unless ``jit=False``).

    Raises:
        DamagedStoreError: the data are not an LZF stream of exactly ``nbytes`` bytes.
    """
    if isinstance(nbytes, bool) or not isinstance(nbytes, (int, np.integer)) or nbytes < 0:
        raise ValueError(f"`nbytes` must be an integer >= 0. Received: nbytes={nbytes!r}")
    src = np.frombuffer(data, np.uint8)
    dst = np.empty(int(nbytes), np.uint8)
    written = int(_kernel()(src, dst) if jit else _lzf_decompress_py(src, dst))
    if written < 0:
        raise DamagedStoreError(_LZF_REASONS[written])
    if written != nbytes:
        raise DamagedStoreError(f"LZF chunk decoded to {written} bytes, expected {nbytes}")
    return dst


def inflate(data: bytes, nbytes: int) -> bytes:
    """zlib (HDF5 deflate) decompression of exactly ``nbytes`` bytes; never produces more.

    Raises:
        DamagedStoreError: corrupt, truncated, or longer than ``nbytes`` (a bomb stops there).
    """
    nbytes = int(nbytes)
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, max(nbytes, 1))
        # at the limit the stream's end (its checksum) may still be unread: one more byte says
        extra = d.decompress(d.unconsumed_tail, 1) if not d.eof and len(out) >= nbytes else b""
    except zlib.error as e:
        raise DamagedStoreError(f"deflate data are corrupt ({e})") from e
    if len(out) > nbytes or extra:
        raise DamagedStoreError(f"deflate data decode to more than the chunk's {nbytes} bytes")
    if not d.eof:
        raise DamagedStoreError(f"deflate data are truncated ({len(out)} of {nbytes} bytes)")
    return out


def unshuffle(data: np.ndarray, itemsize: int) -> np.ndarray:
    """Undo HDF5's byte shuffle (byte k of every element stored together)."""
    if itemsize == 1:
        return data
    n = data.size // itemsize
    body = data[: n * itemsize].reshape(itemsize, n).T.reshape(-1)
    return np.concatenate([body, data[n * itemsize :]]) if data.size % itemsize else np.ascontiguousarray(body)


def chunk_table(ds: h5py.Dataset) -> dict[int, tuple[int, int, int]]:
    """First row of each allocated chunk -> (byte offset, stored size, filter mask).

    Raises:
        DamagedStoreError: HDF5 cannot walk the chunk index.
    """
    table: dict[int, tuple[int, int, int]] = {}

    def visit(info):
        if info.byte_offset is not None:
            table[int(info.chunk_offset[0])] = (int(info.byte_offset), int(info.size), int(info.filter_mask))

    try:
        ds.id.chunk_iter(visit)
    except (OSError, RuntimeError) as e:
        raise DamagedStoreError(f"its chunk index cannot be read ({e})", ds.file.filename, ds.name.lstrip("/")) from e
    return table


def back_to_back(entries: list, chunk_bytes: int) -> int | None:
    """The byte offset of the first chunk when every chunk in ``entries`` (``chunk_table`` values
    in row order, ``None`` for a missing one) is stored whole and unfiltered (``chunk_bytes``,
    mask 0) right after the one before, so that the rows lie in one piece; else None."""
    if not entries or any(e is None or e[1] != chunk_bytes or e[2] for e in entries):
        return None
    first = entries[0][0]
    return first if all(e[0] == first + i * chunk_bytes for i, e in enumerate(entries)) else None


def max_stored_bytes(chunk_bytes: int) -> int:
    """The most bytes any filter fastfeat reads may store a chunk of ``chunk_bytes`` in (above
    zlib's ``compressBound``; LZF and shuffle store at most the chunk itself)."""
    return int(chunk_bytes) + (int(chunk_bytes) >> 8) + 1024


def chunk_problems(entries: list, chunk_bytes: int, file_size: int) -> dict[int, str]:
    """Why chunks cannot be read safely, by chunk number: missing from the index, a negative or
    empty extent, bytes past the end of the file, more bytes than any encoding of the chunk, or
    bytes shared with another chunk.

    Args:
        entries: for each chunk in row order, ``(offset, stored size, filter mask)`` or ``None``.
        chunk_bytes: the decoded size of one chunk.
        file_size: the size of the store file.
    """
    limit = max_stored_bytes(chunk_bytes)
    problems: dict[int, str] = {}
    spans = []
    for i, entry in enumerate(entries):
        if entry is None:
            problems[i] = "the chunk is missing from the chunk index"
            continue
        offset, size, _ = entry
        if offset < 0 or size <= 0:
            problems[i] = f"the chunk index gives offset {offset} and size {size}"
        elif offset + size > file_size:
            problems[i] = f"the chunk index points past the end of the file ({offset} + {size} > {file_size} bytes)"
        elif size > limit:
            problems[i] = f"the chunk is stored in {size} bytes, more than any encoding of its {chunk_bytes} bytes"
        else:
            spans.append((offset, offset + size, i))
    spans.sort()
    end, owner = -1, -1
    for offset, stop, i in spans:
        if offset < end:
            problems[i] = f"the chunk's bytes overlap those of chunk {owner}"
        if stop > end:
            end, owner = stop, i
    return problems


def filter_pipeline(ds: h5py.Dataset) -> list[int] | None:
    """The dataset's filter ids in write order, or ``None`` if one cannot be decoded here."""
    dcpl = ds.id.get_create_plist()
    filters = [dcpl.get_filter(i)[0] for i in range(dcpl.get_nfilters())]
    return filters if all(f in SUPPORTED for f in filters) else None


#: The most decoded bytes per stored byte: a deflate match codes 258 bytes in 2 bits; an LZF
#: back reference 264 bytes in 3.
_MAX_RATIO = {FILTER_DEFLATE: 1032, FILTER_LZF: 88, FILTER_SHUFFLE: 1}


def decode_chunk(
    raw: bytes, filters: list[int], mask: int, nbytes: int, itemsize: int, jit: bool = True
) -> np.ndarray:
    """Decode one stored chunk: apply the filters in reverse, skipping those set in ``mask``.

    No step ever holds more than ``nbytes`` decoded bytes (plus the stored chunk itself).
    ``jit=False`` runs the LZF kernel as plain Python (tests).

    Raises:
        DamagedStoreError: the chunk does not decode to exactly ``nbytes`` bytes.
    """
    ratio = 1
    for position, fid in enumerate(filters):
        if not mask & (1 << position):
            ratio *= _MAX_RATIO.get(fid, 1)
    if nbytes > len(raw) * ratio + 1024:
        raise DamagedStoreError(f"the chunk declares {nbytes} bytes, more than its {len(raw)} stored bytes can hold")
    data: bytes | np.ndarray = raw
    for position in range(len(filters) - 1, -1, -1):
        if mask & (1 << position):
            continue
        fid = filters[position]
        if fid == FILTER_DEFLATE:
            data = inflate(data if isinstance(data, bytes) else data.tobytes(), nbytes)
        elif fid == FILTER_LZF:
            data = lzf_decompress(data if isinstance(data, bytes) else data.tobytes(), nbytes, jit=jit)
        elif fid == FILTER_SHUFFLE:
            arr = data if isinstance(data, np.ndarray) else np.frombuffer(data, np.uint8)
            if arr.size != nbytes:
                raise DamagedStoreError(f"shuffled chunk holds {arr.size} bytes, expected {nbytes}")
            data = unshuffle(arr, itemsize)
        else:
            raise DamagedStoreError(f"filter {fid} cannot be decoded here")
    out = data if isinstance(data, np.ndarray) else np.frombuffer(data, np.uint8)
    if out.size != nbytes:
        raise DamagedStoreError(f"chunk decoded to {out.size} bytes, expected {nbytes}")
    return out
