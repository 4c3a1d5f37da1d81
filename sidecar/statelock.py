"""SHELL: one state file, one sidecar: an OS lock next to the SQLite file (issue 11)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .store import StoreError

__all__ = ["StateLock", "StateLocked"]


class StateLocked(StoreError):
    """Another process holds the state file's lock: one state file, one sidecar."""


class StateLock:
    """An exclusive OS lock (``flock``) on ``<state file>.lock``, next to the database.

    SQLite's own locks let two sidecars share a file (each would restore and resubmit the other's
    jobs); this lock makes the second one refuse to start. The lock file holds the holder's pid.
    The kernel releases the lock when the process dies, however it dies (SIGKILL included), so a
    stale lock file never blocks the next start.
    """

    def __init__(self, state_path: str | Path) -> None:
        self.state_path = Path(state_path)
        self.path = self.state_path.with_name(self.state_path.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`StateLocked` naming the file and the holder's pid."""
        if self._fd is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot open the lock file {self.path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise StateLocked(
                f"state file {self.state_path} is in use by another sidecar (pid {holder}, lock {self.path});"
                " stop it, or give this one its own file with --state or state.path"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Idempotent; the lock file stays (removing it would race with a starting sidecar)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
