"""Bounded background work: the one helper behind the loader's workers, the store's batch reader
and the extraction's writer thread.

:class:`BoundedPool` runs calls on a few worker threads with at most ``threads + ahead`` of them
submitted and not yet taken, and hands the results back in submission order; an exception raised
by a call is raised where its result is taken. :func:`ordered_map` is the generator form. This
module imports nothing from fastfeat (the store uses it, and never imports TensorFlow).
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor


class BoundedPool:
    """Calls run on ``threads`` worker threads; results are taken back in submission order.

    Args:
        threads: worker threads.
        ahead: calls that may wait (submitted, finished or not, not yet taken) beyond one per
            thread; :attr:`full` says when ``threads + ahead`` are out.
        name: prefix of the worker threads' names.
    """

    def __init__(self, threads: int, ahead: int = 2, name: str = "fastfeat-worker"):
        if isinstance(threads, bool) or int(threads) < 1 or isinstance(ahead, bool) or int(ahead) < 0:
            raise ValueError(f"`threads` must be >= 1 and `ahead` >= 0. Received: threads={threads}, ahead={ahead}")
        self.limit = int(threads) + int(ahead)
        self._pool = ThreadPoolExecutor(int(threads), thread_name_prefix=name)
        self._pending: collections.deque[Future] = collections.deque()

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def full(self) -> bool:
        """Whether ``threads + ahead`` calls are out: take one before submitting more."""
        return len(self._pending) >= self.limit

    def submit(self, fn: Callable, *args) -> None:
        """Start ``fn(*args)`` (call :meth:`take` first when :attr:`full`, to stay bounded)."""
        self._pending.append(self._pool.submit(fn, *args))

    def take(self):
        """The oldest call's result, waiting for it; its exception is raised here. Interrupted
        while waiting (``KeyboardInterrupt``), the call stays pending: take it again."""
        future = self._pending[0]
        try:
            return future.result()
        finally:
            if future.done():
                self._pending.popleft()

    def close(self) -> None:
        """Cancel the calls not started, wait for the running ones, stop the threads."""
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def ordered_map(fn: Callable, items: Iterable, threads: int, ahead: int = 2) -> Iterator:
    """``fn(item)`` for every item, in order, computed by ``threads`` worker threads at once.

    At most ``threads + ahead`` results are in flight or waiting, and the next item is submitted
    as soon as a result is taken, so the workers run while the consumer works. An exception from
    ``fn`` is raised when its result is reached. Closing the generator early (the consumer
    stops) cancels the waiting items and waits only for the running ones.
    """
    items = iter(items)
    with BoundedPool(threads, ahead, name="fastfeat-loader") as pool:
        for item in itertools.islice(items, pool.limit):
            pool.submit(fn, item)
        while len(pool):
            result = pool.take()
            for item in itertools.islice(items, 1):
                pool.submit(fn, item)
            yield result
