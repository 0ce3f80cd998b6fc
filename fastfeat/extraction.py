"""Orchestration of one extraction run: catalog -> loader -> model -> store, with a report.

Loading runs ahead on the loader's worker threads, inference runs batch by batch through one compiled
call (never ``Model.predict``, which keeps every output in memory), and a writer thread appends
each batch to the store while the next one is computed.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np

from ._version import __version__
from .catalog import build_catalog
from .decode import DEFAULT_MAX_PIXELS, DecodeError
from .loader import DecodeOptions, Loader, default_ahead
from .models import feature_key, get_spec, is_model_file, normalize_size, parse_layer
from .precision import PRECISIONS, check_precision
from .preprocess import MODES, get_normalization
from .runtime import parse_device
from .store.writer import StoreWriter, check_output_dir, parse_compression

DTYPES = ("float32", "float16")
ON_ERROR = ("skip", "raise")

#: Run settings that must match for ``--resume`` to continue a store.
RESUME_KEYS = (
    "model", "layers", "image_size", "interpolation", "preprocess", "precision", "dtype", "weights",
    "init_seed", "exif", "reduced_decode", "max_pixels", "follow_links", "compression", "batch_size",
    "catalog_size", "catalog_sha256", "class_names", "augment_copies", "augment", "seed",
)  # fmt: skip


@dataclass
class ExtractReport:
    """What a run did.

    Attributes:
        output: the store's path.
        images: images extracted by this run (a resumed run counts only its own).
        rows: feature rows written by this run (images x (1 + augmented copies)).
        failures: files that could not be read in this run.
        seconds: wall-clock time of the whole run, model build included.
        images_per_second: steady-state throughput (after the first, warm-up batch).
        startup_seconds: catalog, model build and first batch.
        startup: start-up stage by stage, seconds: ``catalog``, ``model_build`` (TensorFlow runtime
            and the model), ``precision`` (deciding ``auto``), ``first_batch`` (waiting for the first
            input batch, tracing and inferring it).
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
    startup: dict = field(default_factory=dict)
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
        if self.resumed_from:
            lines.append(f"  resumed: {self.resumed_from} rows were already in the store")
        for key, shape in self.shapes.items():
            lines.append(f"  {key}: {tuple(shape)}")
        if self.precision_auto:
            auto = self.precision_auto
            rates = ", ".join(f"{k} {v:.1f} img/s" for k, v in auto.get("images_per_second", {}).items() if v)
            detail = f"{auto.get('source')}{': ' + rates if rates else ''}; {auto.get('reason', '')}"
            lines.append(f"  precision: auto -> {self.precision} on {self.device} ({detail})")
        elif self.device:
            lines.append(f"  precision: {self.precision} on {self.device}")
        if self.startup:
            lines.append(f"  start-up {self.startup_seconds:.1f} s: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.startup.items()))
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


def _weights_label(weights, model_file: bool = False) -> str | None:
    if model_file and weights in (None, "imagenet"):
        return "model file"
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
        self._closing = False

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
        if not self._closing:
            self._closing = True
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
        progress: show a progress bar.

    Returns:
        An :class:`ExtractReport`.
    """
    t_start = time.perf_counter()
    _STOP.clear()  # a stop requested from here on (start-up included) ends the run after one batch
    # -- every argument is checked before anything is read, built or written -----------------
    _check_choice("dtype", dtype, DTYPES)
    _check_choice("on_error", on_error, ON_ERROR)
    check_precision(precision)
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
    augment, augment_copies, seed = _check_augment(augment, augment_copies, seed)
    batch_size_auto = batch_size is None
    if not batch_size_auto and int(batch_size) < 1:
        raise ValueError(f"`batch_size` must be >= 1. Received: batch_size={batch_size}")
    output = os.fspath(output)
    if os.path.exists(output) and not (overwrite or resume):
        raise FileExistsError(f"{output!r} exists. Pass --overwrite to replace it, or --resume to complete it.")
    check_output_dir(output)
    parse_compression(compression)
    parse_device(device)
    size = normalize_size(image_size)
    model_file = is_model_file(model)
    if model_file:
        if not os.path.exists(model):
            raise FileNotFoundError(f"No such model file: {model!r}")
    else:
        spec = get_spec(model)
        size = size or spec.default_size
    normalization = get_normalization(_resolve_preprocess(preprocess, None if model_file else spec))
    options = DecodeOptions(size or (1, 1), interpolation, exif, reduced_decode, max_pixels)

    catalog = build_catalog(source, classes=classes, follow_links=follow_links)
    startup = {"catalog": time.perf_counter() - t_start}
    stored = _stored_meta(output) if resume and os.path.exists(output) else None
    requested_precision = precision
    if stored is not None:  # a resumed run keeps what the first run chose, so its rows match
        if precision == "auto" and stored.get("precision") in PRECISIONS:
            precision = stored["precision"]
        if batch_size_auto and isinstance(stored.get("batch_size"), int):
            batch_size, batch_size_auto = stored["batch_size"], False

    from .models import build_base, extractor_builder, make_infer_fn, truncate
    from .runtime import choose_batch_size, configure

    t_build = time.perf_counter()
    runtime = configure(device)  # before any TensorFlow op: thread pools, visible device, memory growth
    auto, auto_key = None, None
    if precision == "auto":  # a decision that needs no measuring is taken before the model is built
        auto, auto_key = _auto_without_measuring(runtime.device, model, keys, size, batch_size, remeasure_precision)
        if auto is not None:
            precision = auto.choice
    build_precision = "float32" if precision == "auto" else precision
    init_seed = None
    if weights is None and not model_file:
        import keras

        init_seed = 0  # random init is seeded: reruns and resumes of `weights=None` runs match
        keras.utils.set_random_seed(init_seed)
    with runtime.device.scope():
        base = build_base(model, size, weights=None if model_file else weights, precision=build_precision,
                          safe_mode=not unsafe_model)  # fmt: skip
        if model_file:
            size = _model_file_size(model, base, size)
            if weights not in (None, "imagenet"):
                base.load_weights(os.fspath(weights))
        extractor = truncate(base, cuts)
    options.size = size
    startup["model_build"] = time.perf_counter() - t_build
    shapes = {k: tuple(int(d) for d in extractor.output[k].shape[1:]) for k in keys}
    if batch_size_auto:
        loader_threads = runtime.threads.loader
        batch_size = choose_batch_size(extractor, runtime.device, build_precision, images=len(catalog),
                                       input_batches=(loader_threads + default_ahead(loader_threads)) * (1 + augment_copies))  # fmt: skip
    batch_size = int(batch_size)
    if precision == "auto":  # measured on the first batch, before anything is written
        measure = _AutoMeasure(
            build=extractor_builder(base, cuts, safe_mode=not unsafe_model), key=auto_key,
            candidates=_native_precisions(runtime.device), remeasure=remeasure_precision,
            build_seconds=startup["model_build"],
        )  # fmt: skip
        infer = None
    else:
        infer, measure = make_infer_fn(extractor), None

    meta = {
        "model": os.path.abspath(model) if model_file else get_spec(model).name,
        "layers": keys,
        "shapes": {k: list(v) for k, v in shapes.items()},
        "image_size": list(size),
        "interpolation": interpolation,
        "preprocess": normalization.mode,
        "precision": precision,
        "precision_requested": requested_precision,
        "precision_auto": auto.to_meta() if auto is not None else None,
        "dtype": dtype,
        "weights": _weights_label(weights, model_file),
        "init_seed": init_seed,
        "exif": bool(exif),
        "reduced_decode": bool(reduced_decode),
        "max_pixels": max_pixels,
        "follow_links": bool(follow_links),
        "compression": compression or "none",
        "batch_size": batch_size,
        "batch_size_auto": batch_size_auto,
        "device": runtime.device.spec,
        "runtime": runtime.to_meta(),
        "source": os.path.abspath(os.fspath(source)),
        "catalog_size": len(catalog),
        "catalog_sha256": _fingerprint(catalog),
        "class_names": list(catalog.class_names),
        "augment_copies": augment_copies,
        "augment": augment.to_dict() if augment is not None else None,
        "seed": seed if augment_copies else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": _versions(),
    }
    if stored is not None:
        _check_resumable(stored, meta)  # before the store is opened for writing: a refusal changes nothing
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
        precision_auto=meta["precision_auto"], startup=startup,
    )  # fmt: skip
    try:
        positions = np.arange(len(catalog), dtype=np.int64)
        if mode == "resume":
            if stored is None:  # not readable read-only; the writer's recovery opened it
                _check_resumable(writer.meta, meta)
            positions = np.setdiff1d(positions, writer.processed_indices(), assume_unique=True)
            report.resumed_from = writer.rows
        copies = [augment.batch_transform(normalization, seed, copy=k) for k in range(1, augment_copies + 1)]
        loader = Loader(catalog, options, normalization, copies=copies)
        with runtime.device.scope():
            _run(
                loader, positions, batch_size, infer, writer, report, on_error, progress,
                measure=measure, threads=runtime.threads.loader,
            )  # fmt: skip
        report.startup_seconds = report.startup_seconds - t_start if report.startup_seconds else 0.0
    except BaseException as e:
        report.interrupted = isinstance(e, KeyboardInterrupt)
        writer.close(complete=False)
        raise
    writer.close(complete=not report.interrupted)
    if report.nonfinite:
        warnings.warn(
            f"{report.nonfinite} feature values came out NaN/inf under precision {report.precision!r}: "
            "float16 loses range. Use precision='mixed_bfloat16' or 'float32' (--precision).",
            RuntimeWarning,
            stacklevel=2,
        )
    if writer.overflow:
        warnings.warn(
            f"{writer.overflow} feature values overflowed float16 (|x| > 65504) and are stored as inf. "
            "Use dtype='float32' (--dtype float32) for this layer.",
            RuntimeWarning,
            stacklevel=2,
        )
    report.seconds = time.perf_counter() - t_start
    return report


def request_stop() -> None:
    """Ask a running :func:`extract` to stop after the batch in flight (thread- and signal-safe).

    The batch is written and committed, the store is left incomplete and resumable, and
    ``extract`` returns its report with ``interrupted=True``. The CLI calls this on the first
    Ctrl-C or SIGTERM.
    """
    _STOP.set()


_STOP = threading.Event()


def _check_augment(augment, augment_copies, seed):
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
    return _resolve_augment(augment), augment_copies, 0 if seed is None else int(seed)


def _resolve_preprocess(preprocess, spec) -> str:
    """A mode name from ``preprocess`` (a mode or a model short name) or the model's own default."""
    if preprocess is None:
        return spec.preprocess if spec is not None else "none"
    if str(preprocess).lower() in MODES:
        return str(preprocess).lower()
    try:
        return get_spec(preprocess).preprocess
    except ValueError:
        raise ValueError(
            f"`preprocess` must be one of {', '.join(MODES)} or a model name (its normalization). "
            f"Received: preprocess={preprocess!r}"
        ) from None


def _model_file_size(model: str, base, size):
    from .models import input_size_of

    fixed = input_size_of(base)
    if size is None:
        if fixed is None:
            raise ValueError(f"{model!r} has no fixed input size: pass image_size (--image-size).")
        return fixed
    if fixed is not None and fixed != tuple(size):
        raise ValueError(f"{model!r} takes {fixed[0]}x{fixed[1]} inputs. Received: image_size={size}")
    return size


def _fingerprint(catalog) -> str:
    """sha256 of the catalog's paths and labels, in order: a resume must see the same files."""
    digest = hashlib.sha256()
    for path in catalog.paths:
        digest.update(os.fsencode(path) + b"\0")
    digest.update(np.ascontiguousarray(catalog.labels, dtype=np.int64).tobytes())
    return digest.hexdigest()


def _stored_meta(output: str) -> dict | None:
    """The run description of an existing store, read-only; ``None`` if it cannot be read (the
    writer then says why it cannot be resumed)."""
    from .store import open_store

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an incomplete store is exactly what a resume expects
            with open_store(output) as store:
                return dict(store.meta)
    except Exception:  # noqa: BLE001 -- damaged or foreign: StoreWriter(mode="resume") reports it
        return None


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


def _native_precisions(device) -> list[str]:
    from .precision import native_precisions

    return native_precisions(device.kind, device.compute_capability)


def _auto_without_measuring(device, model, keys, size, batch_size, remeasure):
    """``precision="auto"`` decided before the model is built, where that needs no measuring: float32
    when it is the only native precision, or a decision cached by an earlier run with the same key.

    Returns:
        ``(PrecisionChoice or None, decision key or None)``; ``None`` choice: measure on the first batch.
    """
    from . import precision_auto as A

    candidates = _native_precisions(device)
    if len(candidates) == 1:
        choice = A.PrecisionChoice(
            choice="float32", source="native", candidates=candidates,
            reason=f"float32 is the only precision {device.spec} runs natively",
        )  # fmt: skip
        return choice, None
    versions = _versions()
    key = A.decision_key(
        machine=A.machine_id(device.kind, device.name, device.compute_capability), model=A.model_id(model),
        layers=keys, image_size=size, batch_size=batch_size, versions=versions,
    )  # fmt: skip
    if remeasure:
        return None, key
    return A.cached_choice(A.DecisionCache(), key), key


@dataclass
class _AutoMeasure:
    """Decides ``precision="auto"`` on the first batch (:func:`fastfeat.precision_auto.decide_precision`),
    records the choice in the report and caches a measured decision."""

    build: object
    key: dict | None
    candidates: list
    remeasure: bool = False
    build_seconds: float = 0.0

    def __call__(self, rows: np.ndarray, rows_total: int, report: ExtractReport):
        from . import precision_auto as A

        kind = "gpu" if report.device.startswith("gpu") else "cpu"
        probe = rows[: A.probe_rows(len(rows), kind, self.remeasure)]
        choice = A.decide_precision(
            self.build, probe, self.candidates, rows_total, remeasure=self.remeasure, build_seconds=self.build_seconds,
        )  # fmt: skip
        if self.key is not None:
            choice.key = A.key_digest(self.key)
            if choice.source == "measured" and A.DecisionCache().put(choice.key, self.key, choice):
                choice.reason += "; cached for the next runs"
        report.precision, report.precision_auto = choice.choice, choice.to_meta()
        return choice.extractor


def _infer_rows(infer, images, batch_size: int) -> dict[str, np.ndarray]:
    """Run the compiled model over ``images`` in slices of ``batch_size`` rows."""
    n = int(images.shape[0])
    if n <= batch_size:
        return {k: v.numpy() for k, v in infer(images).items()}
    parts = [infer(images[i : i + batch_size]) for i in range(0, n, batch_size)]
    return {k: np.concatenate([p[k].numpy() for p in parts]) for k in parts[0]}


def _finish_writer(sink: _Writer, interrupted: bool) -> None:
    """Write and commit the batches already handed over; the writer thread is always joined (a
    second Ctrl-C does not abandon it half-way through a batch)."""
    while True:
        try:
            sink.finish()
            return
        except KeyboardInterrupt:
            if not sink.is_alive():
                return
        except BaseException:
            if not interrupted:
                raise
            return


def _run(loader, positions, batch_size, infer, writer, report, on_error, progress, measure=None, threads=None):
    """The main loop: pull batches, infer, hand them to the writer thread.

    With ``infer=None`` (precision ``auto`` without a cached decision), ``measure`` (an
    :class:`_AutoMeasure`) decides on a few images of the first batch before anything is written.
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
            if infer is None:  # precision auto: decide on this first batch, before anything is written
                t_auto = time.perf_counter()
                rows_total = len(positions) * (1 + len(loader.copies))
                readable = ok.numpy()
                rows = images.numpy()
                infer = measure(rows[readable] if readable.any() else rows, rows_total, report)
                writer.update_meta(precision=report.precision, precision_auto=report.precision_auto)
                report.startup["precision"] = time.perf_counter() - t_auto
                t1 = time.perf_counter()
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
                report.startup["first_batch"] = steady_start - t0 - report.startup.get("precision", 0.0)
            else:
                steady_images += int(np.count_nonzero(ok & plain))
                stages["input_wait"] += t1 - t0
                stages["inference"] += t2 - t1
                stages["writer_wait"] += waited
            if _STOP.is_set():  # request_stop(): the batch in flight is handed over; stop here
                report.interrupted = True
                break
    except BaseException:
        interrupted = True
        raise
    finally:
        iterator = None  # stops the loader's workers now (not when a traceback lets go of this frame)
        bar.close()
        _finish_writer(sink, interrupted)
    elapsed = time.perf_counter() - steady_start if steady_start is not None else 0.0
    if steady_images and elapsed > 0:
        report.images_per_second = steady_images / elapsed
    elif report.images:  # a single batch: no steady state to speak of, report it whole
        report.images_per_second = report.images / max(time.perf_counter() - loop_start, 1e-9)
        report.steady = False
    report.stages = {k: round(v, 3) for k, v in stages.items()}
    report.stages["writer_busy"] = round(sink.busy_seconds, 3)
