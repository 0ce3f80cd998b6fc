"""Reading a decoded-image cache: :class:`ImageCache` (the file) and :class:`CachedRows` (the file
checked against a catalog and decode settings, ready to fill batches).

Rows are read with ``os.preadv`` straight into the caller's batch buffer: the bytes come from the
kernel's page cache, which every process reading the cache shares, and nothing is memory-mapped,
so a process's RSS does not grow with the cache however much of it an epoch touches (a mapping
would count every touched page of the file in RSS). The HDF5 file is opened only to read the
small columns and the images' byte offset, then closed. This module never imports TensorFlow.
"""

from __future__ import annotations

import os
import warnings
import weakref

import numpy as np

from . import layout


class StaleCacheError(ValueError):
    """The cache does not answer for these files or decode settings (the message says what changed)."""


class ImageCache:
    """A decoded-image cache opened for reading (see :mod:`fastfeat.cache.layout`).

    Attributes:
        path: the file.
        rows: decoded images stored.
        complete: whether the build finished.
        meta: the build description (decode settings, source, versions).
        paths: relative path of each row's file; ``labels`` and ``class_names`` as in the source.
        fingerprints: (rows, 3) int64 ``(size, mtime_ns, inode)`` of each file when it was read.
        failures: ``(path, reason)`` of each file that could not be read.
    """

    def __init__(self, path: str | os.PathLike):
        from ..store.reader import FeatureStore, IncompleteStoreWarning

        self.path = os.fspath(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", IncompleteStoreWarning)  # `complete` says it
            store = FeatureStore(self.path)
        try:
            if store.meta.get("kind") != layout.KIND or set(store.layers) != {layout.IMAGES, layout.FINGERPRINT}:
                raise ValueError(f"{self.path!r} is a fastfeat store but not an image cache (build one with "
                                 f"`fastfeat cache`). Received: cache={self.path!r}")  # fmt: skip
            self.meta = dict(store.meta)
            self.rows, self.complete = store.rows, store.complete
            self.row_shape = tuple(int(d) for d in store.dataset(layout.IMAGES).shape[1:])
            self.paths = store.paths
            self.labels = np.asarray(store.labels)
            self.class_names = store.class_names
            self.failures = store.failures
            self.fingerprints = np.array(store.features(layout.FINGERPRINT), np.int64).reshape(-1, 3)  # copied
            images = store.features(layout.IMAGES)
            if self.rows and not isinstance(images, np.memmap):
                raise ValueError(f"{self.path!r}: its images do not lie in one piece; build it again with "
                                 f"`fastfeat cache --overwrite`. Received: cache={self.path!r}")  # fmt: skip
            self._offset = int(images.offset) if self.rows else 0
            del images
        finally:
            store.close()
        self.row_bytes = int(np.prod(self.row_shape))
        self._fd = os.open(self.path, os.O_RDONLY)
        self._closer = weakref.finalize(self, os.close, self._fd)

    @property
    def settings(self) -> dict:
        """The decode settings the rows were made with (:data:`fastfeat.cache.layout.SETTINGS`)."""
        return {k: self.meta.get(k) for k in layout.SETTINGS}

    def read(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``rows`` (ints in ``[0, self.rows)``) as a (n, H, W, 3) uint8 array (``out`` if given).

        Runs of consecutive rows are read with one system call; the GIL is released while reading.
        """
        rows = np.asarray(rows, np.int64).reshape(-1)
        if out is None:
            out = np.empty((len(rows), *self.row_shape), np.uint8)
        if out.shape != (len(rows), *self.row_shape) or out.dtype != np.uint8 or not out.flags.c_contiguous:
            raise ValueError(f"`out` must be C-contiguous uint8 of shape {(len(rows), *self.row_shape)}. "
                             f"Received: out.shape={out.shape}, out.dtype={out.dtype}")  # fmt: skip
        if len(rows) and (rows.min() < 0 or rows.max() >= self.rows):
            raise IndexError(f"`rows` must lie in [0, {self.rows}). Received: rows={rows}")
        start = 0
        for stop in [*(np.flatnonzero(np.diff(rows) != 1) + 1).tolist(), len(rows)]:
            self._pread(int(rows[start]), out[start:stop])
            start = stop
        return out

    def _pread(self, row: int, out: np.ndarray) -> None:
        want = out.nbytes
        got = os.preadv(self._fd, [out.reshape(-1)], self._offset + row * self.row_bytes)
        if got != want:
            raise OSError(f"{self.path!r} is truncated: read {got} of {want} bytes at row {row}")

    def check_settings(self, options) -> None:
        """Raise :class:`StaleCacheError` naming every decode setting of ``options`` (a
        :class:`fastfeat.loader.DecodeOptions`) the rows were not made with."""
        changes = layout.setting_changes(self.settings, layout.settings_of(options))
        if changes:
            raise StaleCacheError(
                f"The cache {self.path!r} was built with other decode settings:\n  " + "\n  ".join(changes)
                + "\nBuild another cache for these settings (another path), or rebuild this one with "
                "`fastfeat cache ... --overwrite` (overwrite=True)."
            )  # fmt: skip

    def check(self, catalog, options) -> CachedRows:
        """This cache bound to ``catalog``, after checking it answers for every file and setting.

        The catalog may ask for fewer files than the cache holds (some classes only), never for
        a file the cache lacks.

        Raises:
            StaleCacheError: other decode settings, an unfinished build, or files changed,
                added or removed (deleted) since the build (the message says which).
        """
        self.check_settings(options)
        if not self.complete:
            raise StaleCacheError(f"The cache {self.path!r} is unfinished (its build stopped): complete it with "
                                  "`fastfeat cache ... --resume` (or build_cache(..., resume=True)).")  # fmt: skip
        row_of = {p: i for i, p in enumerate(self.paths)}
        known = set(row_of) | {p for p, _ in self.failures}
        wanted = list(catalog.paths)
        added = [p for p in dict.fromkeys(wanted) if p not in known]
        # a cached file the catalog does not ask for is harmless unless it is gone (a catalog of
        # some classes only may use a cache of all); one that is gone means the source changed
        removed = sorted(p for p in known - set(wanted) if layout.fingerprint(os.path.join(catalog.root, p))
                         == layout.MISSING)  # fmt: skip
        cached = [(p, row_of[p]) for p in dict.fromkeys(wanted) if p in row_of]
        now = layout.fingerprints([os.path.join(catalog.root, p) for p, _ in cached])
        then = self.fingerprints[[r for _, r in cached]] if cached else now
        changed = [cached[i][0] for i in np.flatnonzero((now != then).any(axis=1)).tolist()]
        if added or removed or changed:
            raise StaleCacheError(
                f"The cache {self.path!r} is out of date: " + "; ".join(
                    f"{len(names)} {what} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
                    for what, names in (("changed", changed), ("added", added), ("removed", removed)) if names
                ) + " since it was built. Update it (decodes only those files again): `fastfeat cache SOURCE -o "
                "CACHE --update` or build_cache(..., update=True)."
            )  # fmt: skip
        return CachedRows(self, catalog, np.asarray([row_of.get(p, -1) for p in wanted], np.int64))

    def close(self) -> None:
        self._closer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"ImageCache({self.path!r}, rows={self.rows}, size={self.row_shape[:2]}, complete={self.complete})"


class CachedRows:
    """A checked cache bound to a catalog: fills batches of catalog positions with decoded images.

    Use :meth:`ImageCache.check` (or :func:`fastfeat.cache.ensure_cache`). Set as
    :attr:`fastfeat.loader.Loader.cache`, it replaces the loader's decoding.
    """

    def __init__(self, cache: ImageCache, catalog, row_of: np.ndarray):
        self.cache = cache
        self.catalog = catalog
        self.row_of = row_of
        self._abspaths = [catalog.abspath(i) for i in range(len(catalog))]
        prints = cache.fingerprints.tolist()
        self._expected = [tuple(prints[r]) if r >= 0 else None for r in row_of.tolist()]

    def fill(self, positions: np.ndarray, out: np.ndarray, load) -> np.ndarray:
        """Write catalog items ``positions`` into ``out`` (n, H, W, 3); returns ok per item.

        Each file is stat'ed first: a file whose fingerprint is the cached one gets its cached row;
        any other (changed since the check, or unreadable at build time) goes through ``load(position,
        out=slot) -> (image, ok)``, the loader's own decoding, so a batch is always what decoding
        the files now gives.
        """
        ok = np.ones(len(positions), bool)
        rows = np.empty(len(positions), np.int64)
        fresh = np.zeros(len(positions), bool)
        for i, position in enumerate(np.asarray(positions).tolist()):
            expected = self._expected[position]
            if expected is not None and layout.fingerprint(self._abspaths[position]) == expected:
                rows[i], fresh[i] = self.row_of[position], True
            else:
                ok[i] = load(position, out=out[i])[1]
        if fresh.all():
            self.cache.read(rows, out)
        else:
            for i in np.flatnonzero(fresh).tolist():
                self.cache.read(rows[i : i + 1], out[i : i + 1])
        return ok
