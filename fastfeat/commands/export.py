"""``fastfeat export STORE -o OUT``: a layer as .npy / .csv / .parquet, or the row list, for tools that
do not read HDF5."""

from __future__ import annotations

import argparse


def register_subparser(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a store's layer to .npy/.csv/.parquet, or list its rows (path, label, copy)",
        description=(
            "Export one layer of a feature store for tools that do not read HDF5, streaming (flat memory). "
            "OUT.npy: the array as stored, plus OUT.rows.csv with the row columns; OUT.csv: one line per row, "
            "row columns then f0..fD-1; OUT.parquet: row columns and a fixed-size list column 'features' "
            "(needs pyarrow). With --rows: only the row list (row, path, label, class, copy, image) as CSV, "
            "to standard output unless -o is given."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("store", help="the .h5 store, or the folder of a sharded extraction")
    p.add_argument("-o", "--output", default=None, help="output file (.npy, .csv or .parquet; with --rows: a .csv)")
    p.add_argument("--layer", default=None, help="feature key to export (default: the store's first layer)")
    p.add_argument("--format", default=None, choices=("npy", "csv", "parquet"), help="default: from the extension")
    p.add_argument("--rows", action="store_true", help="export only the row list")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(func=run)


def run(args) -> int:
    import os

    from ..store.export import export_layer, write_rows_csv
    from ..store.reader import open_store

    if not args.rows and not args.output:
        raise ValueError("`-o/--output` is needed to export a layer (OUT.npy, OUT.csv or OUT.parquet); "
                         "--rows alone lists the rows on standard output. Received: --output=None")  # fmt: skip
    with open_store(args.store) as store:
        if args.rows:
            target = args.output or "-"
            if target != "-" and os.path.exists(target) and not args.overwrite:
                raise FileExistsError(f"{target!r} exists. Pass --overwrite to replace it.")
            count = write_rows_csv(store, target)
            if target != "-":
                print(f"fastfeat: {count} rows -> {target}")
            return 0
        done = export_layer(store, args.layer, args.output, fmt=args.format, overwrite=args.overwrite)
    print(f"fastfeat: {done['layer']} {tuple(done['shape'])} -> " + ", ".join(done["files"]))
    return 0
