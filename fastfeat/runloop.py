"""The main loop of an extraction: pull batches, infer, hand them to the writer thread; and the
run's stop request.

A :class:`StopToken` belongs to one run: ``extract(..., stop=token)`` then ``token.set()`` (from
any thread or a signal handler) ends that run after the batch in flight. :func:`request_stop`
sets the token of every run going on in this process (the CLI's Ctrl-C / SIGTERM handler).
"""

from __future__ import annotations

import threading
import time

import numpy as np

from .decode import DecodeError
from .workers import BoundedPool


class StopToken:
    """A stop request for one run (thread- and signal-safe)."""

    def __init__(self):
        self._event = threading.Event()
        self.writing = False  # set once the run's store is open (a stop then leaves it resumable)

    def set(self) -> None:
        """Ask the run to stop after the batch in flight (its store stays resumable)."""
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


#: Tokens of the runs going on in this process (added and removed by ``extract``; no lock, so a
#: signal handler can read it: adding, removing and copying a set are atomic under the GIL).
_RUNNING: set[StopToken] = set()


def request_stop() -> None:
    """Ask every :func:`fastfeat.extract` running in this process to stop after the batch in flight.

    The batch is written and committed, the store is left incomplete and resumable, and
    ``extract`` returns its report with ``interrupted=True``. A request made while no run is
    going on is not remembered. The CLI calls this on the first Ctrl-C or SIGTERM; to stop one
    run among several, pass it a :class:`StopToken` (``stop=``) and set that.
    """
    for token in tuple(_RUNNING):
        token.set()


def writing() -> bool:
    """Whether a run going on in this process has its store open (the CLI's first Ctrl-C then
    finishes the batch in flight; before that, there is nothing to keep and it interrupts)."""
    return any(token.writing for token in tuple(_RUNNING))


class running:
    """Context manager: ``token`` counts as a running run's (for :func:`request_stop`)."""

    def __init__(self, token: StopToken):
        self.token = token

    def __enter__(self) -> StopToken:
        _RUNNING.add(self.token)
        return self.token

    def __exit__(self, *exc):
        _RUNNING.discard(self.token)


class _Sink:
    """Appends batches to the store on one background thread (:class:`~fastfeat.workers.BoundedPool`,
    at most 2 waiting); a write error surfaces on the next put or at :meth:`finish`, and nothing
    is written after it."""

    def __init__(self, writer, ahead: int = 2):
        self.writer = writer
        self.pool = BoundedPool(1, ahead, name="fastfeat-writer")
        self.error: BaseException | None = None
        self.busy_seconds = 0.0

    def _write(self, item) -> None:
        if self.error is not None:
            return
        t0 = time.perf_counter()
        try:
            features, labels, paths, index, copy, failures = item
            self.writer.append(features, labels, paths, index, copy)
            self.writer.add_failures(*failures)
            self.writer.commit()
        except BaseException as e:  # noqa: BLE001 -- kept, re-raised in the main thread
            self.error = e
        finally:
            self.busy_seconds += time.perf_counter() - t0

    def put(self, item) -> float:
        """Hand a batch over; returns the seconds spent waiting for room."""
        if self.error is not None:
            raise self.error
        t0 = time.perf_counter()
        while self.pool.full:
            self.pool.take()
        waited = time.perf_counter() - t0
        self.pool.submit(self._write, item)
        return waited

    @property
    def pending(self) -> bool:
        """Whether batches handed over are still being written."""
        return len(self.pool) > 0

    def finish(self) -> None:
        """Wait for every batch handed over (a ``KeyboardInterrupt`` leaves them pending: call it
        again), then stop the thread; raises the first write error."""
        while len(self.pool):
            self.pool.take()
        self.pool.close()
        if self.error is not None:
            raise self.error


def _infer_rows(infer, images, batch_size: int) -> dict[str, np.ndarray]:
    """Run the compiled model over ``images`` in slices of ``batch_size`` rows."""
    n = int(images.shape[0])
    if n <= batch_size:
        return {k: v.numpy() for k, v in infer(images).items()}
    parts = [infer(images[i : i + batch_size]) for i in range(0, n, batch_size)]
    return {k: np.concatenate([p[k].numpy() for p in parts]) for k in parts[0]}


def _finish_writer(sink: _Sink, interrupted: bool) -> None:
    """Write and commit the batches already handed over; the writer thread is always waited for (a
    second Ctrl-C does not abandon it half-way through a batch)."""
    while True:
        try:
            sink.finish()
            return
        except KeyboardInterrupt:
            if not sink.pending:
                sink.pool.close()
                return
        except BaseException:
            sink.pool.close()
            if not interrupted:
                raise
            return


def run_loop(loader, positions, batch_size, infer, writer, report, on_error, progress, measure=None, threads=None,
             stop: StopToken | None = None):
    """The main loop: pull batches, infer, hand them to the writer thread.

    With ``infer=None`` (precision ``auto`` without a cached decision), ``measure`` (an
    :class:`~fastfeat.extractor.AutoMeasure`) decides on a few images of the first batch before
    anything is written. ``stop``: the run's :class:`StopToken`; once set, the loop ends after the
    batch in flight is handed to the writer.
    """
    from tqdm.auto import tqdm

    catalog = loader.catalog
    ds = loader.dataset(positions, batch_size, threads=threads)
    bar = tqdm(total=len(positions), unit="img", disable=not progress, dynamic_ncols=True, desc="extract")
    sink = _Sink(writer)
    stages = {"input_wait": 0.0, "inference": 0.0, "writer_wait": 0.0}
    steady_images, steady_start = 0, None
    loop_start = time.perf_counter()
    interrupted = False
    try:
        iterator = iter(ds)
        while True:
            t0 = time.perf_counter()
            try:
                images, pos, ok, copy = next(iterator)
            except StopIteration:
                break
            t1 = time.perf_counter()
            if infer is None:  # precision auto: decide on this first batch, before anything is written
                t_auto = time.perf_counter()
                rows_total = len(positions) * (1 + len(loader.copies))
                readable = ok.numpy()
                rows = images.numpy()
                infer = measure(rows[readable] if readable.any() else rows, rows_total, report)
                writer.update_meta(precision=report.precision, precision_auto=report.precision_auto)
                report.startup["precision"] = time.perf_counter() - t_auto
                t1 = time.perf_counter()
            outputs = _infer_rows(infer, images, batch_size)
            if report.precision == "mixed_float16":
                from .precision import count_nonfinite

                report.nonfinite += count_nonfinite(outputs)
            t2 = time.perf_counter()
            pos, ok, copy = pos.numpy(), ok.numpy(), copy.numpy()
            plain = copy == 0
            if on_error == "raise" and not ok.all():
                bad = int(pos[~ok][0])
                raise DecodeError(loader.reasons.get(bad, "unreadable"), catalog.abspath(bad))
            keep = np.flatnonzero(ok)
            failed = [int(p) for p in pos[plain & ~ok]]
            failures = (
                failed,
                [catalog.paths[p] for p in failed],
                [loader.reasons.get(p, "unreadable") for p in failed],
            )
            kept_pos = pos[keep]
            item = (
                {k: v[keep] for k, v in outputs.items()},
                catalog.labels[kept_pos],
                [catalog.paths[p] for p in kept_pos],
                kept_pos,
                copy[keep],
                failures,
            )
            waited = sink.put(item)
            report.images += int(np.count_nonzero(ok & plain))
            report.rows += len(keep)
            report.failures += len(failed)
            report.failure_list.extend(zip(failures[1], failures[2]))
            bar.update(int(np.count_nonzero(plain)))
            if steady_start is None:
                steady_start = time.perf_counter()  # the first batch carries tracing and warm-up
                report.startup_seconds = steady_start
                report.startup["first_batch"] = steady_start - t0 - report.startup.get("precision", 0.0)
            else:
                steady_images += int(np.count_nonzero(ok & plain))
                stages["input_wait"] += t1 - t0
                stages["inference"] += t2 - t1
                stages["writer_wait"] += waited
            if stop is not None and stop.is_set():  # the batch in flight is handed over; stop here
                report.interrupted = True
                break
    except BaseException:
        interrupted = True
        raise
    finally:
        iterator = None  # stops the loader's workers now (not when a traceback lets go of this frame)
        bar.close()
        _finish_writer(sink, interrupted)
    elapsed = time.perf_counter() - steady_start if steady_start is not None else 0.0
    if steady_images and elapsed > 0:
        report.images_per_second = steady_images / elapsed
    elif report.images:  # a single batch: no steady state to speak of, report it whole
        report.images_per_second = report.images / max(time.perf_counter() - loop_start, 1e-9)
        report.steady = False
    report.stages = {k: round(v, 3) for k, v in stages.items()}
    report.stages["writer_busy"] = round(sink.busy_seconds, 3)
