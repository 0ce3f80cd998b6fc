"""``fastfeat info OUT.h5``: what a store holds, how it is stored, whether it is complete."""

from __future__ import annotations

import json


def register_subparser(subparsers) -> None:
    p = subparsers.add_parser(
        "info",
        help="describe a feature store (layers, shapes, classes, size, compression, completeness)",
        description="Describe a fastfeat HDF5 store: layers, shapes, dtypes, rows per class, model, precision, "
        "size on disk, compression ratio, whether it is memory-mappable and complete, and failures.",
    )
    p.add_argument("store", help="the .h5 store")
    p.add_argument("--json", action="store_true", help="print the facts as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    import warnings

    from ..store.inspect import format_info, store_info
    from ..store.reader import IncompleteStoreWarning, open_store

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IncompleteStoreWarning)  # info says it itself
        store = open_store(args.store, allow_incomplete=True)
    with store:
        info = store_info(store)
    print(json.dumps(info, indent=2, default=str) if args.json else format_info(info))
    return 0
