"""Sharded extraction: one job cut into N contiguous shards, one store per shard, run anywhere.

``extract_sharded(SRC, OUT, shards=N)`` writes the folder ``OUT/`` (``manifest.json`` and one
store per shard, see :mod:`fastfeat.store.sharded`); ``fastfeat.open_store(OUT)`` reads it as one
store equal to a single-machine run, ``fastfeat merge OUT -o one.h5`` makes it one file. Engines:
``local`` runs the shards one after another in this process; ``ray`` runs each as a Ray task
(:mod:`fastfeat.engines.ray_engine`); ``shard_index=K`` runs just shard K (for SLURM or
Kubernetes launchers, one process per shard, in any order, any number of times).
Never imports TensorFlow (the shards' runs do) nor Ray (the Ray engine does).
"""

from __future__ import annotations

import os
import time

from .plan import ShardJob, check_shards, plan_job
from .progress import JobProgress, JobReport, job_report
from .run import ShardBusyError, ShardResult, run_shard

ENGINES = ("local", "ray")

__all__ = ["ENGINES", "JobReport", "ShardBusyError", "ShardJob", "ShardResult", "extract_sharded", "plan_job",
           "run_local", "run_shard"]  # fmt: skip


def run_local(job: ShardJob, shards=None, *, resume: bool = True, progress: bool = True) -> dict:
    """Run ``shards`` (default: all, in order) of ``job`` in this process, one after another.

    Returns ``{k: ShardResult}``; stops at the first interrupted shard (``request_stop``)."""
    results = {}
    ids = range(job.shards) if shards is None else shards
    copies = job.config.augment_copies
    with JobProgress(job.out, len(job.catalog), copies, enabled=progress):
        for k in ids:
            results[k] = run_shard(job, k, resume=resume)
            if results[k].status == "interrupted":
                break
    return results


def extract_sharded(
    source: str | os.PathLike,
    output: str | os.PathLike,
    shards: int | str = "auto",
    *,
    engine: str = "local",
    shard_index: int | None = None,
    ray_address: str | None = None,
    gpus_per_shard: float | None = None,
    cpus_per_shard: float | None = None,
    max_retries: int = 3,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    **settings,
) -> JobReport:
    """Extract features of every image under ``source`` into the sharded output folder ``output``.

    Args:
        source: the images (as for :func:`fastfeat.extract`).
        output: the output folder (``manifest.json`` and one ``.h5`` store per shard).
        shards: number of contiguous shards; ``"auto"``: 1 for the local engine, four per
            concurrent Ray task slot for Ray (more shards than workers, so stragglers cost little).
        engine: ``local`` (this process, shard after shard) or ``ray``.
        shard_index: run only this shard (joins the job an earlier launcher created, or creates it).
        ray_address: an existing Ray cluster; ``None``: a local Ray on this machine.
        gpus_per_shard: GPUs per Ray task (default: 1 when the cluster has GPUs, else 0).
        cpus_per_shard: CPUs per Ray task (default: the cluster's CPUs per GPU, or one node's CPUs).
        max_retries: Ray retries of a shard whose worker or node died (each retry resumes it).
        resume: continue an existing job: complete shards are skipped, partial ones resumed.
        overwrite: replace an earlier job in ``output``.
        progress: one progress bar for the whole job.
        **settings: every other :func:`fastfeat.extract` setting (model, layers, batch_size,
            precision, ...). Precision and batch size are decided once for the whole job.

    Returns:
        A :class:`~fastfeat.sharding.progress.JobReport`.
    """
    t0 = time.perf_counter()
    if engine not in ENGINES:
        raise ValueError(f"`engine` must be one of {', '.join(ENGINES)}. Received: engine={engine!r}")
    if engine == "ray":
        from ..engines.ray_engine import run_ray

        return run_ray(source, output, shards, shard_index=shard_index, address=ray_address,
                       gpus_per_shard=gpus_per_shard, cpus_per_shard=cpus_per_shard, max_retries=max_retries,
                       resume=resume, overwrite=overwrite, progress=progress, **settings)  # fmt: skip
    if shards == "auto":
        shards = 1
    check_shards(shards)
    if shard_index is not None:
        if overwrite:
            raise ValueError("`overwrite` cannot be combined with `shard_index` (other launchers share the folder). "
                             f"Received: overwrite=True, shard_index={shard_index!r}")  # fmt: skip
        job = plan_job(source, output, shards, join=True, **settings)
        results = run_local(job, [shard_index], resume=resume, progress=progress)
    else:
        job = plan_job(source, output, shards, resume=resume, overwrite=overwrite, **settings)
        results = run_local(job, resume=True, progress=progress)  # a new job has no partial shard
    return job_report(job.out, "local", results, time.perf_counter() - t0)
