"""Disk-full and I/O-error guards of the writer.

A write that fails (disk full, quota, file size limit) may have been dropped by HDF5 in part, so
the writer publishes nothing after it (:class:`IOGuard`), and a full disk becomes one clean
``OSError(ENOSPC)`` that says what is kept. :func:`reserve` claims a new file's blocks up front.
"""

from __future__ import annotations

import errno
import os


#: Files HDF5 could not close (it could not flush them: disk full). Kept referenced so that the
#: garbage collector does not retry the doomed close and print errors; the OS closes them at exit.
UNCLOSABLE: list = []
_SPACE_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def space_error(path: str, e: BaseException) -> OSError | None:
    """A clean ``OSError`` if ``e`` means the disk (or a quota, or a file size limit) is full."""
    code = getattr(e, "errno", None)
    text = str(e)
    markers = ("No space", "File too large", "quota", "errno = 28", "errno = 27", "errno = 122")
    if code in _SPACE_ERRNOS or any(m in text for m in markers):
        return OSError(
            errno.ENOSPC,
            f"Disk full while writing {path!r}: the store is incomplete (the rows committed before are kept; "
            "free some space and run again with --resume)",
        )
    return None


class IOGuard:
    """Marks the writer broken on any I/O error (HDF5 may have dropped what it failed to write,
    so nothing may be published after it) and turns a full disk into a clean ``OSError``."""

    def __init__(self, writer):
        self.writer = writer

    def __enter__(self):
        if self.writer._broken is not None:
            raise OSError(
                f"{self.writer.path!r} cannot be written any more after an earlier error: {self.writer._broken}"
            )
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or not isinstance(exc, (OSError, RuntimeError)):
            return False
        self.writer._broken = exc
        full = space_error(self.writer.path, exc)
        if full is not None:
            raise full from exc
        return False


def reserve(path: str) -> None:
    """Reserve the disk blocks of the preallocated (sparse) file, so a full disk fails now."""
    size = os.path.getsize(path)
    if size == 0 or not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return
        raise
    finally:
        os.close(fd)
