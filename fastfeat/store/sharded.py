"""A sharded output read as one store: ``open_store(OUT)`` on the folder of a sharded extraction.

A sharded extraction (``fastfeat extract SRC -o OUT --shards N``, see :mod:`fastfeat.sharding`)
writes a folder::

    OUT/manifest.json                   the run, the shard list (ranges, status, rows, digests)
    OUT/shard-00000-of-00004.h5         one store per contiguous range of the catalog, in order
    OUT/shard-00001-of-00004.h5.partial a shard still being written (renamed when complete)

Each shard store records the whole catalog's identity (``catalog_sha256``, ``catalog_size``) and
every row's position in the whole catalog (``index``), so the shards in order are the rows of a
single-machine run. :class:`ShardedStore` has the :class:`~fastfeat.store.FeatureStore` API:
features per shard memory-mapped, indexed across shards like one NumPy array; labels, paths,
failures, ``index`` and ``copies`` concatenated; ``split``, ``rows_of``, ``arrays``,
``to_dataset`` and ``to_pydataset`` as for one store. The format of the manifest is defined here
(the writing side, with its lock, is :mod:`fastfeat.sharding.manifest`). Never imports
TensorFlow, and never the reader (it is handed the class that opens one shard).
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np

from .rows import select_rows, split_rows
from .views import _RowArray, _rows_index, _split

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "fastfeat-shards"
MANIFEST_VERSION = 1
#: Suffix of a shard store while it is written; renamed to its final name once complete.
PARTIAL = ".partial"
#: Shard statuses in the manifest (``failed``: its last run raised; ``error`` says what).
STATUSES = ("pending", "running", "complete", "failed")


def shard_name(k: int, shards: int) -> str:
    """The file name of shard ``k`` of ``shards``: ``shard-00003-of-00016.h5``."""
    return f"shard-{int(k):05d}-of-{int(shards):05d}.h5"


def is_sharded(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding a sharded extraction's manifest."""
    path = os.fspath(path)
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, MANIFEST))


def read_manifest(path: str | os.PathLike) -> dict:
    """The manifest of the sharded output folder ``path`` (checked for its format and version)."""
    path = os.fspath(path)
    file = os.path.join(path, MANIFEST)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{path!r} is not a sharded fastfeat output (no {MANIFEST}). Received: path={path!r}")
    with open(file, encoding="utf-8") as f:
        try:
            manifest = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{file!r} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{file!r} is not a fastfeat shard manifest (format {MANIFEST_FORMAT!r} expected).")
    if manifest.get("version") != MANIFEST_VERSION:
        raise ValueError(
            f"{file!r} has manifest version {manifest.get('version')!r}; this fastfeat reads version "
            f"{MANIFEST_VERSION}."
        )
    return manifest


def shard_paths(path: str, entry: dict) -> tuple[str, str]:
    """(final path, partial path) of one shard entry of the manifest."""
    final = os.path.join(path, entry["name"])
    return final, final + PARTIAL


def shard_files(path: str | os.PathLike, allow_incomplete: bool = False) -> list[str]:
    """The shard stores of the sharded output folder ``path``, in order (for ``merge``).

    Raises ``ValueError`` if a shard is not complete, unless ``allow_incomplete`` (then a partial
    shard's store is listed, and a shard never started is left out)."""
    path = os.fspath(path)
    files, missing = [], []
    for entry in read_manifest(path)["shard_list"]:
        final, partial = shard_paths(path, entry)
        if os.path.exists(final):
            files.append(final)
        else:
            missing.append(entry["index"])
            if allow_incomplete and os.path.exists(partial):
                files.append(partial)
    if missing and not allow_incomplete:
        raise ValueError(
            f"{path!r} is incomplete: shard(s) {_ranges(missing)} are not complete. Finish them with "
            "`fastfeat extract ... --shards N --resume`, or merge the committed rows with --allow-incomplete. "
            "Received: allow_incomplete=False"
        )
    return files


class ConcatenatedRows(_RowArray):
    """Row views (``np.memmap`` or chunked) of consecutive shards indexed as one array along axis
    0: ints, slices, integer arrays (any order, repeats), boolean masks, trailing indices. Each
    part is read with its own local positions, so mapped parts stay zero-copy until indexed."""

    def __init__(self, parts: list, row_shape: tuple[int, ...], dtype):
        self.parts = list(parts)
        sizes = [len(p) for p in self.parts]
        self.offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
        self.shape = (int(self.offsets[-1]),) + tuple(int(d) for d in row_shape)
        self.dtype = np.dtype(dtype)
        self.mapped = all(isinstance(p, np.memmap) or getattr(p, "mapped", False) for p in self.parts)

    def __getitem__(self, item):
        first, rest = _split(item)
        idx = _rows_index(first, self.shape[0])
        if isinstance(idx, int):
            s = int(np.searchsorted(self.offsets, idx, side="right")) - 1
            row = self.parts[s][idx - int(self.offsets[s])]
            return row[rest] if rest else row
        which = np.searchsorted(self.offsets, idx, side="right") - 1
        out = np.empty((idx.size,) + self.shape[1:], self.dtype)
        for s in np.unique(which):
            members = np.flatnonzero(which == s)
            local = idx[members] - self.offsets[s]
            if local.size > 1 and np.all(np.diff(local) == 1):  # a run of rows: one slice of the part
                out[members] = self.parts[s][int(local[0]) : int(local[-1]) + 1]
            else:
                out[members] = self.parts[s][local]
        return out[(slice(None),) + rest] if rest else out

    def flat(self) -> ConcatenatedRows:
        """The same rows as a (N, -1) array (each part flattened without a copy)."""
        flat = [p.reshape(len(p), -1) if isinstance(p, np.ndarray) else p.flat() for p in self.parts]
        return ConcatenatedRows(flat, (int(np.prod(self.shape[1:], dtype=np.int64)),), self.dtype)


class ShardedStore:
    """A sharded output opened for reading as one store. Use :func:`fastfeat.open_store`.

    Attributes:
        path: the output folder.
        manifest: the manifest as read at opening.
        shards: the open shard stores (one per shard that has a store on disk), in order.
        rows: committed rows across the shards (``len(store)``).
        complete: whether every shard is complete.
        meta: the run description (the first shard's, with the whole job's counts).
        layers: feature keys.
    """

    def __init__(self, path: str | os.PathLike, allow_incomplete: bool = True, *, opener,
                 incomplete: tuple[type, type] = (ValueError, UserWarning)):  # fmt: skip
        self.path = os.fspath(path)
        self._opener = opener
        self.shards: list = []
        self._views: dict = {}
        self._open()
        if not self.complete:
            pending = [e["index"] for e in self.manifest["shard_list"] if e["index"] not in self._complete_ids]
            message = (
                f"{self.path!r} is incomplete: shard(s) {_ranges(pending)} of {len(self.manifest['shard_list'])} "
                f"are not complete ({self.rows} rows committed). Complete them with "
                "`fastfeat extract ... --shards N --resume`."
            )
            if not allow_incomplete:
                self.close()
                raise incomplete[0](message + " Received: allow_incomplete=False")
            warnings.warn(message, incomplete[1], stacklevel=4)

    def _open(self) -> None:
        self.manifest = read_manifest(self.path)
        self.shards, self._complete_ids = [], set()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one warning for the whole view, not one per partial shard
            try:
                for entry in self.manifest["shard_list"]:
                    final, partial = shard_paths(self.path, entry)
                    if os.path.exists(final):
                        store = self._opener(final, allow_incomplete=True)
                    elif os.path.exists(partial):
                        store = self._opener(partial, allow_incomplete=True)
                    else:
                        continue
                    self.shards.append(store)
                    if store.complete and store.path == final:
                        self._complete_ids.add(entry["index"])
            except BaseException:
                self.close()
                raise
        self.complete = len(self._complete_ids) == len(self.manifest["shard_list"])
        self.rows = sum(s.rows for s in self.shards)
        first = self.shards[0] if self.shards else None
        self.layers = list(first.layers) if first is not None else list(self.manifest["run"].get("layers", []))
        meta = dict(first.meta) if first is not None else {}
        meta.pop("part", None)
        meta.update(
            shards=len(self.manifest["shard_list"]),
            catalog_size=self.manifest["catalog"]["size"],
            catalog_sha256=self.manifest["catalog"]["sha256"],
        )
        if self.manifest.get("settings"):
            meta.update({k: v for k, v in self.manifest["settings"].items() if k in ("precision", "batch_size")})
        self.meta = meta

    def refresh(self) -> int:
        """Re-read the manifest and the shards (a job still running); returns the rows now."""
        self.close()
        self._open()
        return self.rows

    def __len__(self) -> int:
        return self.rows

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {self.shape(k)}" for k in self.layers)
        return f"ShardedStore({self.path!r}, shards={len(self.manifest['shard_list'])}, rows={self.rows}, {shapes})"

    # -- columns ------------------------------------------------------------------------------
    def _concat(self, name: str, dtype) -> np.ndarray:
        parts = [np.asarray(getattr(s, name)) for s in self.shards]
        return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64 labels, -1 where unlabeled."""
        return self._concat("labels", np.int64)

    @property
    def index(self) -> np.ndarray:
        """(N,) int64 image identity: each row's source image position in the whole catalog."""
        return self._concat("index", np.int64)

    @property
    def copies(self) -> np.ndarray:
        """(N,) int32: 0 for the image itself, k for augmented copy k."""
        return self._concat("copies", np.int32)

    @property
    def failure_index(self) -> np.ndarray:
        """Catalog positions of the files in :attr:`failures`."""
        return self._concat("failure_index", np.int64)

    @property
    def class_names(self) -> list[str]:
        """Class names, in label order (every shard has the whole catalog's)."""
        if self.shards:
            return self.shards[0].class_names
        return list(self.manifest["catalog"].get("class_names", []))

    @property
    def paths(self) -> list[str]:
        """File paths relative to the source root, one per row."""
        return [p for s in self.shards for p in s.paths]

    @property
    def failures(self) -> list[tuple[str, str]]:
        """(path, reason) of every file that could not be read."""
        return [f for s in self.shards for f in s.failures]

    @property
    def float16_overflow(self) -> int:
        """Feature values that overflowed float16 when written (stored as inf)."""
        return sum(s.float16_overflow for s in self.shards)

    # -- features -----------------------------------------------------------------------------
    def _layer_key(self, layer: str | None) -> str:
        if layer is None:
            if len(self.layers) != 1:
                raise ValueError(f"This store has several layers; pass one of {self.layers}. Received: layer=None")
            return self.layers[0]
        if layer in self.layers:
            return layer
        raise KeyError(f"No layer {layer!r} in {self.path!r}. Layers: {self.layers}. Received: layer={layer!r}")

    def _row_format(self, key: str) -> tuple[tuple[int, ...], np.dtype]:
        if self.shards:
            ds = self.shards[0].dataset(key)
            return tuple(ds.shape[1:]), ds.dtype
        shapes = self.manifest["run"].get("shapes") or {}
        return tuple(shapes.get(key, ())), np.dtype(self.manifest["run"].get("dtype", "float32"))

    def shape(self, layer: str | None = None) -> tuple[int, ...]:
        """(rows, ...) of one layer, without mapping anything."""
        return (self.rows,) + self._row_format(self._layer_key(layer))[0]

    def features(self, layer: str | None = None, flatten: bool = False) -> ConcatenatedRows:
        """The (N, ...) features of one layer across the shards, indexable like a NumPy array
        (each shard's rows memory-mapped when uncompressed); ``flatten``: the (N, -1) view."""
        key = self._layer_key(layer)
        if (key, flatten) not in self._views:
            if flatten:
                view = self.features(key).flat()
            else:
                row_shape, dtype = self._row_format(key)
                view = ConcatenatedRows([s.features(key) for s in self.shards], row_shape, dtype)
            self._views[(key, flatten)] = view
        return self._views[(key, flatten)]

    def is_memmapped(self, layer: str | None = None) -> bool:
        """Whether every shard's rows of ``layer`` are read straight from a memory map."""
        return all(s.is_memmapped(layer) for s in self.shards)

    def compression(self, layer: str | None = None) -> str:
        """The shards' compression of ``layer`` (``none``, ``lzf`` or ``gzip:LEVEL``)."""
        return self.shards[0].compression(layer) if self.shards else str(self.manifest["run"].get("compression"))

    # -- rows ---------------------------------------------------------------------------------
    def rows_of(self, copies=None, images=None) -> np.ndarray:
        """Sorted row positions chosen by copy id and image identity (see ``FeatureStore.rows_of``)."""
        chosen = select_rows(self, copies, images=images)
        return np.arange(self.rows, dtype=np.int64) if chosen is None else chosen

    def split(self, fraction: float = 0.2, seed: int | None = 0, copies=None, val_copies=0, stratify: bool = True):
        """(train rows, validation rows) by image across all shards (see ``FeatureStore.split``)."""
        return split_rows(self, fraction, seed, copies=copies, val_copies=val_copies, stratify=stratify)

    def arrays(self, layer: str | None = None, flatten: bool = True, load: bool = False, copies=None, rows=None):
        """(X, y) for scikit-learn (see ``FeatureStore.arrays``)."""
        from .adapters import arrays

        return arrays(self, layer, flatten=flatten, load=load, copies=copies, rows=rows)

    def to_dataset(self, layer: str | None = None, batch_size: int = 64, shuffle: bool = True, seed=None,
                   flatten: bool = False, **kwargs):  # fmt: skip
        """A ``tf.data.Dataset`` of (features, labels) batches (see ``FeatureStore.to_dataset``)."""
        from .adapters import to_dataset

        return to_dataset(self, layer, batch_size=batch_size, shuffle=shuffle, seed=seed, flatten=flatten, **kwargs)

    def to_pydataset(self, layer: str | None = None, batch_size: int = 64, shuffle: bool = True, **kwargs):
        """A ``keras.utils.PyDataset`` of (features, labels) batches (see ``FeatureStore.to_pydataset``)."""
        from .adapters import to_pydataset

        return to_pydataset(self, layer, batch_size=batch_size, shuffle=shuffle, **kwargs)

    def info(self) -> dict:
        """What ``fastfeat info`` prints: the shards' facts summed, plus one line per shard."""
        return sharded_info(self)

    def close(self) -> None:
        self._views.clear()
        for s in self.shards:
            s.close()
        self.shards = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def sharded_info(store: ShardedStore) -> dict:
    """:func:`~fastfeat.store.inspect.store_info`'s dict for a sharded output: counts and sizes
    summed over the shards, and ``shards``: one entry per shard of the manifest."""
    from .inspect import store_info

    parts = [store_info(s) for s in store.shards]
    if parts:
        info = dict(parts[0])
        layers = [dict(layer) for layer in parts[0]["layers"]]
        for layer in layers:
            same = [next(x for x in p["layers"] if x["key"] == layer["key"]) for p in parts]
            layer["shape"] = list(store.shape(layer["key"]))
            layer["data_bytes"] = sum(x["data_bytes"] for x in same)
            layer["stored_bytes"] = sum(x["stored_bytes"] for x in same)
            layer["memory_mappable"] = all(x["memory_mappable"] for x in same)
        info["layers"] = layers
        counts = {name: sum(p["class_counts"].get(name, 0) for p in parts) for name in parts[0]["class_counts"]}
        info.update(class_counts=counts, unlabeled=sum(p["unlabeled"] for p in parts))
        info["size_on_disk"] = sum(p["size_on_disk"] for p in parts)
        info["float16_overflow"] = sum(p["float16_overflow"] for p in parts)
    else:
        run = store.manifest["run"]
        info = {"model": run.get("model"), "image_size": run.get("image_size"), "precision": None,
                "dtype": run.get("dtype"), "preprocess": run.get("preprocess"), "weights": run.get("weights"),
                "class_counts": {}, "unlabeled": 0, "layers": [], "size_on_disk": 0, "compression_ratio": None,
                "float16_overflow": 0, "merged_from": None, "created": store.manifest.get("created")}  # fmt: skip
    info.update(path=store.path, complete=store.complete, rows=store.rows, failures=len(store.failure_index),
                failure_examples=store.failures[:5])  # fmt: skip
    info["precision"] = store.meta.get("precision", info.get("precision"))
    info["shards"] = [
        {k: e.get(k) for k in ("index", "name", "start", "stop", "status", "rows", "failures", "attempts", "digest")}
        for e in store.manifest["shard_list"]
    ]
    return info


def _ranges(ids: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    out, ids = [], sorted(ids)
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        out.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ", ".join(out)


def open_sharded(
    path: str | os.PathLike, allow_incomplete: bool = True, *, opener, incomplete=(ValueError, UserWarning)
) -> ShardedStore:
    """Open the sharded output folder ``path`` as one store.

    Args:
        path: the folder.
        allow_incomplete: if False, refuse (``incomplete[0]``) an output with shards not complete;
            otherwise warn (``incomplete[1]``).
        opener: ``opener(path, allow_incomplete=)`` opens one shard store (the reader's
            ``FeatureStore``; :func:`fastfeat.open_store` passes it, with its error and warning).
        incomplete: (error class, warning class) for an incomplete output.
    """
    return ShardedStore(path, allow_incomplete=allow_incomplete, opener=opener, incomplete=incomplete)
