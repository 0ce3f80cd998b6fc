"""Keeping C decoders' log lines off the terminal, and catching them for failure reasons.

Two channels, three tools:

* OpenCV logs through its own logger (``[ WARN:0@0.03] ...``, ``[ERROR:0@0.03] ...``):
  :func:`opencv_quiet` sets it to silent while at least one of our decodes runs (counted across
  threads, so concurrent decodes never restore each other's level) and puts the caller's level
  back when the last one returns. Nothing of it outlives the call.
* libpng and libjpeg inside OpenCV, and libtiff inside Pillow, ``fprintf`` straight to the
  process's stderr (file descriptor 2), which no logger controls. :func:`captured_stderr` points
  fd 2 at a temporary file for the length of one call and hands back the lines written. fd 2 is
  process-wide, so captures are serialized by a lock and used only where a decoder is expected
  to talk (files whose header shows a quirk, the Pillow fallback, the second OpenCV attempt that
  collects its message for a failure reason), never on the hot path. Lines in that window that
  look like Python's own output (tracebacks, ``warnings``, progress-bar updates) are written back
  to the terminal; OpenCV's logger is opened for the window only when asked.
* Damage inside compressed data (a corrupt PNG ``IDAT``, stray bytes inside JPEG scan data) is
  only found while decoding, so libpng/libjpeg may warn from any decode on any thread:
  :func:`filtered_stderr`, meant to span a loader pass, points fd 2 at a pipe and forwards
  everything to the terminal except lines in libpng's and libjpeg's own message formats
  (counted across overlapping passes; fd 2 is itself again when the last one ends). Python's
  output (tracebacks, warnings, tqdm) goes through it, at most ~50 ms late; what C code
  writes in the instant of a hard crash during a pass may be lost with the forwarding thread.

This module imports OpenCV only inside :func:`opencv_quiet` and :func:`captured_stderr`.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator

_level_lock = threading.Lock()  # guards the two below and every change of OpenCV's log level
_quiet_users = 0  # decodes in progress inside opencv_quiet()
_caller_level: int | None = None  # OpenCV's level before the first of them
_capture_lock = threading.Lock()  # one fd-2 capture at a time (fd 2 is process-wide)

_filter_lock = threading.Lock()  # taken before _capture_lock, never after
_filter: dict = {"users": 0, "saved": None, "thread": None}

_CAPTURE_LIMIT = 1 << 20  # bytes of captured output read back (a decoder can loop on a bad file)
#: Lines dropped by filtered_stderr: libpng's and libjpeg's (incl. -turbo) warnings and errors,
#: OpenCV's logger, libtiff's "Module: message" form.
DECODER_LINE = re.compile(
    r"libpng (warning|error): |Corrupt JPEG data|Premature end of JPEG file|Invalid SOS parameters"
    r"|Inconsistent progression sequence|Warning: unknown JFIF|Unknown Adobe color transform"
    r"|Application transferred too|\[ ?(WARN|ERROR|INFO|DEBUG|FATAL|VERBOSE):\d+@|_?TIFF\w*: |\w+Decode: "
)
_PYTHON_OUTPUT = re.compile(r"\r|Traceback |\s|.*\.py:\d+: \w*Warning: |\w+(Error|Exception|Warning)\b")


class _DecodeGate:
    """OpenCV decodes run side by side (shared); a window that turns OpenCV's process-wide logger on,
    to hear what it says about one file, runs alone (exclusive). Without it, another thread's decode
    in that window logs too, and its line can reach fd 2 just after the window gave the terminal back.
    Writer-preferring, and shared entries of the window's own thread pass straight through."""

    def __init__(self):
        self._cond = threading.Condition()
        self._shared = 0
        self._owner: int | None = None  # thread holding the exclusive window
        self._waiting = 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        me = threading.get_ident()
        if self._owner == me:  # the window's own decode
            yield
            return
        with self._cond:
            while self._owner is not None or self._waiting:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                if not self._shared:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            while self._owner is not None or self._shared:
                self._cond.wait()
            self._waiting -= 1
            self._owner = threading.get_ident()
        try:
            yield
        finally:
            with self._cond:
                self._owner = None
                self._cond.notify_all()


#: Every OpenCV decode of fastfeat's takes ``decode_gate.shared()``; a logging window ``exclusive()``.
decode_gate = _DecodeGate()


@contextlib.contextmanager
def opencv_quiet() -> Iterator[None]:
    """OpenCV's logger silent for the duration (counted: nested and concurrent uses are fine)."""
    global _quiet_users, _caller_level
    import cv2

    with _level_lock:
        if _quiet_users == 0:
            _caller_level = cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        _quiet_users += 1
    try:
        yield
    finally:
        with _level_lock:
            _quiet_users -= 1
            if _quiet_users == 0:
                cv2.utils.logging.setLogLevel(_caller_level)


@contextlib.contextmanager
def captured_stderr(opencv_warnings: bool = False) -> Iterator[list[str]]:
    """Capture what C code writes to fd 2 meanwhile; the list is filled when the block ends.

    Args:
        opencv_warnings: let OpenCV's logger write warnings and errors during the window (into
            the capture), to collect its message about a file it could not decode.

    Yields:
        A list that receives the captured lines (stripped, empty lines dropped) on exit.
    """
    lines: list[str] = []
    with _capture_lock:
        try:
            saved = os.dup(2)
        except OSError:  # no stderr at all: nothing can reach a terminal
            yield lines
            return
        try:
            with tempfile.TemporaryFile() as sink:
                _flush_python_stderr()
                os.dup2(sink.fileno(), 2)
                try:
                    with _opencv_level(opencv_warnings):
                        yield lines
                finally:
                    os.dup2(saved, 2)
                    sink.seek(0)
                    text = sink.read(_CAPTURE_LIMIT).decode("utf-8", "replace")
        finally:
            os.close(saved)
    python = []
    for line in text.splitlines(keepends=True):
        if not line.strip():
            continue
        if _PYTHON_OUTPUT.match(line):
            python.append(line)
        else:
            lines.append(line.strip())
    if python:
        with contextlib.suppress(OSError):
            os.write(2, "".join(python).encode("utf-8", "replace"))


@contextlib.contextmanager
def _opencv_level(warnings: bool) -> Iterator[None]:
    if not warnings:
        yield
        return
    import cv2

    with decode_gate.exclusive():  # no other thread decodes while OpenCV's logger speaks
        with _level_lock:
            previous = cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_WARNING)
        try:
            yield
        finally:
            with _level_lock:  # back to silent if decodes are running, else the caller's level
                level = cv2.utils.logging.LOG_LEVEL_SILENT if _quiet_users else previous
                cv2.utils.logging.setLogLevel(level)


def _flush_python_stderr() -> None:
    """Python's own buffered stderr text goes out before fd 2 is redirected, not into the capture."""
    stream = sys.stderr
    if stream is not None:
        with contextlib.suppress(OSError, ValueError, AttributeError):  # closed or replaced: nothing to flush
            stream.flush()


@contextlib.contextmanager
def filtered_stderr() -> Iterator[None]:
    """Drop libpng/libjpeg lines written to fd 2 meanwhile, forward everything else (see the module doc).

    Counted: nested and overlapping uses share one pipe and one forwarding thread.
    """
    with _filter_lock:
        if _filter["users"] == 0 and not _start_filter():
            _filter["users"] -= 1  # no stderr to filter: count this use anyway, restore nothing
        _filter["users"] += 1
    try:
        yield
    finally:
        with _filter_lock:
            _filter["users"] -= 1
            if _filter["users"] <= 0:
                _filter["users"] = 0
                _stop_filter()


def _start_filter() -> bool:
    with _capture_lock:  # not in the middle of a capture (its fd 2 is a temporary file)
        try:
            saved = os.dup(2)
        except OSError:
            return False
        read_end, write_end = os.pipe()
        _flush_python_stderr()
        os.dup2(write_end, 2)
        os.close(write_end)
    out = os.dup(saved)  # the thread's own copy: it may outlive _stop_filter (see there)
    thread = threading.Thread(target=_forward, args=(read_end, out), name="fastfeat-stderr", daemon=True)
    thread.start()
    _filter.update(saved=saved, thread=thread)
    return True


def _stop_filter() -> None:
    saved, thread = _filter["saved"], _filter["thread"]
    if saved is None:
        return
    with _capture_lock:
        _flush_python_stderr()
        os.dup2(saved, 2)  # the pipe's last writer closes: the thread reads to the end and stops
    thread.join(timeout=5)  # a child process still holding the pipe: let the daemon thread be
    os.close(saved)
    _filter.update(saved=None, thread=None)


def _forward(read_end: int, out: int) -> None:
    """Copy the pipe to ``out`` line by line, without decoder lines; a partial line after 50 ms.
    Closes both descriptors when the pipe ends."""
    import select

    pending = b""
    try:
        while True:
            ready = select.select([read_end], [], [], 0.05)[0] if pending else [read_end]
            chunk = os.read(read_end, 1 << 16) if ready else b""
            if ready and not chunk:  # end of the pipe
                break
            pending += chunk
            *lines, pending = re.split(rb"(?<=[\r\n])", pending)
            if not ready and pending:  # a progress bar or prompt: out after a short wait
                lines, pending = [*lines, pending], b""
            kept = [line for line in lines if not DECODER_LINE.match(line.decode("utf-8", "replace"))]
            if kept:
                os.write(out, b"".join(kept))
        if pending and not DECODER_LINE.match(pending.decode("utf-8", "replace")):
            os.write(out, pending)
    except OSError:  # the terminal went away: nothing left to forward to
        pass
    finally:
        os.close(read_end)
        os.close(out)
