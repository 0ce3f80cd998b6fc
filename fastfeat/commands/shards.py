"""The sharded half of ``fastfeat extract``: ``--shards N [--shard-index K] [--engine local|ray]``.

:func:`add_shard_flags` adds the flags to the ``extract`` parser; :func:`run_sharded` runs the job
(:func:`fastfeat.sharding.extract_sharded`) from the parsed config, with ``-o`` as the folder.
"""

from __future__ import annotations

import argparse


def _shards(text: str):
    if text.strip().lower() == "auto":
        return "auto"
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive int or 'auto', got {text!r}")
    return value


def add_shard_flags(p: argparse.ArgumentParser) -> None:
    """The flags of a sharded extraction (``-o`` is then a folder)."""
    g = p.add_argument_group(
        "sharded extraction",
        "Cut the catalog into N contiguous shards, one store each, in the folder -o OUT (with OUT/manifest.json); "
        "fastfeat.open_store(OUT) reads them as one store, `fastfeat merge OUT -o one.h5` makes one file.",
    )
    g.add_argument("--shards", type=_shards, default=None, metavar="N",
                   help="number of shards (auto: 1 locally, 4 per Ray task slot)")
    g.add_argument("--shard-index", type=int, default=None, metavar="K",
                   help="run only shard K (one launcher per shard: SLURM array, Kubernetes job; any order, rerunnable)")
    g.add_argument("--engine", default="local", choices=("local", "ray"),
                   help="local: the shards one after another in this process; ray: one Ray task per shard")
    g.add_argument("--ray-address", default=None, metavar="ADDRESS",
                   help="an existing Ray cluster (default: start a local Ray on this machine)")
    g.add_argument("--gpus-per-shard", type=float, default=None, metavar="G",
                   help="GPUs per Ray task (default: 1 when the cluster has GPUs, else 0)")
    g.add_argument("--cpus-per-shard", type=float, default=None, metavar="C",
                   help="CPUs per Ray task (default: the cluster's CPUs per GPU, or one node's CPUs)")
    g.add_argument("--max-retries", type=int, default=3, metavar="R",
                   help="Ray retries of a shard whose worker or node died (each resumes the shard)")  # fmt: skip


def uses_shards(args) -> bool:
    """Whether the parsed ``extract`` arguments ask for a sharded extraction."""
    return args.shards is not None or args.shard_index is not None or args.engine != "local"


def run_sharded(args, config) -> int:
    """Run the sharded job of parsed ``extract`` arguments and their ``ExtractConfig``."""
    from ..sharding import extract_sharded

    if args.shards is None:
        raise ValueError(f"--shard-index and --engine need --shards N. Received: shards=None, engine={args.engine!r}")
    settings = config.to_dict()
    for key in ("source", "output", "overwrite", "resume", "progress"):
        settings.pop(key)
    report = extract_sharded(
        config.source, config.output, args.shards, engine=args.engine, shard_index=args.shard_index,
        ray_address=args.ray_address, gpus_per_shard=args.gpus_per_shard, cpus_per_shard=args.cpus_per_shard,
        max_retries=args.max_retries, resume=config.resume, overwrite=config.overwrite, progress=config.progress,
        **settings,
    )  # fmt: skip
    if config.progress or report.interrupted:
        print(report.summary())
    return 130 if report.interrupted else 0
