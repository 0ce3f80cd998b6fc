"""The feature store: writer layout, NumPy-like views, incomplete stores, resume, locks, disk full."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import warnings

import h5py
import numpy as np
import pytest

from fastfeat.store import (
    IncompleteStoreError,
    IncompleteStoreWarning,
    StoreLockedError,
    StoreWriter,
    UnrecoverableStoreError,
    open_store,
)
from fastfeat.store import codecs, layout
from fastfeat.store.views import ChunkedArray, H5Rows, map_features
from fastfeat.store.writer import chunk_rows_for, parse_compression

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (5, 4, 6)


def rows_of(index):
    """Self-verifying ReLU-like rows: row i is determined by i alone (many exact zeros)."""
    out = np.empty((len(index),) + SHAPE, np.float32)
    for k, i in enumerate(index):
        out[k] = np.maximum(np.random.default_rng(int(i)).normal(size=SHAPE), 0)
    return out


def write_store(path, n=50, compression=None, chunk_rows=4, batch=7, complete=True, fail_every=0, classes=("a", "b")):
    """A store of ``n`` catalog items (item k -> row features rows_of([k]), label k % len(classes))."""
    w = StoreWriter(
        path, {"conv": (SHAPE, "float32"), "conv:avg": ((SHAPE[-1],), "float16")}, capacity=n,
        class_names=list(classes), meta={"model": "toy", "layers": ["conv", "conv:avg"]},
        mode="overwrite", compression=compression, chunk_rows=chunk_rows,
    )  # fmt: skip
    for s in range(0, n, batch):
        pos = np.arange(s, min(s + batch, n))
        bad = pos[(pos % fail_every == 1)] if fail_every else pos[:0]
        ok = np.setdiff1d(pos, bad)
        feats = rows_of(ok)
        w.append(
            {"conv": feats, "conv:avg": feats.mean(axis=(1, 2))}, ok % len(classes),
            [f"{classes[k % len(classes)]}/img_{k}.jpg" for k in ok], ok,
        )  # fmt: skip
        w.add_failures(bad.tolist(), [f"x/bad_{k}.jpg" for k in bad], ["truncated"] * len(bad))
        w.commit()
    w.close(complete=complete)
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("stores")
    return {c: write_store(d / f"{c}.h5", compression=None if c == "none" else c) for c in ("none", "lzf", "gzip:3")}


INDEXES = [
    0, 7, -1, -50, slice(None), slice(3, 17), slice(5, 6), slice(40, 10, -3), slice(1, None, 5), slice(60, 70),
    np.array([3, 1, 1, 49, 0, 22]), np.arange(50), np.array([], np.int64), [48, 2], np.arange(50) % 3 == 0,
    (slice(2, 9), 1), (np.array([9, 4]), slice(None), 2), (4, 3, 2), (Ellipsis, 1), (), (slice(None), Ellipsis, 0),
]  # fmt: skip


@pytest.mark.parametrize("compression", ["none", "lzf", "gzip:3"])
@pytest.mark.parametrize("item", INDEXES, ids=lambda x: repr(x)[:30])
def test_every_indexing_form_equals_h5py(stores, compression, item):
    with open_store(stores[compression]) as s:
        view = s.features("conv")
        ds = s.dataset("conv")
        full = ds[: s.rows]
        expected = full[item]
        got = view[item]
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert np.array_equal(got, expected)
        if isinstance(item, np.ndarray) and item.dtype != bool and item.size:
            assert np.array_equal(got, ds[np.sort(np.unique(item))][np.searchsorted(np.unique(item), item)])


@pytest.mark.parametrize("compression", ["none", "lzf", "gzip:3"])
def test_array_surface(stores, compression):
    with open_store(stores[compression]) as s:
        v = s.features("conv")
        assert len(v) == 50 and v.shape == (50,) + SHAPE and v.dtype == np.float32 and v.ndim == 4
        assert np.array_equal(np.asarray(v), rows_of(range(50)))
        flat = s.features("conv", flatten=True)
        assert flat.shape == (50, int(np.prod(SHAPE)))
        assert np.array_equal(flat[[4, 2]], rows_of([4, 2]).reshape(2, -1))
        assert np.array_equal(v.reshape(len(v), -1)[7], rows_of([7]).reshape(-1))
        assert s.features("conv:avg").dtype == np.float16
        with pytest.raises(IndexError):
            v[50]
        with pytest.raises(IndexError):
            v[np.array([True, False])]
        with pytest.raises(KeyError, match="Received: layer='nope'"):
            s.features("nope")
        with pytest.raises(ValueError, match="several layers"):
            s.features()


def _mapped_base(a):
    while a is not None and not isinstance(a, np.memmap):
        a = a.base if isinstance(a, np.ndarray) else None
    return a


def test_uncompressed_is_one_memmap_and_views_are_zero_copy(stores):
    with open_store(stores["none"]) as s:
        v = s.features("conv")
        assert isinstance(v, np.memmap) and not v.flags.writeable
        assert s.is_memmapped("conv") and s.is_memmapped("conv:avg")
        row = v[3]
        assert _mapped_base(row) is not None and np.shares_memory(row, v)
        flat = s.features("conv", flatten=True)
        assert np.shares_memory(flat, v) and flat.shape == (50, int(np.prod(SHAPE)))
        # the map covers the committed rows only, straight from the file's bytes
        ds = s.dataset("conv")
        offsets = []
        ds.id.chunk_iter(lambda info: offsets.append(info.byte_offset))
        assert v.offset == offsets[0] and np.all(np.diff(offsets) == ds.chunks[0] * v[0].nbytes)


@pytest.mark.parametrize("compression", ["lzf", "gzip:3"])
def test_compressed_is_not_memmapped(stores, compression):
    with open_store(stores[compression]) as s:
        v = s.features("conv")
        assert isinstance(v, ChunkedArray) and not s.is_memmapped("conv")
        assert _mapped_base(v[3]) is None and _mapped_base(v[2:9]) is None
        assert v.workers >= 1
        assert s.compression("conv") == compression


def test_scattered_uncompressed_chunks_use_per_chunk_memmap_views(tmp_path):
    path = str(tmp_path / "scattered.h5")
    data = rows_of(range(30))
    with h5py.File(path, "w") as f:  # two datasets growing together: their chunks interleave
        a, b = (f.create_dataset(n, (30,) + SHAPE, np.float32, maxshape=(None,) + SHAPE, chunks=(2,) + SHAPE)
                for n in "ab")  # fmt: skip
        for i in range(0, 30, 2):
            a[i : i + 2] = data[i : i + 2]
            b[i : i + 2] = data[i : i + 2]
            f.flush()
    with h5py.File(path, "r") as f:
        offsets = []
        f["a"].id.chunk_iter(lambda info: offsets.append(info.byte_offset))
        assert np.any(np.diff(offsets) != 2 * data[0].nbytes)  # not back to back
        v = map_features(path, f["a"], 27)
        assert isinstance(v, ChunkedArray) and v.mapped
        for item in INDEXES:
            if isinstance(item, np.ndarray) and item.dtype == bool:
                item = item[:27]
            first = item[0] if isinstance(item, tuple) and item else item
            if isinstance(first, (int, np.ndarray, list)) and np.size(first) and np.max(np.abs(first)) >= 27:
                continue
            assert np.array_equal(v[item], data[:27][item])
        assert _mapped_base(v[5]) is not None and _mapped_base(v[4:6]) is not None
        assert _mapped_base(v.flat()[5]) is not None


def test_unknown_layouts_fall_back_to_h5py(tmp_path):
    path = str(tmp_path / "f.h5")
    data = rows_of(range(12))
    with h5py.File(path, "w") as f:
        f.create_dataset("fl", data=data, chunks=(2,) + SHAPE, fletcher32=True)
        f.create_dataset("odd", data=data, chunks=(3, 2, 2, 6))
        f.create_dataset("contig", data=data)
    with h5py.File(path, "r") as f:
        for name in ("fl", "odd"):
            v = map_features(path, f[name], 12)
            assert isinstance(v, H5Rows)
            assert np.array_equal(v[[5, 1, 5]], data[[5, 1, 5]]) and np.array_equal(v[3], data[3])
            assert np.array_equal(v.flat()[2:4], data[2:4].reshape(2, -1))
        assert isinstance(map_features(path, f["contig"], 12), np.memmap)


@pytest.mark.parametrize("shuffle", [False, True])
def test_shuffle_filter_and_python_lzf_decode(tmp_path, shuffle):
    path = str(tmp_path / "s.h5")
    data = rows_of(range(20))
    with h5py.File(path, "w") as f:
        f.create_dataset("g", data=data, chunks=(3,) + SHAPE, compression="gzip", shuffle=shuffle)
        f.create_dataset("l", data=data, chunks=(3,) + SHAPE, compression="lzf", shuffle=shuffle)
    with h5py.File(path, "r") as f:
        for name in ("g", "l"):
            v = map_features(path, f[name], 20, workers=2)
            assert np.array_equal(v[np.arange(20)[::-1]], data[::-1])
        _, raw = f["l"].id.read_direct_chunk((0, 0, 0, 0))
        nbytes = 3 * data[0].nbytes
        decoded = codecs.lzf_decompress(raw, nbytes, jit=False)
        assert np.array_equal(decoded, codecs.lzf_decompress(raw, nbytes, jit=True))


def test_chunk_shape_follows_the_access_pattern(tmp_path):
    assert chunk_rows_for((28, 28, 512), "float32", 25000) == 2
    assert chunk_rows_for((28, 28, 512), "float16", 25000) == 5
    assert chunk_rows_for((512,), "float32", 25000) == 2048
    assert chunk_rows_for((512,), "float32", 100) == 100
    assert chunk_rows_for((7, 7, 2048), "float32", 10) == 10
    assert chunk_rows_for((28, 28, 512), "float32", 25000, compressed=True) == 1
    assert chunk_rows_for((14, 14, 512), "float32", 25000, compressed=True) == 2
    w = StoreWriter(tmp_path / "c.h5", {"m": ((28, 28, 64), "float32"), "v": ((64,), "float32")}, 1000, [], {})
    w.close(False)
    with h5py.File(tmp_path / "c.h5", "r") as f:
        assert f["features/m"].chunks == (20, 28, 28, 64)
        assert f["features/v"].chunks == (1000, 64)


def test_parse_compression_messages():
    assert parse_compression("none") == (None, None)
    assert parse_compression("gzip") == ("gzip", 4)
    assert parse_compression("gzip:9") == ("gzip", 9)
    assert parse_compression("lzf") == ("lzf", None)
    for bad in ("zip", "gzip:x", "gzip:12", "lzf:3"):
        with pytest.raises(ValueError, match="Received: compression="):
            parse_compression(bad)


def test_metadata_labels_paths_failures(tmp_path):
    path = write_store(tmp_path / "m.h5", n=40, fail_every=6, classes=("cat", "dog", "ému"))
    with open_store(path) as s:
        index = np.array([k for k in range(40) if k % 6 != 1])
        assert s.rows == len(s) == len(index)
        assert np.array_equal(s.index, index)
        assert np.array_equal(s.labels, index % 3)
        assert s.class_names == ["cat", "dog", "ému"]
        assert s.paths == [f"{['cat', 'dog', 'ému'][k % 3]}/img_{k}.jpg" for k in index]
        assert s.failures == [(f"x/bad_{k}.jpg", "truncated") for k in range(40) if k % 6 == 1]
        assert np.array_equal(s.failure_index, [k for k in range(40) if k % 6 == 1])
        assert np.array_equal(s.features("conv")[:], rows_of(index))
        assert s.meta["model"] == "toy" and s.layers == ["conv", "conv:avg"] and s.complete
        assert np.array_equal(s.copies, np.zeros(len(index)))
        assert "rows=33" in repr(s)


def test_open_never_imports_tensorflow_and_reads_little(stores):
    code = textwrap.dedent(
        f"""
        import sys, resource
        import fastfeat
        from fastfeat.store import open_store
        with open_store({str(stores['none'])!r}) as s:
            s.features('conv')[3]; s.labels; s.paths; s.info()
        with open_store({str(stores['lzf'])!r}) as s:
            s.features('conv')[[3, 1]]
        bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]
        assert not bad, bad
        print('ok')
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_open_is_lazy(stores):
    with open_store(stores["none"]) as s:
        assert s._views == {}  # nothing mapped, no chunk index walked, until features() is asked
        assert s.shape("conv") == (50,) + SHAPE


def test_incomplete_store_warns_refuses_and_shows_committed_rows_only(tmp_path):
    path = tmp_path / "inc.h5"
    w = StoreWriter(path, {"conv": (SHAPE, "float32")}, 20, ["a"], {"model": "toy"})
    w.append({"conv": rows_of(range(5))}, np.zeros(5), [f"a/{i}" for i in range(5)], np.arange(5))
    w.commit()
    w.append({"conv": rows_of(range(5, 8))}, np.zeros(3), [f"a/{i}" for i in range(5, 8)], np.arange(5, 8))
    code = f"from fastfeat.store import open_store\ns = open_store({str(path)!r})\nprint(s.rows, s.complete)"
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.split() == ["5", "False"], out.stderr  # another process, while the writer holds the file
    w.close(complete=False)
    with pytest.warns(IncompleteStoreWarning, match="incomplete: 8 rows"):
        s = open_store(path)
    with s:
        assert s.rows == 8 and not s.complete
        assert np.array_equal(s.features("conv")[:], rows_of(range(8)))
    with pytest.raises(IncompleteStoreError, match="allow_incomplete=False"):
        open_store(path, allow_incomplete=False)


def test_readers_follow_a_live_writer_in_another_process(tmp_path):
    path = tmp_path / "live.h5"
    code = textwrap.dedent(
        f"""
        import sys, numpy as np
        sys.path.insert(0, {os.path.join(ROOT, 'tests')!r})
        from test_store import rows_of, SHAPE
        from fastfeat.store import StoreWriter
        w = StoreWriter({str(path)!r}, {{"conv": (SHAPE, "float32")}}, 30, ["a"], {{}})
        for step in range(3):
            w.append({{"conv": rows_of(range(step * 10, step * 10 + 10))}}, np.zeros(10),
                     [str(i) for i in range(10)], np.arange(step * 10, step * 10 + 10))
            w.commit()
            print("committed", flush=True)
            sys.stdin.readline()
        w.close(complete=True)
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT
    ) as proc:
        _follow_live_writer(proc, path)


def _follow_live_writer(proc, path):
    try:
        assert proc.stdout.readline().strip() == "committed"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", IncompleteStoreWarning)
            a, b = open_store(path), open_store(path)  # several readers at once, writer still running
        assert a.rows == b.rows == 10
        assert np.array_equal(a.features("conv")[:], rows_of(range(10)))
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "committed"
        assert a.refresh() == 20 and b.rows == 10
        assert np.array_equal(a.features("conv")[[19, 0]], rows_of([19, 0]))
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "committed"
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 0
        a.refresh()
        assert a.complete and a.rows == 30
        a.close()
        b.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_resume_in_process_equals_clean(tmp_path):
    clean = write_store(tmp_path / "clean.h5", n=30, fail_every=5)
    path = tmp_path / "r.h5"
    w = StoreWriter(path, {"conv": (SHAPE, "float32"), "conv:avg": ((SHAPE[-1],), "float16")}, 30, ["a", "b"],
                    {"model": "toy", "layers": ["conv", "conv:avg"]})  # fmt: skip
    feats = rows_of([0, 2, 3])
    w.append({"conv": feats, "conv:avg": feats.mean(axis=(1, 2))}, [0, 0, 1], ["a/img_0.jpg", "a/img_2.jpg",
             "b/img_3.jpg"], [0, 2, 3])  # fmt: skip
    w.add_failures([1], ["x/bad_1.jpg"], ["truncated"])
    w.commit()
    w.append({"conv": feats, "conv:avg": feats.mean(axis=(1, 2))}, [9, 9, 9], ["junk"] * 3, [4, 5, 6])  # not committed
    w._file.flush()
    os.kill(os.getpid(), 0)  # (the writer is abandoned without close: like a crash, minus the kill)
    w._file.close()
    w._lock.release()
    r = StoreWriter(path, {}, 0, [], {}, mode="resume")
    assert r.rows == 3 and r.failed == 1 and list(r.processed_indices()) == [0, 1, 2, 3]
    assert r.meta["model"] == "toy"
    for s in range(4, 30, 7):
        pos = np.arange(s, min(s + 7, 30))
        bad = pos[pos % 5 == 1]
        ok = np.setdiff1d(pos, bad)
        f = rows_of(ok)
        r.append({"conv": f, "conv:avg": f.mean(axis=(1, 2))}, ok % 2, [f"{'ab'[k % 2]}/img_{k}.jpg" for k in ok], ok)
        r.add_failures(bad.tolist(), [f"x/bad_{k}.jpg" for k in bad], ["truncated"] * len(bad))
        r.commit()
    r.close(complete=True)
    with open_store(clean) as a, open_store(path) as b:
        for key in a.layers:
            assert np.array_equal(a.features(key)[:], b.features(key)[:])
        assert a.paths == b.paths and a.failures == b.failures
        assert np.array_equal(a.labels, b.labels) and np.array_equal(a.index, b.index)


def test_resume_refuses_damaged_or_foreign_files(tmp_path):
    path = write_store(tmp_path / "d.h5", n=20, complete=False)
    with open(path, "r+b") as f:  # destroy the superblock
        f.write(b"\0" * 64)
    with pytest.raises(UnrecoverableStoreError, match="Cannot resume"):
        StoreWriter(path, {}, 0, [], {}, mode="resume")
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(UnrecoverableStoreError, match="not a fastfeat store"):
        StoreWriter(foreign, {}, 0, [], {}, mode="resume")
    broken = write_store(tmp_path / "b.h5", n=20, complete=False)
    with h5py.File(broken, "r+") as f:  # a state that promises more than the string column holds
        state = f[layout.STATE][:]
        state[layout.S_PATH_BYTES] += 5
        f[layout.STATE][:] = state
    with pytest.raises(UnrecoverableStoreError, match="disagrees"):
        StoreWriter(broken, {}, 0, [], {}, mode="resume")
    assert not os.path.exists(str(broken) + ".lock")


def test_lock_refuses_a_second_writer_and_clears_when_stale(tmp_path):
    path = tmp_path / "l.h5"
    w = StoreWriter(path, {"conv": (SHAPE, "float32")}, 4, [], {})
    with pytest.raises(StoreLockedError, match="being written by another process"):
        StoreWriter(path, {}, 0, [], {}, mode="resume")
    w.close(False)
    with open(str(path) + ".lock", "w") as f:  # a dead writer's lock
        f.write(f"{os.uname().nodename} 999999999\n")
    StoreWriter(path, {}, 0, [], {}, mode="resume").close(False)
    with pytest.raises(FileExistsError, match="overwrite"):
        StoreWriter(path, {"conv": (SHAPE, "float32")}, 4, [], {})


def test_writer_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="Received: mode='append'"):
        StoreWriter(tmp_path / "x.h5", {}, 1, [], {}, mode="append")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        StoreWriter(tmp_path / "no" / "x.h5", {}, 1, [], {})
    w = StoreWriter(tmp_path / "y.h5", {"conv": (SHAPE, "float32")}, 4, [], {})
    with pytest.raises(ValueError, match="Received: len\\(labels\\)=1"):
        w.append({"conv": rows_of([0, 1])}, [0], ["a", "b"], [0, 1])
    with pytest.raises(ValueError, match="lacks"):
        w.append({}, [0], ["a"], [0])
    w.close(False)


def test_grows_past_capacity_and_stays_readable(tmp_path):
    path = tmp_path / "g.h5"
    w = StoreWriter(path, {"conv": (SHAPE, "float32")}, 3, ["a"], {}, chunk_rows=2)
    long = "d/" + "x" * 900
    for s in range(0, 12, 4):
        w.append({"conv": rows_of(range(s, s + 4))}, np.zeros(4), [f"{long}{i}" for i in range(s, s + 4)],
                 np.arange(s, s + 4))  # fmt: skip
        w.commit()
    w.add_failures(list(range(20, 30)), [long] * 10, ["r" * 500] * 10)
    w.close(complete=True)
    with open_store(path) as s:
        assert s.rows == 12 and s.paths[11] == f"{long}11" and len(s.failures) == 10
        v = s.features("conv")
        assert np.array_equal(v[:], rows_of(range(12))) and np.array_equal(v[[11, 0, 5]], rows_of([11, 0, 5]))
        assert s.is_memmapped("conv")


def test_float16_overflow_is_counted(tmp_path):
    w = StoreWriter(tmp_path / "o.h5", {"v": ((3,), "float16")}, 2, [], {})
    w.append({"v": np.array([[1e6, 1.0, -1e6], [1, 2, 3]], np.float32)}, [0, 0], ["a", "b"], [0, 1])
    assert w.overflow == 2
    w.close(complete=True)
    with open_store(tmp_path / "o.h5") as s:
        assert s.float16_overflow == 2


def test_disk_full_is_a_clean_error_and_nothing_claims_completeness(tmp_path):
    path = tmp_path / "full.h5"
    code = textwrap.dedent(
        f"""
        import errno, resource, signal, sys, numpy as np
        from fastfeat.store import StoreWriter
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        limit = int(sys.argv[1])
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        try:
            w = StoreWriter({str(path)!r}, {{"v": ((1000,), "float32")}}, int(sys.argv[2]), [], {{}},
                            compression=sys.argv[3] if sys.argv[3] != "none" else None, chunk_rows=10)
            try:
                for s in range(0, 400, 10):
                    w.append({{"v": np.random.default_rng(s).random((10, 1000), np.float32)}}, np.zeros(10),
                             ["p"] * 10, np.arange(s, s + 10))
                    w.commit()
            except BaseException:
                w.close(complete=False)  # as extraction does
                raise
            w.close(complete=True)
        except OSError as e:
            print("OSError", e.errno == errno.ENOSPC, str(e))
        """
    )
    for capacity, compression in ((400, "none"), (40, "gzip")):
        out = subprocess.run(
            [sys.executable, "-c", code, str(600_000), str(capacity), compression],
            capture_output=True, text=True, cwd=ROOT, timeout=60,
        )  # fmt: skip
        assert out.stdout.startswith("OSError True [Errno 28] Disk full while writing"), (out.stdout, out.stderr)
        assert "Traceback" not in out.stderr and "Exception ignored" not in out.stderr
        assert not os.path.exists(str(path) + ".creating") and not os.path.exists(str(path) + ".lock")
        if compression == "none":  # space is reserved up front: the store never exists
            assert not os.path.exists(path)
            continue
        try:  # a failed write may leave the file shorter than HDF5 recorded: it does not open then
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                with open_store(path) as s:
                    assert not s.complete
            assert any(issubclass(w.category, IncompleteStoreWarning) for w in caught)
        except OSError as e:
            assert "truncated file" in str(e)
        # with room again, --resume completes it: committed rows kept, the rest written again
        w = StoreWriter(path, {}, 0, [], {}, mode="resume")
        kept = w.rows
        for s in range(kept, 400, 10):
            w.append({"v": np.random.default_rng(s).random((10, 1000), np.float32)}, np.zeros(10), ["p"] * 10,
                     np.arange(s, s + 10))  # fmt: skip
            w.commit()
        w.close(complete=True)
        with open_store(path) as s:
            assert s.complete and s.rows == 400 and 0 < kept < 400
            expected = [np.random.default_rng(k).random((10, 1000), np.float32) for k in range(0, 400, 10)]
            expected = np.concatenate(expected)
            assert np.array_equal(s.features("v")[:], expected)
    assert errno.ENOSPC


def test_non_utf8_class_and_path_names_round_trip(tmp_path):
    names = [os.fsdecode(b"caf\xe9"), "plain", "ému"]
    w = StoreWriter(tmp_path / "u.h5", {"v": ((2,), "float32")}, 2, names, {"class_names": names})
    w.append({"v": np.ones((2, 2), np.float32)}, [0, 1], [os.fsdecode(b"caf\xe9/a.png"), "plain/b.jpg"], [0, 1])
    w.close(complete=True)
    with open_store(tmp_path / "u.h5") as s:
        assert s.class_names == names and s.meta["class_names"] == names
        assert [os.fsencode(p) for p in s.paths] == [b"caf\xe9/a.png", b"plain/b.jpg"]


def test_update_meta_switches_slots_and_survives_resume(tmp_path):
    path = tmp_path / "meta.h5"
    w = StoreWriter(path, {"v": ((2,), "float32")}, 4, [], {"model": "m", "precision": "auto"})
    w.update_meta(precision="float32")
    w.update_meta(note="x" * 1000)
    assert w.meta == {"model": "m", "precision": "float32", "note": "x" * 1000}
    with pytest.raises(ValueError, match="Received: .* bytes"):
        w.update_meta(big="y" * layout.META_BYTES)
    w.close(complete=False)
    r = StoreWriter(path, {}, 0, [], {}, mode="resume")
    assert r.meta["precision"] == "float32"
    r.close(complete=True)
    with open_store(path) as s:
        assert s.meta["note"] == "x" * 1000
    with h5py.File(path, "r") as f:
        assert json.loads(f.attrs["meta"]) == {"model": "m", "precision": "auto"}  # as created


def test_large_rows_are_written_in_place_and_read_back_by_hdf5(tmp_path):
    """Features whose chunks exceed HDF5's chunk cache go to the file with pwrite at the place
    HDF5 would write them (StoreWriter._direct_layouts): HDF5 itself reads them back, across
    uneven batches and a growth past the first capacity; small features stay on h5py."""
    from fastfeat.store.writer import StoreWriter

    path = str(tmp_path / "big.h5")
    rows = np.random.default_rng(0).integers(0, 256, (70, 96, 96, 3), dtype=np.uint8)  # 27 KB rows
    writer = StoreWriter(path, {"images": ((96, 96, 3), "uint8"), "small": ((3,), "int64")}, capacity=40,
                         class_names=["a"], meta={}, chunk_rows=40)  # fmt: skip
    assert set(writer._direct) == {"images"}
    for a, b in [(0, 7), (7, 39), (39, 40), (40, 70)]:  # the last one grows the store
        writer.append({"images": rows[a:b], "small": np.full((b - a, 3), a, np.int64)}, np.zeros(b - a),
                      [f"f{i}" for i in range(a, b)], np.arange(a, b))  # fmt: skip
        writer.commit()
    writer.close(complete=True)
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["features/images"][:70], rows)
        assert f["features/small"][69, 0] == 40
    store = open_store(path)
    np.testing.assert_array_equal(np.asarray(store.features("images")), rows)
    store.close()
