"""Checking and repairing a store left by a writer that died (kill -9, disk full) before resuming it."""

from __future__ import annotations

import io
import os

import h5py
import numpy as np

from . import codecs, layout
from .verify import layout_problems, read_meta


class UnrecoverableStoreError(RuntimeError):
    """A store cannot be resumed (damaged, or not a fastfeat store); it must be written again."""


def superblock_eoa(path: str) -> int | None:
    """The end-of-file address a version-0 superblock records (``None`` if not such a file)."""
    with open(path, "rb") as fh:
        head = fh.read(48)
    if len(head) < 48 or head[:8] != b"\x89HDF\r\n\x1a\n" or head[8] != 0 or head[13] != 8:
        return None
    return int.from_bytes(head[40:48], "little")


def repair_short_file(path: str) -> int | None:
    """A write that failed part-way (disk full) can leave the file shorter than the end HDF5
    recorded, and HDF5 then refuses to open it. Extend it with zeros to that end so it opens; the
    caller must then check that no committed data lies past the returned original size.

    Returns:
        The original size if the file was extended, else ``None``.
    """
    eoa = superblock_eoa(path)
    size = os.path.getsize(path)
    if eoa is None or eoa <= size:
        return None
    os.truncate(path, eoa)
    return size


class _ZeroPadded(io.RawIOBase):
    """A read-only view of a file extended with zeros to ``size`` bytes (for h5py's fileobj
    driver): a file cut short by a full disk is examined without extending it on disk."""

    def __init__(self, path: str, size: int):
        super().__init__()
        self._fh = open(path, "rb")
        self._real = os.fstat(self._fh.fileno()).st_size
        self._size = max(size, self._real)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        n = max(0, min(len(view), self._size - self._pos))
        got = 0
        if self._pos < self._real:
            data = os.pread(self._fh.fileno(), min(n, self._real - self._pos), self._pos)
            got = len(data)
            view[:got] = data
        view[got:n] = bytes(n - got)
        self._pos += n
        return n

    def close(self) -> None:
        self._fh.close()
        super().close()


def check_resumable_path(path: str) -> str | None:
    """Why the file at ``path`` cannot be resumed, or ``None``; examined read-only, never changed
    (a foreign HDF5 file is refused before :func:`repair_short_file` or a write open touch it)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as e:
        return f"it cannot be read ({e})"
    if head != b"\x89HDF\r\n\x1a\n":
        return "it is not an HDF5 file (not a fastfeat store)"
    size = os.path.getsize(path)
    eoa = superblock_eoa(path)
    raw = None
    try:
        if eoa is not None and eoa > size:
            raw = _ZeroPadded(path, eoa)
            f = h5py.File(raw, "r")
        else:
            f = h5py.File(path, "r", locking=False)
    except OSError as e:
        if raw is not None:
            raw.close()
        return f"HDF5 cannot open it ({e})"
    try:
        if f.attrs.get(layout.ATTR_FORMAT) is None or layout.STATE not in f:
            return f"it is not a fastfeat store (no {layout.ATTR_FORMAT!r} attribute)"
        try:
            return check_resumable_file(f, size)
        except (KeyError, ValueError, OSError, TypeError) as e:
            return f"its structure is damaged ({e})"
    finally:
        f.close()
        if raw is not None:
            raw.close()


def safe_cut(index: np.ndarray, limit: int) -> int:
    """The largest row count ``<= limit`` that splits no image: no catalog position in
    ``index[:cut]`` has rows in ``index[cut:]`` (its augmented copies stay with it)."""
    index = np.asarray(index)
    cut = min(int(limit), len(index))
    if cut == len(index):
        return cut
    _, first = np.unique(index, return_index=True)
    first_of = dict(zip(np.unique(index).tolist(), first.tolist()))
    while cut > 0:
        m = min(first_of[i] for i in set(index[cut:].tolist()))
        if m >= cut:
            break
        cut = m
    return int(cut)


def check_resumable_file(f: h5py.File, intact_bytes: int | None = None) -> str | None:
    """Why an opened file cannot be resumed, or ``None`` if it is intact up to its committed rows.

    ``intact_bytes``: the file's bytes past this offset were lost (see :func:`repair_short_file`).
    """
    if f.attrs.get(layout.ATTR_FORMAT) != layout.FORMAT_VERSION:
        return f"it is not a fastfeat store of format {layout.FORMAT_VERSION}"
    if layout.STATE not in f or f[layout.STATE].shape != (layout.STATE_SIZE,):
        return "it has no valid /state"
    problems = layout_problems(f)
    if problems:
        return f"its layout is not what fastfeat writes ({problems[0]})"
    state = f[layout.STATE][:]
    rows, failed = int(state[layout.S_ROWS]), int(state[layout.S_FAILED])
    try:
        read_meta(f, state)
    except (ValueError, KeyError, UnicodeDecodeError) as e:
        return f"its run description cannot be read ({e})"
    if rows < 0 or failed < 0 or rows > f[layout.LABELS].shape[0] or failed > f[layout.FAILURE_INDEX].shape[0]:
        return f"its state is inconsistent (rows={rows}, failed={failed})"
    checks = [
        (f[layout.PATHS], rows, layout.S_PATH_BYTES),
        (f[layout.FAILURE_PATHS], failed, layout.S_FPATH_BYTES),
        (f[layout.FAILURE_REASONS], failed, layout.S_FREASON_BYTES),
    ]
    for group, n, slot in checks:
        end = int(group[layout.ENDS][n - 1]) if n else 0
        if end != int(state[slot]) or end > group[layout.BYTES].shape[0]:
            return f"the string column {group.name} disagrees with its state"
    size = os.path.getsize(f.filename) if intact_bytes is None else intact_bytes
    for name, n in ((layout.LABELS, rows), (layout.INDEX, rows), (layout.COPY, rows), (layout.FAILURE_INDEX, failed)):
        if n and not _in_file(f[name], size):
            return f"{name} lies past the end of the file"
    for group, n, slot in checks:
        if n and not (_in_file(group[layout.ENDS], size) and _in_file(group[layout.BYTES], size)):
            return f"{group.name} lies past the end of the file"
    for key, ds in f[layout.FEATURES].items():
        if ds.shape[0] < rows:
            return f"features {key!r} hold fewer rows than committed"
        if rows == 0:
            continue
        if ds.compression is None:
            if not _in_file(ds, size):
                return f"features {key!r} lie past the end of the file"
            continue
        if codecs.filter_pipeline(ds) is None:  # HDF5 would inflate them with no memory bound
            return f"features {key!r} use filters fastfeat does not decode"
        # compressed chunks are allocated as they are written: every committed one must exist
        needed = -(-rows // ds.chunks[0])
        seen = []
        ds.id.chunk_iter(lambda info: seen.append((info.chunk_offset[0], info.byte_offset, info.size)))
        have = {c for c, off, n in seen if off is not None and n > 0 and off + n <= size}
        if any(i * ds.chunks[0] not in have for i in range(needed)):
            return f"committed chunks of features {key!r} are missing"
    return None


def copy_committed_rows(src: h5py.Dataset, dst: h5py.Dataset, rows: int) -> np.ndarray:
    """Copy ``src[:rows]`` into ``dst``: whole compressed chunks as stored bytes (each decoded once
    to check it). Returns the rows of a last partial compressed chunk (not written)."""
    if src.compression is None:
        for a in range(0, rows, 4096):
            dst[a : min(a + 4096, rows)] = src[a : min(a + 4096, rows)]
        return np.empty((0,) + src.shape[1:], src.dtype)
    cr = src.chunks[0]
    full = rows // cr
    zeros = (0,) * (src.ndim - 1)
    filters = codecs.filter_pipeline(src)
    nbytes = cr * int(np.prod(src.shape[1:], dtype=np.int64)) * src.dtype.itemsize
    for c in range(full):
        mask, raw = src.id.read_direct_chunk((c * cr,) + zeros)
        if filters is not None:
            codecs.decode_chunk(raw, filters, mask, nbytes, src.dtype.itemsize)  # raises if damaged
        else:
            src[c * cr : (c + 1) * cr]
        dst.id.write_direct_chunk((c * cr,) + zeros, raw, filter_mask=mask)
    return src[full * cr : rows]


def _in_file(ds: h5py.Dataset, size: int) -> bool:
    """Whether every allocated chunk (or the contiguous data) of ``ds`` lies within ``size`` bytes."""
    if ds.chunks is None:
        offset = ds.id.get_offset()
        return offset is None or offset + ds.id.get_storage_size() <= size
    ends = []
    ds.id.chunk_iter(lambda info: ends.append(0 if info.byte_offset is None else info.byte_offset + info.size))
    return max(ends, default=0) <= size
