"""Decoded-image cache: epochs read from a fastfeat cache vs epochs that decode, same images, same process.

    python -m benchmarks.bench_cache [--images 480] [--dir DIR] [--repeats 3] [--epochs 3]

Candidates (224x224 float32 batches of 32 with int labels, raw 0..255 values unless noted, bilinear;
about 500x375 JPEGs of quality 90 from ``benchmarks.common.make_jpeg_dataset`` unless ``--dir``):

* ``image_dataset`` decoding (fastfeat's loader: OpenCV on every core), plain and with the course
  augmentation (rotation 30, shifts 0.2, shear 0.2, zoom 0.2, horizontal flip);
* ``image_dataset(cache=)`` plain, with the course augmentation, and plain with VGG19 preprocessing
  (random access: a new shuffle every epoch);
* ``tf.data`` ``cache(filename)``, epoch 2 and later, an in-order replay (no shuffle): ``decode_jpeg``
  + ``resize`` (float32, as TensorFlow's tutorials cache it), ``cache(file)``, ``batch``, ``prefetch``;
  and the same with a cast to uint8 before ``cache`` and back to float32 after ``batch`` (4x less to
  store and read: the stronger baseline);
* the OpenCV limit: decode + resize on every core, nothing else (:mod:`fastfeat.bench`);
* building the cache (``build_cache``, overwritten each round), against the decoding loader's
  epochs and against one pass of a new ``image_dataset`` (catalog, dataset, one epoch: a single
  pass over the files with its start and end, as a build is).

Every candidate runs once per round, rounds interleaved (the machine is shared). An epoch
candidate is timed over ``--epochs`` consecutive epochs after one untimed epoch, as in the middle
of training (image_dataset's workers start each epoch's first batches while the one before ends,
and tf.data's prefetch runs on too), and the next candidate starts only when the work it computed
ahead is done. The OpenCV limit and the cache build are timed one call each. The table gives
medians, CPU ms per image, and ratios to the OpenCV limit, to tf.data's epoch 2 and to the plain
decoding loader, each also as the median of per-round ratios ("paired"). Also reported: the RSS of
the process before and after all cache epochs. Writes ``benchmarks/results/bench_cache.json``.
Goals (issue 15): cache augmented >= 3x and plain >= 6x the OpenCV limit, >= 2x tf.data's epoch 2;
build >= 0.9 of the plain loader (reported against one fresh pass, and against epochs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.common import machine, make_jpeg_dataset, print_table, write_json  # noqa: E402

LIMIT, PLAIN = "opencv limit", "image_dataset decoding"
FRESH = "image_dataset decoding, one fresh pass"
TFCACHE, TFCACHE8 = "tf.data cache(file) epoch 2, float32", "tf.data cache(file) epoch 2, uint8"


class Epochs:
    """``run()`` reads ``epochs`` consecutive epochs of a dataset (training's regime: the epochs
    follow each other, and image_dataset starts an epoch's first batches while the one before
    ends); ``warm()`` reads one untimed epoch before, so that the timed ones start as in the
    middle of training, and ``settle()`` waits until the work it computed ahead is done, so that
    none of it lands in the next candidate's time."""

    def __init__(self, ds, epochs: int, labeled: bool = True):
        self.ds, self.epochs, self.labeled = ds, epochs, labeled

    def _one(self) -> int:
        if self.labeled:
            return sum(int(x.shape[0]) for x, _ in self.ds)
        return sum(int(x.shape[0]) for x in self.ds)

    def warm(self) -> None:
        self._one()

    def run(self) -> int:
        return sum(self._one() for _ in range(self.epochs))

    def settle(self) -> None:
        feed = getattr(self.ds, "_fastfeat_feed", None)  # image_dataset's worker threads
        if feed is not None:
            feed.wait_idle(timeout=60)


class Once:
    """A candidate timed one call at a time (a cache build, the OpenCV limit)."""

    def __init__(self, fn):
        self.run = fn

    def warm(self) -> None:
        pass

    def settle(self) -> None:
        pass


class FreshPass:
    """One pass of a new ``image_dataset`` (catalog, dataset, one epoch): like a cache build, a
    single pass over the files with its start and its end, where :class:`Epochs` times epochs
    in the middle of training. ``settle()`` waits for the next epoch's batches it starts."""

    def __init__(self, make):
        self.make, self.ds = make, None

    def run(self) -> int:
        self.ds = self.make()
        return sum(int(x.shape[0]) for x, _ in self.ds)

    def warm(self) -> None:
        pass

    def settle(self) -> None:
        if self.ds is not None:
            self.ds._fastfeat_feed.wait_idle(timeout=60)
            self.ds = None


def _tf_cache(paths, size, batch_size, cache_file, uint8: bool, epochs: int) -> Epochs:
    import tensorflow as tf

    def load(path):
        image = tf.image.resize(tf.io.decode_jpeg(tf.io.read_file(path), channels=3), size)
        return tf.cast(image, tf.uint8) if uint8 else image

    autotune = tf.data.AUTOTUNE
    ds = tf.data.Dataset.from_tensor_slices(paths).map(load, num_parallel_calls=autotune).cache(cache_file)
    ds = ds.batch(batch_size)
    if uint8:
        ds = ds.map(lambda x: tf.cast(x, tf.float32), num_parallel_calls=autotune)
    ds = ds.prefetch(autotune)
    count = sum(int(x.shape[0]) for x in ds)  # epoch 1 writes the cache
    if count != len(paths):
        raise RuntimeError(f"tf.data read {count} of {len(paths)} images")
    return Epochs(ds, epochs, labeled=False)


def _build(source, out, size) -> Once:
    from fastfeat.cache import build_cache

    def run() -> int:
        report = build_cache(source, out, size, overwrite=os.path.exists(out))
        return report.images

    return Once(run)


def _rss_mb() -> float | None:
    try:
        import psutil
    except ImportError:
        return None
    return psutil.Process().memory_info().rss / 2**20


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=480, help="images in the generated dataset")
    p.add_argument("--dir", default=None, help="use this folder instead of a generated dataset")
    p.add_argument("--size", type=int, default=224, help="target size (square)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3, help="timed rounds after one warm-up round")
    p.add_argument("--epochs", type=int, default=3, help="consecutive epochs timed together per candidate and round")
    p.add_argument("--json", default=None, help="output path (default benchmarks/results/bench_cache.json)")
    args = p.parse_args(argv)

    from fastfeat.augment import Augment
    from fastfeat.bench import COURSE_AUGMENTATION, _opencv_limit
    from fastfeat.catalog import build_catalog
    from fastfeat.dataset import image_dataset
    from fastfeat.runtime import usable_cores

    source = args.dir or make_jpeg_dataset(
        os.path.join(tempfile.gettempdir(), f"fastfeat-bench-{args.images}"), args.images
    )
    size, bs = (args.size, args.size), args.batch_size
    catalog = build_catalog(source)
    paths = [catalog.abspath(i) for i in range(len(catalog))]
    n = len(paths)
    info = machine()
    print(f"machine: {info.get('cpu', info['processor'])}, {info['cpus']} cpus; {n} images -> {size}, batch {bs}")
    course = Augment(**COURSE_AUGMENTATION)
    with tempfile.TemporaryDirectory(prefix="fastfeat-bench-cache-") as tmp:
        cache = os.path.join(tmp, "cache.h5")
        runs = {"build cache": _build(source, os.path.join(tmp, "build.h5"), size)}
        t0 = time.perf_counter()
        runs["build cache"].run()
        first_build = time.perf_counter() - t0
        common = dict(image_size=size, batch_size=bs, seed=0)
        k = args.epochs
        runs[PLAIN] = Epochs(image_dataset(source, preprocess=None, **common), k)
        runs[FRESH] = FreshPass(lambda: image_dataset(source, preprocess=None, **common))
        runs["image_dataset decoding, augmented"] = Epochs(image_dataset(source, preprocess=None, augment=course,
                                                                           **common), k)  # fmt: skip
        runs["cache plain"] = Epochs(image_dataset(source, preprocess=None, cache=cache, **common), k)
        runs["cache augmented"] = Epochs(image_dataset(source, preprocess=None, augment=course, cache=cache,
                                                       **common), k)  # fmt: skip
        runs["cache plain, vgg19 preprocess"] = Epochs(image_dataset(source, preprocess="vgg19", cache=cache,
                                                                     **common), k)  # fmt: skip
        runs[TFCACHE] = _tf_cache(paths, size, bs, os.path.join(tmp, "tfcache32"), uint8=False, epochs=k)
        runs[TFCACHE8] = _tf_cache(paths, size, bs, os.path.join(tmp, "tfcache8"), uint8=True, epochs=k)
        runs[LIMIT] = Once(_opencv_limit(paths, size, usable_cores()))
        rates = {k: [] for k in runs}
        cpu = {k: [] for k in runs}
        for round_ in range(args.repeats + 1):
            for name, candidate in runs.items():
                candidate.warm()
                t, c = time.perf_counter(), time.process_time()
                count = candidate.run()
                dt, dc = time.perf_counter() - t, time.process_time() - c
                candidate.settle()
                expected = n * getattr(candidate, "epochs", 1)
                if count != expected:
                    raise RuntimeError(f"{name} produced {count} images instead of {expected}")
                if round_:
                    rates[name].append(count / dt)
                    cpu[name].append(1000 * dc / count)
            if round_:
                print(f"round {round_}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in rates.items()))
        rss = []  # after each of 6 more cache epochs: flat once the batch buffers are warm
        for _ in range(6):
            runs["cache plain"].run()
            rss.append(_rss_mb())
        cache_mb = os.path.getsize(cache) / 2**20

    def med(name):
        return statistics.median(rates[name])

    def paired(name, ref):
        return statistics.median(a / b for a, b in zip(rates[name], rates[ref]))

    rows = [
        {"candidate": k, "images/s": med(k), "min": min(v), "max": max(v), "cpu ms/img": statistics.median(cpu[k]),
         "x opencv limit": med(k) / med(LIMIT), "x limit (paired)": paired(k, LIMIT),
         "x tf.data f32 (paired)": paired(k, TFCACHE), "x tf.data u8 (paired)": paired(k, TFCACHE8),
         "x decoding loader (paired)": paired(k, PLAIN)}
        for k, v in rates.items()
    ]  # fmt: skip
    print_table(rows, list(rows[0]), title=f"Cache: {n} JPEGs -> float32 {args.size}x{args.size}, batch {bs}, "
                f"median of {args.repeats} interleaved rounds")  # fmt: skip
    goals = {
        "cache augmented >= 3x opencv limit": paired("cache augmented", LIMIT),
        "cache plain >= 6x opencv limit": paired("cache plain", LIMIT),
        "cache plain >= 2x tf.data epoch 2 (float32 cache)": paired("cache plain", TFCACHE),
        "cache plain >= 2x tf.data epoch 2 (uint8 cache)": paired("cache plain", TFCACHE8),
        "cache augmented >= 2x tf.data epoch 2 (float32 cache)": paired("cache augmented", TFCACHE),
        "build >= 0.9x plain loader (one fresh pass, as a build is)": paired("build cache", FRESH),
        "build vs plain loader epochs in the middle of training": paired("build cache", PLAIN),
    }
    print("\nGoals (paired ratios): " + "; ".join(f"{k}: {v:.2f}" for k, v in goals.items()))
    rss_text = ", ".join("n/a" if v is None else f"{v:.0f}" for v in rss)
    print(f"cache file {cache_mb:.0f} MB; first build {n / first_build:,.0f} img/s; RSS (MB) after each of 6 more "
          f"cache epochs: {rss_text}")  # fmt: skip
    path = write_json(
        "bench_cache",
        {"settings": {"images": n, "size": args.size, "batch_size": bs, "repeats": args.repeats,
                      "source": os.path.abspath(source)},
         "rows": rows, "rates": rates, "cpu_ms": cpu, "goals": goals, "rss_mb": rss, "cache_mb": cache_mb},
        args.json,
    )  # fmt: skip
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
