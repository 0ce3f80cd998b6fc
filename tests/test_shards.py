"""Sharded extraction without Ray: plan and manifest, atomic publication, concurrent manifest
updates, one store view over the shards (``open_store(OUT)``), merge, ``--shard-index`` runs in any
order (some twice) equal to a single-machine run bitwise, resume of a partial shard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

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
    meta = {"model": "m", "layers": ["f"], "catalog_sha256": "abc", "catalog_size": N, **(meta or {})}
    w = StoreWriter(path, {"f": (SHAPE, "float32")}, capacity=max(1, len(images) * (1 + COPIES)), class_names=NAMES,
                    meta=meta)  # fmt: skip
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


# -- real shards (a tiny model): equal to a single-machine run ----------------------------------------

N_REAL = 14
REAL = dict(layers=["conv1", "conv3:avg"], batch_size=2, precision="float32")


@pytest.fixture(scope="module")
def real_folder(tmp_path_factory):
    from conftest import write_image

    root = tmp_path_factory.mktemp("shards") / "images"
    for i in range(N_REAL):
        write_image(root / f"class_{i % 3}" / f"{i:03d}.png", i, size=(30 + i % 5, 34))
    (root / "class_1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return root


@pytest.fixture(scope="module")
def single_run(real_folder, tiny_model_file, tmp_path_factory):
    import fastfeat

    out = tmp_path_factory.mktemp("single") / "single.h5"
    fastfeat.extract(real_folder, out, model=tiny_model_file, progress=False, **REAL)
    return out


def _assert_same(store, reference):
    with open_store(reference) as ref:
        assert store.complete and len(store) == len(ref) == N_REAL
        assert store.paths == ref.paths and store.class_names == ref.class_names
        assert store.failures == ref.failures and len(ref.failures) == 1
        for name in ("labels", "index", "copies", "failure_index"):
            np.testing.assert_array_equal(getattr(store, name), getattr(ref, name), err_msg=name)
        assert np.unique(store.index).size == len(store)  # no image twice
        for layer in ref.layers:
            assert np.array_equal(np.asarray(store.features(layer)), np.asarray(ref.features(layer))), layer


def _argv(folder, out, model, *extra):
    return ["extract", str(folder), "-o", str(out), "--model", model, "--layer", "conv1", "--layer", "conv3:avg",
            "--batch-size", "2", "--precision", "float32", "--quiet", *extra]  # fmt: skip


def test_shard_index_runs_in_any_order_some_twice_equal_a_single_run(real_folder, tiny_model_file, single_run,
                                                                    tmp_path, capsys):  # fmt: skip
    from fastfeat.cli import main

    out = tmp_path / "out"
    for k in (2, 0, 2, 1, 0):
        assert main(_argv(real_folder, out, tiny_model_file, "--shards", "3", "--shard-index", str(k))) == 0, k
    manifest = read_manifest(out)
    assert [e["status"] for e in manifest["shard_list"]] == ["complete"] * 3
    assert [e["attempts"] for e in manifest["shard_list"]] == [1, 1, 1]  # the second runs skipped
    assert all(e["digest"].startswith("sha256:") for e in manifest["shard_list"])
    assert sorted(os.listdir(out)) == sorted([shard_name(k, 3) for k in range(3)] + [MANIFEST, ".locks"])
    with open_store(out) as view:
        _assert_same(view, single_run)
        with open_store(out / shard_name(1, 3)) as shard:
            assert shard.meta["part"] == {"index": 1, "count": 3, "start": 5, "stop": 10}
            assert shard.meta["catalog_size"] == N_REAL + 1  # the whole catalog's identity
        batches = list(view.to_dataset("conv3:avg", batch_size=4, shuffle=False).as_numpy_iterator())
        with open_store(single_run) as ref:
            pooled = np.asarray(ref.features("conv3:avg"))
            np.testing.assert_array_equal(np.concatenate([x for x, _ in batches]), pooled)
            np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), ref.labels)
            x, y = view.to_pydataset("conv1", batch_size=5, shuffle=False)[2]
            np.testing.assert_array_equal(x, np.asarray(ref.features("conv1"))[10:15])
    assert main(["merge", str(out), "-o", str(tmp_path / "one.h5")]) == 0
    with open_store(tmp_path / "one.h5") as one:
        _assert_same(one, single_run)
    assert main(_argv(real_folder, out, tiny_model_file, "--shards", "3")) == 2  # exists: --resume or --overwrite
    assert "--resume" in capsys.readouterr().err
    assert main(_argv(real_folder, out, tiny_model_file, "--shards", "3", "--resume")) == 0  # all skipped


def _stop_after_batches(token_class, batches: int):
    """A stop token that reads as set once the run has handed over ``batches`` batches. Deterministic: a
    stop set from the writer thread (after a commit) races with the main loop, which may hand over the
    shard's last batch before it sees the request, and then the shard completes."""

    class StopAfter(token_class):
        def __init__(self):
            super().__init__()
            self.checks = 0

        def is_set(self) -> bool:  # the run loop asks once per batch handed over
            self.checks += 1
            return self.checks >= batches or super().is_set()

    return StopAfter()


def test_interrupted_shard_resumes_without_duplicates_and_is_published_atomically(
    real_folder, tiny_model_file, single_run, tmp_path, monkeypatch
):
    from fastfeat.extraction import StopToken
    from fastfeat.sharding import extract_sharded, plan_job, run_shard

    out = tmp_path / "out"
    job = plan_job(real_folder, out, 2, model=tiny_model_file, **REAL)
    stop = _stop_after_batches(StopToken, 1)  # mid-shard: 1 of its 4 batches
    partial = str(out / shard_name(0, 2)) + PARTIAL
    result = run_shard(job, 0, stop=stop)
    assert result.status == "interrupted" and 0 < result.rows < 7
    assert os.path.exists(partial) and not os.path.exists(out / shard_name(0, 2))  # not published
    assert read_manifest(out)["shard_list"][0]["status"] == "pending"
    with pytest.warns(IncompleteStoreWarning, match=r"shard\(s\) 0-1 of 2"):
        open_store(out).close()
    with pytest.raises(FileExistsError, match="--resume"):
        run_shard(job, 0, resume=False)
    report = extract_sharded(real_folder, out, 2, resume=True, model=tiny_model_file, progress=False, **REAL)
    assert report.complete and [s["attempts"] for s in report.shards] == [2, 1]
    entry = read_manifest(out)["shard_list"][0]
    assert entry["resumed_from"] == result.rows  # continued, not restarted
    with open_store(out) as view:
        _assert_same(view, single_run)
    # a crash between the rename and the manifest update: the next run of the shard records it
    update_shard(str(out), 1, status="running", digest=None)
    assert run_shard(job, 1).status == "skipped"
    assert read_manifest(out)["shard_list"][1]["status"] == "complete"


def test_settings_are_decided_once_for_the_job(real_folder, tiny_model_file, tmp_path):
    from fastfeat.sharding import extract_sharded

    out = tmp_path / "out"
    report = extract_sharded(real_folder, out, 3, model=tiny_model_file, progress=False,
                             **{**REAL, "batch_size": None})  # fmt: skip
    settings = read_manifest(out)["settings"]
    assert settings["decided_by"] == "shard 0" and settings["precision"] == "float32"
    assert report.settings["batch_size"] == settings["batch_size"] >= 1
    for k in range(3):
        with open_store(out / shard_name(k, 3)) as shard:
            assert shard.meta["batch_size"] == settings["batch_size"]
    with pytest.raises(ValueError, match="Received: engine='spark'"):
        extract_sharded(real_folder, tmp_path / "x", 2, engine="spark", model=tiny_model_file, **REAL)


def test_a_shard_of_a_changed_source_is_not_published(class_tree, tiny_model_file, tmp_path):
    from conftest import write_image
    from fastfeat.sharding import plan_job, run_shard

    root, _ = class_tree
    job = plan_job(root, tmp_path / "out", 2, model=tiny_model_file, **REAL)
    write_image(root / "cats" / "img_9.png", 99)  # the folder changes after planning
    with pytest.raises(ValueError, match="the source changed since the job was planned"):
        run_shard(job, 0)
    assert not (tmp_path / "out" / shard_name(0, 2)).exists()
    with pytest.raises(ValueError, match="the source changed"):  # a shard whose run raises says so
        run_shard(job, 1)
    entry = read_manifest(tmp_path / "out")["shard_list"][1]
    assert entry["status"] == "failed" and "source changed" in entry["error"]


def test_a_partial_shard_written_with_other_settings_is_redone(real_folder, tiny_model_file, single_run, tmp_path,
                                                               monkeypatch):  # fmt: skip
    import shutil

    from fastfeat.extraction import StopToken
    from fastfeat.sharding import plan_job, run_shard

    other = plan_job(real_folder, tmp_path / "other", 3, model=tiny_model_file, **{**REAL, "batch_size": 3})
    assert run_shard(other, 1, stop=_stop_after_batches(StopToken, 1)).status == "interrupted"
    job = plan_job(real_folder, tmp_path / "job", 3, model=tiny_model_file, **REAL)
    name = shard_name(1, 3) + PARTIAL
    shutil.copy(tmp_path / "other" / name, tmp_path / "job" / name)  # batch size 3, the job has 2
    with pytest.warns(RuntimeWarning, match=r"discarding .*batch_size: 3, the job has 2"):
        result = run_shard(job, 1)
    assert result.status == "complete" and result.report["resumed_from"] == 0
    for k in (0, 2):
        run_shard(job, k)
    with open_store(tmp_path / "job") as view:
        _assert_same(view, single_run)
