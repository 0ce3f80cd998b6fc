"""The epoch feed behind image_dataset (fastfeat.feed) and the recycled batch buffers (fastfeat.buffers)."""

from __future__ import annotations

import gc
import threading
import time

import numpy as np
import pytest

from fastfeat.buffers import BufferPool
from fastfeat.feed import EpochFeed, feed_dataset

tf = pytest.importorskip("tensorflow")

LENGTH = 5


class Work:
    """items() numbers its passes; fn records what it computed and returns (pass, index)."""

    def __init__(self, fail_at=None):
        self.passes = 0
        self.calls: list[tuple[int, int]] = []
        self.fail_at = fail_at
        self.lock = threading.Lock()

    def items(self):
        self.passes += 1
        return [(self.passes - 1, i) for i in range(LENGTH)]

    def fn(self, item):
        with self.lock:
            self.calls.append(item)
        if item == self.fail_at:
            raise ValueError(f"cannot make {item}")
        return np.array(item, np.int64)

    def wait_for(self, item, timeout=10.0):
        deadline = time.monotonic() + timeout
        while item not in self.calls:
            if time.monotonic() > deadline:
                raise AssertionError(f"{item} never computed; calls: {self.calls}")
            time.sleep(0.005)


def dataset(work, **kwargs):
    feed = EpochFeed(work.items, work.fn, LENGTH, threads=2, **kwargs)
    return feed, feed_dataset(feed, tf.TensorSpec((2,), tf.int64))


def values(ds):
    return [tuple(x.numpy().tolist()) for x in ds]


def test_each_iteration_is_the_next_pass_in_order():
    work = Work()
    _, ds = dataset(work)
    assert int(ds.cardinality()) == LENGTH
    for p in range(3):
        assert values(ds) == [(p, i) for i in range(LENGTH)]
    assert work.passes in (3, 4)  # the fourth is the one computed ahead


def test_the_next_pass_starts_before_it_is_asked_for():
    work = Work()
    feed, ds = dataset(work, ahead=2)
    assert values(ds) == [(0, i) for i in range(LENGTH)]
    work.wait_for((1, 0))  # computed ahead while nothing iterates
    work.wait_for((1, 3))
    time.sleep(0.05)
    assert (1, 4) not in work.calls  # at most threads + ahead = 4 items ahead
    assert values(ds) == [(1, i) for i in range(LENGTH)]


def test_without_next_pass_nothing_is_computed_ahead():
    work = Work()
    _, ds = dataset(work, next_pass=False)
    assert values(ds) == [(0, i) for i in range(LENGTH)]
    time.sleep(0.1)
    assert work.passes == 1 and len(work.calls) == LENGTH


def test_a_pass_left_early_is_dropped_and_the_next_starts_at_its_first_item():
    work = Work()
    _, ds = dataset(work)
    assert values(ds.take(2)) == [(0, 0), (0, 1)]
    assert values(ds) == [(1, i) for i in range(LENGTH)]
    it = iter(ds)
    assert tuple(next(it).numpy()) == (2, 0)
    del it
    assert values(ds) == [(3, i) for i in range(LENGTH)]


def test_skip_gives_the_later_items_of_the_pass():
    work = Work()
    _, ds = dataset(work, next_pass=False)
    assert values(ds.skip(3)) == [(0, 3), (0, 4)]
    assert values(ds.skip(1).take(2)) == [(1, 1), (1, 2)]


def test_an_error_is_raised_at_its_item_and_the_next_pass_runs():
    work = Work(fail_at=(0, 2))
    _, ds = dataset(work)
    it = iter(ds)
    assert [tuple(next(it).numpy()) for _ in range(2)] == [(0, 0), (0, 1)]
    with pytest.raises(tf.errors.OpError, match=r"cannot make \(0, 2\)"):
        next(it)
    assert values(ds) == [(1, i) for i in range(LENGTH)]


def test_concurrent_iterations_are_refused():
    work = Work()
    _, ds = dataset(work)
    first = iter(ds)
    next(first), next(first), next(first)  # the first iteration is at item 3
    second = iter(ds)
    assert tuple(next(second).numpy()) == (1, 0)  # a new pass: the first one is dropped
    next(second)
    with pytest.raises(tf.errors.OpError, match="iterated twice at the same time"):
        next(first)  # asks for item 3 of a pass that is at item 2
    with pytest.raises(tf.errors.OpError, match="iterated twice at the same time"):
        next(second)  # the pass is broken for both
    assert values(ds) == [(2, i) for i in range(LENGTH)]  # a new iteration starts afresh


def test_workers_stop_when_the_feed_goes():
    work = Work()
    feed, ds = dataset(work)
    values(ds)

    def loader_threads():
        return [t for t in feed._executor._threads if t.is_alive()]

    assert loader_threads()
    feed.close()
    deadline = time.monotonic() + 10
    while loader_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not loader_threads()


def test_feed_arguments():
    with pytest.raises(ValueError, match="length=-1"):
        EpochFeed(list, abs, -1, 1)
    assert list(feed_dataset(EpochFeed(list, abs, 0, 1), tf.TensorSpec((), tf.int64))) == []  # no work
    feed = EpochFeed(lambda: [1, 2], abs, 3, 1)
    with pytest.raises(RuntimeError, match="a pass has 2 items, the dataset 3"):
        feed.take(0)
    feed.close()


# -- buffers ---------------------------------------------------------------------------------


def test_buffer_pool_reuses_an_array_once_nothing_refers_to_it():
    pool = BufferPool(keep=2)
    a = pool.empty((4, 8, 8, 3))
    assert a.shape == (4, 8, 8, 3) and a.dtype == np.float32 and a.flags.c_contiguous
    assert a.ctypes.data % 64 == 0
    address = a.ctypes.data
    derived = a[1:][::2]  # keeps a's memory alive (a view of a view)
    assert derived.base is a
    del a
    gc.collect()
    b = pool.empty((4, 8, 8, 3))
    assert b.ctypes.data != address  # still referred to by `derived`
    del derived
    gc.collect()
    c = pool.empty((4, 8, 8, 3))
    assert c.ctypes.data == address and pool.allocated == 2
    assert pool.empty((2, 3), np.uint8).dtype == np.uint8  # shapes and dtypes are pooled apart
    del b, c
    gc.collect()
    assert pool.free_count() <= 3


def test_buffer_pool_keeps_at_most_keep_free_arrays():
    pool = BufferPool(keep=1)
    arrays = [pool.empty((16,)) for _ in range(3)]
    del arrays
    gc.collect()
    assert pool.free_count() == 1
    pool.clear()
    assert pool.free_count() == 0
    with pytest.raises(ValueError, match="keep=-1"):
        BufferPool(keep=-1)


def test_a_tensor_keeps_its_buffer_from_reuse():
    pool = BufferPool()
    a = pool.empty((64, 64))
    a[...] = 7.0
    t = tf.convert_to_tensor(a)
    del a
    gc.collect()
    b = pool.empty((64, 64))  # a new array while the tensor may share the old one's memory
    b[...] = -1.0
    assert float(tf.reduce_min(t)) == 7.0 == float(tf.reduce_max(t))
