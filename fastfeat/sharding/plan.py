"""Planning a sharded job: the catalog cut into N contiguous parts, the output folder and its
manifest (created once; later launchers join it if they describe the same job).

``OUT/`` holds one store per shard (``shard-00000-of-00004.h5``, written as ``….h5.partial`` and
renamed when complete) and ``manifest.json`` (:mod:`fastfeat.sharding.manifest`). The manifest
records the run description, the whole catalog's identity, each shard's range and status, and the
settings that change rows (precision, batch size): given, or decided once for the whole job by
the first shard to run (:mod:`fastfeat.sharding.run`). Never imports TensorFlow.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass

from ..catalog import Catalog, build_catalog
from ..checks import is_int
from ..config import ExtractConfig
from ..store.sharded import MANIFEST, PARTIAL, is_sharded, read_manifest, shard_name
from .manifest import LOCKS, locked, new_manifest, write_manifest

#: Extract settings a shard never takes from the job (each shard sets them itself).
PER_SHARD = ("output", "overwrite", "resume", "progress")


@dataclass(frozen=True)
class ShardJob:
    """A planned sharded job.

    Attributes:
        out: the output folder.
        config: the run's settings (``output`` is the folder; each shard writes its own store).
        catalog: the whole catalog.
        shards: number of shards.
        bounds: ``[start, stop)`` of every shard in the whole catalog, in order.
    """

    out: str
    config: ExtractConfig
    catalog: Catalog
    shards: int
    bounds: list

    def names(self) -> list[str]:
        return [shard_name(k, self.shards) for k in range(self.shards)]


def run_description(config: ExtractConfig, shards: int) -> dict:
    """What every launcher of a job must agree on: the settings' part of a store's meta, the
    requested image size, batch size and precision, and the shard count."""
    run = config.to_meta()
    run.update(
        image_size=list(config.image_size) if config.image_size else None,
        batch_size_requested=config.batch_size,
        classes=list(config.classes) if config.classes else None,
        shards=int(shards),
    )
    return json.loads(json.dumps(run))  # as the manifest gives it back (lists, not tuples)


def given_settings(config: ExtractConfig) -> dict | None:
    """The row-changing settings when the run fixes them all; ``None``: decided by the first shard."""
    if config.precision == "auto" or config.batch_size is None:
        return None
    return {"precision": config.precision, "batch_size": int(config.batch_size), "decided_by": "given"}


def check_shards(shards, images: int | None = None) -> int:
    """``shards`` as a positive int (at most ``images``)."""
    if not is_int(shards) or int(shards) < 1:
        raise ValueError(f"`shards` must be a positive int. Received: shards={shards!r}")
    if images is not None and int(shards) > images:
        raise ValueError(
            f"`shards` must be at most the number of images ({images}): a shard holds at least one. "
            f"Received: shards={shards!r}"
        )
    return int(shards)


def _differences(stored: dict, wanted: dict) -> list[str]:
    keys = sorted(set(stored) | set(wanted))
    return [f"  {k}: {stored.get(k)!r} in the manifest, {wanted.get(k)!r} now"
            for k in keys if stored.get(k) != wanted.get(k)]  # fmt: skip


def _check_same_job(out: str, manifest: dict, run: dict, catalog: dict) -> None:
    diffs = _differences(manifest["run"], run)
    if manifest["catalog"]["sha256"] != catalog["sha256"]:
        diffs.append(
            f"  catalog: {manifest['catalog']['size']} images (sha256 {manifest['catalog']['sha256'][:12]}) in the "
            f"manifest, {catalog['size']} (sha256 {catalog['sha256'][:12]}) now: the source changed"
        )
    if diffs:
        raise ValueError(f"{out!r} holds another sharded job; its manifest differs:\n" + "\n".join(diffs))


def _remove_outputs(out: str) -> None:
    """Remove what a sharded job wrote in ``out`` (shard stores, partial ones, their locks, the
    manifest); nothing else."""
    patterns = ["shard-*-of-*.h5", "shard-*-of-*.h5" + PARTIAL, "shard-*-of-*.h5*.lock", MANIFEST,
                "." + MANIFEST + ".*.tmp"]  # fmt: skip
    for pattern in patterns:
        for path in glob.glob(os.path.join(glob.escape(out), pattern)):
            os.unlink(path)


def plan_job(
    source: str | os.PathLike,
    out: str | os.PathLike,
    shards: int,
    *,
    join: bool = False,
    overwrite: bool = False,
    resume: bool = False,
    **settings,
) -> ShardJob:
    """Plan a sharded job and create (or join) its output folder and manifest.

    Args:
        source: the images (as for :func:`fastfeat.extract`).
        out: the output folder.
        shards: number of contiguous shards (at most the number of images).
        join: an existing manifest of the same job is fine (``--shard-index`` launchers, engine
            workers); otherwise an existing output needs ``resume`` or ``overwrite``.
        overwrite: remove an earlier job's shards and manifest first.
        resume: continue an existing job of the same settings.
        **settings: every other :func:`fastfeat.extract` setting.

    Raises:
        FileExistsError: ``out`` exists and neither ``join``, ``resume`` nor ``overwrite`` allows it.
        ValueError: an invalid setting, or ``out`` holds a job with other settings or another catalog.
    """
    out = os.path.abspath(os.fspath(out))
    if overwrite and (resume or join):
        raise ValueError(f"`overwrite` excludes `resume` and joining a job. Received: overwrite=True, resume={resume}")
    for key in PER_SHARD:
        if key in settings:
            raise ValueError(f"`{key}` is set per shard by the sharded job. Received: {key}={settings[key]!r}")
    config = ExtractConfig(source, out, **settings)
    if os.path.exists(out) and not os.path.isdir(out):
        raise FileExistsError(f"`out` must be a folder for a sharded output; {out!r} is a file. Received: out={out!r}")
    catalog = build_catalog(config.source, classes=list(config.classes) if config.classes else None,
                            follow_links=config.follow_links)  # fmt: skip
    shards = check_shards(shards, len(catalog))
    run = run_description(config, shards)
    identity = {"size": len(catalog), "sha256": catalog.fingerprint(), "class_names": list(catalog.class_names)}
    job = ShardJob(out, config, catalog, shards, catalog.part_bounds(shards))
    existed = is_sharded(out)
    if existed and not (join or resume or overwrite):
        raise FileExistsError(
            f"{out!r} holds a sharded job. Pass --resume to complete it, or --overwrite to replace it."
        )
    if os.path.isdir(out) and not existed and os.listdir(out):
        foreign = [n for n in os.listdir(out) if n != LOCKS]
        if foreign:
            raise FileExistsError(
                f"{out!r} exists and is not a sharded fastfeat output (it holds {sorted(foreign)[:3]}). "
                f"Received: out={out!r}"
            )
    os.makedirs(out, exist_ok=True)
    with locked(out):
        if overwrite and is_sharded(out):
            _remove_outputs(out)
        if is_sharded(out):  # created by an earlier run, or by another launcher a moment ago
            _check_same_job(out, read_manifest(out), run, identity)
        else:
            write_manifest(out, new_manifest(run, identity, job.bounds, job.names(), given_settings(config)))
    return job
