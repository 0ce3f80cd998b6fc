"""Attacks on the store: crafted and damaged chunks, chunk indexes, /state, meta_json, string
columns and random bit flips, read by every public reader in a child process.

The decoders are checked in-process, jitted and not, against h5py's own reading; everything
that reads a whole store runs in a child process (one per batch of attacks) under an address
space limit, so a crash (negative return code), a hang (timeout) or unbounded memory fails the
test instead of the test run. Every read must give a clean error or data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
import zlib

import h5py
import numpy as np
import pytest
from test_store import SHAPE, rows_of, write_store

from fastfeat.store import DamagedStoreError, layout, open_store, verify_store
from fastfeat.store import codecs
from fastfeat.store.views import map_features

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N, CHUNK_ROWS = 30, 4
ROWS = N - 4  # committed rows of the stores below (fail_every=9: catalog items 1, 10, 19, 28 fail)
COMPRESSIONS = ("none", "lzf", "gzip:4")
CHUNK_BYTES = CHUNK_ROWS * int(np.prod(SHAPE)) * 4


def lzf_bomb(size: int) -> bytes:
    """One literal byte, then maximal back references (each 3 bytes -> 264 bytes)."""
    return (bytes([0, 1]) + bytes([0xE0, 0xFF, 0x00]) * size)[:size]


def deflate_bomb(size: int) -> bytes:
    """A deflate stream of far more zeros than a chunk holds, padded to ``size`` bytes."""
    stream = zlib.compress(bytes(900 * size), 9)[:size]
    return stream + bytes(size - len(stream))


def _reference_chunk(tmp, filters: str):
    """(stored bytes, filter ids, decoded bytes) of one chunk written by h5py itself."""
    data = rows_of(range(CHUNK_ROWS))
    path = os.path.join(tmp, f"ref_{filters}.h5")
    kwargs = {"gzip": {"compression": "gzip"}, "lzf": {"compression": "lzf"}}[filters.split("+")[-1]]
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("d", data=data, chunks=data.shape, shuffle=filters.startswith("shuffle"), **kwargs)
        mask, raw = ds.id.read_direct_chunk((0,) * data.ndim)
        fids = codecs.filter_pipeline(ds)
    assert mask == 0
    return raw, fids, data.tobytes()


# -- the decoders, jitted and not --------------------------------------------------------------


@pytest.mark.parametrize("jit", [True, False])
def test_lzf_kernel_never_writes_past_its_output(tmp_path, jit):
    kernel = codecs._kernel() if jit else codecs._lzf_decompress_py
    raw, _, expected = _reference_chunk(tmp_path, "lzf")
    guard = np.full(len(expected) + 64, 0xA5, np.uint8)
    dst = guard[32:-32]
    assert kernel(np.frombuffer(raw, np.uint8), dst) == len(expected) and dst.tobytes() == expected
    for src, nbytes in ((lzf_bomb(3000), 16), (lzf_bomb(3000), len(expected)), (raw, len(expected) - 1)):
        guard[:] = 0xA5
        out = guard[32 : 32 + nbytes]
        assert kernel(np.frombuffer(src, np.uint8), out) == codecs.LZF_TOO_LONG
        assert np.all(guard[:32] == 0xA5) and np.all(guard[32 + nbytes :] == 0xA5)
    # a back reference before the start of the output
    backwards = np.frombuffer(bytes([0, 7, 0x20, 0x05]), np.uint8)
    assert kernel(backwards, np.empty(16, np.uint8)) == codecs.LZF_BAD_REFERENCE
    # every cut of a valid stream: an error or a short count, never a read past the input
    body = np.frombuffer(raw, np.uint8)
    for cut in range(0, len(raw), 37):
        got = kernel(body[:cut], np.empty(len(expected), np.uint8))
        assert got == codecs.LZF_TRUNCATED or 0 <= got < len(expected)
    assert codecs._kernel().targetoptions["nogil"]  # chunks decode in parallel threads


@pytest.mark.parametrize("jit", [True, False])
@pytest.mark.parametrize("filters", ["lzf", "shuffle+lzf", "gzip", "shuffle+gzip"])
def test_decoders_on_random_truncated_and_bomb_chunks(tmp_path, filters, jit):
    raw, fids, expected = _reference_chunk(tmp_path, filters)
    nbytes = len(expected)
    assert codecs.decode_chunk(raw, fids, 0, nbytes, 4, jit=jit).tobytes() == expected
    rng = np.random.default_rng(11)
    bomb = deflate_bomb(len(raw)) if "gzip" in filters else lzf_bomb(len(raw))
    attacks = [bomb, raw[: len(raw) // 2], raw[:-1], raw[:1], b"", bomb[:100]]
    attacks += [rng.integers(0, 256, int(n), dtype=np.uint8).tobytes() for n in rng.integers(1, 2 * len(raw), 40)]
    # random bytes after a valid start (passes a header check, then damage)
    attacks += [raw[:20] + rng.integers(0, 256, len(raw) - 20, dtype=np.uint8).tobytes() for _ in range(20)]
    for data in attacks:
        try:
            out = codecs.decode_chunk(data, fids, 0, nbytes, 4, jit=jit)
        except DamagedStoreError as e:
            assert e.reason and e.path is None
        else:
            assert out.size == nbytes  # random data may decode: then exactly the chunk's size
    with pytest.raises(DamagedStoreError, match="more"):
        codecs.decode_chunk(bomb, fids, 0, nbytes, 4, jit=jit)


def test_shuffle_and_size_checks():
    data = np.arange(48, dtype=np.float32).tobytes()
    shuffled = np.frombuffer(data, np.uint8).reshape(-1, 4).T.tobytes()
    fid = [codecs.FILTER_SHUFFLE]
    assert codecs.decode_chunk(shuffled, fid, 0, len(data), 4).tobytes() == data
    for bad in (shuffled[:-1], shuffled + b"x", b""):
        with pytest.raises(DamagedStoreError, match="bytes, expected"):
            codecs.decode_chunk(bad, fid, 0, len(data), 4)
    with pytest.raises(DamagedStoreError, match="declares"):  # more than 4 stored bytes can decode to
        codecs.decode_chunk(b"abcd", [codecs.FILTER_LZF], 0, 10**8, 4)
    with pytest.raises(DamagedStoreError, match="filter 307"):
        codecs.decode_chunk(b"abcd", [307], 0, 4, 4)
    with pytest.raises(ValueError, match="Received: nbytes=-1"):
        codecs.lzf_decompress(b"", -1)


@pytest.mark.parametrize("kind", ["gzip", "lzf"])
def test_a_bomb_never_allocates_more_than_the_chunk(kind):
    nbytes = 1 << 20
    bomb = zlib.compress(bytes(200 * nbytes), 9) if kind == "gzip" else lzf_bomb(nbytes // 40)
    fid = [codecs.FILTER_DEFLATE if kind == "gzip" else codecs.FILTER_LZF]
    codecs._kernel()(np.zeros(2, np.uint8), np.empty(1, np.uint8))  # compile outside the measurement
    tracemalloc.start()
    try:
        with pytest.raises(DamagedStoreError, match="more"):
            codecs.decode_chunk(bomb, fid, 0, nbytes, 4)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2.5 * nbytes, peak


def test_h5py_filter_failure_is_a_damaged_store_error(tmp_path):
    """HDF5 reads layouts the views do not decode (fletcher32 here): its own read failure
    becomes the same error, naming the file, the dataset and the chunk's rows."""
    path = str(tmp_path / "f.h5")
    data = rows_of(range(12))
    with h5py.File(path, "w") as f:
        f.create_dataset("fl", data=data, chunks=(4,) + SHAPE, fletcher32=True)
        f.create_dataset("lzf_odd", data=data, chunks=(4, 2, 2, 6), compression="lzf")
        infos = []
        f["fl"].id.chunk_iter(lambda i: infos.append(i))
    off = infos[1].byte_offset
    with open(path, "r+b") as fh:
        fh.seek(off + 10)
        fh.write(b"\x55\xaa")
    with h5py.File(path, "r") as f:
        v = map_features(path, f["fl"], 12)
        assert np.array_equal(v[:4], data[:4]) and np.array_equal(v[[9, 0]], data[[9, 0]])
        for item in (slice(None), 5, [1, 6], slice(4, 8)):
            with pytest.raises(DamagedStoreError, match=r"'fl', rows 4\.\.7: HDF5 cannot read it") as e:
                v[item]
            assert e.value.path == path and e.value.rows == (4, 8)
        # compressed in a layout fastfeat does not write: refused (HDF5's inflation is unbounded)
        with pytest.raises(DamagedStoreError, match="will not decompress through HDF5"):
            map_features(path, f["lzf_odd"], 12)


# -- whole stores, attacked, read in a child process ------------------------------------------


def _chunks(path, name):
    with h5py.File(path, "r") as f:
        infos = []
        f[name].id.chunk_iter(lambda i: infos.append((int(i.chunk_offset[0]), int(i.byte_offset), int(i.size))))
    return sorted(infos)


def _offset(path, name):
    with h5py.File(path, "r") as f:
        return f[name].id.get_offset()


def _read(path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _patch(path, offset, data: bytes):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def _state_patch(path, slot, value):
    _patch(path, _offset(path, layout.STATE) + 8 * slot, int(value).to_bytes(8, "little", signed=True))


def _index_entry(path, name, i):
    """File offsets of chunk ``i``'s (size, address) in the v1 B-tree of ``name``."""
    _, address, size = _chunks(path, name)[i]
    raw = _read(path)
    pos = raw.find(address.to_bytes(8, "little"))
    assert pos > 0 and raw.find(address.to_bytes(8, "little"), pos + 1) < 0
    ndim = len(SHAPE) + 1
    size_pos = pos - 8 * (ndim + 1) - 8  # key: size u32, mask u32, offsets u64 x (ndim + 1); then the address
    assert int.from_bytes(raw[size_pos : size_pos + 4], "little") == size
    return size_pos, pos


def _meta(path, payload: bytes):
    _patch(path, _offset(path, layout.META_JSON), payload)
    _state_patch(path, layout.S_META_LEN, len(payload))


def _replace_dataset(path, name, **kwargs):
    with h5py.File(path, "r+") as f:
        data = f[name][()]
        del f[name]
        f.create_dataset(name, data=kwargs.pop("data", data), **kwargs)


def craft(clean, out, attack, compression):
    """Write ``clean`` with ``attack`` applied to ``out``; returns whether it must be reported
    as damaged (False: the attack changes data the format cannot check, e.g. raw floats)."""
    with open(clean, "rb") as src, open(out, "wb") as dst:
        dst.write(src.read())
    conv = "features/conv"
    compressed = compression != "none"
    if attack in ("bomb", "random", "zero_tail"):
        _, off, size = _chunks(out, conv)[2]
        payload = {
            "bomb": (deflate_bomb if compression.startswith("gzip") else lzf_bomb)(size),
            "random": np.random.default_rng(5).integers(0, 256, size, dtype=np.uint8).tobytes(),
            "zero_tail": _read(out)[off : off + size // 2] + bytes(size - size // 2),
        }[attack]
        _patch(out, off, payload)
        return compressed
    if attack == "truncated_file":
        last = max(off + size for _, off, size in _chunks(out, conv))
        os.truncate(out, last - 7)
        return True
    if attack in ("chunk_past_eof", "chunk_overlap", "chunk_size_huge"):
        size_pos, addr_pos = _index_entry(out, conv, 3)
        if attack == "chunk_size_huge":
            _patch(out, size_pos, (2**31).to_bytes(4, "little"))
        else:
            target = os.path.getsize(out) + 4096 if attack == "chunk_past_eof" else _chunks(out, conv)[2][1] + 8
            _patch(out, addr_pos, target.to_bytes(8, "little"))
        return True
    if attack.startswith("state_"):
        slot, value = {
            "state_rows_more": (layout.S_ROWS, N + 10), "state_rows_huge": (layout.S_ROWS, 2**62),
            "state_rows_negative": (layout.S_ROWS, -5), "state_failed_more": (layout.S_FAILED, 10**6),
            "state_path_bytes": (layout.S_PATH_BYTES, 10**12), "state_meta_slot": (layout.S_META_SLOT, 7),
            "state_meta_len_huge": (layout.S_META_LEN, 2**40),
        }[attack]  # fmt: skip
        _state_patch(out, slot, value)
        return True
    if attack.startswith("meta_") and attack != "meta_json_huge":
        _meta(out, {"meta_invalid_json": b"{not json", "meta_invalid_utf8": b'{"a": "\xff\xfe"}',
                    "meta_nested": b"[" * 60000, "meta_not_object": b"[1, 2]"}[attack])  # fmt: skip
        return True
    if attack == "meta_json_huge":  # a huge, compressed run description dataset
        _replace_dataset(out, layout.META_JSON, data=np.zeros((2, 4 * layout.META_BYTES), np.uint8),
                         compression="gzip", chunks=(2, 1 << 17))  # fmt: skip
        return True
    if attack == "labels_compressed":
        _replace_dataset(out, layout.LABELS, compression="gzip", chunks=(8,))
        return True
    if attack == "labels_out_of_range":
        _, off, _ = _chunks(out, layout.LABELS)[0]
        _patch(out, off + 8 * 3, (99).to_bytes(8, "little", signed=True))
        return True
    if attack in ("paths_ends_decreasing", "paths_ends_huge"):
        _, off, _ = _chunks(out, "paths/ends")[0]
        row, value = (5, 0) if attack == "paths_ends_decreasing" else (ROWS - 1, 10**15)
        _patch(out, off + 8 * row, value.to_bytes(8, "little", signed=True))
        return True
    if attack == "names_invalid_utf8":  # folder names need not be UTF-8: read back, not an error
        _replace_dataset(out, layout.CLASS_NAMES, data=np.array([b"\xff\xfe", b"b"], dtype=object),
                         dtype=h5py.vlen_dtype(bytes))  # fmt: skip
        _, off, _ = _chunks(out, "paths/bytes")[0]
        _patch(out, off, b"\xff")
        return False
    if attack == "features_foreign_filter":
        _replace_dataset(out, "features/conv:avg", compression="gzip", fletcher32=True, chunks=(4, SHAPE[-1]))
        return True
    if attack.startswith("flip"):  # even: anywhere in the file; odd: in a used (non-zero) byte
        k = int(attack[4:])
        rng = np.random.default_rng(k)
        raw = np.frombuffer(_read(out), np.uint8)
        used = np.flatnonzero(raw) if k % 2 else np.arange(raw.size)
        offset, bit = int(used[rng.integers(0, used.size)]), int(rng.integers(0, 8))
        _patch(out, offset, bytes([int(raw[offset]) ^ (1 << bit)]))
        return None  # damaged or not: the format cannot tell every flip (raw floats)
    raise AssertionError(attack)


ATTACKS = [
    "bomb", "random", "zero_tail", "truncated_file", "chunk_past_eof", "chunk_overlap", "chunk_size_huge",
    "state_rows_more", "state_rows_huge", "state_rows_negative", "state_failed_more", "state_path_bytes",
    "state_meta_slot", "state_meta_len_huge", "meta_invalid_json", "meta_invalid_utf8", "meta_nested",
    "meta_not_object", "meta_json_huge", "labels_compressed", "labels_out_of_range", "paths_ends_decreasing",
    "paths_ends_huge", "names_invalid_utf8", "features_foreign_filter",
]  # fmt: skip
FLIPS = 30

CHILD = r"""
import contextlib, io, json, os, resource, sys, traceback
limit = int(sys.argv[2])
if limit:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
import numpy as np
from fastfeat.cli import main
from fastfeat.store import open_store, merge_stores
from fastfeat.store.adapters import iterate_batches

with open(sys.argv[1]) as fh:
    jobs = json.load(fh)
use_tf = sys.argv[3] == "tf"

def record(**r):
    print(json.dumps(r), flush=True)

def attempt(name, op, fn):
    try:
        value = fn()
    except Exception as e:  # what the test checks: the kind of exception, never a crash
        record(store=name, op=op, result="error", type=type(e).__name__, msg=str(e)[:3000],
               where=traceback.extract_tb(e.__traceback__)[-1].filename)
    else:
        record(store=name, op=op, result="ok", value=value)

def same(a, b):
    return bool(np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True))

for job in jobs:
    name, path, clean = job["name"], job["path"], job["clean"]
    ref = open_store(clean)
    if use_tf:
        def epoch():
            with open_store(path) as s:
                return sum(int(len(y)) for _, y in s.to_dataset("conv", batch_size=8, shuffle=True, seed=1))
        attempt(name, "to_dataset", epoch)
        continue
    def layer(key):
        with open_store(path) as s:
            return same(s.features(key)[:], ref.features(key)[:])
    for key in ref.layers:
        attempt(name, "features:" + key, lambda key=key: layer(key))
    def loaded():
        with open_store(path) as s:
            X, y = s.arrays("conv", load=True)
            return same(X, ref.arrays("conv", load=True)[0]) and same(y, ref.labels)
    attempt(name, "arrays", loaded)
    def columns():
        with open_store(path) as s:
            return [s.paths == ref.paths, s.class_names == ref.class_names, s.failures == ref.failures,
                    same(s.labels, ref.labels), s.meta == ref.meta]
    attempt(name, "columns", columns)
    def batches():
        with open_store(path) as s:
            one_epoch, _, _ = iterate_batches(s, "conv", batch_size=8, seed=1)
            return sum(len(y) for _, y in one_epoch())
    attempt(name, "iterate_batches", batches)
    out = path + ".merged.h5"
    attempt(name, "merge", lambda: merge_stores([path, clean], out, overwrite=True)["rows"])
    for op, argv in (("info", ["info", path]), ("verify", ["info", "--verify", path])):
        def command(argv=argv):
            with contextlib.redirect_stdout(io.StringIO()) as o, contextlib.redirect_stderr(io.StringIO()) as e:
                code = main(argv)
            return [code, o.getvalue()[-300:], e.getvalue()[-300:]]
        attempt(name, op, command)
# VmHWM is this process's own peak; ru_maxrss would also count the parent's RSS at fork/vfork time
# (Linux folds the old mm's high-water mark into it at exec), i.e. the size of the pytest process
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
record(store="", op="maxrss_kb", result="ok", value=peak_kb)
"""


def clean_error(r) -> bool:
    """A reader's error on a damaged store: DamagedStoreError, or HDF5 refusing to open the file."""
    return r["type"] == "DamagedStoreError" or (r["type"] == "OSError" and "not a readable HDF5 file" in r["msg"])


def _run_child(jobs, tmp_path, tf=False, limit=3 << 30, timeout=240):
    spec = tmp_path / ("jobs_tf.json" if tf else "jobs.json")
    spec.write_text(json.dumps(jobs))
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(spec), str(0 if tf else limit), "tf" if tf else "-"],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT,
    )  # fmt: skip
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    last = results[-1] if results else None
    assert proc.returncode == 0, (proc.returncode, last, proc.stderr[-3000:])
    return results


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    d = tmp_path_factory.mktemp("attack")
    jobs, expect = [], {}
    for compression in COMPRESSIONS:
        clean = str(write_store(d / f"clean_{compression}.h5", n=N, compression=None if compression == "none"
                                else compression, chunk_rows=CHUNK_ROWS, fail_every=9))  # fmt: skip
        for attack in ATTACKS + [f"flip{k}" for k in range(FLIPS)]:
            name = f"{compression}/{attack}"
            out = str(d / f"{compression}_{attack}.h5")
            expect[name] = craft(clean, out, attack, compression)
            jobs.append({"name": name, "path": out, "clean": clean})
    return d, jobs, expect


def test_attacked_stores_give_clean_errors_or_data(attacked):
    d, jobs, expect = attacked
    results = _run_child(jobs, d)
    assert results[-1]["op"] == "maxrss_kb" and results[-1]["value"] < 1_500_000, results[-1]
    by_store: dict[str, dict[str, dict]] = {}
    for r in results[:-1]:
        by_store.setdefault(r["store"], {})[r["op"]] = r
    assert len(by_store) == len(jobs)
    for job in jobs:
        name, ops = job["name"], by_store[job["name"]]
        for op, r in ops.items():
            if r["result"] == "error":
                assert clean_error(r), (name, op, r)
                if r["type"] == "DamagedStoreError":
                    assert job["path"] in r["msg"], (name, op, r)
        info_code = ops["info"]["value"][0]
        verify_code = ops["verify"]["value"][0]
        assert info_code in (0, 1, 2) and verify_code in (0, 1), (name, ops["info"], ops["verify"])
        damaged = expect[name]
        if damaged is True:
            assert verify_code == 1, (name, ops["verify"])
        if damaged is False:
            assert verify_code == 0, (name, ops["verify"])
            assert all(r["result"] == "ok" for op, r in ops.items() if op != "merge"), (name, ops)
        if verify_code == 0:  # what verify passes, every reader reads
            assert all(r["result"] == "ok" for r in ops.values()), (name, ops)
    # the crafted chunk: named by file, layer and rows, from every reader of the features
    for compression in ("lzf", "gzip:4"):
        for attack in ("bomb", "random", "zero_tail"):
            ops = by_store[f"{compression}/{attack}"]
            for op in ("features:conv", "arrays", "iterate_batches", "merge"):
                assert ops[op]["type"] == "DamagedStoreError", (attack, op, ops[op])
                assert "features/conv" in ops[op]["msg"] and "rows 8..11" in ops[op]["msg"], ops[op]
            assert ops["features:conv:avg"]["value"] is True  # the other layer reads correctly
            assert "features/conv rows 8..11" in ops["verify"]["value"][1]
    for compression in COMPRESSIONS:
        ops = by_store[f"{compression}/state_rows_more"]
        assert "claims 40" in ops["features:conv"]["msg"] and ops["verify"]["value"][0] == 1
        assert "not valid JSON" in by_store[f"{compression}/meta_nested"]["arrays"]["msg"]
        assert "labels outside" in by_store[f"{compression}/labels_out_of_range"]["merge"]["msg"]
        ops = by_store[f"{compression}/names_invalid_utf8"]
        assert ops["columns"]["value"] == [False, False, True, True, True]  # paths and names differ, read


def test_to_dataset_on_attacked_stores(attacked, tmp_path):
    d, jobs, expect = attacked
    chosen = [j for j in jobs if j["name"].split("/")[1] in ("bomb", "random", "chunk_past_eof", "state_rows_more")]
    chosen += [j for j in jobs if j["name"].endswith(("flip1", "flip2"))]
    results = _run_child(chosen, tmp_path, tf=True, timeout=300)
    assert len(results) == len(chosen) + 1 and results[-1]["value"] < 3_000_000
    for r in results[:-1]:
        name = r["store"]
        if r["result"] == "error":  # tf.data hands a generator's exception on as its own, message kept
            assert clean_error(r) or "DamagedStoreError: damaged store" in r["msg"], r
        elif expect[name]:
            raise AssertionError(f"{name}: to_dataset read a damaged store without an error: {r}")
        else:
            assert r["value"] == ROWS
        if name.endswith(("/bomb", "/random")) and not name.startswith("none/"):
            assert "features/conv" in r["msg"] and "rows 8..11" in r["msg"], r


def test_verify_store_reports_and_clean_stores_pass(tmp_path):
    for compression in COMPRESSIONS:
        clean = write_store(tmp_path / f"{compression}.h5", n=N, chunk_rows=CHUNK_ROWS,
                            compression=None if compression == "none" else compression)  # fmt: skip
        report = verify_store(clean)
        assert report.ok and report.rows == N and report.chunks > 0, report.format()
        assert "no damage" in report.format()
        if compression != "none":
            bad = str(tmp_path / f"{compression}_bomb.h5")
            craft(str(clean), bad, "bomb", compression)
            report = verify_store(bad)
            assert not report.ok and [(d.dataset, d.rows) for d in report.damage] == [("features/conv", (8, 12))]
            assert report.to_dict()["damage"][0]["rows"] == (8, 12)
            with pytest.raises(DamagedStoreError) as e, open_store(bad) as s:
                s.features("conv")[[0, 9]]
            assert (e.value.path, e.value.dataset, e.value.rows) == (bad, "features/conv", (8, 12))
    with pytest.raises(FileNotFoundError, match="Received: path="):
        verify_store(tmp_path / "missing.h5")
    with pytest.raises(ValueError, match="Received: workers=0"):
        verify_store(clean, workers=0)


def test_info_verify_command(tmp_path, capsys):
    from fastfeat.cli import main

    clean = str(write_store(tmp_path / "c.h5", n=N, chunk_rows=CHUNK_ROWS, compression="lzf"))
    assert main(["info", "--verify", clean]) == 0
    out = capsys.readouterr().out
    assert "rows:         30" in out and "verified, no damage" in out
    bad = str(tmp_path / "b.h5")
    craft(clean, bad, "bomb", "lzf")
    assert main(["info", "--verify", bad]) == 1
    assert "DAMAGED (1 problem" in capsys.readouterr().out
    assert main(["info", "--verify", "--json", bad]) == 1
    report = json.loads(capsys.readouterr().out)["verify"]
    assert not report["ok"] and report["damage"][0]["dataset"] == "features/conv"
    assert report["damage"][0]["rows"] == [8, 12]
    unopenable = str(tmp_path / "s.h5")
    craft(clean, unopenable, "state_rows_more", "lzf")
    assert main(["info", "--verify", unopenable]) == 1
    captured = capsys.readouterr()
    assert "cannot describe" in captured.err and "/state claims 40" in captured.out
    assert main(["info", unopenable]) == 2  # plain info: the clean error, exit status 2
    assert "damaged store" in capsys.readouterr().err


def test_views_share_one_reshape(tmp_path):
    from fastfeat.store.views import H5Rows, RowSubset

    path = write_store(tmp_path / "r.h5", n=12, chunk_rows=CHUNK_ROWS, compression="lzf")
    data = rows_of(range(12))
    with open_store(path) as s, h5py.File(path, "r", locking=False) as f:
        chunked = s.features("conv")
        views = [chunked, RowSubset(chunked, np.arange(12)), H5Rows(f["features/conv"], 12)]
        width = int(np.prod(SHAPE))
        for v in views:
            for shape in ((12, -1), (-1, width), ((12, width),)):
                flat = v.reshape(*shape)
                assert flat.shape == (12, width) and np.array_equal(flat[[3, 1]], data[[3, 1]].reshape(2, -1))
            with pytest.raises(ValueError, match=r"only reshape\(len\(a\), -1\).*Received: shape=\(6, -1\)"):
                v.reshape(6, -1)
            assert not hasattr(v, "is_memmap")


@pytest.mark.parametrize("attack", ["labels_compressed", "features_foreign_filter", "meta_nested"])
def test_resume_refuses_crafted_layouts(tmp_path, attack):
    from fastfeat.store import StoreWriter, UnrecoverableStoreError

    clean = str(write_store(tmp_path / "c.h5", n=N, chunk_rows=CHUNK_ROWS, compression="gzip:4", complete=False))
    bad = str(tmp_path / "b.h5")
    craft(clean, bad, attack, "gzip:4")
    before = _read(bad)
    with pytest.raises(UnrecoverableStoreError, match="Cannot resume"):
        StoreWriter(bad, {"conv": (SHAPE, "float32"), "conv:avg": ((SHAPE[-1],), "float16")}, N, ["a", "b"], {},
                    mode="resume", compression="gzip:4")  # fmt: skip
    assert _read(bad) == before  # examined read-only


def test_damaged_store_error_names_the_place_and_pickles():
    import pickle

    e = DamagedStoreError("bad bytes", "/x/s.h5", "features/conv", (8, 12))
    assert str(e) == "damaged store '/x/s.h5', dataset 'features/conv', rows 8..11: bad bytes"
    assert str(DamagedStoreError("bad", "/x/s.h5", "labels", (3, 4))).endswith("'labels', row 3: bad")
    assert str(DamagedStoreError("bad")) == "damaged store: bad" and isinstance(e, ValueError)
    back = pickle.loads(pickle.dumps(e))
    assert (str(back), back.path, back.dataset, back.rows, back.reason) == (str(e), e.path, e.dataset, e.rows, e.reason)


def test_info_verify_on_a_sharded_folder(tmp_path, capsys):
    from fastfeat.catalog import part_bounds
    from fastfeat.cli import main
    from fastfeat.sharding.manifest import new_manifest, write_manifest
    from fastfeat.store.sharded import shard_name

    out = tmp_path / "out"
    out.mkdir()
    bounds = part_bounds(2 * N, 2)
    names = [shard_name(k, 2) for k in range(2)]
    manifest = new_manifest({"layers": ["conv"]}, {"size": 2 * N, "sha256": "", "class_names": ["a", "b"]},
                            bounds, names, None)  # fmt: skip
    for k, name in enumerate(names):
        write_store(out / name, n=N, chunk_rows=CHUNK_ROWS, compression="lzf")
        manifest["shard_list"][k].update(status="complete")
    write_manifest(str(out), manifest)
    assert main(["info", "--verify", str(out)]) == 0
    assert capsys.readouterr().out.count("verified, no damage") == 2
    shard = str(out / names[1])
    craft(shard, shard + ".bomb", "bomb", "lzf")
    os.replace(shard + ".bomb", shard)
    assert main(["info", "--verify", "--json", str(out)]) == 1
    found = json.loads(capsys.readouterr().out)["verify"]
    assert [r["ok"] for r in found] == [True, False] and found[1]["damage"][0]["rows"] == [8, 12]
