"""Sharded extraction benchmark: plain ``extract`` vs sharded local vs Ray on one node, same job.

    python -m benchmarks.bench_shards [--images 480] [--model mobilenetv2=out_relu:avg] [--shards 2]
                                      [--rounds 3] [--batch-size 16]

Candidates, interleaved round by round in one process on the same JPEGs:

* plain: ``fastfeat.extract`` to one store;
* sharded local: ``extract_sharded(..., shards=N)`` (the shards one after another in this process);
* Ray, 1 node: ``extract_sharded(..., shards=N, engine="ray")`` on a local Ray started once before
  the rounds (its start-up is reported apart: a cluster is normally up already); one task at a time
  with every core (``cpus_per_shard`` = the machine's cores), as plain ``extract`` uses them.

Each candidate runs once before the rounds (TensorFlow's first calls, in the Ray worker too).

Wall clock of each whole run (planning, model builds, every shard). The goal (issue 13): Ray within
10% of plain. Also reported: each shard's steady-state images/s (the per-shard throughput used by
docs/scaling.md). Writes ``benchmarks/results/bench_shards.json``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a local Ray: every address on 127.0.0.1
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from benchmarks.common import machine, make_jpeg_dataset, print_table, write_json  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=480)
    p.add_argument("--model", default="mobilenetv2=out_relu:avg", help="NAME=LAYER[:POOL]")
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--data", default=None, help="dataset folder (default: a temporary one)")
    args = p.parse_args(argv)

    import fastfeat
    from fastfeat.sharding import extract_sharded

    work = tempfile.mkdtemp(prefix="fastfeat-bench-shards-")
    data = make_jpeg_dataset(args.data or os.path.join(work, "images"), n=args.images)
    model, _, layer = args.model.partition("=")
    settings = dict(model=model, weights=None, batch_size=args.batch_size, precision="float32", progress=False)
    if layer:
        settings["layers"] = [layer]

    import ray

    t0 = time.perf_counter()
    ray.init(address=None, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray_start = time.perf_counter() - t0
    cores = int(ray.cluster_resources().get("CPU", 1))

    def plain(out):
        report = fastfeat.extract(data, out + ".h5", **settings)
        return report.images, [report.images_per_second]

    def local(out):
        report = extract_sharded(data, out, args.shards, **settings)
        return report.images, [s["images_per_second"] for s in report.shards]

    def on_ray(out):
        report = extract_sharded(data, out, args.shards, engine="ray", cpus_per_shard=cores, gpus_per_shard=0,
                                 **settings)  # fmt: skip
        return report.images, [s["images_per_second"] for s in report.shards]

    candidates = {"plain extract": plain, f"sharded local ({args.shards})": local,
                  f"ray 1 node ({args.shards})": on_ray}  # fmt: skip
    times = {name: [] for name in candidates}
    per_shard = {name: [] for name in candidates}
    try:
        for name, fn in candidates.items():  # first-call costs out of the rounds (the Ray worker's too)
            fn(os.path.join(work, f"warmup-{name.split()[0]}"))
        for r in range(args.rounds):
            for name, fn in candidates.items():
                out = os.path.join(work, f"r{r}-{name.split()[0]}")
                t0 = time.perf_counter()
                images, rates = fn(out)
                times[name].append(time.perf_counter() - t0)
                per_shard[name].extend(rates)
                shutil.rmtree(out, ignore_errors=True)
                if os.path.exists(out + ".h5"):
                    os.unlink(out + ".h5")
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)

    base = times["plain extract"]
    rows = []
    for name in candidates:
        ratios = [b / t for b, t in zip(base, times[name])]  # paired, per round: > 1 is faster than plain
        rows.append({
            "candidate": name, "wall_s": statistics.median(times[name]),
            "images_per_s": args.images / statistics.median(times[name]),
            "vs_plain": statistics.median(ratios), "shard_images_per_s": statistics.median(per_shard[name]),
        })  # fmt: skip
    print_table(rows, ["candidate", "wall_s", "images_per_s", "vs_plain", "shard_images_per_s"],
                title=f"{args.images} images, {args.model}, batch {args.batch_size}, {args.rounds} rounds; "
                f"ray start-up {ray_start:.1f} s (not in the walls)")  # fmt: skip
    path = write_json("bench_shards", {"args": vars(args), "ray_start_seconds": ray_start, "rows": rows,
                                       "times": times, "machine_cores": cores, "host": machine()})  # fmt: skip
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
