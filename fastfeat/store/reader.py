"""Reading a fastfeat store: :func:`open_store` and :class:`FeatureStore`.

Uncompressed feature datasets come back as read-only ``np.memmap`` views straight onto the file
(no h5py chunk cache, no copy); compressed ones as a :class:`~fastfeat.store.views.ChunkedArray`
that decompresses chunks in parallel threads. Opening reads only the small metadata and the
``/state`` record, so it costs the same for 1 MB or 1 TB. Readers never take HDF5's file lock,
so any number of them can read a store, also while it is being written: they see the rows
committed when they opened it (or at their last :meth:`FeatureStore.refresh`).
This module never imports TensorFlow.
"""

from __future__ import annotations

import os
import warnings

import h5py
import numpy as np

from . import layout
from .codecs import DamagedStoreError
from .recovery import read_meta
from .rows import rebase_parts, select_rows, split_rows
from .verify import read_checked_state
from .views import map_features, read_rows


class IncompleteStoreWarning(UserWarning):
    """The store was not finished (interrupted run, or still being written)."""


class IncompleteStoreError(ValueError):
    """``open_store(..., allow_incomplete=False)`` on a store whose run did not finish."""


def _strings(group: h5py.Group, n: int, used: int) -> list[bytes]:
    if n == 0:
        return []
    ends = read_rows(group[layout.ENDS], n).astype(np.int64)
    blob = read_rows(group[layout.BYTES], used).tobytes()
    if int(ends[-1]) != used or len(blob) != used or ends[0] < 0 or np.any(np.diff(ends) < 0):
        raise DamagedStoreError("the string offsets disagree with /state", group.file.filename, group.name.lstrip("/"))
    starts = np.concatenate([[0], ends[:-1]])
    return [blob[s:e] for s, e in zip(starts.tolist(), ends.tolist())]


class FeatureStore:
    """A fastfeat store opened for reading. Use :func:`open_store`.

    Attributes:
        path: the file.
        rows: committed rows (``len(store)``).
        complete: whether the run that wrote it finished.
        meta: dict describing the run (model, layers, input size, precision, versions, ...).
        layers: feature keys (layer names, ``name:avg``/``name:max`` when pooled).
    """

    def __init__(self, path: str | os.PathLike, allow_incomplete: bool = True):
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"No such store: {self.path!r}")
        self._file = None
        self._views: dict[tuple[str, bool], object] = {}
        self._open()
        if not self.complete:
            message = (
                f"{self.path!r} is incomplete: {self.rows} rows were committed before its run stopped "
                "(or it is still being written). Complete it with `fastfeat extract ... --resume`."
            )
            if not allow_incomplete:
                self.close()
                raise IncompleteStoreError(message + " Received: allow_incomplete=False")
            warnings.warn(message, IncompleteStoreWarning, stacklevel=3)

    def _open(self) -> None:
        try:
            f = h5py.File(self.path, "r", locking=False)
        except OSError as e:
            raise OSError(f"{self.path!r} is not a readable HDF5 file: {e}") from e
        version = f.attrs.get(layout.ATTR_FORMAT)
        if version is None or layout.STATE not in f:
            f.close()
            raise ValueError(f"{self.path!r} is not a fastfeat store (no {layout.ATTR_FORMAT!r} attribute).")
        if not isinstance(version, (int, np.integer)) or int(version) != layout.FORMAT_VERSION:
            f.close()
            raise ValueError(
                f"{self.path!r} has store format {version!r}; this fastfeat reads format "
                f"{layout.FORMAT_VERSION}. Write it again with this version."
            )
        try:  # what the file claims is checked before anything relies on it
            self._state = read_checked_state(f, self.path)
            self.meta = read_meta(f, self._state)
        except BaseException:
            f.close()
            raise
        self._file = f
        self.rows = int(self._state[layout.S_ROWS])
        self.complete = bool(self._state[layout.S_COMPLETE])
        if self._state[layout.S_OVERFLOW]:
            self.meta["float16_overflow"] = int(self._state[layout.S_OVERFLOW])
        self.layers = list(f[layout.FEATURES].keys())

    def refresh(self) -> int:
        """Re-read a store that is being written; returns the committed row count now."""
        self.close()
        self._open()
        return self.rows

    def __len__(self) -> int:
        return self.rows

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {self.shape(k)}" for k in self.layers)
        return f"FeatureStore({self.path!r}, rows={self.rows}, {shapes})"

    def _layer_key(self, layer: str | None) -> str:
        if layer is None:
            if len(self.layers) != 1:
                raise ValueError(f"This store has several layers; pass one of {self.layers}. Received: layer=None")
            return self.layers[0]
        if layer in self.layers:
            return layer
        raise KeyError(f"No layer {layer!r} in {self.path!r}. Layers: {self.layers}. Received: layer={layer!r}")

    def dataset(self, layer: str | None = None) -> h5py.Dataset:
        """The underlying h5py dataset (all allocated rows, committed or not)."""
        return self._file[layout.FEATURES][self._layer_key(layer)]

    def shape(self, layer: str | None = None) -> tuple[int, ...]:
        """(rows, ...) of one layer, without mapping anything."""
        return (self.rows,) + tuple(self.dataset(layer).shape[1:])

    def features(self, layer: str | None = None, flatten: bool = False):
        """The (N, ...) features of one layer, indexable like a NumPy array.

        Args:
            layer: a key of :attr:`layers` (may be omitted when there is only one).
            flatten: return the (N, -1) view instead (no copy).

        Returns:
            A read-only ``np.memmap`` when the data lie uncompressed in one piece, else a
            :class:`~fastfeat.store.views.ChunkedArray` (memmap views per chunk, or parallel
            decompression).
        """
        key = self._layer_key(layer)
        if (key, flatten) not in self._views:
            if flatten:
                base = self.features(key)
                view = base.reshape(len(base), -1) if isinstance(base, np.ndarray) else base.flat()
            else:
                view = map_features(self.path, self._file[layout.FEATURES][key], self.rows)
            self._views[(key, flatten)] = view
        return self._views[(key, flatten)]

    def is_memmapped(self, layer: str | None = None) -> bool:
        """Whether rows of ``layer`` are read straight from a memory map (uncompressed)."""
        view = self.features(layer)
        return isinstance(view, np.memmap) or bool(getattr(view, "mapped", False))

    def compression(self, layer: str | None = None) -> str:
        """``"none"``, ``"lzf"`` or ``"gzip:LEVEL"`` (h5py's name for other filters)."""
        ds = self.dataset(layer)
        if ds.compression is None:
            return "none"
        return f"gzip:{ds.compression_opts}" if ds.compression == "gzip" else str(ds.compression)

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64 labels, -1 where unlabeled."""
        return read_rows(self._file[layout.LABELS], self.rows)

    @property
    def index(self) -> np.ndarray:
        """(N,) int64 image identity of each row: its source image's position in the store's
        catalog (for a merged store, in the concatenation of its inputs' catalogs; see
        :mod:`fastfeat.store.rows`). The augmented copies of an image share it."""
        index = read_rows(self._file[layout.INDEX], self.rows)
        merged = self.meta.get("merged_rows")
        if merged and "merged_index_base" not in self.meta:  # merged by an earlier fastfeat: local positions
            return rebase_parts(index, merged)
        return index

    @property
    def copies(self) -> np.ndarray:
        """(N,) int32: 0 for the image itself, k for augmented copy k."""
        return read_rows(self._file[layout.COPY], self.rows)

    @property
    def class_names(self) -> list[str]:
        """Class names, in label order (``os.fsdecode`` of the folder names)."""
        return [os.fsdecode(s) for s in read_rows(self._file[layout.CLASS_NAMES])]

    @property
    def paths(self) -> list[str]:
        """File paths relative to the source root, one per row."""
        raw = _strings(self._file[layout.PATHS], self.rows, int(self._state[layout.S_PATH_BYTES]))
        return [os.fsdecode(p) for p in raw]

    @property
    def failures(self) -> list[tuple[str, str]]:
        """(path, reason) of every file that could not be read."""
        n = int(self._state[layout.S_FAILED])
        paths = _strings(self._file[layout.FAILURE_PATHS], n, int(self._state[layout.S_FPATH_BYTES]))
        reasons = _strings(self._file[layout.FAILURE_REASONS], n, int(self._state[layout.S_FREASON_BYTES]))
        return [(os.fsdecode(p), r.decode("utf-8", "replace")) for p, r in zip(paths, reasons)]

    @property
    def failure_index(self) -> np.ndarray:
        """Catalog positions of the files in :attr:`failures`."""
        return read_rows(self._file[layout.FAILURE_INDEX], int(self._state[layout.S_FAILED]))

    @property
    def float16_overflow(self) -> int:
        """Feature values that overflowed float16 when written (stored as inf)."""
        return int(self._state[layout.S_OVERFLOW])

    def rows_of(self, copies=None, images=None) -> np.ndarray:
        """Sorted row positions whose copy id and image are chosen: ``copies=None`` every row,
        ``0`` the images themselves (no augmented copies), or a copy id / list of copy ids;
        ``images``: image identities (:attr:`index` values), every row of those images."""
        chosen = select_rows(self, copies, images=images)
        return np.arange(self.rows, dtype=np.int64) if chosen is None else chosen

    def split(self, fraction: float = 0.2, seed: int | None = 0, copies=None, val_copies=0, stratify: bool = True):
        """(train rows, validation rows) split by image, so no image (or augmented copy of one)
        is on both sides.

        Args:
            fraction: share of the images (identities in :attr:`index`, not rows) held out.
            seed: the random choice of held-out images (``None``: a new one each call).
            copies: which copies of the training images to keep (``None``: all).
            val_copies: which copies of the held-out images to keep (``0``: only the images).
            stratify: hold out the same share of every class (the unlabeled images count as
                one more), as scikit-learn's ``stratify=y``; ``False``: draw over all images.

        Returns:
            Two sorted int64 arrays of row positions, for ``rows=`` of :meth:`arrays`,
            :meth:`to_dataset` and :meth:`to_pydataset`.
        """
        return split_rows(self, fraction, seed, copies=copies, val_copies=val_copies, stratify=stratify)

    # -- adapters (see fastfeat.store.adapters) ----------------------------------------------
    def arrays(self, layer: str | None = None, flatten: bool = True, load: bool = False, copies=None, rows=None):
        """(X, y) for scikit-learn; X is the memory map unless ``load=True``; ``copies``/``rows``
        choose rows (``copies=0``: no augmented copies). See :func:`~.adapters.arrays`."""
        from .adapters import arrays

        return arrays(self, layer, flatten=flatten, load=load, copies=copies, rows=rows)

    def to_dataset(
        self,
        layer: str | None = None,
        batch_size: int = 64,
        shuffle: bool = True,
        seed: int | None = None,
        flatten: bool = False,
        **kwargs,
    ):
        """A ``tf.data.Dataset`` of (features, labels) batches; ``copies=``/``rows=`` choose rows
        (``copies=0``: no augmented copies). See :func:`~.adapters.to_dataset`."""
        from .adapters import to_dataset

        return to_dataset(self, layer, batch_size=batch_size, shuffle=shuffle, seed=seed, flatten=flatten, **kwargs)

    def to_pydataset(self, layer: str | None = None, batch_size: int = 64, shuffle: bool = True, **kwargs):
        """A ``keras.utils.PyDataset`` of (features, labels) batches; ``copies=``/``rows=`` choose
        rows. See :func:`~.adapters.to_pydataset`."""
        from .adapters import to_pydataset

        return to_pydataset(self, layer, batch_size=batch_size, shuffle=shuffle, **kwargs)

    def info(self) -> dict:
        """Everything ``fastfeat info`` prints, as a dict. See :func:`~.inspect.store_info`."""
        from .inspect import store_info

        return store_info(self)

    def close(self) -> None:
        for view in self._views.values():
            closer = getattr(view, "close", None)
            if closer is not None and not isinstance(view, np.ndarray):
                closer()
        self._views.clear()
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_store(path: str | os.PathLike, allow_incomplete: bool = True) -> FeatureStore:
    """Open a fastfeat HDF5 store for reading (no TensorFlow import, O(1) in the file's size).

    Args:
        path: the ``.h5`` file written by ``fastfeat extract``, or the folder of a sharded
            extraction (``--shards N``): then one :class:`~fastfeat.store.sharded.ShardedStore`
            over its shards, with this class's API.
        allow_incomplete: if False, refuse (``IncompleteStoreError``) a store whose run did not
            finish; otherwise warn with :class:`IncompleteStoreWarning`.
    """
    if os.path.isdir(path):
        from .sharded import open_sharded

        return open_sharded(path, allow_incomplete, opener=FeatureStore,
                            incomplete=(IncompleteStoreError, IncompleteStoreWarning))  # fmt: skip
    return FeatureStore(path, allow_incomplete=allow_incomplete)
