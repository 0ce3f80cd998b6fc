"""Array-like views of a feature dataset that bypass h5py for row reads.

:func:`map_features` returns, in order of preference:

* one read-only ``np.memmap`` when the dataset's bytes lie in one uncompressed piece
  (contiguous layout, or chunks back to back as the writer allocates them);
* a :class:`ChunkedArray` of per-chunk memmap views when uncompressed chunks are scattered;
* a :class:`ChunkedArray` that reads compressed chunks with ``os.pread`` and decodes them in
  parallel threads (:mod:`fastfeat.store.codecs`);
* an :class:`H5Rows` (plain h5py reads) for layouts it does not know.

All of them index like NumPy arrays along the first axis: ints, slices, sorted or unsorted
integer arrays (repeats allowed), boolean masks, and extra trailing indices.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np

from . import codecs
from .codecs import DamagedStoreError, back_to_back, chunk_problems, chunk_table

#: Decoded chunks kept per compressed view (sequential int/slice reads hit it).
CACHE_BYTES = 64 * 1024 * 1024


def _rows_index(first, rows: int):
    """Normalise a first-axis index to an int or a 1-D int64 array of rows (bounds checked)."""
    if isinstance(first, (int, np.integer)):
        i = int(first)
        if not -rows <= i < rows:
            raise IndexError(f"index {i} is out of bounds for axis 0 with size {rows}")
        return i + rows if i < 0 else i
    if isinstance(first, slice):
        return np.arange(*first.indices(rows), dtype=np.int64)
    idx = np.asarray(first)
    if idx.dtype == bool:
        if idx.shape != (rows,):
            raise IndexError(f"boolean index of shape {idx.shape} does not match axis 0 with size {rows}")
        return np.flatnonzero(idx).astype(np.int64)
    if idx.dtype.kind not in "iu":
        raise IndexError(f"only integers, slices, integer arrays and boolean masks index rows. Received: {first!r}")
    idx = idx.astype(np.int64).reshape(-1)
    if idx.size and (idx.min() < -rows or idx.max() >= rows):
        raise IndexError(f"index out of bounds for axis 0 with size {rows}")
    return np.where(idx < 0, idx + rows, idx)


def _split(item):
    """(first-axis index, the rest); a leading ``...`` keeps every row and applies to the rest."""
    first, rest = (item[0], item[1:]) if isinstance(item, tuple) and item else (item, ())
    if isinstance(item, tuple) and not item:
        first = slice(None)
    if first is Ellipsis:
        return slice(None), (Ellipsis,) + tuple(rest)
    return first, tuple(rest)


class _RowArray:
    """Shared NumPy-like surface: shape, dtype, len, ``__array__``, ``reshape`` (subclasses
    provide ``__getitem__`` and ``flat``)."""

    shape: tuple[int, ...]
    dtype: np.dtype
    #: whether rows are zero-copy views of a memory map
    mapped: bool = False

    def flat(self):
        raise NotImplementedError

    def reshape(self, *shape):
        """Only the flattening ``reshape(len(a), -1)`` is supported (it is free: see ``flat``)."""
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], tuple) else shape
        width = int(np.prod(self.shape[1:], dtype=np.int64))
        if len(shape) == 2 and shape[0] in (self.shape[0], -1) and shape[1] in (width, -1):
            return self.flat()
        raise ValueError(f"only reshape(len(a), -1) is supported on a {type(self).__name__}. Received: shape={shape}")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None):
        data = self[:]
        return data.astype(dtype, copy=False) if dtype is not None else data

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype})"


class ChunkedArray(_RowArray):
    """Rows stored in fixed-size chunks along axis 0; ``chunk(i)`` gives chunk ``i``'s rows.

    Args:
        shape: (rows, ...) exposed.
        dtype: element type.
        chunk_rows: rows per chunk.
        chunk: function of a chunk number returning its rows as an array (a view when mapped).
        mapped: whether ``chunk`` returns zero-copy memmap views.
        workers: threads that decode chunks in parallel (compressed only).
    """

    def __init__(self, shape, dtype, chunk_rows: int, chunk, mapped: bool, workers: int = 0):
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.chunk_rows = int(chunk_rows)
        self._chunk = chunk
        self.mapped = mapped
        self.workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def _chunks(self, ids: list[int]) -> list[np.ndarray]:
        if self.workers > 1 and len(ids) > 1:
            with self._pool_lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="fastfeat-decode")
            return list(self._pool.map(self._chunk, ids))
        return [self._chunk(i) for i in ids]

    def __getitem__(self, item):
        first, rest = _split(item)
        idx = _rows_index(first, self.shape[0])
        cr = self.chunk_rows
        if isinstance(idx, int):
            row = self._chunk(idx // cr)[idx % cr]
            return row[rest] if rest else row  # a view when mapped
        if idx.size == 0:
            out = np.empty((0,) + self.shape[1:], self.dtype)
            return out[(slice(None),) + rest] if rest else out
        ids = idx // cr
        if isinstance(first, slice) and ids[0] == ids[-1] and (idx.size == 1 or np.all(np.diff(idx) == 1)):
            out = self._chunk(int(ids[0]))[idx[0] - ids[0] * cr : idx[-1] - ids[0] * cr + 1]  # a view if mapped
            return out[(slice(None),) + rest] if rest else out
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        cuts = np.flatnonzero(np.diff(sorted_ids)) + 1
        groups = np.split(order, cuts)
        wanted = [int(ids[g[0]]) for g in groups]
        out = np.empty((idx.size,) + self.shape[1:], self.dtype)
        for g, c, data in zip(groups, wanted, self._chunks(wanted)):
            out[g] = data[idx[g] - c * cr]
        return out[(slice(None),) + rest] if rest else out

    def flat(self) -> ChunkedArray:
        """The same rows as a (N, -1) array, sharing the chunks (no copy)."""
        width = int(np.prod(self.shape[1:], dtype=np.int64))
        chunk = self._chunk

        def flat_chunk(i):
            c = chunk(i)
            return c.reshape(c.shape[0], width)

        view = ChunkedArray((self.shape[0], width), self.dtype, self.chunk_rows, flat_chunk, self.mapped, self.workers)
        view._pool, view._pool_lock = self._pool, self._pool_lock
        return view

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


class RowSubset(_RowArray):
    """Chosen rows of a row view (``rows``: sorted positions), read only when indexed: a subset
    of a memory-mapped store without copying it (``np.asarray`` loads just these rows)."""

    def __init__(self, base, rows: np.ndarray):
        self.base = base
        self.rows = np.asarray(rows, np.int64)
        self.shape = (len(self.rows),) + tuple(base.shape[1:])
        self.dtype = np.dtype(base.dtype)
        self.mapped = bool(isinstance(base, np.memmap) or getattr(base, "mapped", False))

    def __getitem__(self, item):
        first, rest = _split(item)
        idx = _rows_index(first, self.shape[0])
        if isinstance(idx, int):
            out = np.asarray(self.base[int(self.rows[idx])])
            return out[rest] if rest else out
        out = np.asarray(self.base[self.rows[idx]])
        return out[(slice(None),) + rest] if rest else out

    def flat(self) -> RowSubset:
        """The same rows as a (N, -1) array."""
        base = self.base
        flat = base.reshape(len(base), -1) if isinstance(base, np.ndarray) else base.flat()
        return RowSubset(flat, self.rows)


class H5Rows(_RowArray):
    """Rows of an HDF5 dataset read through h5py (layouts :func:`map_features` cannot map).

    With ``flat=True`` every row is returned flattened, as for ``reshape(len(a), -1)``.
    """

    def __init__(self, ds: h5py.Dataset, rows: int, flat: bool = False):
        self._ds = ds
        self._flat = flat
        row_shape = tuple(ds.shape[1:])
        if flat:
            row_shape = (int(np.prod(row_shape, dtype=np.int64)),)
        self.shape = (int(rows),) + row_shape
        self.dtype = ds.dtype

    def _h5(self, sel, first: int, stop: int):
        """``ds[sel]`` through h5py; a failing read becomes a :class:`DamagedStoreError` naming
        the first chunk in rows ``[first, stop)`` that cannot be read."""
        try:
            return self._ds[sel]
        except (OSError, RuntimeError) as e:
            raise _locate_h5_damage(self._ds, first, stop, e) from e

    def _read(self, idx):
        if isinstance(idx, int):
            data = self._h5(idx, idx, idx + 1)
            return data.reshape(self.shape[1:]) if self._flat else data
        if idx.size == 0:
            return np.empty((0,) + self.shape[1:], self.dtype)
        unique, inverse = np.unique(idx, return_inverse=True)
        lo, hi = int(unique[0]), int(unique[-1]) + 1
        data = self._h5(slice(lo, hi) if unique.size == hi - lo else unique, lo, hi)
        out = data[inverse.reshape(-1)]
        return out.reshape((idx.size,) + self.shape[1:]) if self._flat else out

    def __getitem__(self, item):
        first, rest = _split(item)
        out = self._read(_rows_index(first, self.shape[0]))
        if not rest:
            return out
        return out[rest] if out.ndim == len(self.shape) - 1 else out[(slice(None),) + rest]

    def flat(self) -> H5Rows:
        """The same rows as a (N, -1) array."""
        return H5Rows(self._ds, self.shape[0], flat=True)


def _name(ds: h5py.Dataset) -> str:
    return ds.name.lstrip("/")


def read_rows(ds: h5py.Dataset, stop: int | None = None) -> np.ndarray:
    """``ds[:stop]`` (``ds[()]`` if ``stop`` is None) through h5py; a failing read raises a
    :class:`DamagedStoreError` naming the file, the dataset and the first chunk it cannot read."""
    try:
        return ds[()] if stop is None else ds[:stop]
    except (OSError, RuntimeError) as e:
        if stop is None:
            raise DamagedStoreError(f"HDF5 cannot read it ({e})", ds.file.filename, _name(ds)) from e
        raise _locate_h5_damage(ds, 0, stop, e) from e


def _locate_h5_damage(ds: h5py.Dataset, first: int, stop: int, error: BaseException) -> DamagedStoreError:
    """The first chunk of ``ds`` in rows ``[first, stop)`` that HDF5 cannot read, as an error."""
    path, name = ds.file.filename, _name(ds)
    step = int(ds.chunks[0]) if ds.chunks else max(stop - first, 1)
    a = first - first % step
    while a < stop:
        b = min(a + step, int(ds.shape[0]))
        try:
            ds[a:b]
        except (OSError, RuntimeError) as e:
            return DamagedStoreError(f"HDF5 cannot read it ({e})", path, name, (a, b))
        a = b
    return DamagedStoreError(f"HDF5 cannot read it ({error})", path, name, (first, stop))


def _chunk_rows(i: int, chunk_rows: int, rows: int) -> tuple[int, int]:
    return i * chunk_rows, min((i + 1) * chunk_rows, rows)


def _file_map(path: str) -> np.memmap:
    return np.memmap(path, dtype=np.uint8, mode="r")


def _fallback(ds: h5py.Dataset, rows: int, why: str):
    """H5Rows for a layout not read here, unless HDF5 would have to decompress it: its filters
    grow their output without a bound, so a crafted chunk could exhaust memory."""
    dcpl = ds.id.get_create_plist()
    filters = [dcpl.get_filter(i)[0] for i in range(dcpl.get_nfilters())]
    if any(f not in codecs.NON_EXPANDING for f in filters):
        raise DamagedStoreError(
            f"it is compressed with {why} (filters {filters}, chunks {ds.chunks}, dtype {ds.dtype}), a layout "
            "fastfeat does not write and will not decompress through HDF5 (its memory use has no bound)",
            ds.file.filename, _name(ds),
        )  # fmt: skip
    return H5Rows(ds, rows)


def map_features(path: str, ds: h5py.Dataset, rows: int, workers: int | None = None):
    """A NumPy-like read-only view of ``ds[:rows]`` that does not go through h5py for rows.

    Args:
        path: the HDF5 file (opened again with ``mmap``/``pread``).
        ds: the feature dataset, (N, ...) chunked along axis 0 only (or contiguous).
        rows: the committed rows to expose.
        workers: decompression threads for compressed data (default: up to 4, one per core).

    Raises:
        DamagedStoreError: ``rows`` exceeds the dataset, its data or chunk index point outside
            the file, or it is compressed in a layout that is not decoded here. Damaged chunks
            raise when they are read.
    """
    name = _name(ds)
    if not 0 <= rows <= ds.shape[0]:
        raise DamagedStoreError(f"{rows} rows are committed but the dataset holds {ds.shape[0]}", path, name)
    row_shape = tuple(ds.shape[1:])
    dtype = ds.dtype
    native = dtype.kind in "fiub" and dtype.byteorder in "=|" + ("<" if np.little_endian else ">")
    shape = (rows,) + row_shape
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize
    file_size = os.path.getsize(path)
    if ds.chunks is None:  # contiguous: never filtered
        if not native:
            return H5Rows(ds, rows)
        if rows == 0:
            return np.zeros(shape, dtype)
        offset = ds.id.get_offset()
        if offset is None:
            return H5Rows(ds, rows)
        if offset + rows * row_bytes > file_size:
            raise DamagedStoreError("its data lie past the end of the file", path, name, (0, rows))
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
    nfilters = ds.id.get_create_plist().get_nfilters()
    filters = codecs.filter_pipeline(ds) if nfilters else None
    if (not native and filters is None) or dtype.hasobject:
        return _fallback(ds, rows, "an element type read through HDF5")
    if rows == 0:
        return np.zeros(shape, dtype)
    if tuple(ds.chunks[1:]) != row_shape:
        return _fallback(ds, rows, "chunks that split rows")
    cr = int(ds.chunks[0])
    chunk_bytes = cr * row_bytes
    n_chunks = -(-rows // cr)
    table = chunk_table(ds)
    entries = [table.get(i * cr) for i in range(n_chunks)]
    if not nfilters:
        if any(e is None for e in entries):
            return H5Rows(ds, rows)  # unallocated chunks (fill values): let HDF5 say what they hold
        problems = chunk_problems(entries, chunk_bytes, file_size)
        for i, (_, size, mask) in enumerate(entries):
            if (size != chunk_bytes or mask) and i not in problems:  # HDF5 stores unfiltered chunks whole
                problems[i] = f"the chunk index gives {size} bytes (mask {mask}) for {chunk_bytes} unfiltered bytes"
        start = back_to_back(entries, chunk_bytes)
        if not problems and start is not None:
            return np.memmap(path, dtype=dtype, mode="r", offset=start, shape=shape)
        whole = _file_map(path)
        offsets = [off for off, _, _ in entries]

        def mapped_chunk(i):
            if i in problems:
                raise DamagedStoreError(problems[i], path, name, _chunk_rows(i, cr, rows))
            return whole[offsets[i] : offsets[i] + chunk_bytes].view(dtype).reshape((cr,) + row_shape)

        return ChunkedArray(shape, dtype, cr, mapped_chunk, mapped=True)
    if filters is None:
        return _fallback(ds, rows, "filters not decoded here")
    chunks = _CompressedChunks(path, name, entries, filters, cr, row_shape, dtype, rows, file_size)
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    return ChunkedArray(shape, dtype, cr, chunks, mapped=False, workers=workers)


class _CompressedChunks:
    """Reads and decodes compressed chunk ``i`` (thread-safe; keeps a few decoded chunks).

    Each chunk's index entry is checked before a byte is read, and a chunk that does not decode
    to exactly its declared size raises :class:`DamagedStoreError` naming the file, the dataset
    and the chunk's rows.
    """

    def __init__(self, path, name, entries, filters, chunk_rows, row_shape, dtype, rows, file_size):
        self._path, self._name, self._rows = path, name, int(rows)
        self._entries = entries
        self._filters = filters
        self._chunk_rows = int(chunk_rows)
        self._shape = (chunk_rows,) + tuple(row_shape)
        self._dtype = np.dtype(dtype)
        self._nbytes = int(np.prod(self._shape, dtype=np.int64)) * self._dtype.itemsize
        self._problems = chunk_problems(entries, self._nbytes, file_size)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._keep = max(2, CACHE_BYTES // max(self._nbytes, 1))
        self._lock = threading.Lock()
        self._fd = os.open(path, os.O_RDONLY)

    def _damaged(self, i: int, reason: str) -> DamagedStoreError:
        return DamagedStoreError(reason, self._path, self._name, _chunk_rows(i, self._chunk_rows, self._rows))

    def __call__(self, i: int) -> np.ndarray:
        with self._lock:
            hit = self._cache.get(i)
            if hit is not None:
                self._cache.move_to_end(i)
                return hit
        if i in self._problems:
            raise self._damaged(i, self._problems[i])
        offset, size, mask = self._entries[i]
        raw = os.pread(self._fd, size, offset)
        if len(raw) != size:
            raise self._damaged(i, f"the file ends inside the chunk ({len(raw)} of {size} bytes)")
        try:
            data = codecs.decode_chunk(raw, self._filters, mask, self._nbytes, self._dtype.itemsize)
        except DamagedStoreError as e:
            raise self._damaged(i, e.reason) from None
        chunk = data.view(self._dtype).reshape(self._shape)
        chunk.flags.writeable = False
        with self._lock:
            self._cache[i] = chunk
            while len(self._cache) > self._keep:
                self._cache.popitem(last=False)
        return chunk

    def __del__(self):
        fd = getattr(self, "_fd", None)
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
            self._fd = None
