"""Augmented loading: fastfeat's image_dataset vs Keras' flow_from_directory, same images, same process.

Candidates (224x224 output, batch 32, the course augmentation: rotation 30, shifts 0.2, shear 0.2,
zoom 0.2, horizontal flip, fill nearest; ``rescale`` normalization everywhere; nearest resize,
which is flow_from_directory's default):

* ``flow_from_directory`` with ``ImageDataGenerator`` and the augmentation (one Python thread,
  scipy per channel);
* ``flow_from_directory`` without augmentation (context);
* ``fastfeat.image_dataset`` with the augmentation (fused Numba kernel);
* ``fastfeat.image_dataset`` without augmentation.

Each candidate reads one full epoch per run; runs are interleaved round by round (the machine is
shared) and the table reports medians and ratios. Goals: augmented image_dataset >= 10x augmented
flow_from_directory, and >= 80% of the unaugmented image_dataset. Next to the wall-clock rate, the
table gives the process CPU time per image, which other processes on a shared machine disturb far
less (a single-threaded loader gets a fair share of a busy machine, a two-core pipeline does not).
A second table times the per-image pieces in one thread: decode + resize, the plain normalization
kernel, and the fused augmentation kernel.

Run: ``python -m benchmarks.bench_augment [--images N] [--repeats R]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from benchmarks.common import make_jpeg_dataset, print_table, write_json

COURSE = dict(rotation_range=30, width_shift_range=0.2, height_shift_range=0.2, shear_range=0.2, zoom_range=0.2,
              horizontal_flip=True, fill_mode="nearest")  # fmt: skip
SIZE = (224, 224)


def keras_epoch(root: str, batch_size: int, augment: bool):
    """A function that reads one epoch with flow_from_directory and returns the image count."""
    from keras.src.legacy.preprocessing.image import ImageDataGenerator

    gen = ImageDataGenerator(rescale=1 / 255.0, **(COURSE if augment else {}))
    flow = gen.flow_from_directory(root, target_size=SIZE, batch_size=batch_size, class_mode="sparse", seed=0)

    def run() -> int:
        count = 0
        for i in range(len(flow)):
            x, _ = flow[i]
            count += len(x)
        flow.on_epoch_end()
        return count

    return run


def fastfeat_epoch(root: str, batch_size: int, augment: bool):
    """A function that reads one epoch with fastfeat.image_dataset and returns the image count."""
    from fastfeat.augment import Augment
    from fastfeat.dataset import image_dataset

    ds = image_dataset(root, image_size=SIZE, batch_size=batch_size, preprocess="rescale", seed=0,
                       interpolation="nearest", augment=Augment(**COURSE) if augment else None)  # fmt: skip

    def run() -> int:
        count = 0
        for x, _ in ds:
            count += int(x.shape[0])
        return count

    return run


def time_pieces(root: str, batch_size: int) -> dict:
    """Best-of-5 single-thread milliseconds per image: decode + resize, normalize, augment + normalize."""
    import numpy as np

    from fastfeat.augment import Augment
    from fastfeat.catalog import build_catalog
    from fastfeat.decode import load_image
    from fastfeat.kernels import normalize_batch
    from fastfeat.preprocess import get_normalization

    catalog = build_catalog(root)
    paths = [catalog.abspath(i) for i in range(min(batch_size, len(catalog)))]
    images = np.stack([load_image(p, SIZE, interpolation="nearest") for p in paths])
    out = np.empty(images.shape, np.float32)
    norm_args = get_normalization("rescale").kernel_args()
    augment = Augment(**COURSE).batch_transform("rescale", seed=0)
    positions = np.arange(len(images))

    def decode():
        for p in paths:
            load_image(p, SIZE, interpolation="nearest")

    pieces = {
        "decode + resize (OpenCV, nearest)": decode,
        "normalize kernel": lambda: normalize_batch(images, out, *norm_args),
        "augment + normalize kernel (params included)": lambda: augment(images, positions),
    }
    best = {}
    for name, fn in pieces.items():
        fn()
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        best[name] = min(times) / len(images) * 1e3
    return best


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=480, help="number of JPEGs (about 500x375)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per candidate (median reported)")
    parser.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "fastfeat-bench-jpegs"))
    args = parser.parse_args(argv)

    root = make_jpeg_dataset(os.path.join(args.data, str(args.images)), n=args.images)
    candidates = {
        "flow_from_directory + augment": keras_epoch(root, args.batch_size, True),
        "flow_from_directory": keras_epoch(root, args.batch_size, False),
        "image_dataset + augment": fastfeat_epoch(root, args.batch_size, True),
        "image_dataset": fastfeat_epoch(root, args.batch_size, False),
    }
    rates = {name: [] for name in candidates}
    cpu_ms = {name: [] for name in candidates}
    for name, fn in candidates.items():  # warm-up: Numba compilation, tf.data start-up, file cache
        fn()
    for _ in range(args.repeats):  # interleaved rounds: drift on a shared machine hits all alike
        for name, fn in candidates.items():
            t0, c0 = time.perf_counter(), time.process_time()
            count = fn()
            rates[name].append(count / (time.perf_counter() - t0))
            cpu_ms[name].append((time.process_time() - c0) / count * 1e3)
    median = {name: statistics.median(r) for name, r in rates.items()}
    cpu = {name: statistics.median(r) for name, r in cpu_ms.items()}
    flow_aug = median["flow_from_directory + augment"]
    plain = median["image_dataset"]
    rows = [
        {"loader": name, "img/s (median)": median[name], "runs": ", ".join(f"{r:.0f}" for r in rates[name]),
         "x flow+augment": median[name] / flow_aug, "vs image_dataset": median[name] / plain,
         "CPU ms/img": cpu[name]}
        for name in candidates
    ]  # fmt: skip
    print_table(rows, ["loader", "img/s (median)", "runs", "x flow+augment", "vs image_dataset", "CPU ms/img"],
                title=f"{args.images} JPEGs (~500x375) -> 224x224, batch {args.batch_size}, course augmentation")  # fmt: skip
    speedup = median["image_dataset + augment"] / flow_aug
    retained = median["image_dataset + augment"] / plain
    aug_rates = rates["image_dataset + augment"]  # per-round ratios: rounds are interleaved
    paired_speedup = statistics.median(a / b for a, b in zip(aug_rates, rates["flow_from_directory + augment"]))
    paired_retained = statistics.median(a / b for a, b in zip(aug_rates, rates["image_dataset"]))
    print(f"\nimage_dataset + augment: {speedup:.1f}x flow_from_directory + augment (goal >= 10x), "
          f"{retained:.0%} of unaugmented image_dataset (goal >= 80%); medians of the per-round ratios: "
          f"{paired_speedup:.1f}x and {paired_retained:.0%}")  # fmt: skip
    pieces = time_pieces(root, args.batch_size)
    print_table([{"piece": k, "ms/img (one thread, best of 5)": v} for k, v in pieces.items()],
                ["piece", "ms/img (one thread, best of 5)"], title="Per-image pieces, 224x224")  # fmt: skip
    payload = {"images": args.images, "pieces_ms_per_image": pieces, "cpu_ms_per_image": cpu, "batch_size": args.batch_size, "size": list(SIZE), "augmentation": COURSE,
               "rates": rates, "median_per_s": median, "speedup_vs_flow_augmented": speedup,
               "fraction_of_unaugmented": retained, "paired_speedup_vs_flow_augmented": paired_speedup,
               "paired_fraction_of_unaugmented": paired_retained}  # fmt: skip
    print("wrote", write_json("bench_augment", payload))
    return payload


if __name__ == "__main__":
    main()
