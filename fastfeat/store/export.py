"""Exporting a store for tools that do not read HDF5: rows as CSV, a layer as ``.npy``, CSV or Parquet.

Every export streams: features are read a bounded number of bytes at a time (:data:`STEP_BYTES`) and
row dicts are made per step, so a store larger than memory exports with flat memory (the row columns
-- labels, copies, index, paths -- are read once, as ``FeatureStore`` gives them). ``.npy`` is written through a memory map of the
output; Parquet needs ``pyarrow`` (``pip install pyarrow``). Works on any store ``open_store``
opens (one file or a sharded output folder). Never imports TensorFlow.
"""

from __future__ import annotations

import csv
import os

import numpy as np

#: Bytes of features read per step.
STEP_BYTES = 32 * 2**20
FORMATS = ("npy", "csv", "parquet")
ROW_COLUMNS = ("row", "path", "label", "class", "copy", "image")
#: A CSV export refuses layers wider than this (a 28x28x512 map is 401,408 columns: use npy or pool it).
MAX_CSV_COLUMNS = 100_000


def iter_rows(store, start: int = 0, stop: int | None = None, columns: tuple | None = None):
    """Rows ``start..stop`` as dicts: ``row``, ``path``, ``label`` (class index, -1 unlabeled),
    ``class`` (name or empty), ``copy`` (0 plain, k the k-th augmented copy) and ``image`` (the
    source image's identity). A generator: exports never hold a dict per row of the whole store.
    ``columns`` (:func:`row_columns`) saves reading the columns again for every range."""
    names, labels, copies, index, paths = row_columns(store) if columns is None else columns
    for i in range(start, len(labels) if stop is None else stop):
        label = int(labels[i])
        yield {"row": i, "path": paths[i], "label": label, "class": names[label] if 0 <= label < len(names) else "",
               "copy": int(copies[i]), "image": int(index[i])}  # fmt: skip


def row_columns(store) -> tuple:
    """``(class names, labels, copies, index, paths)``, read once."""
    return list(store.class_names), store.labels, store.copies, store.index, store.paths


def row_table(store) -> list[dict]:
    """Every row of :func:`iter_rows` in a list."""
    return list(iter_rows(store))


def write_rows_csv(store, path: str | os.PathLike) -> int:
    """Write :func:`iter_rows` as CSV (``-`` for standard output); returns the rows written."""
    if os.fspath(path) == "-":
        import sys

        _write_csv(sys.stdout, iter_rows(store))
    else:
        with open(path, "w", newline="", encoding="utf-8") as f:
            _write_csv(f, iter_rows(store))
    return len(store)


def _write_csv(f, rows) -> None:
    writer = csv.DictWriter(f, fieldnames=list(ROW_COLUMNS))
    writer.writeheader()
    writer.writerows(rows)


def format_of(path: str | os.PathLike, fmt: str | None = None) -> str:
    """The export format: ``fmt`` if given, else the output's extension."""
    if fmt is None:
        fmt = os.path.splitext(os.fspath(path))[1].lstrip(".").lower()
    if fmt not in FORMATS:
        raise ValueError(
            f"`format` must be one of {', '.join(FORMATS)} (or an output ending in .npy, .csv, .parquet). "
            f"Received: format={fmt!r}, output={os.fspath(path)!r}"
        )
    return fmt


def _steps(n: int, row_bytes: int):
    step = max(1, STEP_BYTES // max(row_bytes, 1))
    for start in range(0, n, step):
        yield start, min(n, start + step)


def export_layer(store, layer: str | None, output: str | os.PathLike, fmt: str | None = None,
                 overwrite: bool = False) -> dict:  # fmt: skip
    """Write one layer's features (flattened per row for CSV and Parquet) with the row columns.

    ``npy``: ``OUTPUT`` holds the (rows, ...) array as stored, and ``OUTPUT`` minus ``.npy`` plus
    ``.rows.csv`` the row columns. ``csv``: one line per row, the row columns then ``f0..fD-1``.
    ``parquet``: the row columns and a fixed-size list column ``features``.

    Returns:
        ``{"format", "rows", "shape", "files"}``.
    """
    output = os.fspath(output)
    fmt = format_of(output, fmt)
    features = store.features(layer)
    columns = row_columns(store)
    key = layer if layer is not None else store.meta.get("layers", [None])[0]
    shape = tuple(int(d) for d in features.shape)
    n, width = shape[0], int(np.prod(shape[1:], dtype=np.int64))
    row_bytes = width * np.dtype(features.dtype).itemsize
    files = [output]
    if fmt == "npy":
        files.append(os.path.splitext(output)[0] + ".rows.csv")
    for path in files:
        if os.path.exists(path) and not overwrite:
            raise FileExistsError(f"{path!r} exists. Pass --overwrite to replace it.")
    if fmt == "csv" and width > MAX_CSV_COLUMNS:
        raise ValueError(
            f"Layer {key!r} has {width:,} values per row: too wide for CSV. Export it as .npy or .parquet, or "
            f"extract it pooled (--layer {key}:avg). Received: format='csv'"
        )
    if fmt == "npy":
        out = np.lib.format.open_memmap(output, mode="w+", dtype=features.dtype, shape=shape)
        for a, b in _steps(n, row_bytes):
            out[a:b] = np.asarray(features[a:b])
        out.flush()
        del out
        with open(files[1], "w", newline="", encoding="utf-8") as f:
            _write_csv(f, iter_rows(store, columns=columns))
    elif fmt == "csv":
        with open(output, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow([*ROW_COLUMNS, *(f"f{j}" for j in range(width))])
            for a, b in _steps(n, row_bytes):
                block = np.asarray(features[a:b]).reshape(b - a, width)
                for r, values in zip(iter_rows(store, a, b, columns), block):
                    writer.writerow([*(r[c] for c in ROW_COLUMNS), *(repr(float(v)) for v in values)])
    else:
        _write_parquet(output, columns, features, n, width, row_bytes)
    return {"format": fmt, "rows": n, "shape": list(shape), "layer": key, "files": files}


def _write_parquet(output, columns, features, n, width, row_bytes) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("Parquet export needs pyarrow: pip install pyarrow") from None
    value_type = pa.float16() if np.dtype(features.dtype) == np.float16 else pa.float32()
    schema = pa.schema([
        ("row", pa.int64()), ("path", pa.string()), ("label", pa.int64()), ("class", pa.string()),
        ("copy", pa.int64()), ("image", pa.int64()), ("features", pa.list_(value_type, width)),
    ])  # fmt: skip
    with pq.ParquetWriter(output, schema) as writer:
        for a, b in _steps(n, row_bytes):
            block = np.ascontiguousarray(np.asarray(features[a:b]).reshape(-1))
            values = pa.FixedSizeListArray.from_arrays(pa.array(block, type=value_type), width)
            part = list(iter_rows(None, a, b, columns))
            columns = [pa.array([r[c] for r in part]) for c in ROW_COLUMNS]
            writer.write_table(pa.Table.from_arrays([*columns, values], schema=schema))
