"""Feature store benchmark: opening, sequential and shuffled reads, compression.

One run, same bytes: a multi-GB store of ReLU-like feature maps (about 60% exact zeros, like
conv activations) written by ``StoreWriter``, and the same array saved as ``.npy``. Compared:

* opening the store (``open_store`` + ``features``): seconds and extra RSS;
* sequential batches: FeatureStore memmap vs ``np.load(mmap_mode="r")`` (and h5py slicing);
* shuffled batches (sorted indices within a batch): same three;
* compressed stores (lzf, gzip:1, gzip:4) on a subset: ratio, write rate, read rate with the
  parallel chunk decoder vs h5py's own reads.

Both files are read warm (from the page cache, after one untimed pass), so the comparison is of
the read paths, not of the disk. Files are deleted at the end.

Usage: ``python -m benchmarks.bench_store [--rows 5400] [--dir /tmp]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np

from benchmarks.common import print_table, timeit, write_json

ROW_SHAPE = (14, 14, 512)  # e.g. VGG block5 at 224, or block4 at 112: 401 KB per float32 row
BATCH = 64


def relu_rows(n: int, seed: int = 0, pool: int = 256) -> np.ndarray:
    """``n`` ReLU-like rows drawn from a pool of ``pool`` distinct ones (cheap to generate).

    Spatially smooth pre-activations (a blurred normal field) shifted so ~60% clip to exact zeros.
    """
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(pool,) + ROW_SHAPE).astype(np.float32)
    smooth = (base + np.roll(base, 1, 1) + np.roll(base, 1, 2) + np.roll(base, (1, 1), (1, 2))) / 2
    rows = np.maximum(smooth - 0.25, 0).astype(np.float32)
    return rows[np.arange(n) % pool]


def real_rows(n: int = 128) -> np.ndarray:
    """Real ReLU activations: a random-init VGG16 cut at block4_conv2, on ``n`` photo-like JPEGs at
    112x112 (14x14x512, the same row shape). Imports TensorFlow."""
    import glob

    import cv2
    import keras

    from benchmarks.common import make_jpeg_dataset

    root = make_jpeg_dataset(os.path.join(tempfile.gettempdir(), "fastfeat-bench-jpegs"), n=n, classes=2)
    paths = sorted(glob.glob(os.path.join(root, "*", "*.jpg")))[:n]
    images = np.stack([cv2.resize(cv2.imread(p)[..., ::-1], (112, 112)) for p in paths]).astype(np.float32)
    keras.utils.set_random_seed(0)
    base = keras.applications.VGG16(weights=None, include_top=False, input_shape=(112, 112, 3))
    model = keras.Model(base.input, base.get_layer("block4_conv2").output)
    out = model.predict(keras.applications.vgg16.preprocess_input(images), batch_size=16, verbose=0)
    return np.asarray(out, np.float32)


def write_store(path, n, pool, compression=None, batch=32) -> float:
    from fastfeat.store import StoreWriter

    t0 = time.perf_counter()
    w = StoreWriter(path, {"f": (ROW_SHAPE, "float32")}, n, ["a", "b"], {"model": "bench"},
                    mode="overwrite", compression=compression)  # fmt: skip
    for s in range(0, n, batch):
        idx = np.arange(s, min(s + batch, n))
        w.append({"f": pool[idx % len(pool)]}, idx % 2, [f"img_{i}.jpg" for i in idx], idx)
        w.commit()
    w.close(complete=True)
    return time.perf_counter() - t0


def rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def sequential(arr, n, buf):
    def run():
        for a in range(0, n, BATCH):
            b = min(a + BATCH, n)
            np.copyto(buf[: b - a], arr[a:b])
        return n

    return run


def shuffled(arr, n, buf, seed=0):
    order = np.random.default_rng(seed).permutation(n)
    batches = [np.sort(order[i : i + BATCH]) for i in range(0, n, BATCH)]

    def run():
        for idx in batches:
            np.copyto(buf[: len(idx)], arr[idx])
        return n

    return run


def interleaved(readers: dict, repeats: int = 5) -> dict:
    """Median items/s of each reader, timed in turns (one warm-up pass each first)."""
    for run in readers.values():
        run()
    rates = {who: [] for who in readers}
    for _ in range(repeats):
        for who, run in readers.items():
            t0 = time.perf_counter()
            count = run()
            rates[who].append(count / (time.perf_counter() - t0))
    return {who: float(np.median(r)) for who, r in rates.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=5400, help="rows of the big store (401 KB each)")
    parser.add_argument("--compressed-rows", type=int, default=640, help="rows of each compressed store")
    parser.add_argument("--dir", default=None, help="where to write the temporary files")
    parser.add_argument(
        "--real", action="store_true",
        help="compress real activations (random-init VGG16 block4_conv2 on 128 JPEGs; imports TensorFlow)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    import h5py

    from fastfeat.store import open_store

    work = tempfile.mkdtemp(prefix="fastfeat-bench-store-", dir=args.dir)
    n = args.rows
    row_bytes = int(np.prod(ROW_SHAPE)) * 4
    gb = n * row_bytes / 1e9
    results: dict = {"rows": n, "row_shape": ROW_SHAPE, "gigabytes": round(gb, 3)}
    try:
        store_path = os.path.join(work, "big.h5")
        npy_path = os.path.join(work, "big.npy")
        print(f"writing a {gb:.2f} GB store and the same .npy in {work} ...", flush=True)
        pool = relu_rows(256)
        t_write = write_store(store_path, n, pool)
        out = np.lib.format.open_memmap(npy_path, mode="w+", dtype=np.float32, shape=(n,) + ROW_SHAPE)
        for s in range(0, n, 256):
            out[s : s + 256] = pool[: min(256, n - s)]
        out.flush()
        del out
        results["write_store_gb_per_s"] = gb / t_write

        # -- opening: time and memory ----------------------------------------------------------
        rss0 = rss()
        t0 = time.perf_counter()
        store = open_store(store_path)
        view = store.features("f")
        labels = store.labels
        t_open = time.perf_counter() - t0
        extra = (rss() - rss0) / 2**20
        results.update(open_seconds=t_open, open_extra_rss_mb=extra, memmap=isinstance(view, np.memmap))
        npy = np.load(npy_path, mmap_mode="r")
        assert np.array_equal(view[[0, n - 1]], npy[[0, n - 1]]) and len(labels) == n
        ds = h5py.File(store_path, "r", locking=False)["features/f"]

        buf = np.empty((BATCH,) + ROW_SHAPE, np.float32)
        rows = []
        for name, make in (("sequential", sequential), ("shuffled", shuffled)):
            # round-robin repeats: a shared machine's load drifts, so no reader gets a quiet spell alone
            readers = {"np.load mmap": make(npy, n, buf), "FeatureStore": make(view, n, buf)}
            h5_rows = min(n, 1024 if name == "sequential" else 192)
            readers["h5py dataset"] = make(ds, h5_rows, buf)
            rates = interleaved(readers, repeats=5)
            base = rates["np.load mmap"] * row_bytes / 1e9
            for who, per_s in rates.items():
                rate = per_s * row_bytes / 1e9
                rows.append({"read": name, "reader": who, "GB/s": rate, "rows/s": per_s, "vs npy": rate / base})
        results["reads"] = rows
        store.close()

        # -- compression ------------------------------------------------------------------------
        m = min(args.compressed_rows, n)
        if args.real:
            pool = real_rows(128)
        results["compressed_data"] = "random-init VGG16 block4_conv2" if args.real else "synthetic ReLU-like"
        results["compressed_zeros"] = float(np.mean(pool == 0))
        comp_rows = []
        for spec in ("none", "lzf", "gzip:1", "gzip:4"):
            path = os.path.join(work, f"c_{spec.replace(':', '')}.h5")
            t_w = write_store(path, m, pool, None if spec == "none" else spec)
            with open_store(path) as s:
                info = s.info()["layers"][0]
                v = s.features("f")
                cbuf = np.empty((BATCH,) + ROW_SHAPE, np.float32)
                seq = timeit(sequential(v, m, cbuf), repeats=3, warmup=1)["median_per_s"]
                shuf = timeit(shuffled(v, m, cbuf), repeats=3, warmup=1)["median_per_s"]
                h5 = timeit(sequential(s.dataset("f"), m, cbuf), repeats=1, warmup=1)["median_per_s"]
            comp_rows.append({
                "compression": spec, "ratio": info["compression_ratio"] or 1.0,
                "MB on disk": info["stored_bytes"] / 2**20, "write GB/s": m * row_bytes / 1e9 / t_w,
                "seq GB/s": seq * row_bytes / 1e9, "shuffled GB/s": shuf * row_bytes / 1e9,
                "h5py seq GB/s": h5 * row_bytes / 1e9,
            })  # fmt: skip
            os.unlink(path)
        results["compression"] = comp_rows
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print_table(
        [{"what": "open store + features()", "seconds": results["open_seconds"],
          "extra RSS MB": results["open_extra_rss_mb"], "memmap": results["memmap"]}],  # fmt: skip
        ["what", "seconds", "extra RSS MB", "memmap"],
        title=f"Opening a {gb:.2f} GB store ({n} rows of {ROW_SHAPE} float32)",
    )
    print_table(results["reads"], ["read", "reader", "GB/s", "rows/s", "vs npy"],
                title=f"Warm reads, batches of {BATCH} (shuffled: sorted indices within each batch)")  # fmt: skip
    print_table(
        results["compression"],
        ["compression", "ratio", "MB on disk", "write GB/s", "seq GB/s", "shuffled GB/s", "h5py seq GB/s"],
        title=f"Compression of {results['compressed_data']} maps ({m} rows, {results['compressed_zeros']:.0%} zeros), "
        "parallel chunk decode (h5py: its own serial reads)",
    )
    seq = {r["reader"]: r for r in results["reads"] if r["read"] == "sequential"}
    shu = {r["reader"]: r for r in results["reads"] if r["read"] == "shuffled"}
    checks = {
        "open < 0.1 s": results["open_seconds"] < 0.1,
        "open < 50 MB RSS": results["open_extra_rss_mb"] < 50,
        "sequential >= 90% of npy": seq["FeatureStore"]["vs npy"] >= 0.9,
        "shuffled >= 50% of npy": shu["FeatureStore"]["vs npy"] >= 0.5,
    }
    results["checks"] = checks
    print("\n" + "\n".join(f"{'PASS' if ok else 'FAIL'}  {name}" for name, ok in checks.items()))
    print("results:", write_json("bench_store", results))


if __name__ == "__main__":
    main()
