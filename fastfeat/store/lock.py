"""The writer's lock: one process writes a store at a time.

The lock is an ``fcntl.flock`` on ``<store>.lock``, held for the writer's lifetime. The kernel
releases it when the process dies (``kill -9`` included), so a dead writer never blocks the next
one and there is no stale-pid guessing; taking it is atomic, so two processes can never both
hold it. The file also holds the owner's host and pid, for the error message only.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import warnings


class StoreLockedError(RuntimeError):
    """Another process is writing this store."""


class StoreLock:
    """An exclusive ``flock`` on ``<store>.lock`` (removed again on release)."""

    def __init__(self, path: str):
        self.path = path + ".lock"
        self.held = False
        self._fd: int | None = None

    def acquire(self):
        """Take the lock, or raise :class:`StoreLockedError` naming its live owner."""
        for _ in range(100):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # close-on-exec: children don't hold it
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = self._owner(fd)
                os.close(fd)
                raise StoreLockedError(
                    f"{self.path[:-5]!r} is being written by another process ({owner}). "
                    f"If that process is gone, delete {self.path!r}."
                ) from None
            except OSError as e:
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    os.close(fd)
                    raise
                warnings.warn(
                    f"The file system of {self.path!r} does not support locks ({e}); "
                    "nothing stops a second writer.",
                    RuntimeWarning,
                    stacklevel=3,
                )
            # the holder we waited out may have removed the file after we opened it: retry on the new one
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{socket.gethostname()} {os.getpid()}\n".encode(), 0)
            self._fd = fd
            self.held = True
            return
        raise StoreLockedError(f"Could not take the lock {self.path!r}")

    @staticmethod
    def _owner(fd: int) -> str:
        try:
            return os.pread(fd, 256, 0).decode("utf-8", "replace").strip() or "unknown"
        except OSError:
            return "unknown"

    def release(self):
        if self.held:
            try:
                os.unlink(self.path)  # while still holding it: a waiter then retries on a new file
            except FileNotFoundError:
                pass
            os.close(self._fd)  # releases the flock
            self._fd = None
            self.held = False
