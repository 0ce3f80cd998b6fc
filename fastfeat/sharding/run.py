"""Running shards: one shard is one :func:`fastfeat.extract` over its part of the catalog, into
its own store, exactly once.

* A complete shard (final name, complete ``/state``, digest as in the manifest) is skipped.
* A partial shard (``….h5.partial``) is resumed: rows are never written twice and never lost
  (the store's own commit record says which images are done).
* A shard is published atomically: its store is renamed to the final name only once complete,
  then the manifest says so (a crash between the two is repaired by the next run of the shard).
* One process runs a shard at a time (an ``flock`` on ``OUT/.locks/shard-K.lock``, released by the
  kernel when the process dies, so a retry after ``kill -9`` can take it at once).
* Settings that change rows (precision, batch size) are decided once for the whole job: given,
  or decided by the first shard to start, which holds ``OUT/.locks/settings.lock`` until it has chosen
  (on its first batch) and recorded the choice in the manifest; every other shard waits for that
  record and runs with the concrete values.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import warnings
from dataclasses import dataclass, field

from ..store.sharded import PARTIAL, read_manifest, shard_paths
from .manifest import locked, shard_digest, update_manifest, update_shard
from .plan import ShardJob

SETTINGS_LOCK = "settings.lock"
#: Seconds between two looks at a deciding shard's store.
POLL_SECONDS = 0.2


class ShardBusyError(RuntimeError):
    """Another live process is running this shard."""


@dataclass
class ShardResult:
    """What running one shard did.

    Attributes:
        index: the shard.
        status: ``complete`` (ran now), ``skipped`` (complete before), ``interrupted``.
        images, rows, failures: the shard store's totals.
        seconds: this run's wall time; ``images_per_second`` its steady-state rate.
        attempts: runs of this shard so far (a Ray retry or a relaunch adds one).
    """

    index: int
    status: str
    images: int = 0
    rows: int = 0
    failures: int = 0
    seconds: float = 0.0
    images_per_second: float = 0.0
    attempts: int = 0
    host: str = ""
    report: dict = field(default_factory=dict)


def _open(path):
    from ..store.reader import FeatureStore

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a partial store is what this module expects to find
        return FeatureStore(path, allow_incomplete=True)


def _totals(store) -> dict:
    import numpy as np

    return {
        "rows": store.rows,
        "images": int(np.count_nonzero(np.asarray(store.copies) == 0)),
        "failures": len(store.failure_index),
    }


def _check_catalog(out: str, k: int, path: str) -> None:
    """The shard's store must describe the job's catalog (the source may have changed since the
    job was planned: its rows would then not be the rows of this job's shard)."""
    wanted = read_manifest(out)["catalog"]
    with _open(path) as store:
        got = (store.meta.get("catalog_sha256"), store.meta.get("catalog_size"))
    if got != (wanted["sha256"], wanted["size"]):
        raise ValueError(
            f"shard {k}: the source changed since the job was planned ({got[1]} images now, {wanted['size']} in "
            f"the manifest); its store is left unpublished at {path!r}. Plan the job again (--overwrite)."
        )


def _publish(out: str, entry: dict, partial: str, final: str, extra: dict) -> dict:
    """Rename a complete partial store into place, then record it complete in the manifest."""
    if os.path.exists(partial):
        _check_catalog(out, entry["index"], partial)
        os.replace(partial, final)
    with _open(final) as store:
        if not store.complete:
            raise RuntimeError(f"shard {entry['index']}: {final!r} is not complete")
        facts = dict(_totals(store), digest=shard_digest(store), bytes=os.path.getsize(final))
    return update_shard(out, entry["index"], status="complete", finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        **facts, **extra)  # fmt: skip


class _Decider(threading.Thread):
    """Holds the settings lock while this shard decides; records the decision in the manifest
    as soon as the shard's store shows it (after its first batch), then releases the lock."""

    def __init__(self, out: str, k: int, path: str, lock):
        super().__init__(name="fastfeat-decider", daemon=True)
        self.out, self.k, self.path, self._lock = out, k, path, lock
        self._halt = threading.Event()
        self.recorded = False

    def _decided(self) -> dict | None:
        from ..precision import PRECISIONS

        for path in (self.path, self.path[: -len(PARTIAL)]):
            if os.path.exists(path):
                try:
                    with _open(path) as store:
                        meta = store.meta
                except (OSError, ValueError):
                    return None  # being created: look again
                if meta.get("precision") in PRECISIONS and isinstance(meta.get("batch_size"), int):
                    return {"precision": meta["precision"], "batch_size": meta["batch_size"],
                            "precision_auto": meta.get("precision_auto"), "decided_by": f"shard {self.k}"}  # fmt: skip
        return None

    def record(self) -> bool:
        """Record the decision if the store shows it; releases the lock once recorded."""
        if self.recorded:
            return True
        settings = self._decided()
        if settings is None:
            return False

        def change(manifest):
            manifest["settings"] = manifest.get("settings") or settings

        update_manifest(self.out, change)
        self.recorded = True
        self.release()
        return True

    def run(self):
        while not self._halt.wait(POLL_SECONDS):
            try:
                if self.record():
                    return
            except (OSError, ValueError):  # a store caught mid-creation: look again
                continue

    def release(self):
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.__exit__(None, None, None)

    def finish(self):
        self._halt.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join()
        if not self.recorded:
            try:
                self.record()
            finally:
                self.release()


def _settings(out: str):
    """(settings, None) when decided; (None, held lock) when this shard must decide."""
    settings = read_manifest(out).get("settings")
    if settings:
        return settings, None
    lock = locked(out, SETTINGS_LOCK)
    lock.__enter__()  # blocks while another shard decides (or until it dies)
    settings = read_manifest(out).get("settings")
    if settings:
        lock.__exit__(None, None, None)
        return settings, None
    return None, lock


def _stale(store, settings: dict | None, part: dict) -> list[str]:
    """Why a partial store cannot be resumed as this shard under the job's settings (empty: it can)."""
    meta = store.meta
    why = [f"{k}: {meta.get(k)!r}, the job has {settings[k]!r}" for k in ("precision", "batch_size")
           if settings and meta.get(k) not in ("auto", None) and meta.get(k) != settings[k]]  # fmt: skip
    if meta.get("part") not in (None, part):
        why.append(f"part: {meta.get('part')!r}, this shard is {part!r}")
    return why


def run_shard(
    job: ShardJob, k: int, *, resume: bool = True, progress: bool = False, wait: float = 0.0, stop=None
) -> ShardResult:
    """Run shard ``k`` of ``job`` into its store, exactly once (see the module doc).

    Args:
        job: the planned job (:func:`fastfeat.sharding.plan_job`).
        k: the shard.
        resume: complete a partial store of this shard; ``False`` refuses one (``FileExistsError``).
        progress: show :func:`fastfeat.extract`'s own bar for this shard.
        wait: seconds to wait for another process's hold on the shard to end (a retry on a
            worker that replaces one still dying).
        stop: a :class:`fastfeat.extraction.StopToken` for this shard's run (set: the shard
            stops after its batch in flight, resumable; the result says ``interrupted``).

    Raises:
        ShardBusyError: another live process runs shard ``k``.
    """
    from ..checks import is_int

    if not is_int(k) or not 0 <= int(k) < job.shards:
        raise ValueError(f"`k` must be a shard index in [0, {job.shards}). Received: k={k!r}")
    k, out = int(k), job.out
    deadline = time.monotonic() + float(wait)
    while True:
        with locked(out, f"shard-{k:05d}.lock", blocking=False) as held:
            if held:
                return _run_locked(job, k, resume, progress, stop)
        if time.monotonic() >= deadline:
            raise ShardBusyError(f"shard {k} of {out!r} is being run by another process. Received: k={k}")
        time.sleep(POLL_SECONDS)


def _run_locked(job: ShardJob, k: int, resume: bool, progress: bool, stop) -> ShardResult:
    out = job.out
    entry = read_manifest(out)["shard_list"][k]
    final, partial = shard_paths(out, entry)
    part = {"index": k, "count": job.shards, "start": entry["start"], "stop": entry["stop"]}
    if os.path.exists(final):
        with _open(final) as store:
            ok = store.complete and (entry.get("digest") in (None, shard_digest(store)))
        if ok:
            if entry["status"] != "complete":  # renamed, then the process died before the manifest said so
                entry = _publish(out, entry, partial, final, {})
            return ShardResult(k, "skipped", entry["images"], entry["rows"], entry["failures"],
                               attempts=entry.get("attempts", 0), host=entry.get("host", ""))  # fmt: skip
        os.replace(final, partial)  # not the shard the manifest describes: complete it again
    settings, decide_lock = _settings(out)
    try:
        if os.path.exists(partial):
            if not resume:
                raise FileExistsError(f"shard {k} of {out!r} is partial ({partial!r}). Pass --resume to complete it.")
            try:
                with _open(partial) as store:
                    stale = _stale(store, settings, part)
            except (OSError, ValueError):  # not readable as it is: the writer's recovery decides
                stale = []
            if stale:
                warnings.warn(f"shard {k}: discarding {partial!r}, written with other settings ("
                              + "; ".join(stale) + ")", RuntimeWarning, stacklevel=2)  # fmt: skip
                os.unlink(partial)
        entry = update_manifest(out, lambda m: _start(m, k))
        changes = {"precision": settings["precision"], "batch_size": settings["batch_size"]} if settings else {}
        config = job.config.replace(output=partial, resume=os.path.exists(partial), overwrite=False,
                                    progress=progress, **changes)  # fmt: skip
        decider = None
        if decide_lock is not None:
            decider = _Decider(out, k, partial, decide_lock)
            decider.start()
        from ..extraction import run

        t0 = time.perf_counter()
        try:
            report = run(config, stop=stop, part=(k, job.shards))
        except Exception as e:
            _failed(out, k, e)
            raise
        finally:
            if decider is not None:
                decider.finish()
                decide_lock = None
        seconds = time.perf_counter() - t0
    finally:
        if decide_lock is not None:
            decide_lock.__exit__(None, None, None)
    extra = {"seconds": round(seconds, 3), "images_per_second": round(report.images_per_second, 3),
             "images_this_run": report.images, "resumed_from": report.resumed_from, "device": report.device,
             "precision": report.precision}  # fmt: skip
    if report.interrupted:
        update_shard(out, k, status="pending")
        return ShardResult(k, "interrupted", report.images, report.rows, report.failures, seconds,
                           report.images_per_second, entry["attempts"], entry["host"], report.to_dict())  # fmt: skip
    try:
        entry = _publish(out, entry, partial, final, extra)
    except Exception as e:
        _failed(out, k, e)
        raise
    return ShardResult(k, "complete", entry["images"], entry["rows"], entry["failures"], seconds,
                       report.images_per_second, entry["attempts"], entry["host"], report.to_dict())  # fmt: skip


def _failed(out: str, k: int, error: BaseException) -> None:
    """Record in the manifest that shard ``k``'s run raised ``error``."""
    update_shard(out, k, status="failed", error=f"{type(error).__name__}: {error}"[:2000])


def _start(manifest: dict, k: int) -> dict:
    entry = manifest["shard_list"][k]
    entry.pop("error", None)
    entry.update(status="running", attempts=int(entry.get("attempts", 0)) + 1, host=socket.gethostname(),
                 pid=os.getpid(), started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))  # fmt: skip
    return dict(entry)
