"""The model side of a run: runtime set-up, the (seeded) model build, the cut, the batch size and
``precision="auto"`` (decided before the build when no measuring is needed, else on the first
batch by :class:`AutoMeasure`). TensorFlow is imported by the functions here, not at import.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np

from ._version import __version__
from .config import ExtractConfig


@dataclass
class BuiltModel:
    """What :func:`build_model` made for a run.

    Attributes:
        runtime: the :class:`fastfeat.runtime.Runtime` (device and thread plan).
        size: input (height, width).
        shapes: feature key -> row shape (in cut order; the keys of a model file's default cut
            are known only here).
        batch_size: images per forward pass (chosen when the config left it to us).
        batch_size_auto: whether it was chosen.
        precision: the inference precision, or ``"auto"`` while it is still to be measured.
        auto: the :class:`fastfeat.precision_auto.PrecisionChoice` taken before the build, if any.
        infer: the compiled forward pass, or ``None`` while ``auto`` is to be measured (``measure``).
        measure: an :class:`AutoMeasure` for the first batch, or ``None``.
        init_seed: the seed of a random initialization (``weights=None``), else ``None``.
        build_seconds: runtime set-up and model build.
    """

    runtime: object
    size: tuple[int, int]
    shapes: dict
    batch_size: int
    batch_size_auto: bool
    precision: str
    auto: object
    infer: object
    measure: object
    init_seed: int | None
    build_seconds: float


def import_tensorflow_quietly() -> None:
    """Import TensorFlow and probe its devices with file descriptor 2 muted.

    Its C++ libraries print start-up lines (absl, CUDA probing on machines without a GPU)
    that ignore ``TF_CPP_MIN_LOG_LEVEL``. Import errors still surface as Python exceptions
    once stderr is back. The CLI and every run (:func:`build_model`) import it through here. ``FASTFEAT_TF_VERBOSE=1`` keeps the chatter (e.g. to see why a GPU
    was not found).
    """
    if "tensorflow" in sys.modules or os.environ.get("FASTFEAT_TF_VERBOSE"):
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                import tensorflow as tf

                tf.config.list_physical_devices("GPU")  # the CUDA probe prints here too
            except Exception:  # noqa: BLE001 -- re-raised below with stderr restored
                os.dup2(saved, 2)
                raise
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def build_model(config: ExtractConfig, precision: str, batch_size: int | None, images: int) -> BuiltModel:
    """Set up the runtime and build the cut model for ``config``.

    Args:
        config: the run.
        precision: the precision to build at, or ``"auto"`` (a resumed run passes the store's).
        batch_size: the batch size, or ``None`` to choose it within memory.
        images: the number of images of the job (bounds the chosen batch size).
    """
    import_tensorflow_quietly()  # the Python API mutes TensorFlow's start-up chatter as the CLI does
    from .models import caller_rng_kept

    with caller_rng_kept():  # Keras draws default seeds from the caller's generators
        return _build_model(config, precision, batch_size, images)


def _build_model(config: ExtractConfig, precision: str, batch_size: int | None, images: int) -> BuiltModel:
    from .loader import default_ahead
    from .models import build_base, extractor_builder, feature_key, load_weights, make_infer_fn, seeded_init, truncate
    from .runtime import choose_batch_size, configure

    t_build = time.perf_counter()
    runtime = configure(config.device)  # before any TensorFlow op: thread pools, visible device, memory growth
    size, keys, cuts = config.default_size, config.feature_keys, config.cuts
    auto, auto_key = None, None
    if precision == "auto":  # a decision that needs no measuring is taken before the model is built
        auto, auto_key = _auto_without_measuring(
            runtime.device, config.model, keys or [f"(last layer):{config.pool}"], size, batch_size,
            config.remeasure_precision,
        )
        if auto is not None:
            precision = auto.choice
    build_precision = "float32" if precision == "auto" else precision
    model_file = config.model_file
    init_seed = 0 if config.weights is None and not model_file else None  # reruns and resumes match
    with runtime.device.scope(), seeded_init(init_seed) if init_seed is not None else nullcontext():
        base = build_base(config.model, size, weights=None if model_file else config.weights,
                          precision=build_precision, safe_mode=not config.unsafe_model)  # fmt: skip
        if model_file:
            size = _model_file_size(config.model, base, size)
            if config.weights not in (None, "imagenet"):
                load_weights(base, os.fspath(config.weights), repr(config.model))
        if not cuts:  # a model file at its default cut: its last layer
            cuts = [(base.layers[-1].name, config.pool)]
            keys = [feature_key(*cut) for cut in cuts]
        extractor = truncate(base, cuts)
    build_seconds = time.perf_counter() - t_build
    shapes = {k: tuple(int(d) for d in extractor.output[k].shape[1:]) for k in keys}
    batch_size_auto = batch_size is None
    if batch_size_auto:
        threads = runtime.threads.loader
        in_flight = (threads + default_ahead(threads)) * (1 + config.augment_copies)
        batch_size = choose_batch_size(extractor, runtime.device, build_precision, images=images,
                                       input_batches=in_flight)  # fmt: skip
    batch_size = int(batch_size)
    infer, measure = None, None
    if precision == "auto":  # measured on the first batch, before anything is written
        measure = AutoMeasure(
            build=extractor_builder(base, cuts, safe_mode=not config.unsafe_model), key=auto_key,
            candidates=_native_precisions(runtime.device), remeasure=config.remeasure_precision,
            build_seconds=build_seconds,
        )  # fmt: skip
    else:
        infer = make_infer_fn(extractor)
    return BuiltModel(runtime, tuple(size), shapes, batch_size, batch_size_auto, precision, auto, infer, measure,
                      init_seed, build_seconds)  # fmt: skip


def library_versions() -> dict:
    """Versions of fastfeat and the libraries that shape its features (for the store's meta)."""
    import cv2
    import h5py
    import keras
    import tensorflow as tf

    return {
        "fastfeat": __version__, "tensorflow": tf.__version__, "keras": keras.__version__,
        "numpy": np.__version__, "opencv": cv2.__version__, "h5py": h5py.__version__,
    }  # fmt: skip


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
    versions = library_versions()
    key = A.decision_key(
        machine=A.machine_id(device.kind, device.name, device.compute_capability), model=A.model_id(model),
        layers=keys, image_size=size, batch_size=batch_size, versions=versions,
    )  # fmt: skip
    if remeasure:
        return None, key
    return A.cached_choice(A.DecisionCache(), key), key


@dataclass
class AutoMeasure:
    """Decides ``precision="auto"`` on the first batch (:func:`fastfeat.precision_auto.decide_precision`),
    records the choice in the report and caches a measured decision."""

    build: object
    key: dict | None
    candidates: list
    remeasure: bool = False
    build_seconds: float = 0.0

    def __call__(self, rows: np.ndarray, rows_total: int, report):
        from . import precision_auto as A
        from .models import caller_rng_kept

        with caller_rng_kept():  # the candidates' rebuilds draw default seeds too
            return self._decide(A, rows, rows_total, report)

    def _decide(self, A, rows, rows_total, report):
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
