"""One extraction run: :func:`extract` (the Python API) and :func:`run` (an :class:`ExtractConfig`).

The run is planned (:mod:`fastfeat.plan`: catalog, what is left to do, what a resumed store fixes),
the model is built (:mod:`fastfeat.extractor`), then the main loop (:mod:`fastfeat.runloop`) pulls
batches from the loader's worker threads, infers batch by batch through one compiled call (never
``Model.predict``, which keeps every output in memory) and hands each batch to a writer thread
that appends it to the store while the next one is computed. The settings and their checks live
in :mod:`fastfeat.config`, the report in :mod:`fastfeat.report`.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from dataclasses import replace

from .config import DEFAULT_MAX_PIXELS, ExtractConfig
from .extractor import build_model
from .loader import DecodeOptions, Loader
from .plan import ExtractPlan, check_resume_settings, plan_extraction, run_meta
from .report import ExtractReport, NoImagesWarning
from .runkeys import RESUME_KEYS, check_resumable  # noqa: F401 -- RESUME_KEYS re-exported
from .runloop import StopToken, request_stop, run_loop, running  # noqa: F401 -- request_stop re-exported
from .runtime import restore_threads
from .store.guards import check_space, feature_bytes, human_bytes
from .store.writer import StoreWriter, check_not_locked

__all__ = ["ExtractConfig", "ExtractReport", "StopToken", "extract", "request_stop", "run"]


def extract(
    source: str | os.PathLike,
    output: str | os.PathLike,
    model: str = "vgg19",
    layers: list[str] | str | None = None,
    image_size: int | tuple[int, int] | None = None,
    batch_size: int | None = None,
    weights: str | None = "imagenet",
    *,
    pool: str = "none",
    preprocess: str | None = None,
    interpolation: str = "bilinear",
    dtype: str = "float32",
    precision: str = "auto",
    remeasure_precision: bool = False,
    device: str | None = "auto",
    classes: list[str] | None = None,
    exif: bool = False,
    reduced_decode: bool = True,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    follow_links: bool = False,
    compression: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    on_error: str = "skip",
    unsafe_model: bool = False,
    augment=None,
    augment_copies: int = 0,
    seed: int | None = None,
    cache: str | os.PathLike | None = None,
    space_check: bool = True,
    progress: bool = True,
    stop: StopToken | None = None,
) -> ExtractReport:
    """Extract features of every image under ``source`` into the HDF5 store ``output``.

    Args:
        source: a folder of class subfolders, a flat folder, or a ``.txt``/``.csv`` file list.
        output: the ``.h5`` store to write.
        model: a keras.applications short name (``fastfeat.models.models()``) or a ``.keras``/``.h5`` file.
        layers: layer name(s) to cut at, each optionally ``name:avg`` or ``name:max``; one forward pass.
            Default: the model's own cut (``ModelSpec.default_layer``: the last feature map of the
            headless base, ``block4_conv2`` for VGG; ``fastfeat layers MODEL`` marks it), a model
            file's last layer.
        image_size: int or (height, width); default: the model's own input size.
        batch_size: images per forward pass (default: the largest power of two up to 32 on a CPU,
            256 on a GPU, that fits in memory; see :func:`fastfeat.runtime.choose_batch_size`).
        weights: ``"imagenet"``, ``None`` (random init) or a weights file for the headless base.
        pool: pooling for layers given without one: ``none``, ``avg`` or ``max``.
        preprocess: normalization override (``caffe``, ``tf``, ``torch``, ``rescale``, ``none``);
            default: the model's own (``none`` for a model file).
        interpolation: ``nearest`` (Keras parity), ``bilinear``, ``area``, ``bicubic``, ``lanczos``.
        dtype: stored feature dtype, ``float32`` or ``float16``.
        precision: Keras dtype policy for inference (``float32``, ``mixed_float16``,
            ``mixed_bfloat16``), or ``auto``: the fastest precision the device runs natively whose
            features stay within 2e-2 of float32, measured once on a few images of the first batch
            (only when measuring costs at most 5% of the job) and cached per machine, model, cut,
            size and batch size, so reruns choose the same (see :mod:`fastfeat.precision_auto`).
        remeasure_precision: with ``auto``, ignore a cached decision and measure decisively
            (the whole first batch, several rounds, whatever the job's length); the cache is updated.
        device: ``auto`` (first GPU, else CPU), ``cpu``, ``gpu`` or ``gpu:N``.
        classes: fixes class names and order.
        exif: apply EXIF orientation.
        reduced_decode: allow JPEG DCT-domain downscaling for large photos (not with ``nearest``).
        max_pixels: refuse images larger than this many pixels.
        follow_links: follow symbolic links out of the source folder.
        compression: ``none``, ``lzf``, ``gzip`` or ``gzip:LEVEL``.
        overwrite: replace an existing output.
        resume: complete an existing, interrupted output with the same settings.
        on_error: ``skip`` (record unreadable files and go on) or ``raise``.
        unsafe_model: load a model file without Keras safe mode (runs code stored in it).
        augment: a :class:`fastfeat.Augment`, its dict, or a JSON file of it; with
            ``augment_copies``.
        augment_copies: store K augmented copies of every image after its plain features. Rows
            come batch by batch: the batch's plain rows, then copy 1 of the same images, ...,
            copy K; ``FeatureStore.copies`` and ``.index`` say which is which.
        seed: seed of the augmentation draws (same seed, same copies; default 0).
        cache: a decoded-image cache (:func:`fastfeat.build_cache`) at this run's image size and
            decode settings to read images from instead of decoding them (built first if it does
            not exist); the features are the same as without it.
        space_check: refuse an uncompressed store whose features (rows x bytes per row, claimed
            when it is created) exceed the free space of its folder.
        progress: show a progress bar (and the store's size up front).
        stop: a :class:`~fastfeat.runloop.StopToken` of this run: once set (from any thread or
            a signal handler), the run stops after the batch in flight, leaving a resumable store
            (see also :func:`request_stop`).

    Returns:
        An :class:`ExtractReport`.
    """
    config = ExtractConfig(
        source, output, model=model, layers=layers, image_size=image_size, batch_size=batch_size, weights=weights,
        pool=pool, preprocess=preprocess, interpolation=interpolation, dtype=dtype, precision=precision,
        remeasure_precision=remeasure_precision, device=device, classes=classes, exif=exif,
        reduced_decode=reduced_decode, max_pixels=max_pixels, follow_links=follow_links, compression=compression,
        overwrite=overwrite, resume=resume, on_error=on_error, unsafe_model=unsafe_model, augment=augment,
        augment_copies=augment_copies, seed=seed, cache=cache, space_check=space_check, progress=progress,
    )  # fmt: skip
    return run(config, stop=stop)


def run(
    config: ExtractConfig, stop: StopToken | None = None, part: tuple[int, int] | None = None,
    plan: ExtractPlan | None = None,
) -> ExtractReport:
    """Run the extraction ``config`` describes (see :func:`extract`); ``stop`` as there; ``plan``:
    its :func:`prepare` done already (the CLI does it before importing TensorFlow).

    ``part=(k, n)``: only part ``k`` of the catalog cut into ``n`` contiguous parts (a shard, see
    :mod:`fastfeat.sharding`); rows keep their position in the whole catalog as ``index``, the
    store's meta describes the whole catalog and records ``part``.
    """
    t_start = time.perf_counter()
    stop = StopToken() if stop is None else stop
    with running(stop):  # a stop requested from here on (start-up included) ends the run after one batch
        plan = prepare(config, part) if plan is None else plan
        if plan.complete:  # --resume of a finished store: nothing to build, nothing to do
            return complete_report(plan)
        startup = {"catalog": time.perf_counter() - t_start}
        built = build_model(config, plan.precision, plan.batch_size, images=len(plan.catalog))
        try:
            if config.layers is None:  # a model file at its default cut: known now that it is loaded
                plan = replace(plan, config=config.replace(layers=tuple(built.shapes)))
            startup["model_build"] = built.build_seconds
            return _execute(plan, built, startup, stop, t_start, part)
        finally:
            restore_threads(built.runtime.threads)  # OpenCV's and Numba's thread counts as they were


def prepare(config: ExtractConfig, part: tuple[int, int] | None = None) -> ExtractPlan:
    """Every check that needs no model, and the plan (no TensorFlow): the config's own checks ran
    on creation; here the paths, the writer's lock, the catalog and, for a resume, the settings
    the store fixes (a refusal comes before any model is built or downloaded)."""
    config.check_paths()
    if config.mode != "create" and os.path.exists(config.output):
        check_not_locked(config.output)
    plan = plan_extraction(config)
    check_resume_settings(plan)
    if part is not None:
        plan = plan.parts(_check_part(part)[1])[part[0]]
    return plan


def complete_report(plan: ExtractPlan) -> ExtractReport:
    """The report of a ``resume`` whose store is complete already."""
    from .store import open_store

    config = plan.config
    with open_store(config.output) as store:
        rows = len(store)
    return ExtractReport(
        output=config.output, images=0, failures=0, seconds=0.0, images_per_second=0.0, resumed_from=rows,
        model=str(plan.stored.get("model", "")), layers=list(plan.stored.get("layers", [])),
        shapes={k: tuple(v) for k, v in (plan.stored.get("shapes") or {}).items()}, complete_already=True,
    )  # fmt: skip


def _check_part(part) -> tuple[int, int]:
    """``part`` as ``(k, n)`` with ``0 <= k < n``."""
    from .checks import is_int

    pair = isinstance(part, (tuple, list)) and len(part) == 2 and all(is_int(v) for v in part)
    if not (pair and 0 <= part[0] < part[1]):
        raise ValueError(f"`part` must be (k, n) with 0 <= k < n. Received: part={part!r}")
    return int(part[0]), int(part[1])


def _execute(plan: ExtractPlan, built, startup: dict, stop: StopToken, t_start: float, part=None) -> ExtractReport:
    config, catalog = plan.config, plan.catalog
    meta = run_meta(plan, built)
    if part is not None:
        meta["part"] = {"index": int(part[0]), "count": int(part[1]), "start": plan.bounds[0], "stop": plan.bounds[1]}
    if plan.stored is not None:
        check_resumable(plan.stored, meta)  # before the store is opened for writing: a refusal changes nothing
    keys, mode = config.feature_keys, config.mode
    features = {k: (built.shapes[k], config.dtype) for k in keys}
    capacity = (plan.bounds[1] - plan.bounds[0]) * (1 + config.augment_copies)
    estimate = feature_bytes(features, capacity)
    if config.progress:  # the size up front, before anything is written
        print(f"fastfeat: {capacity} rows x {human_bytes(estimate / max(capacity, 1))} = {human_bytes(estimate)} "
              f"of features -> {config.output}", file=sys.stderr)  # fmt: skip
        if config.model_file and config.preprocess is None:  # said once, up front: not a silent default
            print(f"fastfeat: {config.model} is a model file: its inputs are raw 0..255 pixels (preprocess none); "
                  "pass --preprocess MODE (preprocess=) if it expects normalized ones", file=sys.stderr)  # fmt: skip
    if config.space_check and mode != "resume" and config.compression == "none":
        check_space(config.output, estimate)  # an uncompressed store claims all of it when it is created
    writer = StoreWriter(
        config.output, features,
        capacity=capacity, class_names=catalog.class_names,
        meta=meta,
        mode=mode, compression=config.compression,
    )  # fmt: skip
    report = ExtractReport(
        output=config.output, images=0, failures=0, seconds=0.0, images_per_second=0.0, model=meta["model"],
        layers=keys, shapes=built.shapes, precision=built.precision, batch_size=built.batch_size,
        device=built.runtime.device.spec, precision_auto=meta["precision_auto"], startup=startup,
        estimated_bytes=estimate,
    )  # fmt: skip
    try:
        stop.writing = True
        if mode == "resume":
            if plan.stored is None:  # not readable read-only; the writer's recovery opened it
                check_resumable(writer.meta, meta)
            plan = plan.without(writer.processed_indices())
            report.resumed_from = writer.rows
        normalization = config.normalization()
        copies = [config.augment.batch_transform(normalization, config.seed, copy=k)
                  for k in range(1, config.augment_copies + 1)]  # fmt: skip
        options = DecodeOptions(built.size, config.interpolation, config.exif, config.reduced_decode, config.max_pixels)
        cached = None
        if config.cache is not None:  # lazy: the cache module is not needed without one
            from .cache import ensure_cache

            cached = ensure_cache(config.cache, catalog, options, threads=built.runtime.threads.loader)
        loader = Loader(catalog, options, normalization, copies=copies, cache=cached)
        with built.runtime.device.scope():
            run_loop(
                loader, plan.positions, built.batch_size, built.infer, writer, report, config.on_error,
                config.progress, measure=built.measure, threads=built.runtime.threads.loader, stop=stop,
            )  # fmt: skip
        report.startup_seconds = report.startup_seconds - t_start if report.startup_seconds else 0.0
    except BaseException as e:
        report.interrupted = isinstance(e, KeyboardInterrupt)
        writer.close(complete=False)
        raise
    writer.close(complete=not report.interrupted)
    _warn_about_values(report, writer)
    report.seconds = time.perf_counter() - t_start
    return report


#: Share of float16 values flushed to zero above which a run warns (a few are harmless).
UNDERFLOW_SHARE = 1e-3


def _warn_about_values(report: ExtractReport, writer: StoreWriter) -> None:
    report.float16_underflow = writer.underflow
    if report.no_images:
        warnings.warn(report.no_images_message(), NoImagesWarning, stacklevel=5)  # the caller of extract()
    if report.nonfinite:
        warnings.warn(
            f"{report.nonfinite} feature values came out NaN/inf under precision {report.precision!r}: "
            "float16 loses range. Use precision='mixed_bfloat16' or 'float32' (--precision).",
            RuntimeWarning,
            stacklevel=5,  # the caller of extract()
        )
    if writer.underflow > UNDERFLOW_SHARE * writer.float16_values:
        warnings.warn(
            f"{writer.underflow} of {writer.float16_values} feature values "
            f"({100 * writer.underflow / writer.float16_values:.1f}%) are too small for float16 (|x| < 6e-8) and "
            "are stored as 0. Use dtype='float32' (--dtype float32) for this layer.",
            RuntimeWarning,
            stacklevel=5,  # the caller of extract()
        )
    if writer.overflow:
        warnings.warn(
            f"{writer.overflow} feature values overflowed float16 (|x| > 65504) and are stored as inf. "
            "Use dtype='float32' (--dtype float32) for this layer.",
            RuntimeWarning,
            stacklevel=5,  # the caller of extract()
        )
