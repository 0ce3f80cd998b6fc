"""Orchestration of one extraction run: catalog -> loader -> model -> store, with a report.

Loading runs ahead in tf.data (prefetch), inference runs batch by batch through one compiled
call (never ``Model.predict``, which keeps every output in memory), and a writer thread appends
each batch to the store while the next one is computed.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from ._version import __version__
from .catalog import build_catalog
from .decode import DEFAULT_MAX_PIXELS, DecodeError
from .loader import DecodeOptions, Loader
from .models import feature_key, get_spec, is_model_file, normalize_size, parse_layer
from .precision import PRECISIONS, check_precision
from .preprocess import get_normalization
from .store.writer import StoreWriter

DTYPES = ("float32", "float16")
ON_ERROR = ("skip", "raise")
DEFAULT_BATCH_SIZE = 32

#: Run settings that must match for ``--resume`` to continue a store.
RESUME_KEYS = (
    "model", "layers", "image_size", "interpolation", "preprocess", "precision", "dtype",
    "weights", "exif", "catalog_size", "class_names", "augment_copies", "augment", "seed",
)  # fmt: skip


@dataclass
class ExtractReport:
    """What a run did.

    Attributes:
        output: the store's path.
        images: images extracted by this run.
        rows: feature rows written by this run (images x (1 + augmented copies)).
        failures: files that could not be read in this run.
        seconds: wall-clock time of the whole run, model build included.
        images_per_second: steady-state throughput (after the first, warm-up batch).
        startup_seconds: catalog, model build and first batch.
        shapes: feature key -> row shape.
        stages: seconds spent waiting for input, in inference and waiting for the writer.
    """

    output: str
    images: int
    failures: int
    seconds: float
    images_per_second: float
    rows: int = 0
    steady: bool = True
    startup_seconds: float = 0.0
    model: str = ""
    layers: list[str] = field(default_factory=list)
    shapes: dict = field(default_factory=dict)
    precision: str = "float32"
    precision_auto: dict | None = None
    device: str = ""
    nonfinite: int = 0
    batch_size: int = 0
    interrupted: bool = False
    resumed_from: int = 0
    stages: dict = field(default_factory=dict)
    failure_list: list = field(default_factory=list)

    def summary(self) -> str:
        """A few human-readable lines for the end of a run."""
        lines = [
            f"fastfeat: {self.images} images -> {self.output} "
            f"({self.failures} failed) in {self.seconds:.1f} s, "
            f"{self.images_per_second:.1f} images/s "
            + ("steady state" if self.steady else "(a single batch: warm-up included)"),
        ]
        for key, shape in self.shapes.items():
            lines.append(f"  {key}: {tuple(shape)}")
        if self.precision_auto:
            rates = self.precision_auto.get("images_per_second", {})
            tried = ", ".join(f"{k} {v:.1f} img/s" for k, v in rates.items() if v) or "one candidate"
            lines.append(f"  precision: auto -> {self.precision} ({tried}; on {self.device})")
        elif self.device:
            lines.append(f"  precision: {self.precision} on {self.device}")
        if self.stages and self.steady:
            lines.append("  stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.stages.items()))
        for path, reason in self.failure_list[:10]:
            lines.append(f"  failed: {path}: {reason}")
        if len(self.failure_list) > 10:
            lines.append(f"  ... and {len(self.failure_list) - 10} more (see FeatureStore.failures)")
        if self.interrupted:
            lines.append("  interrupted: the store is incomplete; run again with --resume to finish it")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)


def _versions() -> dict:
    import cv2
    import h5py
    import keras
    import tensorflow as tf

    return {
        "fastfeat": __version__, "tensorflow": tf.__version__, "keras": keras.__version__,
        "numpy": np.__version__, "opencv": cv2.__version__, "h5py": h5py.__version__,
    }  # fmt: skip


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {', '.join(map(str, allowed))}. Received: {name}={value!r}")


def _weights_label(weights) -> str | None:
    if weights is None or (isinstance(weights, str) and weights.lower() == "none"):
        return None
    if weights == "imagenet":
        return "imagenet"
    return os.path.abspath(os.fspath(weights))


class _Writer(threading.Thread):
    """Appends batches to the store off the main thread; errors surface on the next put/join."""

    def __init__(self, writer: StoreWriter):
        super().__init__(name="fastfeat-writer", daemon=True)
        self.writer = writer
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.busy_seconds = 0.0

    def run(self):
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is not None:
                continue
            t0 = time.perf_counter()
            try:
                features, labels, paths, index, copy, failures = item
                self.writer.append(features, labels, paths, index, copy)
                self.writer.add_failures(*failures)
                self.writer.commit()
            except BaseException as e:  # noqa: BLE001 -- re-raised in the main thread
                self.error = e
            self.busy_seconds += time.perf_counter() - t0

    def put(self, item) -> float:
        """Queue a batch; returns the seconds spent waiting for room."""
        if self.error is not None:
            raise self.error
        t0 = time.perf_counter()
        self.queue.put(item)
        return time.perf_counter() - t0

    def finish(self):
        self.queue.put(None)
        self.join()
        if self.error is not None:
            raise self.error


def extract(
    source: str | os.PathLike,
    output: str | os.PathLike,
    model: str = "vgg19",
    layers: list[str] | str = ("block4_conv2",),
    image_size: int | tuple[int, int] | None = None,
    batch_size: int | None = None,
    weights: str | None = "imagenet",
    *,
    pool: str = "none",
    preprocess: str | None = None,
    interpolation: str = "bilinear",
    dtype: str = "float32",
    precision: str = "auto",
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
    progress: bool = True,
) -> ExtractReport:
    """Extract features of every image under ``source`` into the HDF5 store ``output``.

    Args:
        source: a folder of class subfolders, a flat folder, or a ``.txt``/``.csv`` file list.
        output: the ``.h5`` store to write.
        model: a keras.applications short name (``fastfeat.models.models()``) or a ``.keras``/``.h5`` file.
        layers: layer name(s) to cut at, each optionally ``name:avg`` or ``name:max``; one forward pass.
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
            ``mixed_bfloat16``), or ``auto``: measure float32 and every reduced precision the
            hardware supports on the first batch and keep the fastest whose features stay within
            2e-2 of float32 (see :func:`fastfeat.precision.choose_precision`).
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
        progress: show a progress bar.

    Returns:
        An :class:`ExtractReport`.
    """
    t_start = time.perf_counter()
    _check_choice("dtype", dtype, DTYPES)
    _check_choice("on_error", on_error, ON_ERROR)
    if overwrite and resume:
        raise ValueError("`overwrite` and `resume` exclude each other. Received: overwrite=True, resume=True")
    if isinstance(layers, str):
        layers = [layers]
    if not layers:
        raise ValueError("`layers` needs at least one layer name. Received: layers=[]")
    cuts = [parse_layer(spec, pool) for spec in layers]
    keys = [feature_key(*cut) for cut in cuts]
    if len(set(keys)) != len(keys):
        raise ValueError(f"`layers` repeats a cut. Received: layers={list(layers)}")
    augment_copies = int(augment_copies or 0)
    if augment_copies < 0:
        raise ValueError(f"`augment_copies` must be >= 0. Received: augment_copies={augment_copies}")
    if augment_copies and augment is None:
        raise ValueError("`augment_copies` needs `augment` (the augmentation to apply). Received: augment=None")
    if augment is not None and not augment_copies:
        raise ValueError(
            "`augment` is only used for augmented copies: pass augment_copies >= 1 (--augment-copies K). "
            f"Received: augment_copies={augment_copies}"
        )
    augment = _resolve_augment(augment)
    seed = 0 if seed is None else int(seed)
    check_precision(precision)
    batch_size_auto = batch_size is None
    batch_size = DEFAULT_BATCH_SIZE if batch_size is None else int(batch_size)
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1. Received: batch_size={batch_size}")
    output = os.fspath(output)
    if os.path.exists(output) and not (overwrite or resume):
        raise FileExistsError(f"{output!r} exists. Pass --overwrite to replace it, or --resume to complete it.")
    size = normalize_size(image_size)
    model_file = is_model_file(model)
    if not model_file:
        spec = get_spec(model)
        size = size or spec.default_size
        preprocess = preprocess or spec.preprocess
    else:
        preprocess = preprocess or "none"
    normalization = get_normalization(preprocess)

    catalog = build_catalog(source, classes=classes, follow_links=follow_links)

    from .models import build_base, extractor_builder, input_size_of, make_infer_fn, truncate
    from .runtime import choose_batch_size, configure

    runtime = configure(device)  # before any TensorFlow op: thread pools, visible device, memory growth
    requested_precision = precision
    build_precision = "float32" if precision == "auto" else precision
    with runtime.device.scope():
        base = build_base(model, size, weights=weights, precision=build_precision, safe_mode=not unsafe_model)
    if model_file:
        fixed = input_size_of(base)
        if size is None:
            if fixed is None:
                raise ValueError(f"{model!r} has no fixed input size: pass image_size (--image-size).")
            size = fixed
        elif fixed is not None and fixed != size:
            raise ValueError(f"{model!r} takes {fixed[0]}x{fixed[1]} inputs. Received: image_size={size}")
    with runtime.device.scope():
        extractor = truncate(base, cuts)
    shapes = {k: tuple(int(d) for d in extractor.output[k].shape[1:]) for k in keys}
    if batch_size_auto:
        batch_size = choose_batch_size(extractor, runtime.device, build_precision, images=len(catalog))
    if precision == "auto":
        infer, build = None, extractor_builder(base, cuts, safe_mode=not unsafe_model)
    else:
        infer, build = make_infer_fn(extractor), None

    meta = {
        "model": os.path.abspath(model) if model_file else get_spec(model).name,
        "layers": keys,
        "shapes": {k: list(v) for k, v in shapes.items()},
        "image_size": list(size),
        "interpolation": interpolation,
        "preprocess": normalization.mode,
        "precision": precision,
        "precision_requested": requested_precision,
        "precision_auto": None,
        "dtype": dtype,
        "weights": _weights_label(weights),
        "exif": bool(exif),
        "batch_size": batch_size,
        "batch_size_auto": batch_size_auto,
        "device": runtime.device.spec,
        "runtime": runtime.to_meta(),
        "source": os.path.abspath(os.fspath(source)),
        "catalog_size": len(catalog),
        "class_names": list(catalog.class_names),
        "augment_copies": augment_copies,
        "augment": augment.to_dict() if augment is not None else None,
        "seed": seed if augment_copies else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": _versions(),
    }
    mode = "resume" if (resume and os.path.exists(output)) else ("overwrite" if overwrite else "create")
    writer = StoreWriter(
        output,
        {k: (shapes[k], dtype) for k in keys},
        capacity=len(catalog) * (1 + augment_copies),
        class_names=catalog.class_names,
        meta=meta,
        mode=mode,
        compression=compression,
    )
    report = ExtractReport(
        output=output, images=0, failures=0, seconds=0.0, images_per_second=0.0, model=meta["model"],
        layers=keys, shapes=shapes, precision=precision, batch_size=batch_size, device=runtime.device.spec,
    )  # fmt: skip
    try:
        positions = np.arange(len(catalog), dtype=np.int64)
        if mode == "resume":
            stored = writer.meta
            if precision == "auto" and stored.get("precision") in PRECISIONS:
                # a resumed run keeps the precision the first run chose, so its rows match
                precision = report.precision = meta["precision"] = stored["precision"]
                infer, build = build(precision), None
            _check_resumable(stored, meta)
            done = writer.processed_indices()
            positions = np.setdiff1d(positions, done, assume_unique=True)
            report.resumed_from = writer.rows
        copies = [augment.batch_transform(normalization, seed, copy=k) for k in range(1, augment_copies + 1)]
        loader = Loader(
            catalog,
            DecodeOptions(size, interpolation, exif, reduced_decode, max_pixels),
            normalization,
            copies=copies,
        )
        with runtime.device.scope():
            _run(
                loader, positions, batch_size, infer, writer, report, on_error, progress,
                build=build, threads=runtime.threads.loader,
            )  # fmt: skip
        report.startup_seconds = report.startup_seconds - t_start if report.startup_seconds else 0.0
    except KeyboardInterrupt:
        report.interrupted = True
        writer.close(complete=False)
        raise
    except BaseException:
        writer.close(complete=False)
        raise
    writer.close(complete=True)
    if report.nonfinite:
        import warnings

        warnings.warn(
            f"{report.nonfinite} feature values came out NaN/inf under precision {report.precision!r}: "
            "float16 loses range. Use precision='mixed_bfloat16' or 'float32' (--precision).",
            RuntimeWarning,
            stacklevel=2,
        )
    if writer.overflow:
        import warnings

        warnings.warn(
            f"{writer.overflow} feature values overflowed float16 (|x| > 65504) and are stored as inf. "
            "Use dtype='float32' (--dtype float32) for this layer.",
            RuntimeWarning,
            stacklevel=2,
        )
    report.seconds = time.perf_counter() - t_start
    return report


def _resolve_augment(augment):
    """``None``, an ``Augment``, its dict, or a path to its JSON file -> ``Augment`` or ``None``."""
    if augment is None:
        return None
    from .augment import Augment

    if isinstance(augment, Augment):
        return augment
    if isinstance(augment, dict):
        return Augment.from_dict(augment)
    if isinstance(augment, (str, os.PathLike)):
        return Augment.from_json(os.fspath(augment))
    raise ValueError(f"`augment` must be an Augment, a dict or a JSON file path. Received: augment={augment!r}")


def _check_resumable(stored: dict, wanted: dict) -> None:
    diffs = [
        f"  {k}: store has {stored.get(k)!r}, this run has {wanted.get(k)!r}"
        for k in RESUME_KEYS
        if stored.get(k) != wanted.get(k)
    ]
    if diffs:
        raise ValueError("Cannot resume: the store was written with other settings:\n" + "\n".join(diffs))


def _infer_rows(infer, images, batch_size: int) -> dict[str, np.ndarray]:
    """Run the compiled model over ``images`` in slices of ``batch_size`` rows."""
    n = int(images.shape[0])
    if n <= batch_size:
        return {k: v.numpy() for k, v in infer(images).items()}
    parts = [infer(images[i : i + batch_size]) for i in range(0, n, batch_size)]
    return {k: np.concatenate([p[k].numpy() for p in parts]) for k in parts[0]}


def _run(loader, positions, batch_size, infer, writer, report, on_error, progress, build=None, threads=None):
    """The main loop: pull batches, infer, hand them to the writer thread.

    With ``infer=None`` (precision ``auto``), ``build`` (:func:`fastfeat.models.extractor_builder`)
    makes each candidate, and the first batch chooses the precision before anything is written.
    """
    from tqdm.auto import tqdm

    catalog = loader.catalog
    ds = loader.dataset(positions, batch_size, threads=threads)
    bar = tqdm(total=len(positions), unit="img", disable=not progress, dynamic_ncols=True, desc="extract")
    sink = _Writer(writer)
    sink.start()
    stages = {"input_wait": 0.0, "inference": 0.0, "writer_wait": 0.0}
    steady_images, steady_start = 0, None
    loop_start = time.perf_counter()
    interrupted = False
    try:
        iterator = iter(ds)
        while True:
            t0 = time.perf_counter()
            try:
                images, pos, ok, copy = next(iterator)
            except StopIteration:
                break
            t1 = time.perf_counter()
            outputs = None
            if infer is None:  # precision auto: measure on this first batch, before anything is written
                from .precision import choose_precision

                rows = images.numpy()
                choice = choose_precision(build, rows[:batch_size], device=report.device or "auto")
                infer = choice.extractor
                report.precision, report.precision_auto = choice.choice, choice.to_meta()
                writer.update_meta(precision=choice.choice, precision_auto=report.precision_auto)
                if choice.outputs is not None and len(rows) <= batch_size:
                    outputs = choice.outputs  # the chosen precision's features of this very batch
            if outputs is None:
                outputs = _infer_rows(infer, images, batch_size)
            if report.precision == "mixed_float16":
                from .precision import count_nonfinite

                report.nonfinite += count_nonfinite(outputs)
            t2 = time.perf_counter()
            pos, ok, copy = pos.numpy(), ok.numpy(), copy.numpy()
            plain = copy == 0
            if on_error == "raise" and not ok.all():
                bad = int(pos[~ok][0])
                raise DecodeError(loader.reasons.get(bad, "unreadable"), catalog.abspath(bad))
            keep = np.flatnonzero(ok)
            failed = [int(p) for p in pos[plain & ~ok]]
            failures = (
                failed,
                [catalog.paths[p] for p in failed],
                [loader.reasons.get(p, "unreadable") for p in failed],
            )
            kept_pos = pos[keep]
            item = (
                {k: v[keep] for k, v in outputs.items()},
                catalog.labels[kept_pos],
                [catalog.paths[p] for p in kept_pos],
                kept_pos,
                copy[keep],
                failures,
            )
            waited = sink.put(item)
            report.images += int(np.count_nonzero(ok & plain))
            report.rows += len(keep)
            report.failures += len(failed)
            report.failure_list.extend(zip(failures[1], failures[2]))
            bar.update(int(np.count_nonzero(plain)))
            if steady_start is None:
                steady_start = time.perf_counter()  # the first batch carries tracing and warm-up
                report.startup_seconds = steady_start
            else:
                steady_images += int(np.count_nonzero(plain))
                stages["input_wait"] += t1 - t0
                stages["inference"] += t2 - t1
                stages["writer_wait"] += waited
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        bar.close()
        try:
            sink.finish()  # the batches already handed over are written and committed
        except BaseException:
            if not interrupted:
                raise
    elapsed = time.perf_counter() - steady_start if steady_start is not None else 0.0
    if steady_images and elapsed > 0:
        report.images_per_second = steady_images / elapsed
    elif report.images:  # a single batch: no steady state to speak of, report it whole
        report.images_per_second = report.images / max(time.perf_counter() - loop_start, 1e-9)
        report.steady = False
    report.stages = {k: round(v, 3) for k, v in stages.items()}
    report.stages["writer_busy"] = round(sink.busy_seconds, 3)
