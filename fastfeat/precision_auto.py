"""``precision="auto"``: pick the fastest accurate inference precision once, reproducibly, cheaply.

Reduced precision is not always faster: ``mixed_bfloat16`` is emulated (slower) on CPUs without
AVX512_BF16/AMX, MobileNetV2 loses even where it is native, and VGG19 on an AMX CPU runs several
times faster. So ``auto`` measures -- but a decision that depends on one noisy timed call is not
reproducible, and measuring on every run costs more than it wins on short jobs. Hence:

1. **Only native candidates.** Where float32 is the only precision the device runs natively
   (:func:`fastfeat.precision.native_precisions`), ``auto`` is float32 and measures nothing.
2. **A cached decision.** A measured choice is kept in the user's cache directory
   (:class:`DecisionCache`), keyed by everything that decides it (:func:`decision_key`: the CPU
   model and its precision flags or the GPU and its compute capability, TensorFlow/Keras versions,
   the model, the cut points, the input size, the requested batch size). The next run with the
   same key reuses it without building or timing anything: the same command gives the same
   precision, so bitwise the same features, run after run.
3. **Measuring pays for itself.** Without a cached decision, :func:`decide_precision` times a
   small probe (a few real images of the first batch) in float32, estimates the job's time from
   it, and measures a candidate only if that costs at most :data:`AUTO_BUDGET` (5%) of the
   estimate; otherwise it keeps float32 and caches nothing (a longer job, or
   ``remeasure=True`` / ``--remeasure-precision``, measures). Rounds are interleaved (float32,
   candidate, float32, ...) and repeated while the ratio is close to 1 and the budget allows;
   a candidate must be :data:`MIN_SPEEDUP` times faster, finite and within the tolerance of
   float32 on the same images. No row is written before the decision, so every row of a run comes
   from one precision.

Everything that times takes a ``clock`` so tests decide with fake timings, never the real clock.
This module imports TensorFlow only through the functions it is given.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from . import precision as _precision
from .precision import DEFAULT_TOLERANCE, check_precision, count_nonfinite, relative_error

#: Share of the job's estimated float32 time that measuring may cost.
AUTO_BUDGET = 0.05
#: A reduced precision replaces float32 only if it is at least this much faster on the probe.
MIN_SPEEDUP = 1.10
#: Probe ratios inside this band are "close": another round is timed while the budget allows.
CLOSE_BAND = (0.8, 1.25)
#: Timed rounds per candidate at most (``remeasure`` times at least :data:`DECISIVE_ROUNDS`).
MAX_ROUNDS = 5
DECISIVE_ROUNDS = 3
#: Images of the first batch timed on a CPU (per-image cost is flat there; VGG19 in float32 takes ~0.2 s each); a GPU
#: is timed on the whole batch, where reduced precision pays only at size.
CPU_PROBE_ROWS = 2
#: CPU flags that change which precision is fast (part of the decision key).
PRECISION_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "bf16")
CACHE_VERSION = 1
#: Decisions kept in the cache file (the oldest go first).
CACHE_ENTRIES = 512


@dataclass
class PrecisionChoice:
    """What ``auto`` chose and why.

    Attributes:
        choice: the precision kept.
        source: ``"measured"`` (timed now), ``"cached"`` (a decision measured before),
            ``"native"`` (float32 is the only native precision: nothing to measure) or
            ``"skipped"`` (the job is too short to pay for measuring: float32).
        candidates: the precisions considered, float32 first.
        reason: one sentence for the report.
        errors: precision -> max-norm relative error of its probe features against float32.
        images_per_second: precision -> median probe rate.
        rejected: precision -> why it was not kept (error, overflow, build failure, not measured).
        rounds: timed rounds per measured candidate.
        probe_rows: images in the probe.
        seconds: what deciding cost (builds, tracing, timed calls beyond what the run needs).
        estimated_job_seconds: the job's estimated float32 inference time (from the probe).
        key: digest of the decision key (see :func:`decision_key`).
        measured_at: when the decision was measured (ISO 8601; a cached decision keeps its own).
        extractor: the chosen precision's inference function, when one was built (not in the metadata).
    """

    choice: str
    source: str
    candidates: list[str]
    reason: str = ""
    errors: dict[str, float] = field(default_factory=dict)
    images_per_second: dict[str, float] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    rounds: int = 0
    probe_rows: int = 0
    tolerance: float = DEFAULT_TOLERANCE
    seconds: float = 0.0
    estimated_job_seconds: float | None = None
    key: str | None = None
    measured_at: str | None = None
    extractor: object = field(default=None, repr=False, compare=False)

    def to_meta(self) -> dict:
        """A JSON-safe dict for the store's metadata, the report and the cache (no ``extractor``)."""

        def num(v):
            return None if v is None or not np.isfinite(v) else round(float(v), 6)

        return {
            "choice": self.choice, "source": self.source, "candidates": list(self.candidates),
            "reason": self.reason, "errors": {k: num(v) for k, v in self.errors.items()},
            "images_per_second": {k: num(v) for k, v in self.images_per_second.items()},
            "rejected": dict(self.rejected), "rounds": self.rounds, "probe_rows": self.probe_rows,
            "tolerance": self.tolerance, "seconds": round(self.seconds, 3),
            "estimated_job_seconds": num(self.estimated_job_seconds), "key": self.key,
            "measured_at": self.measured_at,
        }  # fmt: skip

    @classmethod
    def from_meta(cls, meta: Mapping) -> PrecisionChoice:
        """The inverse of :meth:`to_meta` (``None`` numbers stay ``None``)."""
        fields = {k: meta[k] for k in cls.__dataclass_fields__ if k in meta and k != "extractor"}
        fields["errors"] = {k: (float("inf") if v is None else v) for k, v in fields.get("errors", {}).items()}
        return cls(**fields)

    def summary(self) -> str:
        """One line for the end of a run."""
        rates = ", ".join(f"{k} {v:.1f} img/s" for k, v in self.images_per_second.items() if v)
        return f"auto -> {self.choice} ({self.source}{': ' + rates if rates else ''}; {self.reason})"


# -- the decision key and its cache ---------------------------------------------------------------
def machine_id(kind: str, name: str | None = None, compute_capability=None, flags=None) -> dict:
    """What about the device decides which precision is fast: GPU name and compute capability, or
    the CPU model and its precision-related flags (so a Zen 3 and a Sapphire Rapids never share)."""
    if kind == "gpu":
        return {"kind": "gpu", "name": name, "compute_capability": list(compute_capability or [])}
    flags = _precision.cpu_flags() if flags is None else set(flags)
    return {"kind": "cpu", "name": _precision.cpu_model(), "flags": sorted(set(PRECISION_FLAGS) & set(flags))}


def model_id(model: str) -> str:
    """A registry name as it is; a model file by absolute path, size and modification time."""
    if os.path.isfile(model):
        st = os.stat(model)
        return f"{os.path.abspath(model)}:{st.st_size}:{st.st_mtime_ns}"
    return str(model)


def decision_key(*, machine: dict, model: str, layers, image_size, batch_size, versions: Mapping) -> dict:
    """The decision key: equal keys mean the same measurement would be made.

    Args:
        machine: :func:`machine_id`.
        model: :func:`model_id`.
        layers: the feature keys (cut points with their pooling).
        image_size: (height, width).
        batch_size: the batch size asked for (``None`` = automatic).
        versions: at least ``tensorflow`` and ``keras``.
    """
    return {
        "machine": machine, "model": model, "layers": list(layers), "image_size": list(image_size) if image_size else None,
        "batch_size": batch_size if batch_size is None else int(batch_size),
        "tensorflow": versions.get("tensorflow"), "keras": versions.get("keras"), "version": CACHE_VERSION,
    }  # fmt: skip


def key_digest(key: Mapping) -> str:
    """A short, stable digest of a decision key."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def default_cache_dir() -> str:
    """``$FASTFEAT_CACHE_DIR``, else ``$XDG_CACHE_HOME/fastfeat``, else ``~/.cache/fastfeat``."""
    if os.environ.get("FASTFEAT_CACHE_DIR"):
        return os.environ["FASTFEAT_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fastfeat")


class DecisionCache:
    """Measured ``auto`` decisions in one small JSON file (``precision.json`` in the cache directory).

    A missing, unreadable or damaged file reads as empty; a cache that cannot be written is simply
    not written (the run goes on, measuring again next time). Writes replace the file atomically.
    ``FASTFEAT_PRECISION_CACHE=0`` turns the cache off.
    """

    def __init__(self, path: str | None = None):
        self.path = path or os.path.join(default_cache_dir(), "precision.json")
        self.enabled = os.environ.get("FASTFEAT_PRECISION_CACHE", "1").strip().lower() not in ("0", "false", "no")

    def _load(self) -> dict:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            return {}
        decisions = data.get("decisions")
        return decisions if isinstance(decisions, dict) else {}

    def get(self, digest: str) -> dict | None:
        """The record of a decision, or ``None``."""
        if not self.enabled:
            return None
        record = self._load().get(digest)
        if not isinstance(record, dict) or not isinstance(record.get("choice"), dict):
            return None
        try:
            check_precision(record["choice"].get("choice"), allow_auto=False)
        except ValueError:
            return None
        return record

    def put(self, digest: str, key: Mapping, choice: PrecisionChoice) -> bool:
        """Store a decision; returns whether it was written."""
        if not self.enabled:
            return False
        decisions = self._load()
        decisions.pop(digest, None)
        decisions[digest] = {"key": dict(key), "choice": choice.to_meta()}
        while len(decisions) > CACHE_ENTRIES:
            decisions.pop(next(iter(decisions)))
        try:
            folder = os.path.dirname(self.path) or "."
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".precision-", suffix=".json", dir=folder)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump({"version": CACHE_VERSION, "decisions": decisions}, f, indent=1, sort_keys=True)
                os.replace(tmp, self.path)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError:
            return False
        return True


def cached_choice(cache: DecisionCache, key: Mapping) -> PrecisionChoice | None:
    """The cached decision for ``key`` as a :class:`PrecisionChoice` with ``source="cached"``."""
    digest = key_digest(key)
    record = cache.get(digest)
    if record is None:
        return None
    choice = PrecisionChoice.from_meta(record["choice"])
    choice.source, choice.key, choice.seconds = "cached", digest, 0.0
    choice.reason = f"measured {choice.measured_at or 'before'}, reused from {cache.path}"
    return choice


# -- measuring ------------------------------------------------------------------------------------
def _to_numpy(outputs):
    if isinstance(outputs, Mapping):
        return {k: _to_numpy(v) for k, v in outputs.items()}
    return outputs.numpy() if hasattr(outputs, "numpy") else np.asarray(outputs)


def probe_rows(batch_rows: int, device_kind: str, remeasure: bool = False) -> int:
    """How many images of the first batch the decision times (see :data:`CPU_PROBE_ROWS`)."""
    if remeasure or device_kind == "gpu":
        return batch_rows
    return min(batch_rows, CPU_PROBE_ROWS)


def _too_short(job_seconds: str, cost_seconds: str) -> str:
    return f"not measured: the job ({job_seconds} s in float32) is too short to pay for measuring ({cost_seconds} s)"


def decide_precision(
    build: Callable[[str], Callable],
    probe: np.ndarray,
    candidates: list[str],
    rows_total: int,
    *,
    remeasure: bool = False,
    build_seconds: float = 0.0,
    budget: float | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    min_speedup: float = MIN_SPEEDUP,
    clock: Callable[[], float] = time.perf_counter,
) -> PrecisionChoice:
    """Measure the candidates on ``probe`` within a budget and keep the fastest accurate one.

    Args:
        build: ``precision -> fn``; ``fn(batch)`` returns the features (array or dict of arrays or
            tensors). Every precision must be built from the same weights
            (:func:`fastfeat.models.extractor_builder`).
        probe: float32 input images of the real data (a few rows of the first batch).
        candidates: precisions to consider; float32 is always the reference.
        rows_total: rows the job will infer (its time is estimated from the probe).
        remeasure: measure whatever the budget, at least :data:`DECISIVE_ROUNDS` rounds.
        build_seconds: what building the float32 model cost (estimates a candidate's build).
        budget: share of the estimated job time measuring may cost (default :data:`AUTO_BUDGET`).
        tolerance: largest max-norm relative error allowed against float32.
        min_speedup: how much faster than float32 a reduced precision must be.
        clock: the time source (tests pass a fake one).

    Returns:
        A :class:`PrecisionChoice` with ``source`` ``"measured"`` (at least one candidate timed),
        ``"skipped"`` (none could be paid for) or ``"native"`` (float32 was the only candidate),
        and ``extractor`` the chosen precision's function.
    """
    candidates = list(dict.fromkeys(["float32", *(check_precision(c, allow_auto=False) for c in candidates)]))
    if not tolerance > 0:
        raise ValueError(f"`tolerance` must be > 0. Received: tolerance={tolerance}")
    probe = np.asarray(probe, dtype=np.float32)
    n = int(probe.shape[0]) if probe.ndim else 0
    if n < 1:
        raise ValueError(f"`probe` must hold at least one image. Received: probe shape={probe.shape}")
    budget = AUTO_BUDGET if budget is None else float(budget)
    t_start = clock()
    result = PrecisionChoice(choice="float32", source="native", candidates=candidates, tolerance=tolerance,
                             probe_rows=n, measured_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))  # fmt: skip
    reference_fn = build("float32")
    result.extractor = reference_fn
    if len(candidates) == 1:
        result.reason = "float32 is the only precision this device runs natively"
        return result

    t0 = clock()
    reference = _to_numpy(reference_fn(probe))  # traces: the run needs this call anyway
    warm = clock() - t0
    if budget * rows_total * warm / n < build_seconds and not remeasure:
        # even the most generous estimate of the job (the traced call's time per image) cannot pay for
        # building a candidate: keep float32 without timing anything
        result.estimated_job_seconds = rows_total * warm / n
        for precision in candidates[1:]:
            result.rejected[precision] = _too_short(f"< {result.estimated_job_seconds:.0f}", f"> {build_seconds:.1f}")
        result.source, result.reason = "skipped", "float32 kept: " + result.rejected[candidates[1]]
        return result
    t0 = clock()
    _to_numpy(reference_fn(probe))
    t32 = [clock() - t0]
    spent = t32[0]  # what measuring costs beyond a float32 run
    per_row = max(t32[0], 1e-9) / n
    result.estimated_job_seconds = per_row * rows_total
    allowed = float("inf") if remeasure else budget * result.estimated_job_seconds
    result.errors["float32"] = 0.0
    best, best_ratio, best_fn = "float32", 1.0, reference_fn
    rounds_done, tried = 0, []
    for precision in candidates[1:]:
        predicted = build_seconds + max(warm - t32[0], 0.0) + 2 * t32[0]
        if spent + predicted > allowed:
            result.rejected[precision] = _too_short(f"~{result.estimated_job_seconds:.0f}", f"~{predicted:.1f}")
            continue
        tried.append(precision)
        t0 = clock()
        try:
            fn = build(precision)
            outputs = _to_numpy(fn(probe))
        except ValueError as e:  # e.g. a model that cannot be rebuilt under the policy
            spent += clock() - t0
            result.rejected[precision] = f"build failed: {e}"
            continue
        spent += clock() - t0
        error = relative_error(reference, outputs)
        result.errors[precision] = error
        bad = count_nonfinite(outputs)
        if bad:
            result.rejected[precision] = f"{bad} non-finite values (loss of range)"
            continue
        if error > tolerance:
            result.rejected[precision] = f"error {error:.2e} > tolerance {tolerance:.0e}"
            continue
        times = []
        ratio = 1.0
        for r in range(MAX_ROUNDS):
            if r > 0:  # interleaved: float32 again, then the candidate
                t0 = clock()
                _to_numpy(reference_fn(probe))
                t32.append(clock() - t0)
                spent += t32[-1]
            t0 = clock()
            _to_numpy(fn(probe))
            times.append(clock() - t0)
            spent += times[-1]
            ratio = statistics.median(t32) / max(statistics.median(times), 1e-12)
            enough = len(times) >= (DECISIVE_ROUNDS if remeasure else 1)
            close = CLOSE_BAND[0] < ratio < CLOSE_BAND[1]
            if enough and (not close or spent + t32[-1] + times[-1] > allowed):
                break
        rounds_done = max(rounds_done, len(times))
        result.images_per_second[precision] = n / max(statistics.median(times), 1e-12)
        if ratio >= min_speedup and (best == "float32" or ratio > best_ratio):
            best, best_ratio, best_fn = precision, ratio, fn
        del fn, outputs
    result.images_per_second = {"float32": n / max(statistics.median(t32), 1e-12), **result.images_per_second}
    result.rounds = rounds_done
    result.seconds = clock() - t_start - warm
    if tried:  # a candidate was built: the decision rests on a measurement
        result.source = "measured"
        if best == "float32":
            result.reason = f"float32 kept: no candidate was {min_speedup:.2f}x faster and within tolerance"
        else:
            result.reason = f"{best} {best_ratio:.2f}x float32 on {n} images"
    else:
        result.source = "skipped"
        result.reason = "float32 kept: " + next(iter(result.rejected.values()), "nothing measured")
    result.choice, result.extractor = best, best_fn
    return result
