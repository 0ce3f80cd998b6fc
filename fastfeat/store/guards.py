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


def space_error(path: str, e: BaseException, created: bool = False) -> OSError | None:
    """A clean ``OSError`` if ``e`` means the disk (or a quota, or a file size limit) is full.

    ``created``: the error came while creating the store (its space is claimed up front), so no
    file is left; otherwise the store stays with the rows committed before, resumable."""
    code = getattr(e, "errno", None)
    text = str(e)
    markers = ("No space", "File too large", "quota", "errno = 28", "errno = 27", "errno = 122")
    if not (code in _SPACE_ERRNOS or any(m in text for m in markers)):
        return None
    if created:
        return OSError(
            errno.ENOSPC,
            f"Disk full while writing {path!r}: the store's space is claimed when it is created and the disk "
            "does not have it, so nothing was written and no file is left. Free some space (or write elsewhere "
            "with -o), then run again",
        )
    return OSError(
        errno.ENOSPC,
        f"Disk full while writing {path!r}: the store is incomplete (the rows committed before are kept; "
        "free some space and run again with --resume)",
    )


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


def feature_bytes(features: dict, rows: int) -> int:
    """Bytes of ``rows`` rows of ``features`` (key -> (row shape, dtype)), uncompressed."""
    import numpy as np

    per_row = sum(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize for shape, dtype in features.values())
    return int(rows) * per_row


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def check_space(path: str, needed: int, flag: str = "--no-space-check") -> None:
    """Refuse (``OSError(ENOSPC)``) a store that clearly does not fit: ``needed`` bytes (its
    uncompressed features, claimed when it is created) above the free space of its folder."""
    import shutil

    folder = os.path.dirname(os.path.abspath(path))
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if needed > free:
        raise OSError(
            errno.ENOSPC,
            f"Not enough disk space for {path!r}: its features take about {human_bytes(needed)}, "
            f"{human_bytes(free)} are free in {folder!r}. Free some space, write elsewhere (-o), store less "
            f"(--dtype float16, a pooled cut such as LAYER:avg, --compression lzf), or pass {flag} to try anyway",
        )


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
