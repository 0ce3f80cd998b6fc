"""What is in a store: the facts ``fastfeat info`` prints, as a dict and as text."""

from __future__ import annotations

import os

import numpy as np

from .views import chunk_table

# Functions here take an open ``FeatureStore``; this module is below the reader (which calls it
# lazily for ``FeatureStore.info``), so it never imports it, not even for type hints.


def _layer_info(store, key: str) -> dict:
    ds = store.dataset(key)
    row_bytes = int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize
    if ds.chunks is not None:
        table = chunk_table(ds)
        chunk_bytes = int(ds.chunks[0]) * row_bytes
        stored = sum(size for _, size, _ in table.values())
        logical = chunk_bytes * len(table)
    else:
        stored = logical = int(ds.id.get_storage_size())
    return {
        "key": key,
        "shape": list(store.shape(key)),
        "dtype": str(ds.dtype),
        "chunk_rows": int(ds.chunks[0]) if ds.chunks else None,
        "compression": store.compression(key),
        "memory_mappable": store.is_memmapped(key),
        "data_bytes": store.rows * row_bytes,
        "stored_bytes": int(stored),
        "compression_ratio": round(logical / stored, 3) if stored else None,
    }


def store_info(store) -> dict:
    """Layers, shapes, dtypes, counts per class, model, precision, size, compression, state, of
    an open :class:`~fastfeat.store.FeatureStore`."""
    meta = store.meta
    labels = np.asarray(store.labels)
    names = store.class_names
    counts = {name: int(np.count_nonzero(labels == i)) for i, name in enumerate(names)}
    unlabeled = int(np.count_nonzero(labels < 0))
    plain = np.asarray(store.copies) == 0  # one plain row per image, then its augmented copies
    images = {name: int(np.count_nonzero(plain & (labels == i))) for i, name in enumerate(names)}
    layers = [_layer_info(store, key) for key in store.layers]
    stored = sum(layer["stored_bytes"] for layer in layers)
    logical = sum(layer["compression_ratio"] * layer["stored_bytes"] for layer in layers if layer["compression_ratio"])
    return {
        "path": store.path,
        "complete": store.complete,
        "rows": store.rows,
        "images": int(np.count_nonzero(plain)),
        "augment_copies": int(meta.get("augment_copies") or 0),
        "augment": meta.get("augment"),
        "failures": len(store.failure_index),
        "failure_examples": store.failures[:5],
        "model": meta.get("model"),
        "image_size": meta.get("image_size"),
        "precision": meta.get("precision"),
        "dtype": meta.get("dtype"),
        "preprocess": meta.get("preprocess"),
        "weights": meta.get("weights"),
        "class_counts": counts,
        "class_images": images,
        "unlabeled": unlabeled,
        "layers": layers,
        "size_on_disk": os.path.getsize(store.path),
        "compression_ratio": round(logical / stored, 3) if stored else None,
        "float16_overflow": store.float16_overflow,
        "merged_from": meta.get("merged_from"),
        "created": meta.get("created"),
    }


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


def _copies(info: dict) -> str:
    k = info.get("augment_copies") or 0
    return f" ({info.get('images', 0):,} images x (1 + {k} augmented copies))" if k else ""


def format_info(info: dict) -> str:
    """Human-readable lines for :func:`store_info`'s dict."""
    lines = [
        f"{info['path']}",
        f"  complete:     {'yes' if info['complete'] else 'NO (interrupted or still being written; --resume)'}",
        f"  rows:         {info['rows']:,}{_copies(info)}   failures: {info['failures']:,}",
        f"  model:        {info['model']}   image size: {info['image_size']}   weights: {info['weights']}",
        f"  precision:    {info['precision']} (inference), {info['dtype']} (stored)   preprocess: {info['preprocess']}",
        f"  size on disk: {_size(info['size_on_disk'])}   compression ratio: {info['compression_ratio']}",
        "  layers:",
    ]
    for layer in info["layers"]:
        lines.append(
            f"    {layer['key']}: {tuple(layer['shape'])} {layer['dtype']}, chunks of {layer['chunk_rows']} rows, "
            f"compression {layer['compression']} (ratio {layer['compression_ratio']}), "
            f"{'memory-mapped' if layer['memory_mappable'] else 'not memory-mappable (decompressed on read)'}"
        )
    if info.get("augment"):
        drawn = ", ".join(f"{k}={v}" for k, v in info["augment"].items() if v not in (None, 0, 0.0, False, "nearest"))
        lines.append(f"  augmentation: {drawn or 'none'}")
    copies = bool(info.get("augment_copies"))
    lines.append("  classes (images, rows):" if copies else "  classes:")
    for name, n in info["class_counts"].items():
        images = info.get("class_images", {}).get(name, n)
        lines.append(f"    {name}: {images:,} images, {n:,} rows" if copies else f"    {name}: {n:,}")
    if info["unlabeled"]:
        lines.append(f"    (unlabeled): {info['unlabeled']:,}")
    if info["float16_overflow"]:
        lines.append(f"  float16 overflow: {info['float16_overflow']:,} values stored as inf")
    for path, reason in info["failure_examples"]:
        lines.append(f"  failed: {path}: {reason}")
    if info["failures"] > len(info["failure_examples"]):
        lines.append(f"  ... and {info['failures'] - len(info['failure_examples'])} more failures")
    if info["merged_from"]:
        lines.append(f"  merged from: {', '.join(info['merged_from'])}")
    for shard in info.get("shards") or ():  # a sharded output (fastfeat.store.sharded.sharded_info)
        lines.append(f"  shard {shard['index']}: images [{shard['start']}, {shard['stop']}), {shard['status']}, "
                     f"{shard['rows']:,} rows, {shard['failures']:,} failures, {shard['attempts']} attempt(s)")  # fmt: skip
    return "\n".join(lines)
