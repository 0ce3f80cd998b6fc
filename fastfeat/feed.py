"""Epoch feeds: a ``tf.data.Dataset`` whose every iteration is one pass (an epoch) of ``fn(item)``
over ``items()``, computed ahead by worker threads that live as long as the dataset.

Shape::

    Dataset.range(length).map(numpy_function(feed.take, [i]))    sequential, known cardinality
        feed.take(i): result i of the current pass, computed ahead on the feed's threads;
        take(0) starts the next pass (a new ``items()``: a new shuffle, new augmentation keys)

:func:`fastfeat.image_dataset` and :meth:`fastfeat.FeatureStore.to_dataset` run on it; one-pass
extraction keeps :func:`fastfeat.loader.worker_dataset` (``from_generator``). Two costs of ``from_generator`` are
paid once per epoch, and an epoch read from a decoded-image cache is short (480 images in about
40 ms on 2 cores), so they showed:

* starting an iteration: measured side by side (2 cores, an element function that returns a ready
  batch), ``iter()`` + the first element took 3.9 + 6.7 ms with ``from_generator`` against
  3.3 + 0.5 ms with ``range().map(numpy_function)``, and each further element 0.45 against
  0.30 ms;
* the empty pipeline at the start of every epoch: a generator's pool starts with the iteration,
  so the first batch waits for its whole computation. Here, once a pass has handed all its items
  to the workers, they go on with the first items of the next pass, so the next epoch's first
  batches are ready when it starts (at most ``threads + ahead`` items are in flight or done and
  not taken, across both passes).

Rules of a pass (tf.data asks for elements in order, one at a time):

* ``take(0)`` starts the next pass. A pass left unfinished (the consumer stopped early:
  ``take(n)``, a ``break``, a peek at one batch) is dropped there: its waiting items are
  cancelled and its finished results discarded;
* any other index must be the one after the last: the function is stateful, so tf.data asks for
  every element in order, even those a ``skip`` drops. Another index means a second iteration of
  the same dataset is running at the same time, which would take some of the first one's
  batches: it raises ``RuntimeError`` instead (make one dataset per concurrent reader). Which of
  the two iterations meets the error depends on how their requests interleave, and an iteration
  that stops right after taking one of the other's batches goes unnoticed: iterate one at a time.

This module imports nothing from fastfeat: the loader (``worker_dataset``), ``image_dataset`` and
the store's tf.data adapter use it. The worker threads stop when the dataset is garbage collected. Items still computed ahead for a
pass that never comes (after the last epoch) hold their results until then (one batch each).
"""

from __future__ import annotations

import collections
import ctypes
import os
import platform
import sys
import threading
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait



class _Pass:
    """One pass's items and how far they were handed to the workers."""

    __slots__ = ("number", "items", "submitted")

    def __init__(self, number: int, items: Sequence):
        self.number = number
        self.items = items
        self.submitted = 0


class EpochFeed:
    """Results of ``fn(item)`` for each item of a pass, in order, computed ahead on worker threads.

    Args:
        items: called once per pass: the pass's work items (exactly ``length`` of them).
        fn: the work, run on a worker thread; its exception is raised by :meth:`take`.
        length: items per pass.
        threads: worker threads.
        ahead: items that may be finished and not taken beyond one per thread (default
            :func:`default_ahead`).
        next_pass: compute the next pass's first items once the current one is all handed out.
    """

    def __init__(self, items: Callable[[], Sequence], fn: Callable, length: int, threads: int,
                 ahead: int | None = None, next_pass: bool = True):  # fmt: skip
        if int(length) < 0 or int(threads) < 1:
            raise ValueError(f"`length` must be >= 0 and `threads` >= 1. Received: length={length}, threads={threads}")
        self._items, self._fn, self.length = items, fn, int(length)
        self.limit = int(threads) + (default_ahead(int(threads)) if ahead is None else int(ahead))
        self.next_pass = bool(next_pass)
        self._executor = ThreadPoolExecutor(int(threads), thread_name_prefix="fastfeat-loader")
        self._finalizer = weakref.finalize(self, self._executor.shutdown, wait=False, cancel_futures=True)
        self._lock = threading.Lock()
        self._queue: collections.deque[tuple[int, int, Future]] = collections.deque()  # (pass, index, result)
        self._passes = 0  # passes made (calls of ``items``)
        self._cursor: _Pass | None = None  # the pass whose items are being handed out
        self._current: int | None = None  # the pass being taken from; None between passes
        self._taken = -1  # the last pass started by the consumer
        self._next = 0  # the index the consumer should ask for next

    def take(self, index: int):
        """Result ``index`` of the current pass (starting the next pass at 0); see the module doc."""
        index = int(index)
        with self._lock:
            if index == 0:
                self._start_pass()
            elif self._current is None or index != self._next:
                self._current = None  # the pass is broken for every iteration taking from it
                raise RuntimeError(
                    "This dataset is being iterated twice at the same time (element "
                    f"{index} was asked for, element {self._next} was next): each iteration is one "
                    "epoch, and concurrent ones would take each other's batches. Make one dataset "
                    "per concurrent reader."
                )
            if index >= self.length:
                raise IndexError(f"index {index} out of range for a pass of {self.length} items")
            self._fill()
            number, at, future = self._queue.popleft()
            assert (number, at) == (self._current, index), (number, at, self._current, index)
            self._next = index + 1
            if self._next == self.length:
                self._current = None
            self._fill()
        return future.result()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every item handed to the workers is done (computed ahead or not); True if
        they all are. For benchmarks that must not time one dataset's work ahead in another's."""
        with self._lock:
            futures = [f for _, _, f in self._queue]
        _, pending = wait(futures, timeout=timeout)
        return not pending

    def close(self) -> None:
        """Stop the worker threads (running items finish; waiting ones are cancelled)."""
        self._finalizer()

    # -- internals (called with the lock held) ----------------------------------------------
    def _start_pass(self) -> None:
        if self._cursor is None or self._cursor.number <= self._taken:
            self._cursor = self._new_pass()  # nothing computed ahead for it
        self._current = self._taken = self._cursor.number
        self._next = 0
        while self._queue and self._queue[0][0] < self._current:  # an unfinished earlier pass
            self._queue.popleft()[2].cancel()

    def _new_pass(self) -> _Pass:
        keep_large_allocations()
        items = self._items()
        if len(items) != self.length:
            raise RuntimeError(f"a pass has {len(items)} items, the dataset {self.length}")
        self._passes += 1
        return _Pass(self._passes - 1, items)

    def _fill(self) -> None:
        while len(self._queue) < self.limit:
            cursor = self._cursor
            if cursor.submitted == len(cursor.items):
                if not self.next_pass or cursor.number > self._taken:
                    return  # at most one pass ahead of the consumer
                cursor = self._cursor = self._new_pass()
            item = cursor.items[cursor.submitted]
            self._queue.append((cursor.number, cursor.submitted, self._executor.submit(self._fn, item)))
            cursor.submitted += 1


def feed_dataset(feed: EpochFeed, signature):
    """The ``tf.data.Dataset`` over ``feed``: each iteration is one pass; ``signature`` is the
    structure of ``TensorSpec`` of ``fn``'s results (a spec or a tuple of them)."""
    import tensorflow as tf

    several = isinstance(signature, tuple)
    specs = signature if several else (signature,)

    def take(i):
        result = feed.take(i)
        return result if several else (result,)

    def element(i):
        values = tf.numpy_function(take, [i], [s.dtype for s in specs], stateful=True)
        for value, spec in zip(values, specs):
            value.set_shape(spec.shape)
        return tuple(values) if several else values[0]

    ds = tf.data.Dataset.range(feed.length).map(element)
    return pipeline_options(ds)


def default_ahead(threads: int) -> int:
    """Finished batches a pipeline may hold ahead of its consumer by default: as many as it has
    worker threads, at least 2 (so ``threads + default_ahead(threads)`` batches can be alive)."""
    return max(2, threads)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_large_allocations() -> bool:
    """Let glibc serve allocations up to 32 MB from its heaps again; True if it was changed.

    TensorFlow's ``Dataset.from_generator`` on Python 3.11 calls ``mallopt(M_MMAP_THRESHOLD,
    128 KB)`` when its op is built (``ApplyPython311MemoryPatch``, seen in a debugger; against heap
    growth in TF's own leak reports), which also freezes glibc's dynamic threshold, process-wide. Every decoded photo (500x375 RGB is 0.56 MB) and every batch buffer is then a
    fresh ``mmap`` whose pages fault in and are unmapped again: measured on this project's 2-core
    VM, 1.5 ms of kernel time per image, which more than halved the loader's throughput and that
    of any OpenCV decoding in the process. glibc's own default moves the threshold up to the size
    of the large blocks a program frees (at most 32 MB, trimming kept at twice that); this
    restores those values, so a steady pipeline reuses its blocks. Called at the start of every
    pass. Set ``FASTFEAT_MALLOC_TUNING=0`` to leave the allocator alone; a no-op off glibc.
    """
    if os.environ.get("FASTFEAT_MALLOC_TUNING", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)) & bool(mallopt(_M_TRIM_THRESHOLD, 64 << 20))


def pipeline_options(ds):
    """``ds`` with tf.data's autotuner off.

    Parallelism and run-ahead are fixed by :func:`ordered_map`, so the autotuner has nothing to
    tune, and it hurts (measured on 2 cores, 480 JPEGs per epoch, interleaved): ``image_dataset``
    epochs ran at 758-764 img/s in 4 of 5 rounds with it against 1,003-1,149 without, and when
    this loader was a ``tf.data`` parallel map its thread took 0.2-0.3 s to stop at every
    iterator deletion. Ops a user chains after the dataset then run without autotuning too: give
    them an explicit ``num_parallel_calls``, or turn it back on with ``ds.with_options``.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)
