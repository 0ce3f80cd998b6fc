"""Building a decoded-image cache: :func:`build_cache` (``fastfeat cache``) and :func:`ensure_cache`
(what ``image_dataset(cache=)`` and ``extract(cache=)`` call).

Every readable file is decoded once with the loader's own rules (:meth:`fastfeat.loader.Loader.load`),
batches in parallel on the loader's worker threads (:func:`fastfeat.loader.ordered_map`; no
TensorFlow), and written in catalog order by the feature store's crash-safe writer
(:class:`fastfeat.store.StoreWriter`): a killed build keeps its committed rows and resumes.
Each file is stat'ed just before it is read; its fingerprint is stored with its row.

An update (``update=True``) writes a new file beside the old one, copying the rows of unchanged
files and decoding only changed and added ones, then renames it over the old one: readers that
have the old file open keep reading the old rows, and an update that dies leaves the old cache.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from .. import checks
from ..catalog import IMAGE_EXTENSIONS, Catalog, build_catalog
from ..decode import DEFAULT_MAX_PIXELS
from ..loader import (
    DecodeOptions, Loader, default_ahead, keep_large_allocations, opencv_single_threaded, ordered_map, pipeline_threads,
)  # fmt: skip
from ..quiet import filtered_stderr
from . import layout
from .reader import CachedRows, ImageCache, StaleCacheError

BATCH = 32
#: How often a process waiting for another one's build looks again.
WAIT_SECONDS = 0.2


@dataclass
class CacheReport:
    """What a build did: images decoded, rows reused from the previous cache, failures, speed."""

    path: str
    images: int = 0
    reused: int = 0
    failures: int = 0
    seconds: float = 0.0
    up_to_date: bool = False

    @property
    def images_per_second(self) -> float:
        return (self.images + self.reused) / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        if self.up_to_date:
            return f"{self.path}: up to date ({self.reused} images)"
        reused = f", {self.reused} reused" if self.reused else ""
        return (f"{self.path}: {self.images} images decoded{reused}, {self.failures} unreadable, "
                f"{self.seconds:.1f} s ({self.images_per_second:,.0f} img/s)")  # fmt: skip


def build_cache(
    source: str | os.PathLike,
    output: str | os.PathLike,
    image_size: int | tuple[int, int] | str,
    *,
    interpolation: str = "bilinear",
    exif: bool = False,
    reduced_decode: bool = True,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    classes: list[str] | None = None,
    follow_links: bool = False,
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
    overwrite: bool = False,
    resume: bool = False,
    update: bool = False,
    threads: int | None = None,
    progress: bool = False,
) -> CacheReport:
    """Decode every image under ``source`` once, at ``image_size``, into the cache file ``output``.

    Args:
        source: a folder of class subfolders, a flat folder or a ``.txt``/``.csv`` file list
            (:func:`fastfeat.build_catalog`'s rules, with ``classes``, ``follow_links``, ``extensions``).
        output: the cache file to write (an HDF5 feature store with a uint8 ``images`` layer).
        image_size: int, (height, width), or ``"H,W"``/``"HxW"``.
        interpolation, exif, reduced_decode, max_pixels: the decode settings, as for
            :func:`fastfeat.image_dataset` and :func:`fastfeat.extract`; a cache serves only these.
        overwrite: replace an existing ``output``.
        resume: complete an interrupted build (same settings, same files).
        update: bring an existing cache up to date: files changed, added or removed since it
            was built are decoded again or dropped; the others are copied, not decoded.
        threads: decoding threads (default: one per usable core).
        progress: show a progress bar.

    Returns:
        A :class:`CacheReport`.

    Raises:
        FileExistsError: ``output`` exists and none of ``overwrite``, ``resume``, ``update`` was given.
        StaleCacheError: ``resume``/``update`` of a cache built with other decode settings.
    """
    if sum(bool(v) for v in (overwrite, resume, update)) > 1:
        raise ValueError("`overwrite`, `resume` and `update` exclude each other. "
                         f"Received: overwrite={overwrite!r}, resume={resume!r}, update={update!r}")  # fmt: skip
    options = DecodeOptions(checks.image_size(image_size, allow_none=False), interpolation, exif, reduced_decode,
                            max_pixels)  # fmt: skip
    checks.positive_int(threads, "threads", allow_none=True)
    output = os.fspath(output)
    checks.output_dir(output)
    exists = os.path.exists(output)
    if exists and not (overwrite or resume or update):
        raise FileExistsError(f"{output!r} exists. Pass overwrite=True (--overwrite) to replace it, resume=True "
                              "(--resume) to complete it, or update=True (--update) to bring it up to "
                              "date.")  # fmt: skip
    catalog = build_catalog(source, classes=classes, follow_links=follow_links, extensions=extensions)
    mode = "create" if not exists else ("overwrite" if overwrite else ("resume" if resume else "update"))
    return write_cache(catalog, options, output, mode, threads=threads, progress=progress)


def ensure_cache(path: str | os.PathLike, catalog: Catalog, options: DecodeOptions,
                 threads: int | None = None) -> CachedRows:  # fmt: skip
    """The cache at ``path`` checked against ``catalog`` and ``options``: built first if ``path``
    does not exist, completed first if its build was interrupted. While another process builds
    it (several training processes started at once), this one waits for that build.

    Raises:
        StaleCacheError: the cache holds other decode settings or files changed since (the
            message says what changed and how to update it).
    """
    from ..store.lock import StoreLockedError

    path = os.fspath(path)
    while True:
        try:
            if not os.path.exists(path):
                write_cache(catalog, options, path, "create", threads=threads)
            else:
                with ImageCache(path) as cache:
                    unfinished = not cache.complete
                if unfinished:
                    write_cache(catalog, options, path, "resume", threads=threads)
            break
        except (StoreLockedError, FileExistsError):  # another process is building it (or just created it)
            time.sleep(WAIT_SECONDS)
    return ImageCache(path).check(catalog, options)


def _meta(catalog: Catalog, options: DecodeOptions) -> dict:
    from .._version import __version__

    return {"kind": layout.KIND, "cache_format": layout.CACHE_FORMAT, **layout.settings_of(options),
            "source": catalog.root, "catalog_size": len(catalog), "catalog_sha256": catalog.fingerprint(),
            "class_names": list(catalog.class_names), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "fastfeat": __version__}  # fmt: skip


def write_cache(catalog: Catalog, options: DecodeOptions, output: str, mode: str, threads: int | None = None,
                progress: bool = False, batch_size: int = BATCH) -> CacheReport:  # fmt: skip
    """Write (``mode``: ``create``, ``overwrite``, ``resume`` or ``update``) the cache of ``catalog``."""
    if mode == "update":
        return _update(catalog, options, output, threads, progress, batch_size)
    if mode == "resume":
        with ImageCache(output) as old:
            old.check_settings(options)
            if old.meta.get("catalog_sha256") != catalog.fingerprint():
                raise StaleCacheError(f"Cannot resume {output!r}: files were added or removed since its build "
                                      "stopped. Use update=True (--update) instead.")  # fmt: skip
    return _write(catalog, options, output, mode, None, threads, progress, batch_size)


def _update(catalog: Catalog, options: DecodeOptions, output: str, threads, progress, batch_size) -> CacheReport:
    """A new cache file beside ``output`` from the fresh rows of the old one plus the files decoded
    again, renamed over ``output`` once complete; nothing changes if the old one is up to date."""
    from ..store.lock import StoreLock

    t0 = time.perf_counter()
    lock = StoreLock(output)
    lock.acquire()  # no resume or other update of the same cache meanwhile
    try:
        with ImageCache(output) as previous:
            try:
                previous.check(catalog, options)
                return CacheReport(output, reused=previous.rows, seconds=time.perf_counter() - t0, up_to_date=True)
            except StaleCacheError:
                previous.check_settings(options)  # other settings are not an update: raised here
            target = output + ".updating"
            try:
                report = _write(catalog, options, target, "overwrite", previous, threads, progress, batch_size)
            except BaseException:  # an update that dies leaves the old cache as it was
                if os.path.exists(target):
                    os.unlink(target)
                raise
        os.replace(target, output)  # readers of the old file keep their (old, consistent) rows
    finally:
        lock.release()
    report.path = output
    report.seconds = time.perf_counter() - t0
    return report


def _write(catalog: Catalog, options: DecodeOptions, target: str, mode: str, previous: ImageCache | None, threads,
           progress, batch_size) -> CacheReport:  # fmt: skip
    """Decode (or, with ``previous``, copy the fresh rows of) every catalog item not yet in ``target``."""
    from tqdm.auto import tqdm

    from ..store.writer import StoreWriter

    t0 = time.perf_counter()
    report = CacheReport(target)
    loader = Loader(catalog, options)
    row_of, old_prints = _previous_rows(previous, catalog)
    reuse = CachedRows(previous, catalog, row_of) if previous is not None else None
    h, w = options.size
    abspaths = [catalog.abspath(i) for i in range(len(catalog))]

    def work(batch: np.ndarray):
        prints = layout.fingerprints([abspaths[p] for p in batch.tolist()])  # before any byte is read
        if reuse is None:
            images, ok = loader.decode_batch(batch)
            return batch, prints, images, ok, 0
        images = np.empty((len(batch), h, w, 3), np.uint8)
        ok = reuse.fill(batch, images, loader.load)
        reused = sum(old_prints.get(int(p)) == tuple(f) for p, f in zip(batch.tolist(), prints.tolist()))
        return batch, prints, images, ok, reused

    writer = StoreWriter(
        target, {layout.IMAGES: ((h, w, 3), "uint8"), layout.FINGERPRINT: ((3,), "int64")}, capacity=len(catalog),
        class_names=catalog.class_names, meta=_meta(catalog, options), mode=mode, chunk_rows=batch_size,
    )  # fmt: skip
    try:
        positions = np.arange(len(catalog), dtype=np.int64)
        if mode == "resume":
            positions = np.setdiff1d(positions, writer.processed_indices(), assume_unique=True)
        threads = pipeline_threads(threads)
        keep_large_allocations()
        batches = _work_units(positions, batch_size, threads)
        with tqdm(total=len(positions), unit="img", disable=not progress, dynamic_ncols=True, desc="cache") as bar, \
                opencv_single_threaded(), filtered_stderr():  # one decode per worker; decoder lines off the terminal
            for batch, prints, images, ok, reused in ordered_map(work, batches, threads, default_ahead(threads)):
                if not ok.all():
                    images, prints = images[ok], prints[ok]
                good, bad = batch[ok], batch[~ok]
                writer.append({layout.IMAGES: images, layout.FINGERPRINT: prints}, catalog.labels[good],
                              [catalog.paths[p] for p in good.tolist()], good)  # fmt: skip
                writer.add_failures(bad.tolist(), [catalog.paths[p] for p in bad.tolist()],
                                    [loader.reasons.get(p, "unreadable") for p in bad.tolist()])  # fmt: skip
                writer.commit()
                report.images += len(good) - reused
                report.reused += reused
                report.failures += len(bad)
                bar.update(len(batch))
    except BaseException:
        writer.close(complete=False)
        raise
    writer.close(complete=True)
    report.seconds = time.perf_counter() - t0
    return report


def _work_units(positions: np.ndarray, batch_size: int, threads: int) -> list[np.ndarray]:
    """``positions`` in batches of ``batch_size``, except the last ``threads`` batches' worth, cut
    in quarters: the workers then finish within a quarter batch of each other instead of one
    waiting for the other's last whole batch (at 480 images on 2 threads, 15 batches: one worker
    idle for a whole batch at the end, 6% of the build)."""
    tail = max(0, len(positions) - threads * batch_size)
    small = max(1, batch_size // 4)
    cuts = list(range(0, tail, batch_size)) + list(range(tail, len(positions), small))
    return [positions[a:b] for a, b in zip(cuts, cuts[1:] + [len(positions)])]


def _previous_rows(previous: ImageCache | None, catalog: Catalog):
    """(row of each catalog position in ``previous`` or -1, {position: stored fingerprint})."""
    if previous is None:
        return None, {}
    row_of = {p: i for i, p in enumerate(previous.paths)}
    rows = np.asarray([row_of.get(p, -1) for p in catalog.paths], np.int64)
    prints = previous.fingerprints.tolist()
    return rows, {i: tuple(prints[r]) for i, r in enumerate(rows.tolist()) if r >= 0}
