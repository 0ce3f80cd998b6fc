"""Inference precision: Keras dtype policies, what the hardware runs fast, and ``auto`` selection.

Reduced precision is not always faster (on a CPU without bf16 instructions ``mixed_bfloat16`` is
emulated and slower; MobileNetV2 loses even where it is native), so ``auto`` *measures*: it runs
float32 and every reduced precision the hardware supports on the first real batch, rejects the
ones whose features stray from float32 by more than ``tolerance`` (max-norm relative error) or
overflow, and keeps the fastest. The record (:class:`PrecisionChoice`) goes into the store's
metadata and the run's report.

A saved model keeps one dtype policy per layer in its config, so the global policy does not
reach it: :func:`rebuild_with_policy` rebuilds it from its config with the policies replaced and
copies the weights over. This module imports Keras and TensorFlow lazily.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
PRECISION_CHOICES = (*PRECISIONS, "auto")
DEFAULT_TOLERANCE = 2e-2
#: A reduced precision replaces float32 only if it is at least this much faster (noise guard).
MIN_SPEEDUP = 1.05

_FLOAT_POLICIES = {"float32", "float16", "bfloat16", "float64", *PRECISIONS[1:]}
_POLICY_CLASSES = {"DTypePolicy", "FloatDTypePolicy"}
_CPU_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # x86 AVX-512 BF16 / AMX; "bf16" is aarch64's


def check_precision(precision: str, allow_auto: bool = True) -> str:
    """Return ``precision`` if it is a known policy name (or ``auto``); ``ValueError`` otherwise."""
    allowed = PRECISION_CHOICES if allow_auto else PRECISIONS
    if precision not in allowed:
        raise ValueError(f"`precision` must be one of {', '.join(allowed)}. Received: precision={precision!r}")
    return precision


# -- what the hardware supports -----------------------------------------------------------------
def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags of the first processor in ``/proc/cpuinfo`` (empty where unreadable)."""
    try:
        with open(path) as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip().lower() in ("flags", "features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def cpu_supports_bf16(flags: frozenset[str] | set[str] | None = None) -> bool:
    """True if the CPU has native bfloat16 arithmetic (AVX512_BF16, AMX-BF16, or aarch64 BF16)."""
    flags = cpu_flags() if flags is None else flags
    return bool(_CPU_BF16_FLAGS & set(flags))


def gpu_precisions(compute_capability: tuple[int, int] | None) -> list[str]:
    """Reduced precisions a GPU runs fast: float16 from compute capability 7.0, bfloat16 from 8.0."""
    if compute_capability is None:
        return []
    out = []
    if tuple(compute_capability) >= (7, 0):
        out.append("mixed_float16")
    if tuple(compute_capability) >= (8, 0):
        out.append("mixed_bfloat16")
    return out


def available_precisions(device: str = "auto", flags: frozenset[str] | None = None) -> list[str]:
    """Precisions worth measuring on ``device``: always ``float32``, plus the natively supported ones.

    Args:
        device: ``"auto"`` (the first GPU if TensorFlow sees one, else the CPU), ``"cpu"``, ``"gpu"``
            or ``"gpu:N"`` (see :func:`fastfeat.runtime.parse_device`).
        flags: CPU flags to judge by (default: this machine's ``/proc/cpuinfo``).

    Returns:
        A list starting with ``"float32"``.
    """
    from .runtime import gpu_compute_capability, parse_device

    kind, index = parse_device(device)
    out = ["float32"]
    if kind in ("auto", "gpu"):
        capability = gpu_compute_capability(index or 0)
        if capability is not None or kind == "gpu":
            return out + gpu_precisions(capability)
    if cpu_supports_bf16(flags):
        out.append("mixed_bfloat16")
    return out


# -- rebuilding a model under a policy ----------------------------------------------------------
def policy_names(model) -> set[str]:
    """The dtype policy names of every layer of ``model`` except its inputs."""
    names = set()
    for layer in _all_layers(model):
        if type(layer).__name__ == "InputLayer":
            continue
        policy = getattr(layer, "dtype_policy", None)
        if policy is not None:
            names.add(policy.name)
    return names


def _all_layers(model):
    for layer in getattr(model, "layers", []):
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def _replace_policies(obj, precision: str, counter: list):
    """Copy of a serialized Keras config with every float layer policy set to ``precision``."""
    if isinstance(obj, list):
        return [_replace_policies(v, precision, counter) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if obj.get("class_name") in _POLICY_CLASSES and isinstance(obj.get("config"), dict):
        if obj["config"].get("name") in _FLOAT_POLICIES:
            counter[0] += 1
            return {**obj, "config": {**obj["config"], "name": precision}}
        return obj  # quantized and other special policies stay as they are
    out = {k: _replace_policies(v, precision, counter) for k, v in obj.items()}
    config = out.get("config")
    if out.get("class_name") != "InputLayer" and isinstance(config, dict):
        dtype = config.get("dtype")  # older Keras 3 files store a plain string
        if isinstance(dtype, str) and dtype in _FLOAT_POLICIES:
            counter[0] += 1
            out["config"] = {**config, "dtype": precision}
    return out


def rebuild_with_policy(model, precision: str, safe_mode: bool = True):
    """A copy of ``model`` with every layer under the dtype policy ``precision``, same weights.

    Keras 3 stores a policy per layer in the model config, so setting the global policy before
    loading a saved model changes nothing; this rebuilds the model from its config with the
    policies replaced, then copies the weights (variables stay float32 under mixed policies).

    Args:
        model: a Keras model that can be serialized (functional or Sequential; custom layers must
            implement ``get_config`` and be registered, as for loading).
        precision: one of :data:`PRECISIONS`.
        safe_mode: refuse to deserialize code (lambdas), as ``keras.saving.load_model`` does.

    Returns:
        The rebuilt model, or ``model`` itself if every layer already uses ``precision``.

    Raises:
        ValueError: if the model cannot be rebuilt from its config.
    """
    import keras

    check_precision(precision, allow_auto=False)
    if policy_names(model) <= {precision}:
        return model
    try:
        config = keras.saving.serialize_keras_object(model)
        counter = [0]
        config = _replace_policies(config, precision, counter)
        rebuilt = keras.saving.deserialize_keras_object(config, safe_mode=safe_mode)
        rebuilt.set_weights(model.get_weights())
    except (NotImplementedError, TypeError, ValueError, KeyError, AttributeError) as e:
        raise ValueError(
            f"Could not rebuild model {getattr(model, 'name', model)!r} under precision {precision!r} "
            f"({type(e).__name__}: {e}). Use precision='float32' (--precision float32) for this model. "
            f"Received: precision={precision!r}"
        ) from e
    return rebuilt


# -- measuring ----------------------------------------------------------------------------------
def relative_error(reference, candidate) -> float:
    """Max-norm relative error ``max|candidate - reference| / max|reference|`` (NaN/inf -> ``inf``).

    Both may be arrays or dicts of arrays with the same keys; for dicts the worst key counts.
    """
    if isinstance(reference, Mapping):
        if set(reference) != set(candidate):
            raise ValueError(
                f"Outputs have different keys: {sorted(reference)} vs {sorted(candidate)}. "
                f"Received: candidate keys={sorted(candidate)}"
            )
        return max((relative_error(reference[k], candidate[k]) for k in reference), default=0.0)
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape:
        raise ValueError(f"Output shapes differ: {ref.shape} vs {cand.shape}. Received: candidate shape={cand.shape}")
    if not np.isfinite(cand).all():
        return float("inf")
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    diff = float(np.max(np.abs(cand - ref))) if ref.size else 0.0
    return diff / scale if scale > 0 else diff


def count_nonfinite(outputs) -> int:
    """Number of NaN/inf values in an array or a dict of arrays (float16 loss of range shows as inf)."""
    if isinstance(outputs, Mapping):
        return sum(count_nonfinite(v) for v in outputs.values())
    values = np.asarray(outputs)
    return int(values.size - np.count_nonzero(np.isfinite(values)))


@dataclass
class PrecisionChoice:
    """What ``auto`` measured and chose.

    Attributes:
        choice: the precision kept.
        candidates: the precisions tried, float32 first.
        errors: precision -> max-norm relative error of its features against float32 (same batch).
        images_per_second: precision -> best measured inference rate on the batch.
        rejected: precision -> why it was not eligible (error over tolerance, overflow, build failure).
        tolerance: the relative error allowed.
        batch_size: images in the measured batch.
        seconds: time the whole selection took (builds, tracing and timed runs).
        extractor: what ``build_extractor`` returned for the chosen precision (not in the metadata).
        outputs: the chosen precision's features of the measured batch, as NumPy arrays (write them
            instead of computing the batch again); ``None`` when nothing was measured.
    """

    choice: str
    candidates: list[str]
    errors: dict[str, float] = field(default_factory=dict)
    images_per_second: dict[str, float] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    tolerance: float = DEFAULT_TOLERANCE
    batch_size: int = 0
    seconds: float = 0.0
    extractor: object = field(default=None, repr=False, compare=False)
    outputs: object = field(default=None, repr=False, compare=False)

    def to_meta(self) -> dict:
        """A JSON-safe dict for the store's metadata and the report (no ``extractor``)."""

        def num(v):
            return None if v is None or not np.isfinite(v) else round(float(v), 6)

        return {
            "choice": self.choice,
            "candidates": list(self.candidates),
            "errors": {k: num(v) for k, v in self.errors.items()},
            "images_per_second": {k: num(v) for k, v in self.images_per_second.items()},
            "rejected": dict(self.rejected),
            "tolerance": self.tolerance,
            "batch_size": self.batch_size,
            "seconds": round(self.seconds, 3),
        }

    def summary(self) -> str:
        """One line for the end of a run."""
        parts = []
        for p in self.candidates:
            rate = self.images_per_second.get(p)
            err = self.errors.get(p)
            text = p
            if rate is not None:
                text += f" {rate:.1f} img/s"
            if err is not None and p != "float32":
                text += f" err {err:.1e}"
            if p in self.rejected:
                text += f" (rejected: {self.rejected[p]})"
            parts.append(text)
        return f"precision auto -> {self.choice}: " + "; ".join(parts)


def _to_numpy(outputs):
    if isinstance(outputs, Mapping):
        return {k: _to_numpy(v) for k, v in outputs.items()}
    return outputs.numpy() if hasattr(outputs, "numpy") else np.asarray(outputs)


def _time_calls(fn, batch, repeats: int) -> tuple[float, object]:
    """Best-of-``repeats`` seconds of ``fn(batch)`` (outputs fetched to host, so GPUs are synced)."""
    best, outputs = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        outputs = _to_numpy(fn(batch))
        best = min(best, time.perf_counter() - t0)
    return best, outputs


def choose_precision(
    build_extractor: Callable[[str], Callable],
    batch: np.ndarray,
    candidates: list[str] | None = None,
    repeats: int = 1,
    tolerance: float = DEFAULT_TOLERANCE,
    device: str = "auto",
    min_speedup: float = MIN_SPEEDUP,
) -> PrecisionChoice:
    """Measure precisions on one real batch and keep the fastest whose features match float32.

    Each candidate is built, called once to trace and warm up, then timed ``repeats`` times (best
    time counts). Its outputs are compared with float32's on the same batch. A reduced precision is
    kept only if its error is within ``tolerance``, its outputs are finite, and it is at least
    ``min_speedup`` times faster than float32 (so noise never trades accuracy for nothing).
    With a single candidate nothing is built or timed beyond what the run needs anyway.

    Cost: ``1 + repeats`` forward passes of ``batch`` per candidate, one of which is useful (the
    chosen precision's features of the batch come back in :attr:`PrecisionChoice.outputs`).

    Args:
        build_extractor: ``precision -> fn``, where ``fn(batch)`` returns the features (an array or a
            dict of arrays/tensors). Built for float32 and each candidate; the chosen one is returned
            in :attr:`PrecisionChoice.extractor`. Build every candidate from the same weights (see
            :func:`fastfeat.models.extractor_builder`), or the comparison means nothing.
        batch: a float32 input batch of the real data.
        candidates: precisions to try (default: :func:`available_precisions` for ``device``).
            ``float32`` is always measured, as the reference.
        repeats: timed calls per candidate after the warm-up call.
        tolerance: largest max-norm relative error allowed against float32.
        device: used only to find the default candidates.
        min_speedup: how much faster than float32 a reduced precision must be.

    Returns:
        A :class:`PrecisionChoice`.
    """
    t_start = time.perf_counter()
    if candidates is None:
        candidates = available_precisions(device)
    candidates = list(dict.fromkeys(["float32", *(check_precision(c, allow_auto=False) for c in candidates)]))
    if repeats < 1:
        raise ValueError(f"`repeats` must be >= 1. Received: repeats={repeats}")
    if not tolerance > 0:
        raise ValueError(f"`tolerance` must be > 0. Received: tolerance={tolerance}")
    batch = np.asarray(batch, dtype=np.float32)
    n = int(batch.shape[0]) if batch.ndim else 0
    if n < 1:
        raise ValueError(f"`batch` must hold at least one image. Received: batch shape={batch.shape}")
    result = PrecisionChoice(choice="float32", candidates=candidates, tolerance=tolerance, batch_size=n)

    reference_fn = build_extractor("float32")
    if len(candidates) == 1:
        result.errors["float32"] = 0.0
        result.extractor = reference_fn
        result.seconds = time.perf_counter() - t_start
        return result

    _to_numpy(reference_fn(batch))  # trace + warm up
    seconds, reference = _time_calls(reference_fn, batch, repeats)
    result.errors["float32"] = 0.0
    result.images_per_second["float32"] = n / seconds
    best, best_rate, best_fn, best_outputs = "float32", n / seconds, reference_fn, reference
    for precision in candidates[1:]:
        try:
            fn = build_extractor(precision)
            _to_numpy(fn(batch))
        except ValueError as e:  # e.g. a model that cannot be rebuilt under the policy
            result.rejected[precision] = f"build failed: {e}"
            continue
        seconds, outputs = _time_calls(fn, batch, repeats)
        rate = n / seconds
        error = relative_error(reference, outputs)
        result.images_per_second[precision] = rate
        result.errors[precision] = error
        bad = count_nonfinite(outputs)
        if bad:
            result.rejected[precision] = f"{bad} non-finite values (loss of range)"
        elif error > tolerance:
            result.rejected[precision] = f"error {error:.2e} > tolerance {tolerance:.0e}"
        elif rate >= best_rate * (min_speedup if best == "float32" else 1.0) and rate > best_rate:
            best, best_rate, best_fn, best_outputs = precision, rate, fn, outputs
        del fn, outputs
    result.choice = best
    result.extractor = best_fn
    result.outputs = best_outputs
    result.seconds = time.perf_counter() - t_start
    return result

