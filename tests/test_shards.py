"""Sharded extraction without Ray: plan and manifest, atomic publication, concurrent manifest
updates, one store view over the shards (``open_store(OUT)``), merge, ``--shard-index`` runs in any
order (some twice) equal to a single-machine run bitwise, resume of a partial shard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import numpy as np
import pytest

from fastfeat.catalog import part_bounds
from fastfeat.store import IncompleteStoreError, IncompleteStoreWarning, StoreWriter, merge_stores, open_store
from fastfeat.store.sharded import MANIFEST, PARTIAL, ConcatenatedRows, read_manifest, shard_name
from fastfeat.sharding.manifest import new_manifest, update_shard, write_manifest

# -- a synthetic sharded output (StoreWriter directly, no model): the view's semantics ---------------

N, COPIES, SHAPE = 10, 1, (2, 3)
NAMES = ["ants", "bees", "cats"]


def _rows_of(images):
    """Rows of ``images`` as extract writes them, one batch: the plain rows, then copy 1."""
    rows = [(i, c) for c in range(1 + COPIES) for i in images]
    feats = np.stack([np.full(SHAPE, i * 10 + c, np.float32) + np.arange(6, dtype=np.float32).reshape(SHAPE) / 8
                      for i, c in rows])  # fmt: skip
    index = np.array([i for i, _ in rows], np.int64)
    return {"f": feats}, index % 3, [f"{NAMES[i % 3]}/{i}.png" for i in index], index, np.array([c for _, c in rows])


def _write(path, images, failed=(), complete=True, meta=None):
    w = StoreWriter(path, {"f": (SHAPE, "float32")}, capacity=max(1, len(images) * (1 + COPIES)), class_names=NAMES,
                    meta={"model": "m", "layers": ["f"], "catalog_sha256": "abc", "catalog_size": N, **(meta or {})})  # fmt: skip
    for a in range(0, len(images), 2):
        w.append(*_rows_of(images[a : a + 2]))
        w.commit()
    w.add_failures(list(failed), [f"{NAMES[i % 3]}/{i}.png" for i in failed], ["broken"] * len(failed))
    w.close(complete=complete)


FAILED = (5,)


@pytest.fixture
def synthetic(tmp_path):
    """(single store, sharded folder) holding the same rows: 3 shards over 10 images, image 5 failed."""
    out = tmp_path / "out"
    out.mkdir()
    bounds = part_bounds(N, 3)
    names = [shard_name(k, 3) for k in range(3)]
    manifest = new_manifest({"layers": ["f"]}, {"size": N, "sha256": "abc", "class_names": NAMES}, bounds, names, None)
    single_images = []
    for k, (a, b) in enumerate(bounds):
        images = [i for i in range(a, b) if i not in FAILED]
        _write(str(out / names[k]), images, [i for i in FAILED if a <= i < b], meta={"part": [k, 3]})
        single_images.append(images)
        manifest["shard_list"][k].update(status="complete")
    write_manifest(str(out), manifest)
    single = tmp_path / "single.h5"
    w = StoreWriter(single, {"f": (SHAPE, "float32")}, capacity=40, class_names=NAMES,
                    meta={"model": "m", "layers": ["f"], "catalog_sha256": "abc", "catalog_size": N})  # fmt: skip
    for images in single_images:
        for a in range(0, len(images), 2):
            w.append(*_rows_of(images[a : a + 2]))
        w.add_failures([i for i in FAILED if images and images[0] <= i <= images[-1] + 1],
                       [f"{NAMES[i % 3]}/{i}.png" for i in FAILED if images and images[0] <= i <= images[-1] + 1],
                       ["broken"])  # fmt: skip
    w.close(complete=True)
    return single, out


def test_view_has_the_feature_store_api(synthetic):
    single, out = synthetic
    with open_store(single) as one, open_store(out) as view:
        assert view.complete and len(view) == len(one) == 18 and view.layers == one.layers
        assert view.paths == one.paths and view.class_names == one.class_names == NAMES
        for name in ("labels", "index", "copies", "failure_index"):
            np.testing.assert_array_equal(getattr(view, name), getattr(one, name), err_msg=name)
        assert view.failures == one.failures == [("cats/5.png", "broken")]
        a, b = one.features("f"), view.features("f")
        assert isinstance(b, ConcatenatedRows) and b.mapped and view.is_memmapped("f")
        assert b.shape == a.shape == (18, 2, 3) and b.dtype == np.float32 and view.shape("f") == (18, 2, 3)
        rng = np.random.default_rng(0)
        for item in (0, 7, -1, slice(None), slice(3, 11), slice(None, None, -3), slice(5, 5),
                     rng.integers(0, 18, 25), [17, 0, 0, 9], rng.random(18) > 0.5, (slice(2, 14), 1), (4, 1, 2),
                     (Ellipsis, 0)):  # fmt: skip
            np.testing.assert_array_equal(b[item], np.asarray(a)[item], err_msg=str(item))
        np.testing.assert_array_equal(np.asarray(view.features("f", flatten=True)), np.asarray(a).reshape(18, -1))
        np.testing.assert_array_equal(np.asarray(b.reshape(len(b), -1)), np.asarray(a).reshape(18, -1))
        with pytest.raises(IndexError):
            b[18]
        np.testing.assert_array_equal(view.rows_of(copies=0), one.rows_of(copies=0))
        np.testing.assert_array_equal(view.rows_of(images=[4, 9]), one.rows_of(images=[4, 9]))
        for got, want in zip(view.split(0.3, seed=1), one.split(0.3, seed=1)):
            np.testing.assert_array_equal(got, want)
        X, y = view.arrays(copies=0)
        X1, y1 = one.arrays(copies=0)
        np.testing.assert_array_equal(np.asarray(X), np.asarray(X1))
        np.testing.assert_array_equal(y, y1)
        assert view.meta["catalog_size"] == N and "part" not in view.meta and view.meta["shards"] == 3


def test_view_of_an_incomplete_output_warns_or_refuses(synthetic):
    _, out = synthetic
    final = out / shard_name(1, 3)
    os.replace(final, str(final) + PARTIAL)  # shard 1 not published yet
    with pytest.warns(IncompleteStoreWarning, match=r"shard\(s\) 1 of 3"):
        view = open_store(out)
    with view:
        assert not view.complete and len(view) == 18  # committed rows of the partial shard are visible
    with pytest.raises(IncompleteStoreError, match="allow_incomplete=False"):
        open_store(out, allow_incomplete=False)
    os.unlink(str(final) + PARTIAL)
    with pytest.warns(IncompleteStoreWarning):
        view = open_store(out)
    with view:
        assert len(view) == 18 - 4 and list(np.unique(view.index)) == [0, 1, 2, 3, 7, 8, 9]
    with pytest.raises(ValueError, match=r"shard\(s\) 1 are not complete"):
        merge_stores([out], out.parent / "m.h5")


def test_merge_of_a_folder_equals_the_single_store(synthetic, tmp_path):
    single, out = synthetic
    summary = merge_stores([out], tmp_path / "merged.h5")
    assert summary["rows"] == 18
    with open_store(single) as one, open_store(tmp_path / "merged.h5") as merged:
        assert merged.complete and merged.paths == one.paths and merged.failures == one.failures
        for name in ("labels", "index", "copies", "failure_index"):
            np.testing.assert_array_equal(getattr(merged, name), getattr(one, name), err_msg=name)
        assert np.array_equal(np.asarray(merged.features("f")), np.asarray(one.features("f")))
        assert "part" not in merged.meta and merged.meta["catalog_size"] == N


def test_info_command_on_a_folder(synthetic, capsys):
    from fastfeat.cli import main

    _, out = synthetic
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "rows:         18" in text and "shard 2: images [7, 10), complete" in text
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["rows"] == 18 and info["layers"][0]["shape"] == [18, 2, 3] and len(info["shards"]) == 3


# -- the manifest --------------------------------------------------------------------------------

_UPDATER = textwrap.dedent(
    """
    import sys
    from fastfeat.sharding.manifest import update_manifest
    out, k, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    def bump(m):
        e = m["shard_list"][k]
        e["rows"] += 1
    for _ in range(n):
        update_manifest(out, bump)
    """
)


def test_concurrent_manifest_updates_from_two_processes_lose_nothing(tmp_path):
    out = str(tmp_path)
    write_manifest(out, new_manifest({}, {"size": 4, "sha256": "x", "class_names": []}, part_bounds(4, 2),
                                     [shard_name(k, 2) for k in range(2)], None))  # fmt: skip
    n = 60
    procs = [subprocess.Popen([sys.executable, "-c", _UPDATER, out, str(k), str(n)]) for k in (0, 1)]
    seen = 0
    while any(p.poll() is None for p in procs):  # a reader never sees half a manifest
        read_manifest(out)
        seen += 1
    assert [p.wait() for p in procs] == [0, 0]
    assert [e["rows"] for e in read_manifest(out)["shard_list"]] == [n, n]
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


def test_update_shard_returns_the_entry_and_manifest_is_checked(tmp_path):
    out = str(tmp_path)
    write_manifest(out, new_manifest({}, {"size": 2, "sha256": "x", "class_names": []}, [(0, 2)], ["s.h5"], None))
    assert update_shard(out, 0, status="running", attempts=1)["status"] == "running"
    (tmp_path / MANIFEST).write_text(json.dumps({"format": "fastfeat-shards", "version": 99}))
    with pytest.raises(ValueError, match="manifest version 99"):
        read_manifest(out)
    with pytest.raises(FileNotFoundError, match="not a sharded fastfeat output"):
        read_manifest(str(tmp_path / "nothing"))


# -- planning --------------------------------------------------------------------------------------


def test_plan_job_creates_joins_and_refuses(class_tree, tiny_model_file, tmp_path):
    from fastfeat.sharding import plan_job

    root, expected = class_tree
    out = tmp_path / "job"
    settings = dict(model=tiny_model_file, layers=["conv2:avg"], batch_size=2, precision="float32", weights=None)
    job = plan_job(root, out, 4, **settings)
    manifest = read_manifest(out)
    assert job.bounds == part_bounds(len(expected), 4) == [(e["start"], e["stop"]) for e in manifest["shard_list"]]
    assert [e["name"] for e in manifest["shard_list"]] == [shard_name(k, 4) for k in range(4)]
    assert {e["status"] for e in manifest["shard_list"]} == {"pending"}
    assert manifest["catalog"]["size"] == len(expected) and manifest["catalog"]["sha256"] == job.catalog.fingerprint()
    assert manifest["settings"] == {"precision": "float32", "batch_size": 2, "decided_by": "given"}
    with pytest.raises(FileExistsError, match="--resume"):
        plan_job(root, out, 4, **settings)
    assert plan_job(root, out, 4, join=True, **settings).bounds == job.bounds  # another launcher of the job
    with pytest.raises(ValueError, match=r"another sharded job(.|\n)*layers"):
        plan_job(root, out, 4, join=True, **{**settings, "layers": ["conv3"]})
    with pytest.raises(ValueError, match="shards: 4 in the manifest, 3 now"):
        plan_job(root, out, 3, resume=True, **settings)
    plan_job(root, out, 3, overwrite=True, **settings)
    assert len(read_manifest(out)["shard_list"]) == 3
    with pytest.raises(ValueError, match=r"at most the number of images \(9\)"):
        plan_job(root, tmp_path / "j2", 10, **settings)
    with pytest.raises(ValueError, match="Received: shards=0"):
        plan_job(root, tmp_path / "j2", 0, **settings)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a sharded fastfeat output"):
        plan_job(root, tmp_path / "busy", 2, **settings)
    with pytest.raises(ValueError, match="`progress` is set per shard"):
        plan_job(root, tmp_path / "j3", 2, progress=False, **settings)
