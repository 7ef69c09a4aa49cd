"""File locks: the one way this package takes flock(2) on a lock file.

A `LockFile` is an open lock file (0600, created if missing). `shared()` and
`exclusive()` hold the lock for a `with` block, waiting for it; `try_exclusive()`
takes it without waiting and keeps it until `release()` or `close()`, for locks
held as long as a process runs (the spool writer's, a tap run's). flock locks
belong to the open file, so two `LockFile`s on one path exclude each other even
in one process, and the kernel drops a lock when its holder dies.

A `LockFile` is not thread-safe: give each thread its own.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tap_vero_webhook.files import FILE_MODE

RETRY_SECONDS = 0.05


class LockFile:
    def __init__(self, path: Path, *, read_only_ok: bool = False) -> None:
        """Open (or create) the lock file; with `read_only_ok`, a reader without write
        access to its folder opens an existing one read-only, which flock allows."""
        self.path = Path(path)
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        except PermissionError:
            if not read_only_ok:
                raise
            self._fd = os.open(self.path, os.O_RDONLY)

    @contextmanager
    def shared(self) -> Iterator[None]:
        fcntl.flock(self._fd, fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def try_exclusive(self, wait_seconds: float = 0.0) -> bool:
        """Take the lock exclusively, waiting at most `wait_seconds`; False if another
        holder kept it that long. Held until `release()` or `close()`."""
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
            time.sleep(RETRY_SECONDS)

    def read_note(self) -> str:
        """What the holder wrote into the file (`write_note`), e.g. its pid."""
        return os.pread(self._fd, 64, 0).decode(errors="replace").strip()

    def write_note(self, note: str) -> None:
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, note.encode(), 0)

    def release(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> LockFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
