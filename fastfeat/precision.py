"""Inference precision: Keras dtype policy names, what the hardware runs natively, rebuilding a model
under a policy, and how far reduced-precision features stray from float32.

This is a leaf module (it imports no other fastfeat module); ``precision="auto"`` -- measuring,
and the cached decision -- lives in :mod:`fastfeat.precision_auto`.

A saved model keeps one dtype policy per layer in its config, so the global policy does not
reach it: :func:`rebuild_with_policy` rebuilds it from its config with the policies replaced and
copies the weights over. This module imports Keras lazily.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
PRECISION_CHOICES = (*PRECISIONS, "auto")
#: Largest max-norm relative error against float32 that a reduced precision may show under ``auto``.
DEFAULT_TOLERANCE = 2e-2

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


def cpu_model(path: str = "/proc/cpuinfo") -> str:
    """The CPU's model name (``"AMD EPYC 7B13"``), or ``platform.processor()`` where unreadable."""
    try:
        with open(path) as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip().lower() in ("model name", "cpu model", "hardware"):
                    return value.strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


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


def native_precisions(
    kind: str, compute_capability: tuple[int, int] | None = None, flags: frozenset[str] | set[str] | None = None
) -> list[str]:
    """Precisions worth considering on a device: always ``float32``, plus the natively supported ones.

    Args:
        kind: ``"cpu"`` or ``"gpu"``.
        compute_capability: the GPU's (major, minor); ``None`` for an unknown GPU (float32 only).
        flags: CPU flags to judge by (default: this machine's ``/proc/cpuinfo``); CPU only.

    Returns:
        A list starting with ``"float32"``.
    """
    if kind not in ("cpu", "gpu"):
        raise ValueError(f"`kind` must be cpu or gpu. Received: kind={kind!r}")
    if kind == "gpu":
        return ["float32", *gpu_precisions(compute_capability)]
    return ["float32", "mixed_bfloat16"] if cpu_supports_bf16(flags) else ["float32"]


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
