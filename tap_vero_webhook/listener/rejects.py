"""Refused webhook requests, kept for the operator the way Stitch keeps `_sdc_rejected`.

Every request to ``/hooks/`` that the listener refuses (any 4xx, 503, or the rare
500) becomes one JSON line in ``DATA_DIR/rejects/YYYY-MM-DD.jsonl`` (the UTC day
of the refusal)::

    {"time": "2026-11-30T02:14:26.123456Z", "reason": "invalid_json", "status": 400,
     "message": "...", "method": "POST", "size": 1234, "token_id": "1a2b3c4d",
     "content_type": "application/json", "remote_addr": "127.0.0.1",
     "body": "{\\"type\\": ...", "body_encoding": "utf-8", "body_truncated": false}

- ``reason`` is the error code the sender was answered with; ``token_id`` is null
  when the URL did not name an active token. The path is not recorded at all, so
  the token never lands here.
- ``body`` holds the first `body_cap` bytes (64 KiB by default): as text when they
  are UTF-8 (``body_encoding: "utf-8"``; a character split by the cap is dropped),
  otherwise base64 (``"base64"``) so the exact bytes survive. It is null, with
  ``body_encoding`` null, when the body was never read (waitress refused the
  request before the app saw it) or was empty.
- Recording is best effort and off the accept path: no fsync, and any error
  (disk full, permissions) is counted, logged and swallowed, so the sender still
  gets its 4xx/503 and never a 500 because of this file.
- Bounded: files older than the retention are deleted (at start and at the first
  refusal of each UTC day), and one day's file stops growing at `max_bytes_per_day`, so
  strangers posting to bad URLs cannot fill the disk; what is not written is
  still counted (`unrecorded`, exported on /metrics) and logged.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tap_vero_webhook.files import FILE_MODE, ensure_private_dir
from tap_vero_webhook.timestamps import utc_day, utc_timestamp

DEFAULT_RETENTION_DAYS = 30
DEFAULT_BODY_CAP = 64 * 1024
DEFAULT_MAX_BYTES_PER_DAY = 256 * 1024 * 1024
WARN_EVERY_SECONDS = 60.0

_DAY_FILE = re.compile(r"^(\d{4}-\d{2}-\d{2})\.jsonl$")

log = logging.getLogger("tap_vero_webhook.rejects")


@dataclass(frozen=True)
class Rejection:
    """What is known about one refused request."""

    status: int
    reason: str
    message: str | None = None
    method: str | None = None
    size: int | None = None
    token_id: str | None = None
    content_type: str | None = None
    remote_addr: str | None = None
    body: bytes | None = None


def encode_body(body: bytes | None, cap: int) -> tuple[str | None, str | None, bool]:
    """(text, encoding, truncated) for the first `cap` bytes of `body`."""
    if not body:
        return None, None, False
    truncated = len(body) > cap
    if cap <= 0:
        return None, None, truncated
    kept = body[:cap]
    try:
        return kept.decode("utf-8"), "utf-8", truncated
    except UnicodeDecodeError as exc:
        # a cut at the cap may split one character: drop its first bytes, keep the text
        if truncated and exc.start >= len(kept) - 3 and exc.reason == "unexpected end of data":
            return kept[: exc.start].decode("utf-8"), "utf-8", True
    return base64.b64encode(kept).decode("ascii"), "base64", truncated


def decode_body(record: dict) -> bytes | None:
    """The recorded body prefix as bytes (the inverse of `encode_body`)."""
    body = record.get("body")
    if body is None:
        return None
    if record.get("body_encoding") == "base64":
        return base64.b64decode(body)
    return body.encode("utf-8")


class RejectLog:
    """Appends refusals to today's file in `rejects_dir`; safe to call from many threads."""

    def __init__(
        self,
        rejects_dir: Path,
        retention_days: int = DEFAULT_RETENTION_DAYS,
        body_cap: int = DEFAULT_BODY_CAP,
        max_bytes_per_day: int = DEFAULT_MAX_BYTES_PER_DAY,
    ) -> None:
        self.rejects_dir = Path(rejects_dir)
        self.retention_days = retention_days
        self.body_cap = body_cap
        self.max_bytes_per_day = max_bytes_per_day
        self.recorded = 0
        self.unrecorded = 0
        self._lock = threading.Lock()
        self._day: str | None = None
        self._fd: int | None = None
        self._size = 0
        self._last_warning = 0.0
        self._full_day: str | None = None
        try:
            ensure_private_dir(self.rejects_dir)
            self.prune(time.time())
        except OSError as exc:
            log.warning("rejects folder %s is not usable: %s", self.rejects_dir, exc)

    def record(self, rejection: Rejection) -> bool:
        """Append one refusal; False if it could not be written. Never raises."""
        try:
            now = time.time()
            line = self._line(rejection, now)
            with self._lock:
                return self._append(line, now)
        except Exception as exc:
            self._count_failure(f"a refused request could not be recorded: {exc}")
            return False

    def _line(self, rejection: Rejection, now: float) -> bytes:
        body, encoding, truncated = encode_body(rejection.body, self.body_cap)
        record = {
            "time": utc_timestamp(now),
            "reason": rejection.reason,
            "status": rejection.status,
            "message": rejection.message,
            "method": rejection.method,
            "size": rejection.size,
            "token_id": rejection.token_id,
            "content_type": rejection.content_type[:200] if rejection.content_type else None,
            "remote_addr": rejection.remote_addr,
            "body": body,
            "body_encoding": encoding,
            "body_truncated": truncated,
        }
        return json.dumps(record, ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\n"

    def _append(self, line: bytes, now: float) -> bool:
        day = utc_day(now)
        if day != self._day:
            self._open_day(day, now)
        if self._size + len(line) > self.max_bytes_per_day:
            self.unrecorded += 1
            if self._full_day != day:
                self._full_day = day
                log.warning(
                    "rejects file for %s reached %d bytes; further refusals today are only "
                    "counted (vero_webhook_rejects_unrecorded_total)",
                    day,
                    self.max_bytes_per_day,
                )
            return False
        written = 0
        try:
            written = os.write(self._fd, line)
            if written != len(line):
                raise OSError(28, "short write")
        except OSError:
            if written:
                with contextlib.suppress(OSError):  # leave no torn line behind
                    os.ftruncate(self._fd, self._size)
            raise
        self._size += written
        self.recorded += 1
        return True

    def _open_day(self, day: str, now: float) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        ensure_private_dir(self.rejects_dir)
        path = self.rejects_dir / f"{day}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        os.fchmod(fd, FILE_MODE)
        self._fd, self._day, self._size = fd, day, os.fstat(fd).st_size
        self.prune(now)

    def prune(self, now: float) -> list[Path]:
        """Delete day files older than the retention (today is always kept)."""
        oldest_kept = utc_day(now - self.retention_days * 86400)
        removed = []
        for entry in os.scandir(self.rejects_dir):
            match = _DAY_FILE.match(entry.name)
            if match and match.group(1) < oldest_kept:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        return removed

    def _count_failure(self, message: str) -> None:
        with self._lock:
            self.unrecorded += 1
            due = time.monotonic() - self._last_warning >= WARN_EVERY_SECONDS
            if due:
                self._last_warning = time.monotonic()
        if due:
            log.warning("%s (further failures are only counted for a minute)", message)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
                self._day = None


def day_files(rejects_dir: Path) -> list[Path]:
    """The day files of a rejects folder, oldest first."""
    if not Path(rejects_dir).is_dir():
        return []
    return sorted(p for p in Path(rejects_dir).iterdir() if _DAY_FILE.match(p.name))


def read_rejects(rejects_dir: Path) -> Iterator[dict]:
    """Every recorded refusal, oldest first; a torn or foreign line is skipped."""
    for path in day_files(rejects_dir):
        with open(path, "rb") as handle:
            for line in handle:
                if not line.endswith(b"\n"):
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and "reason" in record:
                    yield record
