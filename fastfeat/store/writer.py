"""Streaming, crash-safe writer of a fastfeat HDF5 store (see :mod:`fastfeat.store.layout`).

Its parts: :mod:`~fastfeat.store.chunks` (chunk and compression policy, dataset creation),
:mod:`~fastfeat.store.create` (a new store, renamed into place), :mod:`~fastfeat.store.resume`
(reopen or rebuild an interrupted one), :mod:`~fastfeat.store.guards` (disk-full and I/O-error
guards), :mod:`~fastfeat.store.strings` (path and reason columns); this module appends and
publishes rows.

Every dataset is sized up front from the catalog's row count, chunked along the sample axis with
an explicit chunk shape and (uncompressed) allocated in one piece at creation, so the reader can
memory-map it and appending never changes HDF5 metadata. Rows become visible, and survive a
``kill -9``, at each :meth:`StoreWriter.commit`: the rows are flushed first, then ``/state``.
``/state`` only ever publishes whole batches (one :meth:`StoreWriter.append` call each), so the
rows of an image and of its augmented copies are committed together or not at all.
"""

from __future__ import annotations

import collections
import fcntl
import os

import h5py
import numpy as np

from ..checks import output_dir as check_output_dir
from . import layout, recovery
from .chunks import chunk_rows_for, parse_compression  # noqa: F401 -- re-exported
from .create import create_store, encode_meta
from .guards import UNCLOSABLE, IOGuard
from .lock import StoreLock, StoreLockedError  # noqa: F401 -- StoreLockedError re-exported
from .recovery import UnrecoverableStoreError  # noqa: F401 -- re-exported
from .resume import open_for_resume
from .strings import StringColumn


def check_not_locked(path: str | os.PathLike) -> None:
    """Raise :class:`StoreLockedError` now if another live process writes ``path`` (the check a
    :class:`StoreWriter` makes when it opens it, made early: before a model is built). Takes and
    drops the lock; leaves its file as it was."""
    lock_path = os.fspath(path) + ".lock"
    if not os.path.exists(lock_path):
        return
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except OSError:
        return  # gone meanwhile, or unreadable: the writer's own acquire decides
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise StoreLockedError(
            f"{os.fspath(path)!r} is being written by another process ({StoreLock._owner(fd)}). "
            f"If that process is gone, delete {lock_path!r}."
        ) from None
    except OSError:
        pass  # no locks on this file system: the writer warns
    finally:
        os.close(fd)  # closing drops a lock taken here


class StoreWriter:
    """Append rows of features, labels and paths to a new (or resumed) store.

    Args:
        path: the ``.h5`` file.
        features: feature key -> (row shape, dtype) for every cut.
        capacity: expected number of rows (the catalog's size); the file grows past it if needed.
        class_names: the catalog's class names.
        meta: JSON-serialisable run description, stored as the ``meta`` attribute.
        mode: ``"create"`` (refuse an existing file), ``"overwrite"`` or ``"resume"``.
        compression: ``None``, ``"lzf"``, ``"gzip"`` or ``"gzip:LEVEL"``.
        chunk_rows: rows per feature chunk; default from :func:`chunk_rows_for`.

    Raises:
        StoreLockedError: another live process writes ``path``.
        UnrecoverableStoreError: ``mode="resume"`` on a file that is not an intact fastfeat store.
        OSError: the disk cannot hold the store (``errno.ENOSPC``).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        features: dict[str, tuple[tuple[int, ...], str]],
        capacity: int,
        class_names: list[str],
        meta: dict,
        mode: str = "create",
        compression: str | None = None,
        chunk_rows: int | None = None,
    ):
        self.path = os.fspath(path)
        if mode not in ("create", "overwrite", "resume"):
            raise ValueError(f"`mode` must be create, overwrite or resume. Received: mode={mode!r}")
        if chunk_rows is not None and int(chunk_rows) < 1:
            raise ValueError(f"`chunk_rows` must be >= 1. Received: chunk_rows={chunk_rows!r}")
        parse_compression(compression)  # validate before touching anything
        check_output_dir(self.path)
        exists = os.path.exists(self.path)
        if exists and mode == "create":
            raise FileExistsError(
                f"{self.path!r} exists. Pass overwrite=True (--overwrite) to replace it, "
                "or resume=True (--resume) to complete it."
            )
        self._file = None
        self._broken: BaseException | None = None
        self._lock = StoreLock(self.path)
        self._lock.acquire()
        try:
            if mode == "resume" and exists:
                self._file, self._resumed_pending, self._resumed_state = open_for_resume(self.path)
            else:
                self._file = create_store(self.path, features, capacity, class_names, meta, compression, chunk_rows)
            self._bind()
        except BaseException:
            if self._file is not None:
                self._file.close()
                self._file = None
            self._lock.release()
            raise

    def _bind(self):
        f = self._file
        self.keys = list(f[layout.FEATURES].keys())
        self._features = {k: f[layout.FEATURES][k] for k in self.keys}
        self._dtypes = {k: ds.dtype for k, ds in self._features.items()}
        self._state_ds = f[layout.STATE]
        self._state = self._state_ds[:].astype(np.int64)
        resumed_state = getattr(self, "_resumed_state", None)
        if resumed_state is not None:  # after a rebuild: the disk may publish fewer rows for now
            self._published = int(self._state[layout.S_ROWS])
            self._state = resumed_state.copy()
        else:
            self._published = int(self._state[layout.S_ROWS])
        self._paths = StringColumn(f[layout.PATHS])
        self._fail_paths = StringColumn(f[layout.FAILURE_PATHS])
        self._fail_reasons = StringColumn(f[layout.FAILURE_REASONS])
        self.rows = int(self._state[layout.S_ROWS])
        self.failed = int(self._state[layout.S_FAILED])
        # /state only ever publishes whole batches (an append call: an image's rows and all its
        # augmented copies), so a resume never finds an image with some of its rows missing
        self._batch_ends: collections.deque[int] = collections.deque()
        if self.rows > self._published:
            self._batch_ends.append(self.rows)
        # as opened: a store that receives nothing keeps its completeness (a refused resume)
        self._opened = (self.rows, self.failed, bool(self._state[layout.S_COMPLETE]))
        # compressed features are written in whole chunks only (a chunk is never rewritten, so
        # HDF5 never frees and reuses space); the rows of the last, partial chunk wait here
        self._compressed = [k for k, ds in self._features.items() if ds.compression is not None]
        resumed = getattr(self, "_resumed_pending", {})
        self._pending = {k: resumed.get(k, self._features[k][:0]) for k in self._compressed}
        self._flushed = {k: self.rows - len(self._pending[k]) for k in self._compressed}
        self._fd: int | None = None
        self._direct = self._direct_layouts()
        self.overflow = int(self._state[layout.S_OVERFLOW])
        self.underflow = 0  # nonzero values stored as 0 by this writer (not kept in the file)
        self.float16_values = 0
        # bytes used by the string columns, as of the rows written (committed or not)
        self._used = {
            "paths": int(self._state[layout.S_PATH_BYTES]),
            "fpaths": int(self._state[layout.S_FPATH_BYTES]),
            "freasons": int(self._state[layout.S_FREASON_BYTES]),
        }

    # -- state ------------------------------------------------------------------------------
    @property
    def meta(self) -> dict:
        """The run description stored at creation (plus :meth:`update_meta` changes)."""
        return recovery.read_meta(self._file, self._state)

    def update_meta(self, **items) -> None:
        """Change entries of ``meta``, crash-safely: the new JSON goes into the unused slot of
        ``/meta_json`` and is switched to by the next ``/state`` write (done here, with a commit)."""
        meta = self.meta
        meta.update(items)
        encoded = encode_meta(meta)
        slot = 1 - int(self._state[layout.S_META_SLOT])
        with IOGuard(self):
            self._file[layout.META_JSON][slot, : len(encoded)] = np.frombuffer(encoded, np.uint8)
        self._state[layout.S_META_SLOT] = slot
        self._state[layout.S_META_LEN] = len(encoded)
        self._publish(complete=False)

    def processed_indices(self) -> np.ndarray:
        """Catalog positions already handled (rows and failures written), sorted."""
        f = self._file
        done = f[layout.INDEX][: self.rows]
        failed = f[layout.FAILURE_INDEX][: self.failed]
        return np.unique(np.concatenate([done, failed]))

    # -- writing ----------------------------------------------------------------------------
    def _grow(self, ds: h5py.Dataset, size: int) -> None:
        """Resize one dataset (a rare HDF5 metadata change, between two flushes)."""
        self._file.flush()
        ds.resize(size, axis=0)
        self._file.flush()

    def _ensure_rows(self, needed: int, failures: bool = False):
        f = self._file
        if failures:
            group = [f[layout.FAILURE_INDEX], self._fail_paths.ends, self._fail_reasons.ends]
        else:
            group = list(self._features.values()) + [f[layout.LABELS], f[layout.INDEX], f[layout.COPY]]
            group.append(self._paths.ends)
        have = group[0].shape[0]
        if needed <= have:
            return
        new = max(needed, int(have * 1.5) + 1)
        self._file.flush()
        for ds in group:
            ds.resize(new, axis=0)
        if not failures:
            self._state[layout.S_CAPACITY] = new
            self._direct = self._direct_layouts()  # the new chunks may lie elsewhere
        self._file.flush()

    def append(
        self,
        features: dict[str, np.ndarray],
        labels: np.ndarray,
        paths: list[str],
        index: np.ndarray,
        copy: np.ndarray | None = None,
    ) -> None:
        """Write one batch of rows; they become visible (and durable) at the next :meth:`commit`.

        A batch is the unit of commit: pass an image's rows and all its augmented copies in the
        same call (they are published together or not at all; see :meth:`processed_indices`).
        """
        n = len(paths)
        if n == 0:
            return
        missing = [k for k in self.keys if k not in features]
        if missing:
            raise ValueError(f"`features` lacks {missing}. Received: features keys={sorted(features)}")
        for name, arr in (("labels", labels), ("index", index)) + ((("copy", copy),) if copy is not None else ()):
            if len(arr) != n:
                raise ValueError(f"`{name}` has {len(arr)} rows for {n} paths. Received: len({name})={len(arr)}")
        start, stop = self.rows, self.rows + n
        for key in self.keys:
            shape = np.shape(features[key])
            if shape[:1] != (n,) or tuple(shape[1:]) != self._features[key].shape[1:]:
                raise ValueError(
                    f"feature {key!r} must have shape {(n,) + self._features[key].shape[1:]} for {n} paths. "
                    f"Received: shape={shape}"
                )
        with IOGuard(self):
            self._ensure_rows(stop)
            f = self._file
            for key in self.keys:
                data = np.asarray(features[key])
                dtype = self._dtypes[key]
                with np.errstate(over="ignore"):  # counted below, reported by the caller
                    cast = data.astype(dtype, copy=False)
                if dtype == np.float16:
                    self.overflow += int(np.count_nonzero(np.isinf(cast) & np.isfinite(data)))
                    self.underflow += int(np.count_nonzero((cast == 0) & (data != 0)))  # flushed to zero
                    self.float16_values += int(data.size)
                if key in self._pending:
                    self._write_whole_chunks(key, cast)
                elif key in self._direct:
                    self._write_direct(key, start, cast)
                else:
                    self._features[key][start:stop] = cast
            f[layout.LABELS][start:stop] = np.asarray(labels, dtype=np.int64)
            f[layout.INDEX][start:stop] = np.asarray(index, dtype=np.int64)
            f[layout.COPY][start:stop] = np.zeros(n, np.int32) if copy is None else np.asarray(copy, np.int32)
            encoded = [os.fsencode(p) for p in paths]
            self._used["paths"] = self._paths.write(start, self._used["paths"], encoded, self._grow)
        self.rows = stop
        self._batch_ends.append(stop)

    def _direct_layouts(self) -> dict[str, tuple[int, int]]:
        """``{key: (byte offset of row 0, bytes per row)}`` for the features written with
        ``pwrite`` instead of h5py (:meth:`_write_direct`).

        A feature qualifies when it is uncompressed, of a native numeric type, chunked along rows
        only (or contiguous), and its chunks are all allocated back to back (as
        :func:`fastfeat.store.create.create_store` lays them out: early allocation, the chunk
        index in its own metadata block), and when a chunk is larger than HDF5's chunk cache, so
        that HDF5 never holds a copy of one that a ``pwrite`` could make stale. The bytes then
        go straight to the file at their place: measured on a cache build (480 images of 150 KB,
        2 cores), 1,449 -> 1,664 img/s, h5py's chunked write being the main thread's largest cost.
        Readers see no difference (it is where HDF5 would have written them).
        """
        from .codecs import back_to_back, chunk_table

        rdcc_bytes = int(self._file.id.get_access_plist().get_cache()[2])
        direct: dict[str, tuple[int, int]] = {}
        for key, ds in self._features.items():
            dtype = ds.dtype
            if key in self._compressed or dtype.kind not in "fiub" or dtype.byteorder not in "=|":
                continue
            row_bytes = int(np.prod(ds.shape[1:], dtype=np.int64)) * dtype.itemsize
            if ds.chunks is None:
                offset = ds.id.get_offset()
                if offset is not None and row_bytes * ds.shape[0] > rdcc_bytes:
                    direct[key] = (int(offset), row_bytes)
                continue
            if tuple(ds.chunks[1:]) != tuple(ds.shape[1:]) or ds.id.get_create_plist().get_nfilters():
                continue
            chunk_bytes = int(ds.chunks[0]) * row_bytes
            if chunk_bytes <= rdcc_bytes:
                continue
            table = chunk_table(ds)
            first = back_to_back([table.get(r) for r in range(0, ds.shape[0], int(ds.chunks[0]))], chunk_bytes)
            if first is not None:
                direct[key] = (first, row_bytes)
        if direct and self._fd is None:
            self._fd = self._same_file_fd()
        return direct if self._fd is not None else {}

    def _same_file_fd(self) -> int | None:
        """A descriptor of the file HDF5 has open (``self.path``, checked by device and inode:
        the store was renamed into place after HDF5 opened it), or None."""
        try:
            fd = os.open(self.path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return None
        try:
            theirs, ours = os.fstat(self._file.id.get_vfd_handle()), os.fstat(fd)
            if (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino):
                return fd
        except (OSError, TypeError, ValueError, RuntimeError):  # another HDF5 driver: no plain descriptor
            pass
        os.close(fd)
        return None

    def _write_direct(self, key: str, start: int, data: np.ndarray) -> None:
        """Rows ``start ...`` of ``key`` written with ``os.pwrite`` at their place in the file."""
        offset, row_bytes = self._direct[key]
        view = memoryview(np.ascontiguousarray(data)).cast("B")
        position = offset + start * row_bytes
        while len(view):
            written = os.pwrite(self._fd, view, position)
            if written <= 0:
                raise OSError(f"{self.path!r}: writing rows of {key!r} made no progress")
            view, position = view[written:], position + written

    def _write_whole_chunks(self, key: str, data: np.ndarray, final: bool = False) -> None:
        """Append ``data`` to the pending rows of a compressed feature; write the whole chunks
        (and, if ``final``, the partial last one)."""
        ds = self._features[key]
        rows = np.concatenate([self._pending[key], data]) if len(self._pending[key]) else np.array(data)
        cr = ds.chunks[0]
        n = len(rows) if final else (len(rows) // cr) * cr
        base = self._flushed[key]
        if n:
            ds[base : base + n] = rows[:n]
        self._flushed[key] = base + n
        self._pending[key] = rows[n:]

    def _durable_rows(self) -> int:
        """Rows whose every feature is written (compressed ones: up to the last whole chunk)."""
        return min([self.rows] + [self._flushed[k] for k in self._compressed])

    def _publishable_rows(self) -> int:
        """The last batch end at or below :meth:`_durable_rows` (never a batch cut in two)."""
        durable = self._durable_rows()
        rows = self._published
        while self._batch_ends and self._batch_ends[0] <= durable:
            rows = self._batch_ends.popleft()
        return rows

    def add_failures(self, index: list[int], paths: list[str], reasons: list[str]) -> None:
        """Record files that could not be read (visible at the next :meth:`commit`)."""
        n = len(index)
        if n == 0:
            return
        if not len(paths) == len(reasons) == n:
            raise ValueError(
                f"`index`, `paths` and `reasons` must have one entry per failure. "
                f"Received: {n}, {len(paths)}, {len(reasons)} entries"
            )
        start, stop = self.failed, self.failed + n
        with IOGuard(self):
            self._ensure_rows(stop, failures=True)
            self._file[layout.FAILURE_INDEX][start:stop] = np.asarray(index, dtype=np.int64)
            self._used["fpaths"] = self._fail_paths.write(
                start, self._used["fpaths"], [os.fsencode(p) for p in paths], self._grow
            )
            self._used["freasons"] = self._fail_reasons.write(
                start, self._used["freasons"], [str(r).encode("utf-8", "replace") for r in reasons], self._grow
            )
        self.failed = stop

    def _publish(self, complete: bool = False, final: bool = False) -> None:
        if final:
            with IOGuard(self):
                for key in self._compressed:
                    self._write_whole_chunks(key, self._pending[key][:0], final=True)
        rows = self._publishable_rows()
        s = self._state
        s[layout.S_ROWS] = rows
        s[layout.S_FAILED] = self.failed
        untouched = (self.rows, self.failed) == self._opened[:2] and rows == self.rows
        s[layout.S_COMPLETE] = int((complete or (untouched and self._opened[2])) and rows == self.rows)
        s[layout.S_PATH_BYTES] = int(self._paths.ends[rows - 1]) if 0 < rows < self.rows else (
            self._used["paths"] if rows else 0
        )  # fmt: skip
        s[layout.S_FPATH_BYTES] = self._used["fpaths"]
        s[layout.S_FREASON_BYTES] = self._used["freasons"]
        s[layout.S_OVERFLOW] = self.overflow
        with IOGuard(self):
            self._file.flush()  # the rows first ...
            self._state_ds[:] = s
            self._file.flush()  # ... then the one small write that publishes them
        self._published = rows

    def commit(self) -> None:
        """Publish the rows and failures written so far, after flushing them to disk."""
        self._publish(complete=False)

    def close(self, complete: bool) -> None:
        """Commit, mark the store complete or not, and close it (releases the lock).

        ``close(complete=False)`` never downgrades a store that was complete when opened and
        received no rows or failures (a refused resume leaves it complete).
        ``close(complete=False)`` after a write error publishes nothing more and does not raise:
        the store keeps its last committed rows. ``close(complete=True)`` raises if it cannot
        publish, and then nothing claims completeness.
        """
        f = self._file
        if f is None:
            return
        try:
            if f.id.valid and (complete or self._broken is None):
                if complete:
                    self._publish(complete=True, final=True)
                else:
                    try:
                        self._publish(complete=False, final=True)
                    except (OSError, RuntimeError):
                        pass  # the last committed state stays on disk; the caller has the first error
        finally:
            self._file = None
            if self._fd is not None:
                try:
                    os.close(self._fd)
                except OSError:
                    pass
                self._fd = None
            try:
                if f.id.valid:
                    f.close()
            except (OSError, RuntimeError):  # an unflushable file: what was committed is already on disk
                handles = (self._features, self._state_ds, self._paths, self._fail_paths, self._fail_reasons)
                UNCLOSABLE.append((f, handles))
            self._lock.release()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(complete=False)
