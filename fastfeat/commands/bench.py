"""``fastfeat bench DIR``: how fast fastfeat's loader reads your images, next to Keras' loaders."""

from __future__ import annotations

import argparse
import json


def register_subparser(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="compare fastfeat's loader with flow_from_directory on your own images",
        description=(
            "Read the images under SOURCE with fastfeat's loader (plain and augmented), Keras' "
            "flow_from_directory (plain and augmented), image_dataset_from_directory, and plain OpenCV "
            "on every core (the limit), side by side in one process; print images/s and ratios."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("source", help="folder of class subfolders, flat folder of images, or .txt/.csv file list")
    p.add_argument("--image-size", default="224", help="N or HxW every loader resizes to")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds after one warm-up round")
    p.add_argument("--limit", type=int, default=1000, help="use at most this many images (0: all)")
    p.add_argument("--no-augment", action="store_true", help="skip the augmented candidates (the slow ones)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    p.set_defaults(func=run, needs_tensorflow=True)


def run(args) -> int:
    import sys
    import textwrap

    from ..bench import CANDIDATES, TABLE_COLUMNS, compare_loaders, format_table, sample_warning, table_rows
    from ..models import normalize_size

    candidates = [c for c in CANDIDATES if not (args.no_augment and c.endswith("augmented"))]
    results = compare_loaders(
        args.source,
        image_size=normalize_size(args.image_size),
        batch_size=args.batch_size,
        repeats=args.repeats,
        limit=args.limit or None,
        candidates=candidates,
        log=print,
    )
    rows = table_rows(results)
    print(
        f"\n{results[0].images} images, {args.image_size} px, batch {args.batch_size}, median of {args.repeats} "
        "rounds\n(CPU ms/img is steadier than images/s on a busy machine)"
    )
    print(format_table(rows, list(TABLE_COLUMNS)))
    print("x flow: images/s over flow_from_directory's (PIL nearest, its default); paired: median of the\n"
          "per-round ratios; % of limit: of OpenCV decode+resize on every core. --json keeps every column.")
    warning = sample_warning(results[0].images, args.batch_size)
    if warning:
        print(textwrap.fill(f"fastfeat: warning: {warning}", width=100, break_on_hyphens=False), file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            rates = {r.name: r.rates for r in results}
            json.dump({"rows": rows, "rates": rates, "cpu_ms": {r.name: r.cpu_ms for r in results}}, f, indent=2)
    return 0
