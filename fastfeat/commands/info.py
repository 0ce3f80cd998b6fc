"""``fastfeat info OUT.h5``: what a store holds, how it is stored, whether it is complete.

``--verify`` also reads every chunk of every dataset and reports what is damaged (exit status 1).
"""

from __future__ import annotations

import json
import sys


def register_subparser(subparsers) -> None:
    p = subparsers.add_parser(
        "info",
        help="describe a feature store (layers, shapes, classes, size, compression, completeness)",
        description="Describe a fastfeat HDF5 store: layers, shapes, dtypes, rows per class, model, precision, "
        "size on disk, compression ratio, whether it is memory-mappable and complete, and failures.",
    )
    p.add_argument("store", help="the .h5 store, or the folder of a sharded extraction")
    p.add_argument("--json", action="store_true", help="print the facts as JSON")
    p.add_argument(
        "--verify", action="store_true",
        help="also read every chunk of every dataset and report damage (layer, rows, reason); "
        "exit status 1 if anything is damaged",
    )  # fmt: skip
    p.set_defaults(func=run)


def _info(path: str) -> dict:
    import warnings

    from ..store.reader import IncompleteStoreWarning, open_store

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IncompleteStoreWarning)  # info says it itself
        store = open_store(path, allow_incomplete=True)  # a store, or a sharded output folder
    with store:
        return store.info()


def run(args) -> int:
    from ..store.inspect import format_info

    if not args.verify:
        info = _info(args.store)
        print(json.dumps(info, indent=2, default=str) if args.json else format_info(info))
        return 0
    from ..store.codecs import DamagedStoreError
    from ..store.sharded import is_sharded, shard_files
    from ..store.verify import verify_store

    sharded = is_sharded(args.store)
    files = shard_files(args.store, allow_incomplete=True) if sharded else [args.store]
    reports = [verify_store(path) for path in files]  # a sharded output: every shard's store
    try:
        info, error = _info(args.store), None
    except (DamagedStoreError, ValueError, OSError) as e:  # the report says what is damaged
        info, error = {"path": args.store}, str(e)
    if args.json:
        found = [r.to_dict() for r in reports] if sharded else reports[0].to_dict()
        info = dict(info, verify=found, **({"error": error} if error else {}))
        print(json.dumps(info, indent=2, default=str))
    else:
        if error:
            print(f"fastfeat: cannot describe {args.store!r}: {error}", file=sys.stderr)
        else:
            print(format_info(info))
        for report in reports:
            print(report.format())
    return 0 if all(r.ok for r in reports) else 1
