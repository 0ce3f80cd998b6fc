"""Writing a sharded output's manifest: one lock, atomic replacement, a digest per shard.

Every change is a read-modify-write of ``OUT/manifest.json`` under an ``fcntl.flock`` on
``OUT/.locks/manifest.lock`` (released by the kernel if the process dies, ``kill -9`` included), and the
new JSON replaces the old with ``os.replace`` after an ``fsync``: readers see the old manifest or
the new one, never half of one, and concurrent writers (several ``--shard-index`` processes, Ray
tasks on several nodes of a shared file system) never lose each other's updates. The format is
:mod:`fastfeat.store.sharded`'s. Never imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import time
from typing import Callable

import numpy as np

from ..store.sharded import MANIFEST, MANIFEST_FORMAT, MANIFEST_VERSION, read_manifest

LOCK = "manifest.lock"
#: The folder of the job's lock files, inside the output folder.
LOCKS = ".locks"


@contextlib.contextmanager
def locked(out: str, name: str = LOCK, blocking: bool = True):
    """Hold an exclusive ``flock`` on ``OUT/.locks/<name>`` (created if needed) for the ``with`` body.

    With ``blocking=False`` yields ``False`` at once if another process holds it."""
    folder = os.path.join(out, LOCKS)
    os.makedirs(folder, exist_ok=True)
    fd = os.open(os.path.join(folder, name), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def write_manifest(out: str, manifest: dict) -> None:
    """Replace ``OUT/manifest.json`` atomically (call with :func:`locked` held)."""
    manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    data = json.dumps(manifest, indent=1, sort_keys=False).encode("utf-8")
    tmp = os.path.join(out, f".{MANIFEST}.{socket.gethostname()}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, os.path.join(out, MANIFEST))
    with contextlib.suppress(OSError):  # the rename itself durable too, where the folder can be synced
        dir_fd = os.open(out, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def new_manifest(run: dict, catalog: dict, bounds: list[tuple[int, int]], names: list[str], settings) -> dict:
    """A manifest for a new job: every shard pending."""
    return {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run": run,
        "catalog": catalog,
        "settings": settings,
        "shard_list": [
            {"index": k, "name": name, "start": a, "stop": b, "status": "pending", "rows": 0, "images": 0,
             "failures": 0, "attempts": 0, "digest": None}  # fmt: skip
            for k, ((a, b), name) in enumerate(zip(bounds, names))
        ],
    }


def update_manifest(out: str, change: Callable[[dict], object]):
    """Apply ``change(manifest)`` (it edits the dict in place) under the lock and publish the
    result atomically; returns what ``change`` returned."""
    with locked(out):
        manifest = read_manifest(out)
        result = change(manifest)
        write_manifest(out, manifest)
    return result


def update_shard(out: str, k: int, **fields) -> dict:
    """Set ``fields`` of shard ``k``'s entry (under the lock); returns the new entry."""

    def change(manifest):
        entry = manifest["shard_list"][int(k)]
        entry.update(fields)
        return dict(entry)

    return update_manifest(out, change)


def shard_digest(store) -> str:
    """``sha256:<hex>`` of a shard store's row identity: row and failure counts, paths, labels,
    index, copies and failed positions, and each layer's row shape and dtype (cheap at any size:
    the features themselves are not read). A shard replaced or rewritten with other rows gets
    another digest."""
    digest = hashlib.sha256()
    digest.update(f"{store.rows} {len(store.failure_index)}\n".encode())
    for key in store.layers:
        ds = store.dataset(key)
        digest.update(f"{key} {tuple(ds.shape[1:])} {ds.dtype}\n".encode())
    for path in store.paths:
        digest.update(os.fsencode(path) + b"\0")
    for column in (store.labels, store.index, store.copies, store.failure_index):
        digest.update(np.ascontiguousarray(column, dtype=np.int64).tobytes())
    return "sha256:" + digest.hexdigest()
