"""Loader comparison on a folder of images: fastfeat vs Keras' loaders vs the OpenCV limit.

Used by ``fastfeat bench DIR`` and ``benchmarks/bench_loader.py``. Every candidate reads the same
files to float32 batches at the same size; all run in one process, in interleaved rounds (so a
busy neighbour slows every candidate alike), and the median rate of each is reported with ratios
to ``flow_from_directory`` and to the limit: OpenCV decode+resize on every core, nothing else.

Candidates use each tool's defaults, as a user gets them: ``flow_from_directory`` resizes with
PIL nearest (its default and its fastest), the others bilinear.
"""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import tempfile
import textwrap
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

#: ImageDataGenerator arguments of the usual course augmentation (and fastfeat's equivalent).
COURSE_AUGMENTATION = dict(
    rotation_range=30, width_shift_range=0.2, height_shift_range=0.2, shear_range=0.2, zoom_range=0.2,
    horizontal_flip=True,
)  # fmt: skip

CANDIDATES = (
    "fastfeat", "fastfeat augmented", "flow_from_directory", "flow_from_directory augmented",
    "image_dataset_from_directory", "opencv limit",
)  # fmt: skip
BASELINE = "flow_from_directory"
#: Formats every candidate reads (flow_from_directory and image_dataset_from_directory differ beyond these).
COMMON_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
LIMIT = "opencv limit"
#: Fewer images than this measure start-up (tracing, thread pools, file cache), not throughput.
MIN_MEANINGFUL_IMAGES = 200
#: The columns ``fastfeat bench`` prints (they fit 100 columns; the JSON keeps every column).
TABLE_COLUMNS = ("loader", "images/s", "x flow", "x flow (paired)", "% of limit", "cpu ms/img")


@dataclass
class LoaderResult:
    """One candidate's measurements per timed round: images/s (wall clock) and CPU ms per image.

    CPU time (all threads of the process) per image is the steadier measure on a shared machine:
    a busy neighbour lowers the wall-clock rate but hardly changes the work each image costs.
    """

    name: str
    images: int
    rates: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.rates) if self.rates else float("nan")

    @property
    def median_cpu_ms(self) -> float:
        return statistics.median(self.cpu_ms) if self.cpu_ms else float("nan")


def _view_folder(paths: list[str], labels: list[str], root: str) -> str:
    """A folder of symbolic links ``root/<label>/<k>_<name>``: the same files for every loader."""
    for k, (path, label) in enumerate(zip(paths, labels)):
        folder = os.path.join(root, label)
        os.makedirs(folder, exist_ok=True)
        os.symlink(os.path.abspath(path), os.path.join(folder, f"{k:07d}_{os.path.basename(path)}"))
    return root


def _fastfeat(catalog, size, batch_size, augment: bool) -> Callable[[], int]:
    from .loader import DecodeOptions, Loader

    transform = None
    if augment:
        from .augment import Augment

        transform = Augment(**COURSE_AUGMENTATION).batch_transform("none", seed=0, copy=1)
    loader = Loader(catalog, DecodeOptions(size, "bilinear"), "none", transform=transform)
    ds = loader.dataset(np.arange(len(catalog)), batch_size)

    def run() -> int:
        return sum(int(batch[0].shape[0]) for batch in ds)  # (images, positions, ok, ...)

    return run


def _flow(folder, size, batch_size, augment: bool) -> Callable[[], int]:
    import tensorflow as tf

    generator = tf.keras.preprocessing.image.ImageDataGenerator(**(COURSE_AUGMENTATION if augment else {}))
    with contextlib.redirect_stdout(io.StringIO()):  # "Found N images belonging to K classes.", once per candidate
        iterator = generator.flow_from_directory(
            folder, target_size=size, batch_size=batch_size, class_mode="sparse", shuffle=False, follow_links=True
        )

    def run() -> int:
        return sum(len(iterator[i][0]) for i in range(len(iterator)))

    return run


def _image_dataset(folder, size, batch_size) -> Callable[[], int]:
    import keras

    ds = keras.utils.image_dataset_from_directory(
        folder, image_size=size, batch_size=batch_size, shuffle=False, follow_links=True, verbose=False
    )

    def run() -> int:
        return sum(int(images.shape[0]) for images, _ in ds)

    return run


def _opencv_limit(paths, size, threads: int) -> Callable[[], int]:
    import cv2

    chunks = [paths[i::threads] for i in range(threads)]
    h, w = size

    def work(chunk) -> int:
        for path in chunk:
            image = cv2.imread(path, cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION)
            cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32)
        return len(chunk)

    def run() -> int:
        previous = cv2.getNumThreads()
        cv2.setNumThreads(1)  # one decode per core, no nested pools
        try:
            with ThreadPoolExecutor(threads) as pool:
                return sum(pool.map(work, chunks))
        finally:
            cv2.setNumThreads(previous)

    return run


def compare_loaders(
    source: str | os.PathLike,
    image_size: tuple[int, int] = (224, 224),
    batch_size: int = 32,
    repeats: int = 3,
    limit: int | None = None,
    candidates: tuple[str, ...] | list[str] = CANDIDATES,
    log: Callable[[str], None] | None = None,
) -> list[LoaderResult]:
    """Time each loader candidate reading ``source`` to float32 batches.

    Args:
        source: a folder of images (class subfolders or flat) or a file list, as for ``extract``.
        image_size: (height, width) every candidate resizes to.
        batch_size: images per batch.
        repeats: timed rounds (after one warm-up round); each round runs every candidate once.
        limit: use only the first ``limit`` images of the catalog (JPEG, PNG and BMP files only: the
            formats every candidate reads).
        candidates: names from :data:`CANDIDATES`.
        log: called with a line of progress per round.

    Returns:
        One :class:`LoaderResult` per candidate, in :data:`CANDIDATES` order.
    """
    from .catalog import build_catalog
    from .runtime import usable_cores

    unknown = [c for c in candidates if c not in CANDIDATES]
    if unknown:
        raise ValueError(f"`candidates` must be among {', '.join(CANDIDATES)}. Received: candidates={list(candidates)}")
    if repeats < 1:
        raise ValueError(f"`repeats` must be >= 1. Received: repeats={repeats}")
    if limit is not None and limit < 1:
        raise ValueError(f"`limit` must be >= 1. Received: limit={limit}")
    catalog = build_catalog(source, follow_links=True)
    keep = [i for i, p in enumerate(catalog.paths) if p.lower().endswith(COMMON_EXTENSIONS)][:limit]
    n = len(keep)
    if n == 0:
        raise ValueError(
            f"No {'/'.join(COMMON_EXTENSIONS)} images found. Received: source={os.fspath(source)!r}"
        )
    paths = [catalog.abspath(i) for i in keep]
    names = list(catalog.class_names)
    labels = [names[catalog.labels[i]] if names and catalog.labels[i] >= 0 else "all" for i in keep]
    with tempfile.TemporaryDirectory(prefix="fastfeat-bench-") as tmp:
        folder = _view_folder(paths, labels, os.path.join(tmp, "images"))
        view = build_catalog(folder, follow_links=True)
        runs: dict[str, Callable[[], int]] = {}
        results: dict[str, LoaderResult] = {}
        for name in [c for c in CANDIDATES if c in candidates]:
            if name.startswith("fastfeat"):
                runs[name] = _fastfeat(view, image_size, batch_size, augment=name.endswith("augmented"))
            elif name.startswith("flow_from_directory"):
                runs[name] = _flow(folder, image_size, batch_size, augment=name.endswith("augmented"))
            elif name == "image_dataset_from_directory":
                runs[name] = _image_dataset(folder, image_size, batch_size)
            else:
                runs[name] = _opencv_limit(paths, image_size, usable_cores())
            results[name] = LoaderResult(name, n)
        results.get(LIMIT, LoaderResult("", 0)).note = f"{usable_cores()} threads"
        results.get(BASELINE, LoaderResult("", 0)).note = "PIL nearest (its default)"
        for round_ in range(repeats + 1):
            for name, run in runs.items():
                t0, c0 = time.perf_counter(), time.process_time()
                count = run()
                rate = count / (time.perf_counter() - t0)
                cpu_ms = 1000 * (time.process_time() - c0) / max(count, 1)
                if count != n:
                    raise RuntimeError(f"{name} produced {count} images instead of {n}")
                if round_:  # round 0 warms caches, compiles kernels, traces tf.data
                    results[name].rates.append(rate)
                    results[name].cpu_ms.append(cpu_ms)
            if log is not None and round_:
                line = f"round {round_}/{repeats}, img/s: " + ", ".join(f"{k} {v.rates[-1]:.0f}" for k, v in results.items())
                log(textwrap.fill(line, width=100, subsequent_indent="    "))
    return list(results.values())


def table_rows(results: list[LoaderResult]) -> list[dict]:
    """Rows for a table: median images/s and CPU ms/image, ratios to flow_from_directory and the limit.

    ``% of limit (cpu)`` is the limit's CPU cost per image over the candidate's: the efficiency a
    candidate would show on an idle machine where both use every core. The ``paired`` columns are
    medians of the per-round ratios, steadier than ratios of medians on a shared machine.
    """
    by_name = {r.name: r for r in results}

    def paired(r: LoaderResult, reference: str) -> float | None:
        """Median over rounds of the rate ratio within a round (rounds are interleaved, so a slow
        spell of the machine hits both sides of a ratio alike)."""
        if reference not in by_name:
            return None
        return statistics.median(a / b for a, b in zip(r.rates, by_name[reference].rates))

    base = by_name[BASELINE].median if BASELINE in by_name else None
    limit = by_name[LIMIT].median if LIMIT in by_name else None
    limit_cpu = by_name[LIMIT].median_cpu_ms if LIMIT in by_name else None
    rows = []
    for r in results:
        rows.append(
            {
                "loader": r.name,
                "images/s": r.median,
                "min": min(r.rates),
                "max": max(r.rates),
                "x flow": r.median / base if base else None,
                "% of limit": 100 * r.median / limit if limit else None,
                "x flow (paired)": paired(r, BASELINE),
                "% of limit (paired)": 100 * paired(r, LIMIT) if limit else None,
                "cpu ms/img": r.median_cpu_ms,
                "% of limit (cpu)": 100 * limit_cpu / r.median_cpu_ms if limit_cpu else None,
                "note": r.note,
            }
        )
    return rows


def sample_warning(images: int, batch_size: int) -> str | None:
    """A warning when ``images`` are too few for the rates to mean anything, else ``None``."""
    if images >= MIN_MEANINGFUL_IMAGES:
        return None
    return (
        f"only {images} images: each round takes about {max(1, -(-images // batch_size))} batch(es), so these "
        f"rates measure start-up (tracing, thread pools, the file cache), not throughput. "
        f"Use a folder of at least {MIN_MEANINGFUL_IMAGES} images for numbers worth comparing."
    )


def format_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """Rows (dicts) as a fixed-width text table."""
    columns = columns or list(rows[0])

    def fmt(v) -> str:
        if isinstance(v, float):
            return "nan" if v != v else (f"{v:,.2f}" if abs(v) < 10 else f"{v:,.0f}")  # v != v: NaN
        return "" if v is None else str(v)

    widths = {c: max(len(c), *(len(fmt(r.get(c))) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns), "  ".join("-" * widths[c] for c in columns)]
    lines += ["  ".join(fmt(r.get(c)).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(line.rstrip() for line in lines)
