"""The writer's lock: one process writes a store at a time (``<store>.lock`` holds its host and pid)."""

from __future__ import annotations

import os
import socket


class StoreLockedError(RuntimeError):
    """Another process is writing this store."""


class StoreLock:
    """An exclusive lock file ``<store>.lock``; a lock whose process is gone (same host) is taken over."""

    def __init__(self, path: str):
        self.path = path + ".lock"
        self.held = False

    def acquire(self):
        """Take the lock, or raise :class:`StoreLockedError` naming its live owner."""
        for _ in range(2):
            try:
                self._create()
            except FileExistsError:
                if self._stale():
                    try:
                        os.unlink(self.path)
                    except FileNotFoundError:
                        pass
                    continue
                raise StoreLockedError(
                    f"{self.path[:-5]!r} is being written by another process ({self._owner()}). "
                    f"If that process is gone, delete {self.path!r}."
                ) from None
            self.held = True
            return
        raise StoreLockedError(f"Could not take the lock {self.path!r}")

    def _create(self) -> None:
        """Write the owner into a private file, then link it into place: the lock file appears
        atomically with its content (a writer killed in between leaves no empty lock behind)."""
        tmp = f"{self.path}.{socket.gethostname()}.{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(f"{socket.gethostname()} {os.getpid()}\n")
        try:
            os.link(tmp, self.path)  # fails with FileExistsError if the lock is held
        finally:
            os.unlink(tmp)

    def _owner(self) -> str:
        try:
            with open(self.path) as f:
                return f.read().strip() or "unknown"
        except OSError:
            return "unknown"

    def _stale(self) -> bool:
        parts = self._owner().split()
        if len(parts) != 2 or parts[0] != socket.gethostname() or not parts[1].isdigit():
            return False
        try:
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def release(self):
        if self.held:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            self.held = False
