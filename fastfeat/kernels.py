"""Numba kernels and the one compile switch.

Every kernel is written as plain Python over NumPy arrays and compiled with :func:`jit`.
Set ``FASTFEAT_DISABLE_JIT=1`` to run every kernel as plain Python (slow, for debugging);
each compiled kernel also keeps its un-jitted original as ``kernel.py_func`` for tests.

Kernels only write into the output buffer they are given; they never allocate it.
They are compiled with ``nogil=True`` and without ``parallel=True``: tf.data calls them from
several threads at once, which Numba's default ``workqueue`` threading layer does not allow
for parallel kernels. Parallelism comes from those concurrent calls instead.
"""

from __future__ import annotations

import os

import numpy as np

DISABLE_JIT = os.environ.get("FASTFEAT_DISABLE_JIT", "").lower() in ("1", "true", "yes")


def jit(fn):
    """Compile ``fn`` with Numba (nopython, nogil, fastmath off), unless jitting is disabled."""
    if DISABLE_JIT:
        fn.py_func = fn
        return fn
    import numba

    return numba.njit(nogil=True, cache=True, fastmath=False)(fn)


@jit
def normalize_batch(src, dst, perm, scale, mean, inv_std):
    """Write ``dst[i, y, x, c] = (src[i, y, x, perm[c]] * scale[c] - mean[c]) * inv_std[c]``.

    ``src`` is a uint8 batch (n, h, w, 3), ``dst`` a float32 buffer of at least that shape
    (only ``dst[:n]`` is written). ``perm`` reorders channels (``[2, 1, 0]`` turns RGB into BGR).
    """
    n, h, w, channels = src.shape
    for i in range(n):
        for y in range(h):
            for x in range(w):
                for c in range(channels):
                    v = np.float32(src[i, y, x, perm[c]])
                    dst[i, y, x, c] = (v * scale[c] - mean[c]) * inv_std[c]
