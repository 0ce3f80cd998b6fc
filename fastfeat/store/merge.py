"""Merging stores written from the same model and layers (e.g. one store per shard or folder).

Image identity (``/index``) survives a merge: inputs that share a catalog (the same non-empty
``catalog_sha256``: shards of one run, or the same folder run twice) keep their positions, so
their rows name the same images; every other input's positions (rows and failures) are shifted
past those of the catalogs before it. The merged store's ``index`` is then the position in the
concatenation of its inputs' distinct catalogs; ``meta["merged_index_base"]`` records each
input's shift.
"""

from __future__ import annotations

import os

import numpy as np

from ..runkeys import MERGE_KEYS
from .codecs import DamagedStoreError
from .reader import open_store
from .sharded import shard_files
from .writer import StoreWriter

#: Run settings that must agree for features to be comparable, hence mergeable (the table of
#: :mod:`fastfeat.runkeys`, shared with the run description).
MUST_MATCH = MERGE_KEYS
#: Bytes of features copied per step.
BLOCK_BYTES = 64 * 1024 * 1024


def merge_class_names(lists: list[list[str]]) -> tuple[list[str], list[np.ndarray]]:
    """Union of class names by name (first store's order, then new names as met), and for each
    input the array mapping its label ids to merged ids."""
    merged: list[str] = []
    position: dict[str, int] = {}
    for names in lists:
        for name in names:
            if name not in position:
                position[name] = len(merged)
                merged.append(name)
    return merged, [np.array([position[n] for n in names], np.int64) for names in lists]


def _check_compatible(stores) -> None:
    first = stores[0]
    for other in stores[1:]:
        diffs = [
            f"  {k}: {first.path!r} has {first.meta.get(k)!r}, {other.path!r} has {other.meta.get(k)!r}"
            for k in MUST_MATCH
            if first.meta.get(k) != other.meta.get(k)
        ]
        if other.layers != first.layers:
            diffs.append(f"  layers in the file: {first.layers} vs {other.layers}")
        else:
            for key in first.layers:
                a, b = first.dataset(key), other.dataset(key)
                if a.shape[1:] != b.shape[1:] or a.dtype != b.dtype:
                    diffs.append(f"  {key}: {a.shape[1:]} {a.dtype} vs {b.shape[1:]} {b.dtype}")
        if diffs:
            raise ValueError("Cannot merge stores written with other settings:\n" + "\n".join(diffs))


def merge_stores(
    inputs: list[str | os.PathLike],
    output: str | os.PathLike,
    overwrite: bool = False,
    compression: str | None = "same",
    allow_incomplete: bool = False,
) -> dict:
    """Write the rows of ``inputs``, in order, into one new store ``output``.

    Args:
        inputs: two or more stores from the same model, layers, image size, preprocessing and dtype;
            a sharded output folder stands for its shard stores, in order.
        output: the merged store (must not be one of the inputs).
        overwrite: replace an existing ``output``.
        compression: ``"same"`` (the first input's), or a spec as for ``StoreWriter``.
        allow_incomplete: merge the committed rows of unfinished stores too (refused by default).

    Returns:
        A summary: output, rows, failures, class_names, inputs.
    """
    inputs = [os.fspath(p) for p in inputs]
    output = os.fspath(output)
    folders = [p for p in inputs if os.path.isdir(p)]  # a sharded output: its shard stores, in order
    inputs = [q for p in inputs for q in (shard_files(p, allow_incomplete) if p in folders else [p])]
    if len(inputs) < (1 if folders else 2):
        raise ValueError(f"`inputs` needs at least two stores (or a sharded output folder). Received: inputs={inputs}")
    if os.path.abspath(output) in {os.path.abspath(p) for p in inputs}:
        raise ValueError(f"`output` must not be one of the inputs. Received: output={output!r}")
    if os.path.exists(output) and not overwrite:
        raise FileExistsError(f"{output!r} exists. Pass --overwrite to replace it.")
    stores = []
    try:
        for p in inputs:
            stores.append(open_store(p, allow_incomplete=True))
            if not stores[-1].complete and not allow_incomplete:
                raise ValueError(
                    f"{p!r} is incomplete; finish it with --resume, or merge its committed rows with "
                    "--allow-incomplete. Received: allow_incomplete=False"
                )
        _check_compatible(stores)
        return _write(stores, output, overwrite, compression)
    finally:
        for s in stores:
            s.close()


def index_bases(stores) -> tuple[list[int], int]:
    """Each input's shift of ``index`` and the size of the merged catalog (see the module doc)."""
    bases, seen, size = [], {}, 0
    for store in stores:
        sha = store.meta.get("catalog_sha256")
        if sha and sha in seen:
            bases.append(seen[sha][0])
            continue
        top = max([int(np.max(a)) + 1 for a in (store.index, store.failure_index) if len(a)], default=0)
        span = max(top, int(store.meta.get("catalog_size") or 0))
        if sha:
            seen[sha] = (size, span)
        bases.append(size)
        size += span
    return bases, size


def _write(stores, output, overwrite, compression) -> dict:
    first = stores[0]
    names, maps = merge_class_names([s.class_names for s in stores])
    total = sum(s.rows for s in stores)
    bases, catalog_size = index_bases(stores)
    shas = {s.meta.get("catalog_sha256") for s in stores}
    if compression == "same":
        compression = first.compression(first.layers[0])
    features = {k: (tuple(first.dataset(k).shape[1:]), str(first.dataset(k).dtype)) for k in first.layers}
    meta = dict(first.meta)
    meta.pop("part", None)  # a shard's range in its job: not the merged store's
    meta.update(
        class_names=names,
        catalog_size=catalog_size,
        catalog_sha256=first.meta.get("catalog_sha256") if len(shas) == 1 else None,
        source=first.meta.get("source") if len(shas) == 1 and None not in shas else None,
        merged_from=[os.path.abspath(s.path) for s in stores],
        merged_rows=[s.rows for s in stores],
        merged_index_base=bases,
    )
    row_bytes = sum(int(np.prod(shape, dtype=np.int64)) * np.dtype(dt).itemsize for shape, dt in features.values())
    block = max(1, BLOCK_BYTES // max(row_bytes, 1))
    writer = StoreWriter(
        output, features, capacity=max(total, 1), class_names=names, meta=meta,
        mode="overwrite" if overwrite else "create", compression=compression,
    )  # fmt: skip
    complete = False
    try:
        for store, mapping, base in zip(stores, maps, bases):
            labels = np.asarray(store.labels)
            if labels.size and (labels.min() < -1 or labels.max() >= len(mapping)):
                raise DamagedStoreError(f"labels outside -1..{len(mapping) - 1}", store.path, "labels")
            labels = np.where(labels >= 0, mapping[np.clip(labels, 0, None)] if len(mapping) else -1, -1)
            paths, index, copies = store.paths, np.asarray(store.index) + base, np.asarray(store.copies)
            views = {k: store.features(k) for k in store.layers}
            for a in range(0, store.rows, block):
                b = min(a + block, store.rows)
                writer.append({k: v[a:b] for k, v in views.items()}, labels[a:b], paths[a:b], index[a:b], copies[a:b])
                writer.commit()
            failures = store.failures
            writer.add_failures(
                [int(i) + base for i in store.failure_index], [p for p, _ in failures], [r for _, r in failures]
            )
            writer.commit()
        complete = True
    finally:
        writer.close(complete=complete)
    return {
        "output": output,
        "rows": writer.rows,
        "failures": writer.failed,
        "class_names": names,
        "inputs": [s.path for s in stores],
    }
