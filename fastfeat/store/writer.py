"""Streaming writer of a fastfeat HDF5 store (see :mod:`fastfeat.store.layout`).

Datasets are sized up front from the catalog's row count, chunked along the sample axis with
an explicit chunk shape, and (when uncompressed) allocated in one piece at creation so that the
reader can memory-map them. Rows are appended batch by batch; ``rows`` is committed after each
flushed batch so a crash never exposes a half-written row.
"""

from __future__ import annotations

import errno
import json
import os
import socket

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
        lvl = int(level) if level else 4
        if not 0 <= lvl <= 9:
            raise ValueError(f"gzip level must be 0..9. Received: compression={spec!r}")
        return "gzip", lvl
    if level:
        raise ValueError(f"lzf takes no level. Received: compression={spec!r}")
    return "lzf", None


def chunk_rows_for(row_shape: tuple[int, ...], dtype, capacity: int) -> int:
    """Rows per chunk: about ``TARGET_CHUNK_BYTES`` per chunk, at least 1, at most ``capacity``."""
    row_bytes = max(1, int(np.prod(row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
    return int(max(1, min(max(capacity, 1), layout.TARGET_CHUNK_BYTES // row_bytes)))


class StoreLockedError(RuntimeError):
    """Another process is writing this store."""


class _Lock:
    """An exclusive lock file ``<store>.lock`` holding the writer's host and pid."""

    def __init__(self, path: str):
        self.path = path + ".lock"
        self.held = False

    def acquire(self):
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._stale():
                    try:
                        os.unlink(self.path)
                    except FileNotFoundError:
                        pass
                    continue
                raise StoreLockedError(
                    f"{self.path[:-5]!r} is being written by another process ({self._owner()}). "
                    f"If that process is gone, delete {self.path!r}."
                ) from None
            with os.fdopen(fd, "w") as f:
                f.write(f"{socket.gethostname()} {os.getpid()}\n")
            self.held = True
            return
        raise StoreLockedError(f"Could not take the lock {self.path!r}")

    def _owner(self) -> str:
        try:
            with open(self.path) as f:
                return f.read().strip() or "unknown"
        except OSError:
            return "unknown"

    def _stale(self) -> bool:
        parts = self._owner().split()
        if len(parts) != 2 or parts[0] != socket.gethostname() or not parts[1].isdigit():
            return False
        try:
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def release(self):
        if self.held:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            self.held = False


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
        chunk_rows: rows per chunk; default from :func:`chunk_rows_for`.
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
        parent = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(parent):
            raise FileNotFoundError(f"The output directory does not exist: {parent!r}")
        if not os.access(parent, os.W_OK):
            raise PermissionError(f"The output directory is not writable: {parent!r}")
        exists = os.path.exists(self.path)
        if exists and mode == "create":
            raise FileExistsError(
                f"{self.path!r} exists. Pass overwrite=True (--overwrite) to replace it, "
                "or resume=True (--resume) to complete it."
            )
        self._lock = _Lock(self.path)
        self._lock.acquire()
        try:
            if mode == "resume" and exists:
                self._file = h5py.File(self.path, "r+")
            else:
                if exists:
                    os.unlink(self.path)
                self._file = h5py.File(self.path, "w", libver=("v110", "latest"))
                self._create(features, capacity, class_names, meta, compression, chunk_rows)
        except BaseException:
            self._lock.release()
            raise
        f = self._file
        self.keys = list(f[layout.FEATURES].keys())
        self.rows = int(f.attrs[layout.ATTR_ROWS])
        self.failed = int(f.attrs.get("failed", 0))
        self.overflow = 0
        self._dtypes = {k: f[layout.FEATURES][k].dtype for k in self.keys}

    # -- creation ---------------------------------------------------------------------------
    def _create(self, features, capacity, class_names, meta, compression, chunk_rows):
        f = self._file
        comp, opts = parse_compression(compression)
        capacity = max(int(capacity), 1)
        group = f.create_group(layout.FEATURES)
        for key, (shape, dtype) in features.items():
            shape = tuple(int(s) for s in shape)
            rows_per_chunk = chunk_rows or chunk_rows_for(shape, dtype, capacity)
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            if comp is None:  # reserve the whole extent in one piece, so it can be memory-mapped
                dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
            group.create_dataset(
                key,
                shape=(capacity,) + shape,
                maxshape=(None,) + shape,
                dtype=dtype,
                chunks=(min(rows_per_chunk, capacity),) + shape,
                compression=comp,
                compression_opts=opts,
                dcpl=dcpl,
                fill_time="never" if comp is None else None,
            )
        row_chunk = min(capacity, 65536)
        f.create_dataset(layout.LABELS, (capacity,), np.int64, maxshape=(None,), chunks=(row_chunk,))
        f.create_dataset(layout.INDEX, (capacity,), np.int64, maxshape=(None,), chunks=(row_chunk,))
        f.create_dataset(layout.COPY, (capacity,), np.int32, maxshape=(None,), chunks=(row_chunk,))
        f.create_dataset(
            layout.PATHS, (capacity,), h5py.vlen_dtype(bytes), maxshape=(None,), chunks=(min(row_chunk, 4096),)
        )
        f.create_dataset(layout.CLASS_NAMES, data=np.array(list(class_names), dtype=h5py.string_dtype()))
        fail = f.create_group(layout.FAILURES)
        fail.create_dataset("index", (0,), np.int64, maxshape=(None,), chunks=(1024,))
        fail.create_dataset("paths", (0,), h5py.vlen_dtype(bytes), maxshape=(None,), chunks=(1024,))
        fail.create_dataset("reasons", (0,), h5py.string_dtype(), maxshape=(None,), chunks=(1024,))
        f.attrs[layout.ATTR_FORMAT] = layout.FORMAT_VERSION
        f.attrs[layout.ATTR_META] = json.dumps(meta)
        f.attrs[layout.ATTR_ROWS] = 0
        f.attrs["failed"] = 0
        f.attrs[layout.ATTR_COMPLETE] = False
        f.flush()

    # -- state ------------------------------------------------------------------------------
    @property
    def meta(self) -> dict:
        return json.loads(self._file.attrs[layout.ATTR_META])

    def update_meta(self, **items):
        meta = self.meta
        meta.update(items)
        self._file.attrs[layout.ATTR_META] = json.dumps(meta)

    def processed_indices(self) -> np.ndarray:
        """Catalog positions already handled (written rows and recorded failures), sorted."""
        f = self._file
        done = f[layout.INDEX][: self.rows]
        failed = f[layout.FAILURE_INDEX][: self.failed]
        return np.unique(np.concatenate([done, failed]))

    # -- writing ----------------------------------------------------------------------------
    def _ensure(self, needed: int):
        f = self._file
        if needed <= f[layout.LABELS].shape[0]:
            return
        new = max(needed, int(f[layout.LABELS].shape[0] * 1.5) + 1)
        for key in self.keys:
            f[layout.FEATURES][key].resize(new, axis=0)
        for name in (layout.LABELS, layout.INDEX, layout.COPY, layout.PATHS):
            f[name].resize(new, axis=0)

    def append(
        self,
        features: dict[str, np.ndarray],
        labels: np.ndarray,
        paths: list[str],
        index: np.ndarray,
        copy: np.ndarray | None = None,
    ) -> None:
        """Write one batch of rows; they become visible to readers at the next :meth:`commit`."""
        n = len(paths)
        if n == 0:
            return
        start, stop = self.rows, self.rows + n
        self._ensure(stop)
        f = self._file
        for key in self.keys:
            data = np.asarray(features[key])
            if data.shape[0] != n:
                raise ValueError(f"feature {key!r} has {data.shape[0]} rows for {n} paths")
            dtype = self._dtypes[key]
            cast = data.astype(dtype, copy=False)
            if dtype == np.float16:
                self.overflow += int(np.count_nonzero(np.isinf(cast) & np.isfinite(data)))
            f[layout.FEATURES][key][start:stop] = cast
        f[layout.LABELS][start:stop] = np.asarray(labels, dtype=np.int64)
        f[layout.INDEX][start:stop] = np.asarray(index, dtype=np.int64)
        f[layout.COPY][start:stop] = np.zeros(n, np.int32) if copy is None else np.asarray(copy, np.int32)
        f[layout.PATHS][start:stop] = np.array([os.fsencode(p) for p in paths], dtype=object)
        self.rows = stop

    def add_failures(self, index: list[int], paths: list[str], reasons: list[str]) -> None:
        """Record files that could not be read (visible at the next :meth:`commit`)."""
        n = len(index)
        if n == 0:
            return
        f = self._file
        start, stop = self.failed, self.failed + n
        for name in ("index", "paths", "reasons"):
            f[layout.FAILURES][name].resize(stop, axis=0)
        f[layout.FAILURE_INDEX][start:stop] = np.asarray(index, dtype=np.int64)
        f[layout.FAILURE_PATHS][start:stop] = np.array([os.fsencode(p) for p in paths], dtype=object)
        f[layout.FAILURE_REASONS][start:stop] = np.array(list(reasons), dtype=object)
        self.failed = stop

    def commit(self) -> None:
        """Publish the rows and failures written so far and flush them to disk."""
        f = self._file
        f.attrs[layout.ATTR_ROWS] = self.rows
        f.attrs["failed"] = self.failed
        try:
            f.flush()
        except OSError as e:
            if getattr(e, "errno", None) == errno.ENOSPC or "No space" in str(e):
                raise OSError(errno.ENOSPC, f"Disk full while writing {self.path!r}") from e
            raise

    def close(self, complete: bool) -> None:
        """Trim the datasets to the rows written, mark the store complete or not, and close it."""
        f = getattr(self, "_file", None)
        if f is None:
            return
        try:
            if f.id.valid:
                if complete:
                    for key in self.keys:
                        f[layout.FEATURES][key].resize(self.rows, axis=0)
                    for name in (layout.LABELS, layout.INDEX, layout.COPY, layout.PATHS):
                        f[name].resize(self.rows, axis=0)
                    if self.overflow:
                        self.update_meta(float16_overflow=self.overflow)
                self.commit()
                f.attrs[layout.ATTR_COMPLETE] = bool(complete)
                f.flush()
                f.close()
        finally:
            self._file = None
            self._lock.release()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(complete=False)
