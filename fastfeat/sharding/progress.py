"""One progress bar for a whole sharded job, and its final report.

The bar counts images done across the shards from what they have committed: the manifest for
complete shards, each running shard's own store (``/state``) otherwise, so it works the same for
shards run in this process, in other processes or on other nodes of a shared file system.
"""

from __future__ import annotations

import os
import threading
import warnings
from dataclasses import asdict, dataclass, field

from ..store.sharded import read_manifest, shard_paths


def images_done(out: str, copies: int = 0) -> int:
    """Images handled so far (rows written or failed) across the shards of ``out``."""
    from ..store.reader import FeatureStore

    manifest = read_manifest(out)
    done = 0
    for entry in manifest["shard_list"]:
        if entry["status"] == "complete":
            done += int(entry["images"]) + int(entry["failures"])
            continue
        for path in shard_paths(out, entry)[::-1]:
            if os.path.exists(path):
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        with FeatureStore(path) as store:
                            done += store.rows // (1 + copies) + len(store.failure_index)
                except (OSError, ValueError):
                    pass  # being created or renamed: counted at the next look
                break
    return done


class JobProgress(threading.Thread):
    """A tqdm bar over the whole job, updated every ``interval`` seconds until :meth:`close`."""

    def __init__(self, out: str, total: int, copies: int = 0, enabled: bool = True, interval: float = 0.5):
        super().__init__(name="fastfeat-job-progress", daemon=True)
        self.out, self.total, self.copies, self.interval = out, int(total), int(copies), float(interval)
        self.enabled = enabled
        self._halt = threading.Event()
        self._bar = None

    def run(self):
        while not self._halt.wait(self.interval):
            self.update()

    def update(self):
        if self._bar is None:
            return
        try:
            done = images_done(self.out, self.copies)
        except (OSError, ValueError):
            return
        self._bar.update(max(0, min(done, self.total) - self._bar.n))

    def __enter__(self):
        if self.enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, unit="img", desc="extract (shards)", dynamic_ncols=True)
            self.update()
            self.start()
        return self

    def __exit__(self, *exc):
        self._halt.set()
        if self.is_alive():
            self.join()
        if self._bar is not None:
            self.update()
            self._bar.close()


@dataclass
class JobReport:
    """What a sharded job did.

    Attributes:
        output: the output folder.
        engine: ``local`` or ``ray``.
        shards: the shards' results (:class:`fastfeat.sharding.run.ShardResult` as dicts), in order.
        images, rows, failures: totals over the shards' stores.
        seconds: wall time of this job (planning included).
        images_per_second: images handled by this job's runs per second of wall time.
        retries: runs beyond the first, over all shards (Ray retries, relaunches).
        complete: whether every shard is complete.
        settings: the row-changing settings the job ran with (precision, batch size).
    """

    output: str
    engine: str
    shards: list = field(default_factory=list)
    images: int = 0
    rows: int = 0
    failures: int = 0
    seconds: float = 0.0
    images_per_second: float = 0.0
    retries: int = 0
    complete: bool = False
    interrupted: bool = False
    settings: dict | None = None

    def summary(self) -> str:
        """Lines for the end of a run: the totals, then one line per shard."""
        lines = [
            f"fastfeat: {self.images} images -> {self.output} ({len(self.shards)} shards, engine {self.engine}, "
            f"{self.failures} failed) in {self.seconds:.1f} s, {self.images_per_second:.1f} images/s; "
            f"{self.retries} retries" + ("" if self.complete else "; INCOMPLETE: run again with --resume"),
        ]
        if self.settings:
            lines.append(f"  settings: precision {self.settings.get('precision')}, batch size "
                         f"{self.settings.get('batch_size')} ({self.settings.get('decided_by')})")  # fmt: skip
        for s in self.shards:
            rate = f"{s['images_per_second']:.1f} img/s" if s.get("images_per_second") else "-"
            where = f" on {s['host']}" if s.get("host") else ""
            lines.append(f"  shard {s['index']}: {s['status']}, {s['images']} images, {s['failures']} failed, "
                         f"{rate}, {s['attempts']} attempt(s){where}")  # fmt: skip
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)


def job_report(out: str, engine: str, results: dict, seconds: float) -> JobReport:
    """The report of a job from its manifest and this job's shard results (index -> ShardResult)."""
    manifest = read_manifest(out)
    report = JobReport(output=out, engine=engine, seconds=seconds, settings=manifest.get("settings"))
    ran = 0
    for entry in manifest["shard_list"]:
        result = results.get(entry["index"])
        row = {
            "index": entry["index"], "status": entry["status"], "images": int(entry.get("images", 0)),
            "rows": int(entry.get("rows", 0)), "failures": int(entry.get("failures", 0)),
            "attempts": int(entry.get("attempts", 0)), "host": entry.get("host", ""),
            "images_per_second": float(entry.get("images_per_second") or 0.0),
            "seconds": float(entry.get("seconds") or 0.0),
        }  # fmt: skip
        if result is not None:
            row["status"] = result.status if result.status != "complete" else entry["status"]
            ran += int(result.report.get("images", 0)) + int(result.report.get("failures", 0))
        report.shards.append(row)
        report.retries += max(0, row["attempts"] - 1)
    report.images = sum(s["images"] for s in report.shards)
    report.rows = sum(s["rows"] for s in report.shards)
    report.failures = sum(s["failures"] for s in report.shards)
    report.complete = all(e["status"] == "complete" for e in manifest["shard_list"])
    report.interrupted = any(s["status"] == "interrupted" for s in report.shards)
    report.images_per_second = ran / seconds if seconds > 0 else 0.0
    return report
