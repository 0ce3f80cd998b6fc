"""Loader benchmark: fastfeat's loader (plain, augmented) vs flow_from_directory (plain, augmented)
vs image_dataset_from_directory vs the limit (OpenCV decode+resize on every core, nothing else).

    python -m benchmarks.bench_loader [--images 320] [--dir DIR] [--repeats 5]

All candidates run in one process, on the same JPEGs (about 500x375, quality 90, generated with
``benchmarks.common.make_jpeg_dataset`` unless ``--dir`` is given), in interleaved rounds. Prints a
table (median images/s, CPU ms per image, ratios) and writes ``benchmarks/results/bench_loader.json``.
"""

from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.common import machine, make_jpeg_dataset, print_table, write_json  # noqa: E402
from fastfeat.bench import CANDIDATES, compare_loaders, table_rows  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=320, help="images in the generated dataset")
    p.add_argument("--dir", default=None, help="use this folder instead of a generated dataset")
    p.add_argument("--size", type=int, default=224, help="target size (square)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5, help="timed rounds after one warm-up round")
    p.add_argument("--no-augment", action="store_true", help="skip the augmented candidates")
    p.add_argument("--json", default=None, help="output path (default benchmarks/results/bench_loader.json)")
    args = p.parse_args(argv)

    source = args.dir or make_jpeg_dataset(
        os.path.join(tempfile.gettempdir(), f"fastfeat-bench-{args.images}"), args.images
    )
    candidates = [c for c in CANDIDATES if not (args.no_augment and c.endswith("augmented"))]
    try:
        import fastfeat.augment  # noqa: F401
    except ImportError:
        candidates = [c for c in candidates if c != "fastfeat augmented"]
    info = machine()
    print(f"machine: {info.get('cpu', info['processor'])}, {info['cpus']} cpus, avx512_bf16={info.get('avx512_bf16')}")
    results = compare_loaders(
        source, (args.size, args.size), args.batch_size, args.repeats, candidates=candidates, log=print
    )
    rows = table_rows(results)
    columns = ["loader", "images/s", "min", "max", "x flow", "x flow (paired)", "% of limit",
               "% of limit (paired)", "cpu ms/img", "% of limit (cpu)", "note"]  # fmt: skip
    print_table(
        rows,
        columns,
        title=f"Loaders: {results[0].images} JPEGs -> float32 {args.size}x{args.size}, batch {args.batch_size}, "
        f"median of {args.repeats} interleaved rounds",
    )
    path = write_json(
        "bench_loader",
        {
            "settings": {"images": results[0].images, "size": args.size, "batch_size": args.batch_size,
                         "repeats": args.repeats, "source": os.path.abspath(source)},
            "rows": rows,
            "rates": {r.name: r.rates for r in results},
            "cpu_ms": {r.name: r.cpu_ms for r in results},
        },
        args.json,
    )  # fmt: skip
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
