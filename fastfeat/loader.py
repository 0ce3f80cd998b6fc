"""The input pipeline: catalog positions -> decoded, resized, normalized float32 batches.

Shape of the pipeline::

    positions -> batches -> ordered parallel map on a pool of Python threads (per batch: read +
                            decode + resize every image into one uint8 buffer, then the Numba
                            kernel to float32; OpenCV and Numba release the GIL) -> tf.data
                            (``Dataset.from_generator``, known cardinality)

The workers are plain Python threads rather than a ``tf.data`` parallel ``map`` over
``tf.numpy_function``: measured side by side on 2 cores (480 JPEGs to 224x224), the same per-batch
function ran at 100% of a thread pool's rate when a thread pool fed ``from_generator``, 86% as a
``tf.data`` map on the shared inter-op pool, and 67% on a private ``tf.data`` pool, the difference
being CPU burnt in TensorFlow's thread hand-offs (1.56 against 2.14 CPU ms per image). At most
``threads + ahead`` batches are in flight or waiting, so memory stays bounded when the consumer is
slow (a CPU model), and the workers keep decoding while the consumer is busy (a GPU model).

A file that cannot be read yields an all-zero image with ``ok = False`` and its reason in
:attr:`Loader.reasons`; the consumer drops those rows (they are never written as features).

With ``copies`` (augmentation transforms), each batch of ``b`` images comes out as
``(1 + len(copies)) * b`` rows: the plainly normalized images, then each augmented copy of the
same images in turn, with a ``copy`` id per row (0 = plain, k = ``copies[k - 1]``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from . import decode as _decode
from .buffers import BufferPool
from .catalog import Catalog
from .feed import default_ahead, keep_large_allocations, pipeline_options  # noqa: F401 -- re-exported
from .kernels import normalize_batch, to_float32
from .preprocess import Normalization, get_normalization
from .quiet import filtered_stderr
from .runtime import usable_cores
from .workers import ordered_map


@dataclass
class DecodeOptions:
    """How files become uint8 RGB arrays (see :func:`fastfeat.decode.decode_image`)."""

    size: tuple[int, int]
    interpolation: str = "bilinear"
    exif: bool = False
    reduced: bool = True
    max_pixels: int | None = _decode.DEFAULT_MAX_PIXELS

    def __post_init__(self):
        _decode.check_interpolation(self.interpolation)
        if self.max_pixels is not None and (isinstance(self.max_pixels, bool) or int(self.max_pixels) < 1):
            raise ValueError(f"`max_pixels` must be a positive int or None. Received: max_pixels={self.max_pixels!r}")


@dataclass
class Loader:
    """Builds the tf.data pipeline for a catalog and remembers why files failed.

    Args:
        catalog: what to read.
        options: decoding options (target size, interpolation, ...).
        normalization: input normalization mode or :class:`Normalization`.
        transform: optional batch function ``(uint8 batch, catalog positions, out=None) ->
            float32 batch`` replacing the plain normalization (used for augmentation); it writes
            into ``out`` when given (see :meth:`fastfeat.Augment.batch_transform`).
        copies: extra batch functions of the same form, each adding one (augmented) copy of
            every image after the plain rows.
        cache: a :class:`fastfeat.cache.CachedRows` for ``catalog`` and ``options``: batches are
            filled with its decoded rows instead of decoding (files changed since are decoded).

    Float32 batches are 64-byte aligned (:func:`fastfeat.kernels.empty_aligned`) so that
    TensorFlow takes them from ``tf.numpy_function`` without a copy, and come from the loader's
    :class:`fastfeat.buffers.BufferPool`: a batch's buffer is reused once nothing refers to it
    any more. Images are decoded straight into their slot of the batch buffer.
    """

    catalog: Catalog
    options: DecodeOptions
    normalization: Normalization | str = "none"
    transform: object = None
    copies: list = field(default_factory=list)
    cache: object = None
    reasons: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _local: threading.local = field(default_factory=threading.local, repr=False)
    buffers: BufferPool = field(default_factory=lambda: BufferPool(keep=4), repr=False)

    def __post_init__(self):
        self.normalization = get_normalization(self.normalization)
        self._norm_args = self.normalization.kernel_args()

    # -- per-item and per-batch work (called from the pipeline's worker threads) -----------
    def load(self, position: int, out: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
        """Decode catalog item ``position``: (uint8 image, ok), written into ``out`` if given."""
        o = self.options
        path = self.catalog.abspath(int(position))
        try:
            image = _decode.load_image(
                path, o.size, interpolation=o.interpolation, exif=o.exif, reduced=o.reduced, max_pixels=o.max_pixels,
                out=out,
            )  # fmt: skip
            return image, True
        except _decode.DecodeError as e:
            reason = e.reason
        except Exception as e:  # noqa: BLE001 -- any decoder failure is reported per file, never fatal
            reason = f"{type(e).__name__}: {e}"
        with self._lock:
            self.reasons[int(position)] = reason
        if out is None:
            return np.zeros((o.size[0], o.size[1], 3), np.uint8), False
        out[...] = 0
        return out, False

    def normalize(self, images: np.ndarray, positions: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """uint8 batch -> float32 batch (64-byte aligned, from :attr:`buffers`, or ``out``)
        through the Numba kernel or the augmentation transform."""
        if out is None:
            out = self.buffers.empty(images.shape, np.float32)
        if self.transform is not None:
            return self.transform(images, positions, out=out)
        if self.normalization.is_identity and out.flags.c_contiguous:  # a plain cast, streaming stores
            to_float32(np.ascontiguousarray(images).reshape(-1), out.reshape(-1))
        elif self.normalization.is_identity:
            np.copyto(out, images, casting="unsafe")
        else:
            normalize_batch(np.ascontiguousarray(images), out, *self._norm_args)
        return out

    def decode_batch(self, positions: np.ndarray, reuse: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Decode catalog items straight into one uint8 buffer: (images (n, h, w, 3), ok (n,)).

        With ``reuse`` the buffer is this thread's scratch, overwritten by its next ``reuse`` call
        (for callers that only read it before they return, as :meth:`load_batch` does): no fresh
        pages to fault in for every batch.
        """
        h, w = self.options.size
        n = len(positions)
        if reuse:
            scratch = getattr(self._local, "images", None)
            if scratch is None or len(scratch) < n:
                scratch = self._local.images = np.empty((n, h, w, 3), np.uint8)
            images = scratch[:n]
        else:
            images = self.buffers.empty((n, h, w, 3), np.uint8)
        if self.cache is not None:  # rows read from the cache need no decoder settings
            return images, self.cache.fill(positions, images, self._load_decoding)
        ok = np.empty(n, bool)
        with decoding():
            for i, position in enumerate(positions):  # load(out=) always fills the slot (zeros on failure)
                ok[i] = self.load(position, out=images[i])[1]
        return images, ok

    def _load_decoding(self, position: int, out: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
        with decoding():
            return self.load(position, out=out)

    def load_batch(self, positions: np.ndarray):
        """Decode a batch of catalog items and normalize it (plus any copies), in one call.

        The unit of work of a pipeline worker: the Python overhead is paid once per batch, the
        images are decoded straight into one uint8 buffer, and several batches run at once
        (OpenCV and the kernels release the GIL).

        Returns:
            (float32 rows, catalog positions per row, ok per row, copy id per row).
        """
        images, ok = self.decode_batch(positions, reuse=True)
        rows, row_positions, copy = self.normalize_with_copies(images, positions)
        return rows, row_positions, np.tile(ok, len(rows) // max(len(positions), 1)), copy

    def normalize_with_copies(self, images: np.ndarray, positions: np.ndarray):
        """The plain batch followed by every copy: (float32 rows, positions, copy ids).

        Every part is written straight into its slice of one aligned buffer (no concatenation).
        """
        n = len(positions)
        parts = 1 + len(self.copies)
        rows = self.buffers.empty((parts * n, *images.shape[1:]), np.float32)
        for k, fn in enumerate([self.normalize, *self.copies]):
            part = rows[k * n : (k + 1) * n]
            result = fn(images, positions, out=part)
            if not np.may_share_memory(result, part):  # a transform that returned a new array
                part[...] = result
        copy_ids = np.repeat(np.arange(parts, dtype=np.int32), n)
        return rows, np.tile(positions, parts), copy_ids

    # -- tf.data assembly -------------------------------------------------------------------
    def dataset(self, positions, batch_size: int, prefetch: int | None = None, threads: int | None = None):
        """A ``tf.data.Dataset`` of ``(images float32 (r,h,w,3), positions int64 (r,), ok bool (r,),
        copy int32 (r,))`` with ``r = (1 + len(copies)) * b`` rows per batch of ``b`` images.

        ``threads`` batches are decoded at once, each on one worker thread (see
        :func:`pipeline_threads` and :func:`ordered_map`); ``prefetch`` more finished batches may
        wait ahead of the consumer (default: as many as threads, at least 2). Each iteration of
        the dataset is one pass over ``positions`` with its own worker pool.
        """
        import tensorflow as tf

        h, w = self.options.size
        positions = np.asarray(positions, dtype=np.int64)
        threads = pipeline_threads(threads)
        batches = [positions[i : i + batch_size] for i in range(0, len(positions), batch_size)]
        signature = (
            tf.TensorSpec((None, h, w, 3), tf.float32),
            tf.TensorSpec((None,), tf.int64),
            tf.TensorSpec((None,), tf.bool),
            tf.TensorSpec((None,), tf.int32),
        )
        return worker_dataset(lambda: batches, self.load_batch, signature, len(batches), threads, prefetch)


def worker_dataset(items: Callable[[], Iterable], fn: Callable, signature, length: int, threads: int,
                   ahead: int | None = None):  # fmt: skip
    """A ``tf.data.Dataset`` whose every iteration is one pass: ``fn(item)`` for each of
    ``items()``, in order, on ``threads`` worker threads (:func:`ordered_map`; ``ahead`` defaults
    to :func:`default_ahead`).

    ``signature`` is the ``output_signature`` of ``fn``'s results and ``length`` the number of
    items per pass (the dataset's cardinality, for progress bars). Each pass first restores
    glibc's large-block reuse (:func:`keep_large_allocations`); the autotuner is off
    (:func:`pipeline_options`). The extract loader and :func:`fastfeat.image_dataset` both run on it.
    """
    import tensorflow as tf

    ahead = default_ahead(threads) if ahead is None else int(ahead)

    def one_pass():
        keep_large_allocations()
        with opencv_single_threaded(), filtered_stderr():  # libpng/libjpeg lines stay off the terminal
            yield from ordered_map(fn, items(), threads, ahead)

    ds = tf.data.Dataset.from_generator(one_pass, output_signature=signature)
    return pipeline_options(ds.apply(tf.data.experimental.assert_cardinality(length)))


@contextlib.contextmanager
def decoding():
    """Around decoding on a worker thread: OpenCV's pool at one thread
    (:func:`opencv_single_threaded`) and decoder lines kept off the terminal
    (:func:`fastfeat.quiet.filtered_stderr`). Both are counted, so the uses of overlapping batches
    and of an enclosing pass (:func:`worker_dataset`) share one setting: cheap when one is on."""
    with opencv_single_threaded(), filtered_stderr():
        yield


def pipeline_threads(threads: int | None = None) -> int:
    """Worker threads for a batch-parallel pipeline (default: one per usable core). Run the pass
    inside :func:`opencv_single_threaded`."""
    return usable_cores() if threads is None else int(threads)


_OPENCV_LOCK = threading.Lock()
_OPENCV_PASSES = {"running": 0, "previous": None}


@contextlib.contextmanager
def opencv_single_threaded():
    """OpenCV's own pool at one thread while a pass runs, as it was again when the last running
    pass ends (passes may overlap: the count is shared, process-wide as OpenCV's setting is).

    The parallelism comes from whole batches decoded at once, and a nested pool only thrashes.
    """
    import cv2

    with _OPENCV_LOCK:
        if _OPENCV_PASSES["running"] == 0:
            _OPENCV_PASSES["previous"] = cv2.getNumThreads()
            cv2.setNumThreads(1)
        _OPENCV_PASSES["running"] += 1
    try:
        yield
    finally:
        with _OPENCV_LOCK:
            _OPENCV_PASSES["running"] -= 1
            if _OPENCV_PASSES["running"] == 0:
                cv2.setNumThreads(_OPENCV_PASSES["previous"])
