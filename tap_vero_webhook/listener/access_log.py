"""The access log: one line per request, written off the request's path.

Formatting and writing a log record costs a request thread about as much as the
whole durable append, and it sat between the fsync and the answer. So a request
only notes its fields (a tuple on a deque, no lock); a thread of the access log
turns the notes into ordinary `logging` records of the `tap_vero_webhook.access`
logger a few times a second, stamped with the time of the request, and on
`close`. Handlers, formats, levels and token redaction are those of `logging`,
as for every other line; an access line reaches them at most `FLUSH_SECONDS` late.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

ACCESS_LOGGER = "tap_vero_webhook.access"
FLUSH_SECONDS = 0.2


class AccessLog:
    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger(ACCESS_LOGGER)
        self._notes: collections.deque[tuple] = collections.deque()
        self._stop = threading.Event()
        self._flush_lock = threading.Lock()
        self._thread = threading.Thread(target=self._flush_often, name="access-log", daemon=True)
        self._thread.start()

    def note(
        self,
        method: str,
        path: str,
        status: int,
        size: int,
        events: int,
        started: float | None,
        token_id: str | None,
        reason: str | None,
    ) -> None:
        """Note one request (its `path` already redacted); `started` is its perf_counter()."""
        if not self.logger.isEnabledFor(logging.INFO):
            return
        latency_ms = round((time.perf_counter() - started) * 1000, 3) if started else 0.0
        self._notes.append(
            (time.time(), method, path, status, size, events, latency_ms, token_id, reason)
        )

    def flush(self) -> None:
        """Log every request noted so far, in the order they were noted."""
        with self._flush_lock:
            notes = self._notes
            while notes:
                self._log(*notes.popleft())

    def _log(self, noted_at, method, path, status, size, events, latency_ms, token_id, reason):
        record = self.logger.makeRecord(
            self.logger.name,
            logging.INFO,
            "(access log)",
            0,
            "%s %s",
            (method, path),
            None,
            extra={
                "status": status,
                "method": method,
                "path": path,
                "bytes": size,
                "events": events,
                "latency_ms": latency_ms,
                "token_id": token_id,
                "reason": reason,
            },
        )
        record.created = noted_at
        record.msecs = int((noted_at - int(noted_at)) * 1000) + 0.0
        self.logger.handle(record)

    def _flush_often(self) -> None:
        while not self._stop.wait(FLUSH_SECONDS):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.flush()
