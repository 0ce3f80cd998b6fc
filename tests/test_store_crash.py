"""Crash safety of the store writer: SIGKILL at random moments, resume, compare with a clean run.

A real subprocess writes deterministic rows (and a failure every 7th catalog item) batch by
batch; the test kills it with SIGKILL at random moments, checks that what is on disk opens and
holds exactly a prefix of the clean run, resumes it in a new subprocess, and repeats until the
run completes. The result must equal an uninterrupted run bit for bit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

from fastfeat.store import IncompleteStoreWarning, open_store

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N, BATCH = 240, 8

CHILD = r"""
import os, sys, time
import numpy as np
from fastfeat.store import StoreWriter

path, compression, mode, pause = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
N, BATCH = int(sys.argv[5]), int(sys.argv[6])
compression = None if compression == "none" else compression

def row(i):
    rng = np.random.default_rng(i)
    return np.maximum(rng.normal(size=(6, 6, 16)), 0).astype(np.float32)

w = StoreWriter(path, {"conv": ((6, 6, 16), "float32"), "conv:avg": ((16,), "float16")}, capacity=N,
                class_names=["a", "b", "c"], meta={"model": "test"}, mode=mode, compression=compression,
                chunk_rows=3)
done = set(w.processed_indices().tolist())
todo = [i for i in range(N) if i not in done]
print("ready", flush=True)
for s in range(0, len(todo), BATCH):
    if s == 0:  # as extraction does with precision "auto", on every (re)start
        w.update_meta(precision="chosen", attempt=w.meta.get("attempt", 0) + 1)
    pos = todo[s:s + BATCH]
    ok = [p for p in pos if p % 7 != 3]
    bad = [p for p in pos if p % 7 == 3]
    feats = np.stack([row(p) for p in ok]) if ok else np.zeros((0, 6, 6, 16), np.float32)
    w.append({"conv": feats, "conv:avg": feats.mean(axis=(1, 2))}, np.array(ok) % 3,
             [f"class/img_{p:04d}_\u00e9.jpg" for p in ok], np.array(ok, np.int64))
    w.add_failures(bad, [f"class/bad_{p}.jpg" for p in bad], [f"truncated file {p}" for p in bad])
    w.commit()
    if pause:
        time.sleep(pause)
w.close(complete=True)
print("done", flush=True)
"""


def _child(path, compression, mode, pause=0.0):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    args = [sys.executable, "-c", CHILD, str(path), compression, mode, str(pause), str(N), str(BATCH)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _snapshot(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IncompleteStoreWarning)
        with open_store(path) as s:
            return {
                "complete": s.complete,
                "conv": np.array(s.features("conv")),
                "avg": np.array(s.features("conv:avg")),
                "labels": s.labels.copy(),
                "index": s.index.copy(),
                "paths": s.paths,
                "failures": s.failures,
                "failure_index": s.failure_index.copy(),
                "meta": s.meta,
            }


@pytest.fixture(scope="module")
def clean_runs(tmp_path_factory):
    out = {}
    for compression in ("none", "lzf"):
        path = tmp_path_factory.mktemp("clean") / "clean.h5"
        proc = _child(path, compression, "create")
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        out[compression] = _snapshot(path)
    return out


def _assert_prefix(got, clean):
    rows = len(got["labels"])
    assert np.array_equal(got["conv"], clean["conv"][:rows])
    assert np.array_equal(got["avg"], clean["avg"][:rows])
    assert np.array_equal(got["labels"], clean["labels"][:rows])
    assert np.array_equal(got["index"], clean["index"][:rows])
    assert got["paths"] == clean["paths"][:rows]
    failed = len(got["failures"])
    assert got["failures"] == clean["failures"][:failed]
    assert np.array_equal(got["failure_index"], clean["failure_index"][:failed])


KILLS = 4


@pytest.mark.parametrize(
    "compression, seed", [("none", 0), ("none", 1), ("none", 2), ("lzf", 3), ("lzf", 4)]
)
def test_sigkill_at_random_moments_then_resume_equals_clean_run(tmp_path, clean_runs, compression, seed):
    rng = np.random.default_rng(seed)
    path = tmp_path / "killed.h5"
    kills = 0
    for attempt in range(KILLS + 1):
        mode = "resume" if path.exists() else "create"
        last = attempt == KILLS
        proc = _child(path, compression, mode, pause=0.0 if last else 0.01)
        if not last:
            if attempt == 0:  # anywhere from imports through creation to the first batches
                time.sleep(rng.uniform(0.05, 0.5))
            elif proc.stdout.readline().strip() == "ready":
                time.sleep(rng.uniform(0.0, 0.1))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
        _, err = proc.communicate(timeout=60)
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, err
        if path.exists():  # else killed before the new store was renamed into place
            _assert_prefix(_snapshot(path), clean_runs[compression])
    assert kills >= 2
    final = _snapshot(path)
    clean = clean_runs[compression]
    assert final["complete"]
    assert len(final["labels"]) == len(clean["labels"]) == N - len(clean["failures"])
    _assert_prefix(final, clean)
    assert len(final["failures"]) == len(clean["failures"])
    assert final["meta"]["model"] == "test" and final["meta"]["precision"] == "chosen"
    assert not os.path.exists(str(path) + ".lock")
