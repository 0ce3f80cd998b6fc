"""The Ray engine: each shard of a sharded job is one Ray task, retried where it died.

* Each task asks for the CPUs a shard needs (``cpus_per_shard``: by default the cluster's CPUs per
  GPU, the decode cores that feed one GPU, or one node's CPUs on a CPU cluster) and
  ``num_gpus=gpus_per_shard`` (default 1 when the cluster has GPUs), so a host with G GPUs runs G
  shards at once through the same path. ``shards="auto"``: four shards per concurrent task slot,
  so a straggler costs a small share of the job.
* A worker or node that dies mid-shard: Ray runs the task again (``max_retries``) and the retry
  resumes that shard's store (:func:`fastfeat.sharding.run_shard`): no row is lost or written
  twice. Errors of the shard itself (``on_error="raise"``, bad settings) are not retried.
* One progress bar for the whole job (:class:`fastfeat.sharding.progress.JobProgress`, from the
  shards' committed rows on the shared file system) and a final report.

Networking: with ``address=None`` a local Ray is started on this machine
(``ray.init(address=None, include_dashboard=False)``); with an address, an existing cluster is
joined. Ray turns ``127.0.0.1`` into the machine's interface address unless
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is set before Ray is imported; this module sets it (and
``RAY_USAGE_STATS_ENABLED=0``) for a local Ray unless the environment says otherwise. The output
folder must be on a file system every node sees at the same path.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import time

from ..sharding.plan import ShardJob, check_shards, plan_job
from ..sharding.progress import JobProgress, job_report

#: Shards per concurrent task slot with ``shards="auto"``.
SHARDS_PER_SLOT = 4
#: Seconds a retried task waits for the shard lock a dying worker still holds.
LOCK_WAIT_SECONDS = 120.0
#: Test hook (read on the driver): ``"kill:K:ROWS"`` kills the worker of shard K with SIGKILL right
#: after the commit that brings its store to ROWS rows; ``"hold:K:ROWS:SECONDS"`` holds it there.
#: First attempt only (``OUT/.hooked-K``).
TEST_HOOK = "FASTFEAT_RAY_TEST_HOOK"


def _ray():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError:
        raise ImportError('The Ray engine needs Ray: pip install "fastfeat[ray]" (or "ray>=2.9").') from None
    return ray


def _connect(ray, address: str | None) -> bool:
    """Connect to ``address`` (``None``: start a local Ray); returns whether we started Ray here."""
    if ray.is_initialized():
        return False
    if address is None:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        ray.init(address=None, include_dashboard=False, log_to_driver=False, configure_logging=False)
    else:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    return True


@dataclasses.dataclass(frozen=True)
class Resources:
    """What each shard task asks for, and how many can run at once."""

    cpus: float
    gpus: float
    slots: int


def plan_resources(nodes: list[dict], gpus_per_shard=None, cpus_per_shard=None) -> Resources:
    """Per-task CPUs and GPUs from the alive nodes' resources (``ray.nodes()`` entries' ``Resources``).

    Args:
        nodes: the ``Resources`` dict of every alive node.
        gpus_per_shard: GPUs per task (default: 1 when the cluster has GPUs, else 0).
        cpus_per_shard: CPUs per task (default: the fewest CPUs per GPU of a GPU node, or the
            fewest CPUs of a node on a CPU cluster).
    """
    total_gpus = sum(n.get("GPU", 0) for n in nodes)
    gpus = (1.0 if total_gpus else 0.0) if gpus_per_shard is None else float(gpus_per_shard)
    if gpus < 0 or (gpus and gpus > max((n.get("GPU", 0) for n in nodes), default=0)):
        raise ValueError(f"`gpus_per_shard` must be >= 0 and fit on one node of the cluster "
                         f"({total_gpus:g} GPUs). Received: gpus_per_shard={gpus_per_shard!r}")  # fmt: skip
    if cpus_per_shard is None:
        if gpus:
            per_gpu = [n.get("CPU", 0) / n["GPU"] * gpus for n in nodes if n.get("GPU", 0) >= gpus]
            cpus = max(1.0, math.floor(min(per_gpu)))
        else:
            cpus = max(1.0, min(n.get("CPU", 0) for n in nodes if n.get("CPU", 0) > 0))
    else:
        cpus = float(cpus_per_shard)
        if cpus <= 0 or cpus > max(n.get("CPU", 0) for n in nodes):
            raise ValueError(
                f"`cpus_per_shard` must be > 0 and fit on one node. Received: cpus_per_shard={cpus_per_shard!r}"
            )
    slots = 0
    for n in nodes:
        fit = math.floor(n.get("CPU", 0) / cpus + 1e-9)
        if gpus:
            fit = min(fit, math.floor(n.get("GPU", 0) / gpus + 1e-9))
        slots += max(0, fit)
    if slots < 1:
        raise ValueError(f"No node of the cluster has {cpus:g} CPUs and {gpus:g} GPUs for one shard.")
    return Resources(cpus, gpus, slots)


def default_shards(slots: int, images: int) -> int:
    """``shards="auto"``: :data:`SHARDS_PER_SLOT` per concurrent slot, at most one per image."""
    return max(1, min(int(images), SHARDS_PER_SLOT * int(slots)))


def _test_hook(job: ShardJob, k: int, spec: str) -> None:
    """The test hook (:data:`TEST_HOOK`): right after the commit that brings shard ``k``'s store to
    ROWS rows (mid-shard, deterministically), ``kill`` this worker with SIGKILL or ``hold`` it for
    SECONDS; on the first attempt only (``OUT/.hooked-K`` marks it done)."""
    from ..store.sharded import read_manifest, shard_paths
    from ..store.writer import StoreWriter

    action, shard, rows, *rest = spec.split(":")
    marker = os.path.join(job.out, f".hooked-{k}")
    if int(shard) != k or os.path.exists(marker):
        return
    partial = shard_paths(job.out, read_manifest(job.out)["shard_list"][k])[1]
    commit = StoreWriter.commit

    def commit_then_act(writer):
        commit(writer)
        if writer.path == partial and writer.rows >= int(rows) and not os.path.exists(marker):
            with open(marker, "w") as f:
                f.write(f"{writer.rows}\n")
                f.flush()
                os.fsync(f.fileno())
            if action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(float(rest[0]) if rest else 60.0)

    StoreWriter.commit = commit_then_act  # in this worker process only


def _shard_task(job: ShardJob, k: int, hook: str | None):
    """One shard, in a Ray worker: records where it runs, then :func:`run_shard` (resuming)."""
    import ray

    from ..sharding.manifest import update_shard
    from ..sharding.run import run_shard

    context = ray.get_runtime_context()
    update_shard(job.out, k, ray_node=context.get_node_id(), gpu_ids=[str(g) for g in ray.get_gpu_ids()])
    if hook:
        _test_hook(job, k, hook)
    return run_shard(job, k, resume=True, wait=LOCK_WAIT_SECONDS)


def run_ray(
    source,
    output,
    shards="auto",
    *,
    shard_index: int | None = None,
    address: str | None = None,
    gpus_per_shard: float | None = None,
    cpus_per_shard: float | None = None,
    max_retries: int = 3,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    **settings,
):
    """Run a sharded job on Ray (see the module doc and :func:`fastfeat.extract_sharded`).

    Returns:
        A :class:`~fastfeat.sharding.progress.JobReport`; raises ``RuntimeError`` naming the
        shards that failed after their retries (the others are complete and kept).
    """
    t0 = time.perf_counter()
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ValueError(f"`max_retries` must be an int >= 0. Received: max_retries={max_retries!r}")
    if shard_index is not None and overwrite:
        raise ValueError(f"`overwrite` cannot be combined with `shard_index`. Received: shard_index={shard_index!r}")
    if shards != "auto":
        check_shards(shards)
    ray = _ray()
    started = _connect(ray, address)
    try:
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        res = plan_resources(nodes, gpus_per_shard, cpus_per_shard)
        if shards == "auto":
            from ..catalog import build_catalog
            from ..config import ExtractConfig

            config = ExtractConfig(source, output, **settings)
            images = len(build_catalog(config.source, classes=list(config.classes) if config.classes else None,
                                       follow_links=config.follow_links))  # fmt: skip
            shards = default_shards(res.slots, images)
        job = plan_job(source, output, shards, join=shard_index is not None, resume=resume, overwrite=overwrite,
                       **settings)  # fmt: skip
        light = dataclasses.replace(job, catalog=None)  # tasks need the plan, not a million paths
        task = ray.remote(_shard_task).options(num_cpus=res.cpus, num_gpus=res.gpus, max_retries=max_retries,
                                                retry_exceptions=False, name="fastfeat-shard")  # fmt: skip
        hook = os.environ.get(TEST_HOOK)
        ids = range(job.shards) if shard_index is None else [int(shard_index)]
        refs = {task.remote(light, k, hook): k for k in ids}
        results, errors = {}, {}
        try:
            with JobProgress(job.out, len(job.catalog), job.config.augment_copies, enabled=progress):
                pending = list(refs)
                while pending:
                    done, pending = ray.wait(pending, num_returns=1, timeout=1.0)
                    for ref in done:
                        try:
                            results[refs[ref]] = ray.get(ref)
                        except Exception as e:  # noqa: BLE001 -- a shard's failure is reported with the rest
                            errors[refs[ref]] = e
        except KeyboardInterrupt:
            for ref in refs:
                ray.cancel(ref)
            raise
        report = job_report(job.out, "ray", results, time.perf_counter() - t0)
        if errors:
            lines = "\n".join(f"  shard {k}: {type(e).__name__}: {e}" for k, e in sorted(errors.items()))
            raise RuntimeError(f"{len(errors)} shard(s) failed after their retries (the others are complete; "
                               f"run again with --resume):\n{lines}\n{report.summary()}")  # fmt: skip
        return report
    finally:
        if started:
            ray.shutdown()
