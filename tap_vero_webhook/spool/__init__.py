"""The spool: the contract between the listener and the tap, and the one place a backend is chosen.

The listener appends accepted events to the spool; the tap reads them back. Two
backends keep it, behind the same two faces (a writer for the listener, a source
for the tap), and `open_writer` and `open_source` pick one by the `Location`:

- `local.py`: segment files in the listener's data directory (the default: no
  new infrastructure; one listener per spool);
- `jetstream.py`: a replicated NATS JetStream stream (any number of listeners;
  an acknowledged event survives the loss of a machine).

What both promise:

- `append(events)` returns only once every event of the call is durable, all or
  none; otherwise it raises a `SpoolError` and nothing of the call is read as an
  event. `SpoolFull` and `SpoolUnavailable` mean "retry later" (503);
  `SpoolTooLarge` means the call can never fit (413).
- A source yields envelope lines (`ENVELOPE`) whose `seq` strictly increases in
  the order the spool committed them, after a bookmark, up to what was committed
  when the read began; and only one tap run reads a spool at a time.
- A bookmark that cannot belong to the spool (it was replaced or reset) is refused
  before anything is emitted (local: as soon as that is known, which is before any
  event after the bookmark), and retention removes only events at or below a
  committed bookmark.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from tap_vero_webhook.location import Location

__all__ = [
    "ENVELOPE",
    "STAMPED",
    "BookmarkNotInSpool",
    "EventIds",
    "SpoolBusy",
    "SpoolCorrupt",
    "SpoolError",
    "SpoolFull",
    "SpoolNotFound",
    "SpoolSource",
    "SpoolTooLarge",
    "SpoolUnavailable",
    "SpoolWriter",
    "Stamp",
    "TapAlreadyRunning",
    "open_source",
    "open_writer",
]

STAMPED = b'{"received_at":"%s","id":"%s","listener":"%s","event":%s}\n'
"""An accepted event with the listener's stamps: arrival time, id (a UUID), the listener's
id, and the event's JSON text exactly as posted (re-encoded compactly). The JetStream
backend stores events so; the sequence number is the stream's."""
ENVELOPE = b'{"seq":%d,' + STAMPED[1:]
"""One spool line: the sequence number, then the stamps and the event (`STAMPED`)."""
LISTENER_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""What a listener id may be: it appears in envelopes and in NATS subjects."""


@dataclass(frozen=True)
class Stamp:
    """What the spool stamped on one accepted event."""

    seq: int
    id: str
    received_at: str


class EventIds:
    """Random (version 4) UUIDs for accepted events, from a pool of random bytes refilled
    4096 ids at a time: a getrandom per request would hand the GIL around once more per
    request. Not thread-safe: its owner calls it under its own lock."""

    POOL_BYTES = 16 * 4096

    def __init__(self) -> None:
        self._pool, self._offset = b"", 0

    def take(self, count: int) -> list[str]:
        ids = []
        for _ in range(count):
            if self._offset >= len(self._pool):
                self._pool, self._offset = os.urandom(self.POOL_BYTES), 0
            chunk = self._pool[self._offset : self._offset + 16]
            self._offset += 16
            ids.append(str(uuid.UUID(bytes=chunk, version=4)))
        return ids


# --- errors --------------------------------------------------------------------------------


class SpoolError(Exception):
    """Base class of the spool's errors."""


class SpoolUnavailable(SpoolError):
    """The spool cannot take a batch now (disk full, I/O error, no JetStream quorum); the
    sender should retry."""


class SpoolFull(SpoolUnavailable):
    """The spool is at its size limit and refuses new events rather than drop unloaded
    ones; the sender should retry once the loader has caught up."""


class SpoolTooLarge(SpoolError):
    """The events of one call do not fit in one spool entry, however often it is tried."""

    def __init__(self, limit: int, message: str) -> None:
        super().__init__(message)
        self.limit = limit


class SpoolBusy(SpoolError):
    """Another listener already writes to this spool."""


class SpoolCorrupt(SpoolError):
    """A complete entry of the spool is not an envelope; nothing past it is read."""


class SpoolNotFound(SpoolError):
    """The tap was pointed at no spool: a wrong path would otherwise load nothing, silently."""


class BookmarkNotInSpool(SpoolError):
    """The state vouches for events this spool never had: it was replaced or reset."""


class TapAlreadyRunning(SpoolError):
    """Another run of the tap is reading this spool."""


# --- the two faces -------------------------------------------------------------------------


class SpoolWriter(Protocol):
    """The listener's face: safe to share between request threads."""

    max_entry_bytes: int | None
    """The most bytes of stamped events one `append` can store (None: no limit)."""

    def append(self, encoded_events: Sequence[bytes]) -> list[Stamp]: ...

    def writable(self) -> bool: ...

    def usage(self) -> dict[str, tuple[str, float]]:
        """Gauges for /metrics: name -> (help, value), read when scraped."""

    def close(self) -> None: ...


class SpoolSource(Protocol):
    """The tap's face: one run's view of the spool."""

    spool_id: str | None
    """What identifies this spool in a bookmark (None: the local spool, identified by its
    sequence numbers alone)."""

    def exclusive_run(self) -> AbstractContextManager[None]: ...

    def lines_after(self, after_seq: int | None, spool_id: str | None) -> Iterator[bytes]: ...

    def remove_loaded(self, loaded_through: int, older_than_seconds: float) -> list[str]: ...

    def close(self) -> None: ...


def open_writer(
    location: Location, listener_id: str, on_commit: Callable[[int, float], None] | None = None
) -> SpoolWriter:
    """The listener's face of the spool at `location`: the one place a backend is chosen."""
    if location.replicated:
        from tap_vero_webhook.spool.jetstream import JetStreamWriter

        return JetStreamWriter(location, listener_id, on_commit)
    from tap_vero_webhook.spool.local import open_local_writer

    return open_local_writer(location, listener_id, on_commit)


def open_source(location: Location) -> SpoolSource:
    """The tap's face of the spool at `location`."""
    if location.replicated:
        from tap_vero_webhook.spool.jetstream import JetStreamSource

        return JetStreamSource(location)
    from tap_vero_webhook.spool.local import LocalSource

    return LocalSource(location)
