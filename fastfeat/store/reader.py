"""Reading a fastfeat store: :func:`open_store` and :class:`FeatureStore`.

Uncompressed feature datasets are returned as read-only ``np.memmap`` views straight onto the
file (no h5py chunk cache, no copy); compressed ones as a lazy array that reads rows on demand.
Opening a store reads only its small metadata, so it costs the same for 1 MB or 1 TB.
This module never imports TensorFlow.
"""

from __future__ import annotations

import json
import os
import warnings

import h5py
import numpy as np

from . import layout


class IncompleteStoreWarning(UserWarning):
    """The store was not finished (interrupted run, or still being written)."""


def _memmap(path: str, ds: h5py.Dataset, rows: int) -> np.memmap | None:
    """A memmap of ``ds[:rows]`` if its bytes lie in one uncompressed piece, else ``None``."""
    row_shape = ds.shape[1:]
    if ds.compression is not None or ds.dtype.kind not in "fiub" or rows == 0:
        return None
    if ds.chunks is None:
        offset = ds.id.get_offset()
        if offset is None:
            return None
        return np.memmap(path, dtype=ds.dtype, mode="r", offset=offset, shape=(rows,) + row_shape)
    chunk_rows = ds.chunks[0]
    if ds.chunks[1:] != row_shape:
        return None
    n_chunks = -(-rows // chunk_rows)
    chunk_bytes = chunk_rows * int(np.prod(row_shape, dtype=np.int64)) * ds.dtype.itemsize
    zeros = (0,) * len(row_shape)
    first = ds.id.get_chunk_info_by_coord((0,) + zeros)
    last = ds.id.get_chunk_info_by_coord(((n_chunks - 1) * chunk_rows,) + zeros)
    if first.byte_offset is None or last.byte_offset is None or first.filter_mask or last.filter_mask:
        return None
    if last.byte_offset - first.byte_offset != (n_chunks - 1) * chunk_bytes:
        return None
    if n_chunks > 2:  # spot-check the middle too: cheap, and catches interleaved allocation
        mid = n_chunks // 2
        info = ds.id.get_chunk_info_by_coord((mid * chunk_rows,) + zeros)
        if info.byte_offset != first.byte_offset + mid * chunk_bytes:
            return None
    return np.memmap(path, dtype=ds.dtype, mode="r", offset=first.byte_offset, shape=(rows,) + row_shape)


class LazyRows:
    """Array-like over an HDF5 dataset's first ``rows`` rows; indexing reads from the file."""

    def __init__(self, ds: h5py.Dataset, rows: int):
        self._ds = ds
        self.shape = (rows,) + ds.shape[1:]
        self.dtype = ds.dtype
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, item):
        rows = self.shape[0]
        first, rest = (item[0], item[1:]) if isinstance(item, tuple) else (item, ())
        if isinstance(first, slice):
            idx = np.arange(rows)[first]
        elif isinstance(first, (int, np.integer)):
            i = int(first) + rows if first < 0 else int(first)
            if not 0 <= i < rows:
                raise IndexError(f"index {first} is out of bounds for {rows} rows")
            return self._ds[(i,) + tuple(rest)]
        else:
            idx = np.asarray(first)
            if idx.dtype == bool:
                if idx.shape != (rows,):
                    raise IndexError(f"boolean index of shape {idx.shape} for {rows} rows")
                idx = np.flatnonzero(idx)
            idx = np.where(idx < 0, idx + rows, idx)
            if idx.size and (idx.min() < 0 or idx.max() >= rows):
                raise IndexError(f"index out of bounds for {rows} rows")
        if idx.size == 0:
            return np.empty((0,) + self.shape[1:], self.dtype)[(slice(None),) + tuple(rest)]
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        unique, inverse = np.unique(sorted_idx, return_inverse=True)
        if unique.size == unique[-1] - unique[0] + 1:
            data = self._ds[int(unique[0]) : int(unique[-1]) + 1]
        else:
            data = self._ds[unique]
        out = np.empty((idx.size,) + data.shape[1:], data.dtype)
        out[order] = data[inverse]
        return out[(slice(None),) + tuple(rest)] if rest else out

    def __array__(self, dtype=None, copy=None):
        data = self[:]
        return data.astype(dtype) if dtype is not None else data


class FeatureStore:
    """A fastfeat store opened for reading. Use :func:`open_store`.

    Attributes:
        path: the file.
        layers: feature keys (layer names, ``name:avg``/``name:max`` when pooled).
        labels: (N,) int64, -1 where unlabeled.
        class_names: list of class names.
        paths: list of file paths relative to the source root.
        meta: dict describing the run (model, layers, input size, precision, versions, ...).
        failures: list of (path, reason) for files that could not be read.
        complete: whether the run that wrote it finished.
    """

    def __init__(self, path: str | os.PathLike, allow_incomplete: bool = True):
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"No such store: {self.path!r}")
        try:
            self._file = h5py.File(self.path, "r", locking=False)
        except OSError as e:
            raise OSError(f"{self.path!r} is not a readable HDF5 file: {e}") from e
        attrs = self._file.attrs
        if layout.ATTR_FORMAT not in attrs:
            self._file.close()
            raise ValueError(f"{self.path!r} is not a fastfeat store (no {layout.ATTR_FORMAT!r} attribute).")
        self.rows = int(attrs[layout.ATTR_ROWS])
        self.complete = bool(attrs[layout.ATTR_COMPLETE])
        if not self.complete:
            message = (
                f"{self.path!r} is incomplete: {self.rows} rows were written before its run stopped "
                "(or it is still being written). Complete it with `fastfeat extract ... --resume`."
            )
            if not allow_incomplete:
                self._file.close()
                raise ValueError(message)
            warnings.warn(message, IncompleteStoreWarning, stacklevel=3)
        self.meta = json.loads(attrs[layout.ATTR_META])
        self.layers = list(self._file[layout.FEATURES].keys())
        self._views: dict[str, object] = {}

    def __len__(self) -> int:
        return self.rows

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {self.features(k).shape}" for k in self.layers)
        return f"FeatureStore({self.path!r}, rows={self.rows}, {shapes})"

    def _layer_key(self, layer: str | None) -> str:
        if layer is None:
            if len(self.layers) != 1:
                raise ValueError(f"This store has several layers; name one of {self.layers}")
            return self.layers[0]
        if layer in self.layers:
            return layer
        raise KeyError(f"No layer {layer!r} in {self.path!r}. Layers: {self.layers}")

    def features(self, layer: str | None = None):
        """The (N, ...) features of one layer: a read-only memmap when uncompressed, else lazy."""
        key = self._layer_key(layer)
        if key not in self._views:
            ds = self._file[layout.FEATURES][key]
            view = _memmap(self.path, ds, self.rows)
            self._views[key] = view if view is not None else LazyRows(ds, self.rows)
        return self._views[key]

    def is_memmapped(self, layer: str | None = None) -> bool:
        return isinstance(self.features(layer), np.memmap)

    @property
    def labels(self) -> np.ndarray:
        return self._file[layout.LABELS][: self.rows]

    @property
    def index(self) -> np.ndarray:
        return self._file[layout.INDEX][: self.rows]

    @property
    def copies(self) -> np.ndarray:
        return self._file[layout.COPY][: self.rows]

    @property
    def class_names(self) -> list[str]:
        return [s.decode() if isinstance(s, bytes) else s for s in self._file[layout.CLASS_NAMES][()]]

    @property
    def paths(self) -> list[str]:
        return [os.fsdecode(p) for p in self._file[layout.PATHS][: self.rows]]

    @property
    def failures(self) -> list[tuple[str, str]]:
        n = int(self._file.attrs.get("failed", 0))
        paths = self._file[layout.FAILURE_PATHS][:n]
        reasons = self._file[layout.FAILURE_REASONS][:n]
        return [(os.fsdecode(p), r.decode() if isinstance(r, bytes) else r) for p, r in zip(paths, reasons)]

    def close(self) -> None:
        self._views.clear()
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_store(path: str | os.PathLike, allow_incomplete: bool = True) -> FeatureStore:
    """Open a fastfeat HDF5 store for reading (no TensorFlow import).

    Args:
        path: the ``.h5`` file written by ``fastfeat extract``.
        allow_incomplete: if False, refuse a store whose run did not finish; otherwise warn.
    """
    return FeatureStore(path, allow_incomplete=allow_incomplete)
