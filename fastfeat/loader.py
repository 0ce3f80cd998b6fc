"""The tf.data input pipeline: catalog positions -> decoded, resized, normalized float32 batches.

Shape of the pipeline (Keras' own recipe, with OpenCV and Numba in the map functions)::

    positions -> batch -> map(per batch: read + decode + resize every image into one uint8
                              buffer, then the Numba kernel to float32; batches in parallel,
                              GIL released by OpenCV and Numba) -> prefetch

A file that cannot be read yields an all-zero image with ``ok = False`` and its reason in
:attr:`Loader.reasons`; the consumer drops those rows (they are never written as features).

With ``copies`` (augmentation transforms), each batch of ``b`` images comes out as
``(1 + len(copies)) * b`` rows: the plainly normalized images, then each augmented copy of the
same images in turn, with a ``copy`` id per row (0 = plain, k = ``copies[k - 1]``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from . import decode as _decode
from .catalog import Catalog
from .kernels import empty_aligned, normalize_batch
from .preprocess import Normalization, get_normalization
from .runtime import usable_cores


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

    Float32 batches are allocated 64-byte aligned (:func:`fastfeat.kernels.empty_aligned`) so that
    TensorFlow takes them from ``tf.numpy_function`` without a copy, and images are decoded
    straight into their slot of the batch buffer.
    """

    catalog: Catalog
    options: DecodeOptions
    normalization: Normalization | str = "none"
    transform: object = None
    copies: list = field(default_factory=list)
    reasons: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _local: threading.local = field(default_factory=threading.local, repr=False)

    def __post_init__(self):
        self.normalization = get_normalization(self.normalization)
        self._norm_args = self.normalization.kernel_args()

    # -- per-item and per-batch work (called by tf.data from its threads) -------------------
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
        """uint8 batch -> float32 batch (64-byte aligned, or ``out``) through the Numba kernel or
        the augmentation transform."""
        if self.transform is not None:
            return self.transform(images, positions, out=out)
        if out is None:
            out = empty_aligned(images.shape, np.float32)
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
            images = np.empty((n, h, w, 3), np.uint8)
        ok = np.empty(n, bool)
        for i, position in enumerate(positions):
            ok[i] = self.load(position, out=images[i])[1]
        return images, ok

    def load_batch(self, positions: np.ndarray):
        """Decode a batch of catalog items and normalize it (plus any copies), in one call.

        One ``tf.numpy_function`` per batch rather than per image: the Python and tensor overheads
        are paid once per batch, the images are decoded straight into one uint8 buffer, and
        tf.data runs several batches at once (OpenCV and the kernels release the GIL).

        Returns:
            (float32 rows, catalog positions per row, ok per row, copy id per row).
        """
        images, ok = self.decode_batch(positions, reuse=True)
        rows, row_positions, copy = self.normalize_with_copies(images, positions)
        return rows, row_positions, np.tile(ok, len(rows) // max(len(positions), 1)), copy

    # -- tf.data assembly -------------------------------------------------------------------
    def normalize_with_copies(self, images: np.ndarray, positions: np.ndarray):
        """The plain batch followed by every copy: (float32 rows, positions, copy ids).

        Every part is written straight into its slice of one aligned buffer (no concatenation).
        """
        n = len(positions)
        parts = 1 + len(self.copies)
        rows = empty_aligned((parts * n, *images.shape[1:]), np.float32)
        self.normalize(images, positions, out=rows[:n])
        for k, copy in enumerate(self.copies, start=1):
            copy(images, positions, out=rows[k * n : (k + 1) * n])
        copy_ids = np.repeat(np.arange(parts, dtype=np.int32), n)
        return rows, np.tile(positions, parts), copy_ids

    def dataset(self, positions, batch_size: int, prefetch: int | None = None, threads: int | None = None):
        """A ``tf.data.Dataset`` of ``(images float32 (r,h,w,3), positions int64 (r,), ok bool (r,),
        copy int32 (r,))`` with ``r = (1 + len(copies)) * b`` rows per batch of ``b`` images.

        ``threads`` is how many batches are decoded at once, each on one thread of a private pool
        of that size (see :func:`pipeline_threads`); ``prefetch`` how many finished batches wait
        ahead (default: as many as threads, at least 2).
        """
        import tensorflow as tf

        h, w = self.options.size
        positions = np.asarray(positions, dtype=np.int64)

        def load_batch(batch_positions):
            images, rows, ok, copy = tf.numpy_function(
                self.load_batch, [batch_positions], [tf.float32, tf.int64, tf.bool, tf.int32], stateful=False
            )
            images.set_shape((None, h, w, 3))
            for t in (rows, ok, copy):
                t.set_shape((None,))
            return images, rows, ok, copy

        threads = pipeline_threads(threads)
        ds = tf.data.Dataset.from_tensor_slices(positions).batch(batch_size)
        ds = ds.map(load_batch, num_parallel_calls=threads, deterministic=True)
        ds = ds.prefetch(prefetch if prefetch is not None else max(2, threads))
        return pipeline_options(ds, threads)


def pipeline_threads(threads: int | None = None) -> int:
    """Threads for a batch-parallel pipeline (default: one per usable core).

    Sets OpenCV's own pool to one thread (process-wide): the parallelism comes from whole
    batches decoded at once, and nested pools only thrash.
    """
    import cv2

    cv2.setNumThreads(1)
    return usable_cores() if threads is None else int(threads)


def pipeline_options(ds, threads: int):
    """``ds`` on a private tf.data thread pool of ``threads`` threads, with autotuning off.

    The pipeline's parallelism and buffers are fixed by us (one batch per thread, a prefetch of
    as many), so tf.data's autotuner has nothing to tune; its background thread would still cost
    CPU during the run and, worse, takes 0.2-0.3 s to stop when an iterator is deleted: once per
    epoch for ``model.fit`` (measured: 480-image epochs ran at ~760 img/s against ~1,300 with
    autotuning off, the whole difference spent in iterator teardown).
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.autotune.enabled = False
    return ds.with_options(options)
