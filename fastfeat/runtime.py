"""Runtime settings for a run: device choice, GPU memory growth, thread counts, batch size.

Call :func:`configure` at the start of a run, before any TensorFlow op executes: TensorFlow fixes
its thread pools and visible devices when its runtime starts, and refuses changes afterwards
(then the settings that could not be applied are recorded as such, never raised).

Threads: inference is the bottleneck on a CPU, so the model gets every core (TensorFlow intra-op)
and the loader a small share; OpenCV's own worker threads are switched off because the loader already
runs many decodes at once (nested pools oversubscribe the cores). On a GPU the loader gets every core.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import asdict, dataclass, field

from .precision import check_precision

#: Upper bound of the automatic batch size: beyond it throughput stops growing (CPU) or gains little (GPU).
MAX_AUTO_BATCH = {"cpu": 32, "gpu": 256}
#: Share of free memory an automatically sized batch may use (activations, outputs, queued copies).
AUTO_BATCH_MEMORY_FRACTION = 0.25

_DEVICE_RE = re.compile(r"^/?(?:physical_device:)?(cpu|gpu|cuda)(?::(\d+))?$")


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def parse_device(device: str | None) -> tuple[str, int | None]:
    """``"auto"``, ``"cpu"``, ``"gpu"``, ``"gpu:N"`` (also ``cuda:N``, ``/GPU:N``) to (kind, index).

    Returns:
        ``("auto", None)``, ``("cpu", None)`` or ``("gpu", index or None)``.
    """
    if device is None or str(device).strip().lower() == "auto":
        return "auto", None
    match = _DEVICE_RE.match(str(device).strip().lower())
    if not match:
        raise ValueError(f"`device` must be auto, cpu, gpu or gpu:N. Received: device={device!r}")
    kind, index = match.groups()
    if kind == "cpu":
        return "cpu", None
    return "gpu", None if index is None else int(index)


def _gpus() -> list:
    import tensorflow as tf

    return tf.config.list_physical_devices("GPU")


def gpu_compute_capability(index: int = 0) -> tuple[int, int] | None:
    """(major, minor) compute capability of physical GPU ``index``, or ``None`` (no such NVIDIA GPU)."""
    import tensorflow as tf

    gpus = _gpus()
    if index >= len(gpus):
        return None
    capability = tf.config.experimental.get_device_details(gpus[index]).get("compute_capability")
    return tuple(int(v) for v in capability) if capability else None


@dataclass
class DeviceInfo:
    """The device a run infers on.

    Attributes:
        kind: ``"cpu"`` or ``"gpu"``.
        index: physical GPU index (``None`` on the CPU).
        tf_name: the logical TensorFlow device to place ops on (``/CPU:0``, ``/GPU:0``).
        name: a human-readable name (``"NVIDIA H100 80GB HBM3"``, ``"cpu"``).
        compute_capability: (major, minor) for NVIDIA GPUs.
        memory_growth: whether GPU memory growth is on (``None`` on the CPU).
        isolated: whether the other devices were hidden from TensorFlow (else only ``tf.device``
            placement applies, because the runtime had already started).
    """

    kind: str
    index: int | None
    tf_name: str
    name: str
    compute_capability: tuple[int, int] | None = None
    memory_growth: bool | None = None
    isolated: bool = False

    @property
    def spec(self) -> str:
        """The ``--device`` string for this device (``cpu``, ``gpu:0``)."""
        return "cpu" if self.kind == "cpu" else f"gpu:{self.index}"

    def scope(self):
        """``tf.device(...)`` context placing the model build and inference on this device."""
        import tensorflow as tf

        return tf.device(self.tf_name)


def enable_memory_growth(gpus=None) -> dict[str, bool]:
    """Turn on memory growth for ``gpus`` (default: all), so TensorFlow does not grab all GPU memory.

    Returns:
        GPU name -> whether growth is on (``False`` where the runtime had already started).
    """
    import tensorflow as tf

    out = {}
    for gpu in _gpus() if gpus is None else gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # the GPU is already initialized: growth can no longer change
            pass
        out[gpu.name] = bool(tf.config.experimental.get_memory_growth(gpu))
    return out


def select_device(device: str | None = "auto") -> DeviceInfo:
    """Pick the inference device and make it the only one TensorFlow uses, where still possible.

    Args:
        device: ``"auto"`` (the first GPU if any, else the CPU), ``"cpu"``, ``"gpu"`` or ``"gpu:N"``.

    Returns:
        A :class:`DeviceInfo`; build and run the model inside ``info.scope()``.

    Raises:
        ValueError: for an unknown spelling or a GPU TensorFlow does not see.
    """
    import tensorflow as tf

    kind, index = parse_device(device)
    gpus = _gpus()
    if kind == "auto":
        kind, index = ("gpu", 0) if gpus else ("cpu", None)
    if kind == "gpu":
        index = 0 if index is None else index
        if index >= len(gpus):
            seen = ": " + ", ".join(g.name for g in gpus) if gpus else " (is the CUDA build of TensorFlow installed?)"
            raise ValueError(
                f"`device` asks for GPU {index} but TensorFlow sees {len(gpus)} GPU(s){seen}. "
                f"Received: device={device!r}"
            )
        gpu = gpus[index]
        growth = enable_memory_growth([gpu])[gpu.name]
        isolated = _try_set_visible([gpu])
        tf_name = "/GPU:0" if isolated else f"/GPU:{index}"
        details = tf.config.experimental.get_device_details(gpu)
        capability = details.get("compute_capability")
        return DeviceInfo(
            kind="gpu", index=index, tf_name=tf_name, name=str(details.get("device_name", gpu.name)),
            compute_capability=tuple(int(v) for v in capability) if capability else None,
            memory_growth=growth, isolated=isolated,
        )  # fmt: skip
    isolated = _try_set_visible([]) if gpus else True
    return DeviceInfo(kind="cpu", index=None, tf_name="/CPU:0", name="cpu", isolated=isolated)


def _try_set_visible(gpus) -> bool:
    import tensorflow as tf

    try:
        tf.config.set_visible_devices(gpus, "GPU")
    except RuntimeError:  # visible devices cannot be changed after the runtime started
        return list(tf.config.get_visible_devices("GPU")) == list(gpus)
    return True


@dataclass
class ThreadPlan:
    """Thread counts for one run, and which of them took effect.

    Attributes:
        cores: usable CPU cores.
        intra_op: TensorFlow intra-op threads (the model's kernels).
        inter_op: TensorFlow inter-op threads (independent ops at once).
        loader: worker threads of the loader (batches decoded at once, see :mod:`fastfeat.loader`).
        opencv: OpenCV's own worker threads per call (1: parallelism comes from the loader's workers).
        numba: Numba threads for parallel kernels.
        applied: setting -> whether it took effect (TensorFlow's are fixed once its runtime starts).
        previous: OpenCV and Numba settings before, for :func:`restore_threads`.
    """

    cores: int
    intra_op: int
    inter_op: int
    loader: int
    opencv: int = 1
    numba: int = 1
    applied: dict[str, bool] = field(default_factory=dict)
    previous: dict[str, int] = field(default_factory=dict, repr=False)

    def to_meta(self) -> dict:
        out = asdict(self)
        out.pop("previous")
        return out


def plan_threads(device_kind: str = "cpu", cores: int | None = None, loader_threads: int | None = None) -> ThreadPlan:
    """Thread counts so that the loader does not steal the model's cores.

    On the CPU the model is the bottleneck (a VGG19 cut runs tens of images/s, OpenCV decodes about
    a thousand per core), so the model gets every core and the loader a quarter of them (at least
    one): it stays ahead thanks to prefetching. On a GPU the loader is the bottleneck and gets
    every core.

    Args:
        device_kind: ``"cpu"`` or ``"gpu"``.
        cores: usable cores (default: :func:`usable_cores`).
        loader_threads: override the loader's share.
    """
    if device_kind not in ("cpu", "gpu"):
        raise ValueError(f"`device_kind` must be cpu or gpu. Received: device_kind={device_kind!r}")
    cores = usable_cores() if cores is None else int(cores)
    if cores < 1:
        raise ValueError(f"`cores` must be >= 1. Received: cores={cores}")
    if loader_threads is None:
        loader_threads = max(1, cores // 4) if device_kind == "cpu" else cores
    elif int(loader_threads) < 1:
        raise ValueError(f"`loader_threads` must be >= 1. Received: loader_threads={loader_threads}")
    inter_op = min(cores, 2) if device_kind == "cpu" else cores
    return ThreadPlan(cores=cores, intra_op=cores, inter_op=inter_op, loader=int(loader_threads))


def configure_threads(plan: ThreadPlan) -> ThreadPlan:
    """Apply ``plan`` to TensorFlow, OpenCV and Numba; fills ``plan.applied`` and ``plan.previous``."""
    import cv2
    import tensorflow as tf

    threading = tf.config.threading
    for key, getter, setter in (
        ("intra_op", threading.get_intra_op_parallelism_threads, threading.set_intra_op_parallelism_threads),
        ("inter_op", threading.get_inter_op_parallelism_threads, threading.set_inter_op_parallelism_threads),
    ):
        wanted = getattr(plan, key)
        if getter() == wanted:
            plan.applied[key] = True
            continue
        try:
            setter(wanted)
            plan.applied[key] = True
        except RuntimeError:  # "cannot be modified after initialization"
            plan.applied[key] = False
    plan.previous["opencv"] = cv2.getNumThreads()
    cv2.setNumThreads(plan.opencv)
    plan.applied["opencv"] = cv2.getNumThreads() == plan.opencv or plan.opencv <= 1
    if "numba" in sys.modules:
        import numba

        plan.previous["numba"] = numba.get_num_threads()
        numba.set_num_threads(max(1, min(plan.numba, numba.config.NUMBA_NUM_THREADS)))
        plan.applied["numba"] = True
    return plan


def restore_threads(plan: ThreadPlan) -> None:
    """Put OpenCV's and Numba's thread counts back as :func:`configure_threads` found them."""
    if "opencv" in plan.previous:
        import cv2

        cv2.setNumThreads(plan.previous["opencv"])
    if "numba" in plan.previous and "numba" in sys.modules:
        import numba

        numba.set_num_threads(plan.previous["numba"])


@dataclass
class Runtime:
    """What :func:`configure` set up: the device and the thread plan."""

    device: DeviceInfo
    threads: ThreadPlan

    def to_meta(self) -> dict:
        """JSON-safe record for the store's metadata."""
        device = asdict(self.device)
        device["spec"] = self.device.spec
        return {"device": device, "threads": self.threads.to_meta()}


def configure(device: str | None = "auto", loader_threads: int | None = None) -> Runtime:
    """Set up a run: pick the device (GPU memory growth on), then the thread counts for it.

    Call it first thing in a run, before any TensorFlow op: afterwards TensorFlow keeps its thread
    pools and devices, and :attr:`ThreadPlan.applied` records what could not change.

    Args:
        device: ``"auto"``, ``"cpu"``, ``"gpu"`` or ``"gpu:N"``.
        loader_threads: worker threads of the loader (default: see :func:`plan_threads`).
    """
    parse_device(device)  # validate before touching TensorFlow
    info = select_device(device)
    plan = configure_threads(plan_threads(info.kind, loader_threads=loader_threads))
    return Runtime(device=info, threads=plan)


# -- batch size ---------------------------------------------------------------------------------
def _elements(shape) -> int:
    count = 1
    for d in shape[1:]:
        count *= int(d) if d is not None else 1
    return count


def activation_bytes_per_image(model, compute_bytes: int = 4) -> int:
    """Bytes of every layer output of ``model`` for one image (an upper bound of inference memory)."""
    total = 0
    for layer in model.layers:
        try:
            outputs = layer.output
        except (AttributeError, ValueError):
            continue
        if isinstance(outputs, dict):
            outputs = list(outputs.values())
        for out in outputs if isinstance(outputs, (list, tuple)) else [outputs]:
            total += _elements(out.shape) * compute_bytes
    return total


def available_memory(device: DeviceInfo | None = None) -> int:
    """Bytes free for a batch: host memory available, or the GPU's memory limit as TensorFlow sees it."""
    if device is not None and device.kind == "gpu":
        try:
            from tensorflow.python.client import device_lib

            for d in device_lib.list_local_devices():
                if d.device_type == "GPU" and d.name.endswith(device.tf_name.split("/")[-1]):
                    return int(d.memory_limit)
        except (ImportError, AttributeError, RuntimeError):
            pass
        return 8 * 2**30  # unknown: assume a modest GPU
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def choose_batch_size(
    model,
    device: DeviceInfo | str = "cpu",
    precision: str = "float32",
    images: int | None = None,
    memory_bytes: int | None = None,
    queued_batches: int = 4,
    input_batches: int = 2,
) -> int:
    """The batch size for throughput within memory: a power of two up to :data:`MAX_AUTO_BATCH`.

    Past a few dozen images per call a CPU gains nothing from larger batches, and a GPU little past
    a couple of hundred; below that, larger is faster. The batch is the largest power of two within
    that cap whose memory -- every activation of the (truncated) model, an upper bound, plus the
    float32 features of ``queued_batches`` batches in flight to the writer -- fits in
    :data:`AUTO_BATCH_MEMORY_FRACTION` of the free memory.

    Args:
        model: the truncated Keras model (its outputs are the stored features).
        device: a :class:`DeviceInfo` or ``"cpu"``/``"gpu"``.
        precision: the inference precision (reduced precisions halve activation memory).
        images: images in the run; the batch never exceeds it.
        memory_bytes: free memory to plan for (default: :func:`available_memory`).
        queued_batches: output batches alive at once (writer queue, the one being written, the new one).
        input_batches: float32 input batches alive at once (the loader's workers and the batches
            they run ahead, times 1 + augmented copies; see :meth:`fastfeat.loader.Loader.dataset`).
    """
    check_precision(precision, allow_auto=False)
    kind = device.kind if isinstance(device, DeviceInfo) else parse_device(device)[0]
    kind = "gpu" if kind == "gpu" else "cpu"
    compute_bytes = 4 if precision == "float32" else 2
    per_image = activation_bytes_per_image(model, compute_bytes)
    outputs = model.outputs if isinstance(model.outputs, (list, tuple)) else [model.outputs]
    per_image += sum(_elements(o.shape) * 4 for o in outputs) * queued_batches
    per_image += _elements(model.inputs[0].shape) * 4 * input_batches
    if memory_bytes is None:
        memory_bytes = available_memory(device if isinstance(device, DeviceInfo) else None)
    budget = memory_bytes * AUTO_BATCH_MEMORY_FRACTION
    batch = MAX_AUTO_BATCH[kind]
    while batch > 1 and batch * per_image > budget:
        batch //= 2
    if images is not None and images >= 1:
        batch = min(batch, int(images))
    return max(1, batch)
