"""``fastfeat merge A.h5 B.h5 ... -o ALL.h5``: one store from several of the same model and layers."""

from __future__ import annotations


def register_subparser(subparsers) -> None:
    p = subparsers.add_parser(
        "merge",
        help="merge stores of the same model and layers into one",
        description="Concatenate the rows (features, labels, paths) of several stores written with the same "
        "model, layers, image size, preprocessing and dtype. Class names are reconciled by name.",
    )
    p.add_argument("inputs", nargs="+", metavar="STORE", help="two or more .h5 stores, merged in this order")
    p.add_argument("-o", "--output", required=True, help="the merged .h5 store to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument(
        "--compression", default="same", help="same (as the first input), none, lzf, gzip or gzip:LEVEL"
    )
    p.add_argument("--allow-incomplete", action="store_true", help="merge the committed rows of unfinished stores")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..store.merge import merge_stores

    summary = merge_stores(
        args.inputs, args.output, overwrite=args.overwrite, compression=args.compression,
        allow_incomplete=args.allow_incomplete,
    )  # fmt: skip
    print(
        f"fastfeat: merged {len(summary['inputs'])} stores -> {summary['output']}: {summary['rows']:,} rows, "
        f"{summary['failures']:,} failures, {len(summary['class_names'])} classes"
    )
    return 0
