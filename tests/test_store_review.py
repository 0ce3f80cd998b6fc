"""Store fixes from review: whole batches on disk, completeness kept by a refused resume, foreign
files untouched by --resume, adapters that choose augmented copies, and the flock writer lock."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import warnings

import h5py
import numpy as np
import pytest
from test_store import SHAPE, rows_of, write_store

from fastfeat.store import (
    IncompleteStoreWarning,
    StoreLockedError,
    StoreWriter,
    UnrecoverableStoreError,
    open_store,
)
from fastfeat.store.adapters import iterate_batches

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_IMAGES = 20


def _env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))


# -- 1. compressed store + augmented copies: committed rows hold whole batches ----------------------
AUG_CHILD = r"""
import os, sys
import numpy as np
from fastfeat.store import StoreWriter

path, mode, batches, finish = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "finish"

def feat(index, copy):
    return np.stack([np.random.default_rng([int(i), int(c)]).random((4, 5)).astype(np.float32)
                     for i, c in zip(index, copy)])

w = StoreWriter(path, {"conv": ((4, 5), "float32")}, capacity=40, class_names=["a", "b"],
                meta={"model": "toy"}, mode=mode, compression="lzf", chunk_rows=3)
done = set(w.processed_indices().tolist())
todo = [i for i in range(20) if i not in done]
for b in range(batches):
    imgs = todo[4 * b : 4 * b + 4]
    if not imgs:
        break
    index = np.array(imgs * 2)  # one batch: the images, then their augmented copy 1
    copy = np.array([0] * len(imgs) + [1] * len(imgs))
    w.append({"conv": feat(index, copy)}, index % 2, [f"img_{i}_{c}" for i, c in zip(index, copy)], index, copy)
    w.commit()
if finish:
    w.close(complete=True)
else:
    os._exit(0)  # a crash: nothing flushed or closed past the last commit
"""


def _aug_child(path, mode, batches, finish=False):
    args = [sys.executable, "-c", AUG_CHILD, str(path), mode, str(batches), "finish" if finish else "crash"]
    done = subprocess.run(args, capture_output=True, text=True, env=_env(), timeout=60)
    assert done.returncode == 0, done.stderr


def _check_whole_images(path, expect_complete=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IncompleteStoreWarning)
        with open_store(path) as s:
            index, copy, feats = np.asarray(s.index), np.asarray(s.copies), np.array(s.features("conv"))
            complete = s.complete
    for i in np.unique(index):  # every image that counts as processed has all its rows
        assert sorted(copy[index == i].tolist()) == [0, 1], (i, copy[index == i])
    for r in range(len(index)):
        expected = np.random.default_rng([int(index[r]), int(copy[r])]).random((4, 5)).astype(np.float32)
        assert np.array_equal(feats[r], expected)
    if expect_complete is not None:
        assert complete == expect_complete
    return set(index.tolist())


def test_compressed_store_with_copies_commits_whole_batches_across_crashes(tmp_path):
    path = tmp_path / "aug.h5"
    _aug_child(path, "create", 2)  # 16 rows written, chunks of 3: rows 0..14 lie in whole chunks
    assert len(_check_whole_images(path, expect_complete=False)) in (0, 4, 8)
    _aug_child(path, "resume", 1)  # a resume (rebuilds the compressed file), one batch, crash again
    _check_whole_images(path, expect_complete=False)
    _aug_child(path, "resume", 0)  # killed right after the rebuild: still resumable
    _aug_child(path, "resume", 10, finish=True)
    assert _check_whole_images(path, expect_complete=True) == set(range(N_IMAGES))
    with open_store(path) as s:
        assert len(s) == 2 * N_IMAGES


def _aug_batch(w, imgs):
    index = np.array(list(imgs) * 2)
    copy = np.array([0] * len(imgs) + [1] * len(imgs))
    feats = np.stack([np.random.default_rng([int(i), int(c)]).random((4, 5)).astype(np.float32)
                      for i, c in zip(index, copy)])  # fmt: skip
    w.append({"conv": feats}, index % 2, [f"img_{i}_{c}" for i, c in zip(index, copy)], index, copy)


def test_write_error_then_resume_keeps_whole_images(tmp_path, monkeypatch):
    path = tmp_path / "err.h5"
    args = ({"conv": ((4, 5), "float32")}, 40, ["a", "b"], {"model": "toy"})
    w = StoreWriter(path, *args, compression="lzf", chunk_rows=3)
    _aug_batch(w, [0, 1, 2, 3])
    w.commit()
    _aug_batch(w, [4, 5, 6, 7])
    w.commit()

    def failing(*a, **k):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(w, "_write_whole_chunks", failing)
    with pytest.raises(OSError, match="Input/output"):
        _aug_batch(w, [8, 9, 10, 11])
    w.close(complete=False)
    monkeypatch.undo()
    r = StoreWriter(path, *args, mode="resume")
    done = set(r.processed_indices().tolist())
    todo = [i for i in range(N_IMAGES) if i not in done]
    for s in range(0, len(todo), 4):
        _aug_batch(r, todo[s : s + 4])
        r.commit()
    r.close(complete=True)
    assert _check_whole_images(path, expect_complete=True) == set(range(N_IMAGES))


def test_safe_cut_never_separates_an_image_from_its_copies():
    from fastfeat.store.recovery import safe_cut

    index = np.array([0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7, 4, 5, 6, 7])
    assert safe_cut(index, 16) == 16
    assert safe_cut(index, 15) == 8 and safe_cut(index, 9) == 8 and safe_cut(index, 6) == 0
    assert safe_cut(np.arange(10), 7) == 7


# -- 2. a refused resume leaves a complete store complete -----------------------------------------
@pytest.mark.parametrize("compression", [None, "lzf"])
def test_resume_without_rows_never_downgrades_a_complete_store(tmp_path, compression):
    path = write_store(tmp_path / "c.h5", n=10, compression=compression, chunk_rows=3, batch=4)
    with open_store(path) as s:
        before = np.array(s.features("conv"))
    w = StoreWriter(path, {}, 0, [], {}, mode="resume")  # e.g. refused: different layers
    w.close(complete=False)
    w = StoreWriter(path, {}, 0, [], {}, mode="resume")
    w.update_meta(note="touched")
    w.commit()
    w.close(complete=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", IncompleteStoreWarning)
        with open_store(path, allow_incomplete=False) as s:
            assert s.complete and len(s) == 10 and np.array_equal(np.array(s.features("conv")), before)
    w = StoreWriter(path, {}, 0, [], {}, mode="resume")  # rows added and not finished: incomplete
    f = rows_of([10])
    w.append({"conv": f, "conv:avg": f.mean(axis=(1, 2))}, [0], ["a/img_10.jpg"], [10])
    w.close(complete=False)
    with pytest.warns(IncompleteStoreWarning):
        open_store(path).close()


# -- 3. --resume refuses a foreign file without touching it ---------------------------------------
def _digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest(), os.path.getsize(path)


def test_resume_refuses_foreign_files_without_changing_a_byte(tmp_path):
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = np.arange(10)
    cut = tmp_path / "cut.h5"
    with h5py.File(cut, "w", libver="earliest") as f:  # superblock 0, data at the end of the file
        f.attrs["note"] = "not fastfeat"
        f["x"] = np.arange(200_000, dtype=np.float64)
    with open(cut, "r+b") as fh:
        fh.truncate(os.path.getsize(cut) // 2)  # as a full disk leaves it: shorter than HDF5 recorded
    text = tmp_path / "text.h5"
    text.write_bytes(b"hello, not HDF5 at all\n" * 10)
    for path in (plain, cut, text):
        before = _digest(path)
        with pytest.raises(UnrecoverableStoreError, match="not a fastfeat store|not an HDF5 file|cannot open"):
            StoreWriter(path, {"conv": (SHAPE, "float32")}, 4, [], {}, mode="resume")
        assert _digest(path) == before, path
        assert not os.path.exists(str(path) + ".lock")


def test_resume_of_a_damaged_store_leaves_it_untouched(tmp_path):
    path = write_store(tmp_path / "d.h5", n=20, complete=False)
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) // 3)  # committed rows lost: cannot be resumed
    before = _digest(path)
    with pytest.raises(UnrecoverableStoreError, match="Cannot resume"):
        StoreWriter(path, {}, 0, [], {}, mode="resume")
    assert _digest(path) == before


# -- 4. adapters choose augmented copies ----------------------------------------------------------
@pytest.fixture(scope="module")
def augmented(tmp_path_factory):
    path = tmp_path_factory.mktemp("aug") / "aug.h5"
    w = StoreWriter(path, {"conv": (SHAPE, "float32")}, 30, ["a", "b"], {"model": "toy"}, chunk_rows=4)
    for s in range(0, 10, 4):
        imgs = np.arange(s, min(s + 4, 10))
        index = np.concatenate([imgs] * 3)
        copy = np.repeat([0, 1, 2], len(imgs))
        w.append({"conv": rows_of(index * 10 + copy)}, index % 2, [f"img_{i}" for i in index], index, copy)
        w.commit()
    w.close(complete=True)
    return path


def test_rows_of_and_arrays_choose_copies(augmented):
    with open_store(augmented) as s:
        copy, index = np.asarray(s.copies), np.asarray(s.index)
        assert np.array_equal(s.rows_of(), np.arange(30))
        plain = s.rows_of(copies=0)
        assert np.array_equal(plain, np.flatnonzero(copy == 0)) and len(plain) == 10
        assert np.array_equal(s.rows_of(copies=[1, 2]), np.flatnonzero(copy > 0))
        X, y = s.arrays(copies=0)
        assert X.shape == (10, int(np.prod(SHAPE))) and np.array_equal(y, index[plain] % 2)
        assert np.array_equal(np.asarray(X), rows_of(index[plain] * 10).reshape(10, -1))
        assert np.array_equal(X[[3, 1]], rows_of(index[plain][[3, 1]] * 10).reshape(2, -1))
        Xl, _ = s.arrays(flatten=False, copies=2, load=True)
        assert type(Xl) is np.ndarray and np.array_equal(Xl, rows_of(index[copy == 2] * 10 + 2))
        X_all, y_all = s.arrays()
        assert len(X_all) == 30 and len(y_all) == 30
        with pytest.raises(ValueError, match="Received: copies="):
            s.arrays(copies=-1)


def test_split_keeps_every_image_and_its_copies_on_one_side(augmented):
    with open_store(augmented) as s:
        index, copy = np.asarray(s.index), np.asarray(s.copies)
        train, val = s.split(0.3, seed=1)
        assert set(index[train]).isdisjoint(index[val]) and len(set(index[val])) == 3
        assert set(copy[val]) == {0} and set(copy[train]) == {0, 1, 2}
        assert len(train) == 7 * 3 and len(val) == 3
        X, y = s.arrays(rows=val)
        assert np.array_equal(np.asarray(X), rows_of(index[val] * 10).reshape(3, -1))
        one_epoch, features, labels = iterate_batches(s, batch_size=4, seed=0, rows=train, copies=[0, 1])
        seen = []
        for xb, yb in one_epoch():
            seen.append(xb)
        got = np.concatenate(seen)
        chosen = train[copy[train] <= 1]
        assert len(got) == len(chosen) == 14 and len(features) == 14
        want = rows_of(index[chosen] * 10 + copy[chosen])
        assert sorted(map(bytes, got.reshape(14, -1).view(np.uint8))) == sorted(
            map(bytes, want.reshape(14, -1).view(np.uint8))
        )


def test_to_dataset_and_pydataset_take_copies(augmented):
    with open_store(augmented) as s:
        plain = s.rows_of(copies=0)
        ds = s.to_dataset(batch_size=4, seed=0, copies=0, flatten=True)
        labels = np.concatenate([y.numpy() for _, y in ds])
        assert len(labels) == 10 and sorted(labels) == sorted(np.asarray(s.labels)[plain])
        py = s.to_pydataset(batch_size=4, shuffle=False, copies=0)
        xs = np.concatenate([py[i][0] for i in range(len(py))])
        assert np.array_equal(xs, rows_of(np.asarray(s.index)[plain] * 10))


# -- 5. the writer lock --------------------------------------------------------------------------
LOCK_CHILD = r"""
import sys, time
from fastfeat.store import StoreLockedError, StoreWriter
path, action = sys.argv[1], sys.argv[2]
try:
    w = StoreWriter(path, {"x": ((3,), "float32")}, 4, [], {}, mode="resume")
except StoreLockedError as e:
    print("locked:", e, flush=True)
    sys.exit(0)
print("holding", flush=True)
if action == "hold":
    time.sleep(60)
w.close(complete=False)
"""


def _lock_child(path, action):
    args = [sys.executable, "-c", LOCK_CHILD, str(path), action]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())


def test_lock_is_exclusive_in_and_across_processes_and_dies_with_its_owner(tmp_path):
    path = tmp_path / "l.h5"
    w = StoreWriter(path, {"x": ((3,), "float32")}, 4, [], {})
    with pytest.raises(StoreLockedError, match=f"being written by another process \\(.* {os.getpid()}\\)"):
        StoreWriter(path, {}, 0, [], {}, mode="resume")
    other = _lock_child(path, "try")
    out, err = other.communicate(timeout=60)
    assert out.startswith("locked:") and str(os.getpid()) in out, (out, err)
    w.close(complete=False)
    assert not os.path.exists(str(path) + ".lock")

    holder = _lock_child(path, "hold")
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(StoreLockedError, match=str(holder.pid)):
            StoreWriter(path, {}, 0, [], {}, mode="resume")
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        holder.stdout.close()
        holder.stderr.close()
    assert os.path.exists(str(path) + ".lock")  # left behind by the killed writer ...
    StoreWriter(path, {}, 0, [], {}, mode="resume").close(False)  # ... and it does not block


def test_a_lock_file_naming_a_live_process_does_not_block_without_its_flock(tmp_path):
    path = tmp_path / "s.h5"
    StoreWriter(path, {"x": ((3,), "float32")}, 4, [], {}).close(False)
    with open(str(path) + ".lock", "w") as f:  # the pid is alive (our parent) but holds no lock
        f.write(f"{os.uname().nodename} {os.getppid()}\n")
    w = StoreWriter(path, {}, 0, [], {}, mode="resume")
    with open(str(path) + ".lock") as f:
        assert f.read().split()[1] == str(os.getpid())
    w.close(False)


def test_lock_needs_no_hard_links(tmp_path, monkeypatch):
    def no_links(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted (no hard links on this file system)")

    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "n.h5"
    w = StoreWriter(path, {"x": ((3,), "float32")}, 4, [], {})
    with pytest.raises(StoreLockedError):
        StoreWriter(path, {}, 0, [], {}, mode="resume")
    w.close(complete=True)
