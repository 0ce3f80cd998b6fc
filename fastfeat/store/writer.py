"""Streaming, crash-safe writer of a fastfeat HDF5 store (see :mod:`fastfeat.store.layout`).

Every dataset is sized up front from the catalog's row count, chunked along the sample axis with
an explicit chunk shape and (uncompressed) allocated in one piece at creation, so the reader can
memory-map it and appending never changes HDF5 metadata. Rows become visible, and survive a
``kill -9``, at each :meth:`StoreWriter.commit`: the rows are flushed first, then ``/state``.
``/state`` only ever publishes whole batches (one :meth:`StoreWriter.append` call each), so the
rows of an image and of its augmented copies are committed together or not at all.
"""

from __future__ import annotations

import collections
import errno
import json
import os

import h5py
import numpy as np

from . import layout, recovery
from .lock import StoreLock, StoreLockedError
from .recovery import UnrecoverableStoreError

COMPRESSIONS = ("none", "lzf", "gzip")
#: Files HDF5 could not close (it could not flush them: disk full). Kept referenced so that the
#: garbage collector does not retry the doomed close and print errors; the OS closes them at exit.
_UNCLOSABLE: list = []
_SPACE_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


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


def _space_error(path: str, e: BaseException) -> OSError | None:
    """A clean ``OSError`` if ``e`` means the disk (or a quota, or a file size limit) is full."""
    code = getattr(e, "errno", None)
    text = str(e)
    markers = ("No space", "File too large", "quota", "errno = 28", "errno = 27", "errno = 122")
    if code in _SPACE_ERRNOS or any(m in text for m in markers):
        return OSError(
            errno.ENOSPC,
            f"Disk full while writing {path!r}: the store is incomplete (the rows committed before are kept; "
            "free some space and run again with --resume)",
        )
    return None


def check_output_dir(path: str | os.PathLike) -> None:
    """Raise if the folder a store is to be written in is missing or not writable."""
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"The output directory does not exist: {parent!r}. Received: output={path!r}")
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"The output directory is not writable: {parent!r}. Received: output={path!r}")


class _IOGuard:
    """Marks the writer broken on any I/O error (HDF5 may have dropped what it failed to write,
    so nothing may be published after it) and turns a full disk into a clean ``OSError``."""

    def __init__(self, writer: StoreWriter):
        self.writer = writer

    def __enter__(self):
        if self.writer._broken is not None:
            raise OSError(
                f"{self.writer.path!r} cannot be written any more after an earlier error: {self.writer._broken}"
            )
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or not isinstance(exc, (OSError, RuntimeError)):
            return False
        self.writer._broken = exc
        full = _space_error(self.writer.path, exc)
        if full is not None:
            raise full from exc
        return False


def _dcpl(early: bool) -> h5py.h5p.PropDCID:
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    if early:  # reserve the whole extent now, in one piece: memory-mappable, no metadata change later
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return dcpl


def _make(group, name, shape, dtype, chunk_rows, compression=None, opts=None):
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


def _encode_meta(meta: dict) -> bytes:
    encoded = json.dumps(meta).encode("utf-8")  # ASCII: json escapes the rest, surrogates included
    if len(encoded) > layout.META_BYTES:
        raise ValueError(
            f"`meta` must encode to at most {layout.META_BYTES} bytes of JSON. Received: {len(encoded)} bytes"
        )
    return encoded


def _meta_block_size(features, rows_per, capacity) -> int:
    """Room for all B-tree nodes of the chunk indexes in one metadata block, so that HDF5 does
    not interleave index nodes with the chunks it allocates: the chunks then lie back to back."""
    total = 0
    for key, spec in features.items():
        shape = spec[0]
        total += (-(-capacity // rows_per[key]) + 1) * (40 + 16 * (len(shape) + 2))
    total += 16 * (-(-capacity // 65536) + 1) * 80 + 64 * 1024
    return int(min(max(2 * total, 256 * 1024), 256 * 1024 * 1024))


class _Strings:
    """A column of byte strings as ``ends`` (one per row) and one ``bytes`` blob, both preallocated."""

    def __init__(self, group: h5py.Group):
        self.ends = group[layout.ENDS]
        self.blob = group[layout.BYTES]

    @staticmethod
    def create(parent: h5py.Group, name: str, rows: int, nbytes: int) -> None:
        g = parent.create_group(name, track_order=False)
        _make(g, layout.ENDS, (rows,), np.int64, 65536)
        _make(g, layout.BYTES, (max(nbytes, 1),), np.uint8, 1 << 20)

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
                self._file = self._open_for_resume()
            else:
                self._file = self._create(features, capacity, class_names, meta, compression, chunk_rows)
            self._bind()
        except BaseException:
            if self._file is not None:
                self._file.close()
                self._file = None
            self._lock.release()
            raise

    # -- creation ---------------------------------------------------------------------------
    def _create(self, features, capacity, class_names, meta, compression, chunk_rows, fill=None) -> h5py.File:
        """Write the whole empty store under a temporary name, then rename it into place.

        ``features`` values are (row shape, dtype) or (row shape, dtype, chunk rows, compression);
        ``fill(f)`` may copy rows into the new file before it replaces ``self.path``.
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
        tmp = self.path + ".creating"
        if os.path.exists(tmp):
            os.unlink(tmp)
        block = _meta_block_size(specs, {k: v[2] for k, v in specs.items()}, capacity)
        f = h5py.File(tmp, "w", libver=layout.LIBVER, track_order=False, meta_block_size=block)
        try:
            encoded = _encode_meta(meta)
            state = np.zeros(layout.STATE_SIZE, np.int64)
            state[layout.S_CAPACITY] = capacity
            state[layout.S_META_LEN] = len(encoded)
            f.create_dataset(layout.STATE, data=state, track_times=False)  # contiguous: one small write
            slots = np.zeros((2, layout.META_BYTES), np.uint8)
            slots[0, : len(encoded)] = np.frombuffer(encoded, np.uint8)
            f.create_dataset(layout.META_JSON, data=slots, track_times=False)
            group = f.create_group(layout.FEATURES)
            for key, (shape, dtype, rows, (comp, opts)) in specs.items():
                _make(group, key, (capacity,) + shape, dtype, rows, comp, opts)
            _make(f, layout.LABELS, (capacity,), np.int64, 65536)
            _make(f, layout.INDEX, (capacity,), np.int64, 65536)
            _make(f, layout.COPY, (capacity,), np.int32, 65536)
            _Strings.create(f, layout.PATHS, capacity, capacity * layout.PATH_BYTES_PER_ROW)
            fail = f.create_group(layout.FAILURES)
            _make(fail, "index", (capacity,), np.int64, 65536)
            _Strings.create(fail, "paths", capacity, capacity * layout.PATH_BYTES_PER_ROW // 4)
            _Strings.create(fail, "reasons", capacity, capacity * layout.REASON_BYTES_PER_ROW // 4)
            names = np.empty(len(class_names), dtype=object)  # bytes: any folder name, even non-UTF-8
            names[:] = [os.fsencode(str(c)) for c in class_names]
            f.create_dataset(layout.CLASS_NAMES, data=names, dtype=h5py.vlen_dtype(bytes), track_times=False)
            f.attrs[layout.ATTR_FORMAT] = layout.FORMAT_VERSION
            f.attrs[layout.ATTR_META] = json.dumps(meta)
            f.flush()
            self._reserve(tmp)
            if fill is not None:
                fill(f)
                f.flush()
            os.replace(tmp, self.path)
        except BaseException as e:
            try:
                f.close()
            except (OSError, RuntimeError):
                _UNCLOSABLE.append(f)  # HDF5 cannot flush what the disk refused; the temporary file goes anyway
            if os.path.exists(tmp):
                os.unlink(tmp)
            full = _space_error(self.path, e)
            if full is not None:
                raise full from e
            raise
        return f

    @staticmethod
    def _reserve(path: str) -> None:
        """Reserve the disk blocks of the preallocated (sparse) file, so a full disk fails now."""
        size = os.path.getsize(path)
        if size == 0 or not hasattr(os, "posix_fallocate"):
            return
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return
            raise
        finally:
            os.close(fd)

    def _open_for_resume(self) -> h5py.File:
        # read-only first: a foreign or damaged file is refused without a byte of it changing
        problem = recovery.check_resumable_path(self.path)
        if problem:
            raise UnrecoverableStoreError(
                f"Cannot resume {self.path!r}: {problem}. Write it again with --overwrite."
            )
        intact_bytes = recovery.repair_short_file(self.path)
        try:
            f = h5py.File(self.path, "r+", libver=layout.LIBVER)
        except OSError as e:
            raise UnrecoverableStoreError(
                f"Cannot resume {self.path!r}: HDF5 cannot open it ({e}). Write it again with --overwrite."
            ) from e
        try:
            problem = recovery.check_resumable_file(f, intact_bytes)
        except (KeyError, ValueError, OSError) as e:
            problem = f"its structure is damaged ({e})"
        if problem:
            f.close()
            raise UnrecoverableStoreError(
                f"Cannot resume {self.path!r}: {problem}. Write it again with --overwrite."
            )
        if any(ds.compression is not None for ds in f[layout.FEATURES].values()):
            return self._rebuild(f)
        return f

    def _rebuild(self, old: h5py.File) -> h5py.File:
        """Resume a compressed store by copying its committed rows into a fresh file.

        Compressed chunks are allocated as they are written, so a killed writer can leave chunk
        index entries (for uncommitted rows) pointing past the end HDF5 recorded; writing those
        chunks again in place could free space that is in use. The committed chunks are copied
        as stored bytes (each one decoded once, to check it), the rows of a last partial chunk
        go back to the pending buffer, and the new file replaces the old one atomically.
        """
        try:
            state = old[layout.STATE][:].astype(np.int64)
            rows, failed = int(state[layout.S_ROWS]), int(state[layout.S_FAILED])
            spec = {}
            for key, ds in old[layout.FEATURES].items():
                comp = None if ds.compression is None else (
                    f"gzip:{ds.compression_opts}" if ds.compression == "gzip" else ds.compression
                )  # fmt: skip
                spec[key] = (ds.shape[1:], ds.dtype, ds.chunks[0], comp)
            capacity = max(old[layout.LABELS].shape[0], 1)
            names = [os.fsdecode(n) for n in old[layout.CLASS_NAMES][()]]
            meta = recovery.read_meta(old, state)
            pending: dict[str, np.ndarray] = {}
            # rows in whole chunks of every compressed feature: what the new file holds on disk
            whole = min(
                [rows] + [rows // ds.chunks[0] * ds.chunks[0] for ds in old[layout.FEATURES].values() if ds.compression]
            )

            def fill(new: h5py.File) -> None:
                for key, ds in old[layout.FEATURES].items():
                    pending[key] = recovery.copy_committed_rows(ds, new[layout.FEATURES][key], rows)
                for name in (layout.LABELS, layout.INDEX, layout.COPY):
                    new[name][:rows] = old[name][:rows]
                new[layout.FAILURE_INDEX][:failed] = old[layout.FAILURE_INDEX][:failed]
                for name, n, slot in (
                    (layout.PATHS, rows, layout.S_PATH_BYTES),
                    (layout.FAILURE_PATHS, failed, layout.S_FPATH_BYTES),
                    (layout.FAILURE_REASONS, failed, layout.S_FREASON_BYTES),
                ):
                    used = int(state[slot])
                    new[name][layout.ENDS][:n] = old[name][layout.ENDS][:n]
                    if used > new[name][layout.BYTES].shape[0]:
                        new[name][layout.BYTES].resize(used, axis=0)
                    new[name][layout.BYTES][:used] = old[name][layout.BYTES][:used]
                new.flush()
                state[layout.S_META_SLOT] = 0  # the new file holds the description in slot 0
                state[layout.S_META_LEN] = len(_encode_meta(meta))
                # The rows of a last partial chunk stay pending (in memory) until their chunk is
                # written whole, so the new file may only publish rows that lie in written chunks,
                # cut where no image has rows on both sides (whole batches: all copies of an image).
                cut = recovery.safe_cut(old[layout.INDEX][:rows], whole)
                disk = state.copy()
                disk[layout.S_ROWS] = cut
                if cut < rows:
                    disk[layout.S_COMPLETE] = 0
                    disk[layout.S_PATH_BYTES] = int(old[layout.PATHS][layout.ENDS][cut - 1]) if cut else 0
                new[layout.STATE][:] = disk
        except (KeyError, ValueError, OSError, RuntimeError) as e:
            old.close()
            raise UnrecoverableStoreError(
                f"Cannot resume {self.path!r}: its committed rows cannot be read ({e}). "
                "Write it again with --overwrite."
            ) from e
        try:
            f = self._create(spec, capacity, names, meta, None, None, fill=fill)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise
            raise UnrecoverableStoreError(
                f"Cannot resume {self.path!r}: its committed rows cannot be read ({e}). "
                "Write it again with --overwrite."
            ) from e
        except (KeyError, ValueError, RuntimeError) as e:
            raise UnrecoverableStoreError(
                f"Cannot resume {self.path!r}: its committed rows cannot be read ({e}). "
                "Write it again with --overwrite."
            ) from e
        finally:
            old.close()
        self._resumed_pending = pending
        self._resumed_state = state  # the committed rows, some of them pending in memory
        return f

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
        self._paths = _Strings(f[layout.PATHS])
        self._fail_paths = _Strings(f[layout.FAILURE_PATHS])
        self._fail_reasons = _Strings(f[layout.FAILURE_REASONS])
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
        self.overflow = int(self._state[layout.S_OVERFLOW])
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
        encoded = _encode_meta(meta)
        slot = 1 - int(self._state[layout.S_META_SLOT])
        with _IOGuard(self):
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
        with _IOGuard(self):
            self._ensure_rows(stop)
            f = self._file
            for key in self.keys:
                data = np.asarray(features[key])
                dtype = self._dtypes[key]
                with np.errstate(over="ignore"):  # counted below, reported by the caller
                    cast = data.astype(dtype, copy=False)
                if dtype == np.float16:
                    self.overflow += int(np.count_nonzero(np.isinf(cast) & np.isfinite(data)))
                if key in self._pending:
                    self._write_whole_chunks(key, cast)
                else:
                    self._features[key][start:stop] = cast
            f[layout.LABELS][start:stop] = np.asarray(labels, dtype=np.int64)
            f[layout.INDEX][start:stop] = np.asarray(index, dtype=np.int64)
            f[layout.COPY][start:stop] = np.zeros(n, np.int32) if copy is None else np.asarray(copy, np.int32)
            encoded = [os.fsencode(p) for p in paths]
            self._used["paths"] = self._paths.write(start, self._used["paths"], encoded, self._grow)
        self.rows = stop
        self._batch_ends.append(stop)

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
        with _IOGuard(self):
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
            with _IOGuard(self):
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
        with _IOGuard(self):
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
            try:
                if f.id.valid:
                    f.close()
            except (OSError, RuntimeError):  # an unflushable file: what was committed is already on disk
                handles = (self._features, self._state_ds, self._paths, self._fail_paths, self._fail_reasons)
                _UNCLOSABLE.append((f, handles))
            self._lock.release()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(complete=False)
