"""The local spool: accepted events in segment files in the listener's data directory.

The default backend of the spool (see the contract in `__init__.py`): no new
infrastructure, one listener per spool. This module is one concept, read top-down
in this order:

**Format.** A spool is a folder of segment files and two lock files::

    spool/
      00000000000000000001.jsonl   segments, named after the first sequence number they hold
      00000000000000052113.jsonl
      commit.lock                  writer: exclusive while a batch is in flight;
                                   readers: shared while they take a snapshot
      writer.lock                  held by the one writer (its pid inside)
      quarantine/                  damaged tails set aside by a restarted writer

Each line of a segment is one envelope (`ENVELOPE`)::

    {"seq":42,"received_at":"2026-11-30T02:14:26.123456Z","id":"<uuid4>","listener":"web-1",
     "event":{...}}

`seq` strictly increases in acceptance order across segments (gaps are possible:
a batch that failed to write burns its numbers, they are never reused). `event` is
the event exactly as posted.

**Locks.** One writer per spool (`writer.lock`, refused to a second listener). A
reader only ever sees bytes the writer has fsynced: it reads up to the sizes it
saw while holding `commit.lock` shared, and the writer commits under it exclusively.

**Recovery.** A crash can leave a torn last line, which readers skip and the next
writer truncates; a power loss can leave a damaged tail, which the next writer
moves to `quarantine/`.

**Writer** (`SpoolWriter`): group commit, one fdatasync per group of concurrent
appends. **Reader** (`SpoolReader`): committed lines after a sequence number, from
a snapshot. **Retention** (`remove_loaded_segments`): whole segments loaded and old
enough are deleted. **The tap's face** (`LocalSource`): one run at a time (the
data directory's `tap.lock`), the reader, retention.

Threads: a `SpoolWriter` is safe to share between threads (that is its purpose:
every request thread appends to the one writer). A `SpoolReader` and its
iterators belong to one thread. Segments and stamps are immutable values.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from tap_vero_webhook.data_dir import DataDir
from tap_vero_webhook.files import FILE_MODE, ensure_private_dir, fsync_dir
from tap_vero_webhook.location import Location
from tap_vero_webhook.locks import LockFile
from tap_vero_webhook.spool import (
    ENVELOPE,
    BookmarkNotInSpool,
    EventIds,
    SpoolBusy,
    SpoolCorrupt,
    SpoolNotFound,
    SpoolUnavailable,
    Stamp,
    TapAlreadyRunning,
)
from tap_vero_webhook.timestamps import utc_now

__all__ = [
    "DEFAULT_SEGMENT_MAX_BYTES",
    "QUARANTINE_SUBDIR",
    "LocalSource",
    "Segment",
    "SpoolReader",
    "SpoolWriter",
    "line_seq",
    "list_segments",
    "open_local_writer",
    "remove_loaded_segments",
    "segment_name",
]

logger = logging.getLogger(__name__)
_decode_json = msgspec.json.Decoder().decode

SEGMENT_SUFFIX = ".jsonl"
SEGMENT_NAME = re.compile(r"^(\d{20})\.jsonl$")
COMMIT_LOCK = "commit.lock"
QUARANTINE_SUBDIR = "quarantine"
WRITER_LOCK = "writer.lock"
DEFAULT_SEGMENT_MAX_BYTES = 64 * 1024 * 1024
READ_CHUNK_BYTES = 1024 * 1024

_SEQ_PREFIX = b'{"seq":'
DEFAULT_LISTENER_ID = "local"


# --- the format ----------------------------------------------------------------------------


def segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}{SEGMENT_SUFFIX}"


@dataclass(frozen=True)
class Segment:
    """One segment file as seen in a snapshot: its bytes up to `size` are committed."""

    path: Path
    first_seq: int
    size: int
    mtime: float


def list_segments(spool_dir: Path) -> list[Segment]:
    """The segments of a spool, oldest first (sizes as of now, not locked)."""
    segments = []
    for entry in os.scandir(spool_dir):
        match = SEGMENT_NAME.match(entry.name)
        if match:
            stat = entry.stat()
            segments.append(
                Segment(Path(entry.path), int(match.group(1)), stat.st_size, stat.st_mtime)
            )
    segments.sort(key=lambda segment: segment.first_seq)
    return segments


def line_seq(line: bytes) -> int:
    """The sequence number of an envelope line, read from its fixed prefix."""
    if not line.startswith(_SEQ_PREFIX):
        raise ValueError("line does not start with an envelope's seq")
    end = line.index(b",", len(_SEQ_PREFIX))
    return int(line[len(_SEQ_PREFIX) : end])


# --- locks ---------------------------------------------------------------------------------


def _commit_lock(spool_dir: Path) -> LockFile:
    """spool/commit.lock: exclusive while the writer commits a batch, shared while a
    reader takes a snapshot (a reader may lack write access to the folder)."""
    return LockFile(spool_dir / COMMIT_LOCK, read_only_ok=True)


def _take_writer_lock(spool_dir: Path, wait_seconds: float) -> LockFile:
    """Hold spool/writer.lock for the writer's lifetime; if another process has it, wait
    up to `wait_seconds` for it to let go (a listener draining after SIGTERM), then refuse."""
    lock = LockFile(spool_dir / WRITER_LOCK)
    if not lock.try_exclusive():
        holder = lock.read_note() or "unknown"
        if wait_seconds > 0:
            logger.warning(
                "another listener (pid %s) holds the spool in %s; waiting up to %g s for it "
                "to stop",
                holder,
                spool_dir,
                wait_seconds,
            )
        if not lock.try_exclusive(wait_seconds):
            lock.close()
            raise SpoolBusy(
                f"another listener (pid {holder}) is already writing to {spool_dir}; "
                "stop it first, or give this one its own --data-dir"
            )
    lock.write_note(str(os.getpid()))
    return lock


# --- recovery ------------------------------------------------------------------------------


def _valid_envelope_seq(line: bytes) -> int | None:
    """The seq of a whole, well-formed envelope line, else None."""
    try:
        envelope = _decode_json(line)
    except msgspec.DecodeError:
        return None
    if not isinstance(envelope, dict) or not isinstance(envelope.get("event"), dict):
        return None
    seq = envelope.get("seq")
    return seq if type(seq) is int else None


def _repair_newest_segment(path: Path) -> tuple[int, int | None]:
    """Make the newest segment end with its last whole, valid envelope; return its size
    and last seq (None if empty).

    A torn last line (a crash mid-write, so never acknowledged) is cut off. A complete
    line that is not a valid envelope, and everything after it, can only be the tail of
    a group write cut short by a power loss (some file systems leave zeros there), which
    no sender was told was accepted: it is moved to spool/quarantine/ for inspection,
    never deleted and never read as events, so the listener can serve again.
    """
    data = path.read_bytes()
    good_end, last_seq = 0, None
    while (end := data.find(b"\n", good_end)) >= 0:
        seq = _valid_envelope_seq(data[good_end : end + 1])
        if seq is None or (last_seq is not None and seq <= last_seq):
            break
        good_end, last_seq = end + 1, seq
    damaged = data[good_end:]
    if damaged:
        if b"\n" in damaged:
            _quarantine(path, good_end, damaged)
        fd = os.open(path, os.O_WRONLY)
        try:
            os.ftruncate(fd, good_end)
            os.fsync(fd)
        finally:
            os.close(fd)
    return good_end, last_seq


def _quarantine(path: Path, offset: int, damaged: bytes) -> None:
    folder = ensure_private_dir(path.parent / QUARANTINE_SUBDIR)
    target = folder / f"{path.stem}.from-byte-{offset}.{int(time.time())}.damaged"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        os.write(fd, damaged)
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(folder)
    logger.warning(
        "spool segment %s held %d damaged bytes from byte %d on (a write cut short by a "
        "crash or power loss); moved them to %s and carried on",
        path.name,
        len(damaged),
        offset,
        target,
    )


# --- the writer ----------------------------------------------------------------------------


@dataclass
class _Batch:
    lines: list[bytes] = field(default_factory=list)
    first_seq: int = 0
    done: bool = False
    written: bool = False
    error: OSError | None = None
    waiters: list[threading.Lock] = field(default_factory=list)


def _create_segment(spool_dir: Path, first_seq: int) -> Path:
    path = spool_dir / segment_name(first_seq)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    os.close(fd)
    fsync_dir(spool_dir)
    return path


class SpoolWriter:
    """Appends envelopes to the newest segment, one fsync per group of concurrent batches.

    Group commit: callers queue their lines in the open batch and sleep; one writer
    thread takes every line queued so far, writes and fsyncs them while holding no
    Python lock, then wakes exactly the callers whose lines it carried, and at once
    takes the batch that filled up meanwhile. A caller returns only once its lines
    are durable. Each caller sleeps on a lock of its own, released once: waking every
    waiter on every commit (a shared condition), or handing the lead from caller to
    caller, costs more in context switches and GIL hand-offs than the fsync itself.
    """

    def __init__(
        self,
        spool_dir: Path,
        segment_max_bytes: int = DEFAULT_SEGMENT_MAX_BYTES,
        on_commit: Callable[[int, float], None] | None = None,
        lock_wait_seconds: float = 0,
        listener_id: str = DEFAULT_LISTENER_ID,
    ) -> None:
        """`on_commit(events, seconds)` is called by the writer thread after each group
        commit (for metrics), never on a request's path. A spool another writer holds is
        refused (`SpoolBusy`) once `lock_wait_seconds` have passed."""
        self.spool_dir = ensure_private_dir(Path(spool_dir))
        self.segment_max_bytes = segment_max_bytes
        self.listener_id = listener_id
        self._listener = listener_id.encode()
        self._on_commit = on_commit
        self._writer_lock = _take_writer_lock(self.spool_dir, lock_wait_seconds)
        self._commit_lock = _commit_lock(self.spool_dir)
        with self._commit_lock.exclusive():
            self._open_newest_segment()
        self._lock = threading.Lock()
        self._ids = EventIds()
        self._open_batch = self._new_batch()
        self._work = threading.Condition(self._lock)
        self._writer_idle = False
        self._closing = False
        self.batches_written = 0
        self.lines_written = 0
        self._writer = threading.Thread(target=self._write_batches, name="spool-writer")
        self._writer.daemon = True
        self._writer.start()

    def _open_newest_segment(self) -> None:
        segments = list_segments(self.spool_dir)
        if not segments:
            path = _create_segment(self.spool_dir, 1)
            size, last_seq, first_seq = 0, None, 1
        else:
            path, first_seq = segments[-1].path, segments[-1].first_seq
            size, last_seq = _repair_newest_segment(path)
        os.chmod(path, FILE_MODE)
        self._segment_path = path
        self._segment_size = size
        self._next_seq = first_seq if last_seq is None else last_seq + 1
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)

    def _new_batch(self) -> _Batch:
        return _Batch(first_seq=self._next_seq)

    @property
    def segment_path(self) -> Path:
        return self._segment_path

    def append(self, encoded_events: Sequence[bytes]) -> list[Stamp]:
        """Stamp and durably append events (each the JSON text of one event).

        All of them are written or none is: on failure every line of the group is
        truncated away again and `SpoolUnavailable` is raised.
        """
        with self._lock:
            now = utc_now()  # under the lock: received_at follows seq order
            ids = self._ids.take(len(encoded_events))
            batch = self._open_batch
            seq = self._next_seq
            stamps = []
            for event_id, event in zip(ids, encoded_events, strict=True):
                batch.lines.append(
                    ENVELOPE % (seq, now.encode(), event_id.encode(), self._listener, event)
                )
                stamps.append(Stamp(seq, event_id, now))
                seq += 1
            self._next_seq = seq
            waiter = threading.Lock()
            waiter.acquire()
            batch.waiters.append(waiter)
            if self._writer_idle:
                self._work.notify()
        waiter.acquire()  # released by the writer once our batch is written or failed
        if not batch.written:
            reason = batch.error.strerror if batch.error else "write did not complete"
            raise SpoolUnavailable(f"spool write failed: {reason}")
        return stamps

    def _write_batches(self) -> None:
        """The writer thread: commit whatever is queued, until `close`."""
        while True:
            with self._lock:
                while not self._open_batch.lines and not self._closing:
                    self._writer_idle = True
                    self._work.wait()
                self._writer_idle = False
                if not self._open_batch.lines:
                    return
                carried = self._open_batch
                self._open_batch = self._new_batch()
            try:
                self._write(carried)
            finally:
                carried.done = True
                for waiter in carried.waiters:
                    waiter.release()

    def _write(self, batch: _Batch) -> None:
        started = time.perf_counter()
        data = b"".join(batch.lines)
        with self._commit_lock.exclusive():
            start = self._segment_size
            try:
                if start >= self.segment_max_bytes:
                    self._rotate(batch.first_seq)
                    start = 0
                view = memoryview(data)
                while view:
                    written = os.write(self._fd, view)
                    view = view[written:]
                os.fdatasync(self._fd)
            except OSError as exc:
                batch.error = exc
                self._undo(start)
                return
            self._segment_size = start + len(data)
            batch.written = True
            self.batches_written += 1
            self.lines_written += len(batch.lines)
        if self._on_commit is not None:
            self._on_commit(len(batch.lines), time.perf_counter() - started)

    def _undo(self, size: int) -> None:
        """Cut the file back to its last committed size after a failed write."""
        try:
            os.ftruncate(self._fd, size)
            os.fdatasync(self._fd)
        except OSError:
            pass  # a reader still stops at the committed size it saw under the lock

    def _rotate(self, first_seq: int) -> None:
        path = _create_segment(self.spool_dir, first_seq)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        os.close(self._fd)
        self._fd, self._segment_path, self._segment_size = fd, path, 0

    max_entry_bytes = None

    def usage(self) -> dict[str, tuple[str, float]]:
        try:
            segments = list_segments(self.spool_dir)
        except OSError:
            segments = []
        return {
            "bytes": (
                "Bytes in the spool's segment files, loaded or not.",
                sum(segment.size for segment in segments),
            ),
            "segments": ("Segment files in the spool.", len(segments)),
        }

    def writable(self) -> bool:
        """Whether the newest segment can be appended to right now (for health checks)."""
        try:
            os.fstat(self._fd)
            stat = os.statvfs(self.spool_dir)
        except OSError:
            return False
        return stat.f_bavail * stat.f_frsize > 0 and os.access(self._segment_path, os.W_OK)

    def close(self) -> None:
        """Commit what is queued, stop the writer thread, release the spool."""
        with self._lock:
            self._closing = True
            self._work.notify()
        self._writer.join()
        os.close(self._fd)
        self._commit_lock.close()
        self._writer_lock.close()


# --- the reader ----------------------------------------------------------------------------


class SpoolReader:
    """Reads committed envelope lines in sequence order, from a snapshot of the spool."""

    def __init__(self, spool_dir: Path) -> None:
        self.spool_dir = Path(spool_dir)
        self.high_water = 0
        """After `lines_after` has run: the highest seq the spool has given out."""

    def snapshot(self) -> list[Segment]:
        """The segments and their committed sizes, as of now."""
        if not self.spool_dir.is_dir():
            return []
        with _commit_lock(self.spool_dir) as lock, lock.shared():
            return list_segments(self.spool_dir)

    def lines_after(
        self, after_seq: int | None, segments: list[Segment] | None = None
    ) -> Iterator[bytes]:
        """Complete envelope lines with a seq above `after_seq` (all if None), in order.

        A torn last line is skipped; a complete line that is not an envelope, or
        whose seq does not increase, raises `SpoolCorrupt`.
        """
        segments = self.snapshot() if segments is None else segments
        floor = 0 if after_seq is None else after_seq
        last_seq = floor
        self.high_water = segments[-1].first_seq - 1 if segments else 0
        for index, segment in enumerate(segments):
            following = segments[index + 1] if index + 1 < len(segments) else None
            if following is not None and following.first_seq - 1 <= floor:
                continue
            for offset, line in _complete_lines(segment):
                try:
                    seq = line_seq(line)
                except ValueError as exc:
                    raise SpoolCorrupt(
                        f"{segment.path} at byte {offset}: line is not a spool envelope"
                    ) from exc
                self.high_water = max(self.high_water, seq)
                if seq <= floor:
                    continue
                if seq <= last_seq:
                    raise SpoolCorrupt(
                        f"{segment.path} at byte {offset}: seq {seq} does not increase"
                    )
                last_seq = seq
                yield line


def _complete_lines(segment: Segment) -> Iterator[tuple[int, bytes]]:
    """(offset, line) for each newline-terminated line within the segment's committed size."""
    remaining = segment.size
    offset = 0
    carry = b""
    with open(segment.path, "rb") as handle:
        while remaining > 0:
            chunk = handle.read(min(READ_CHUNK_BYTES, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            data = carry + chunk if carry else chunk
            start = 0
            while True:
                end = data.find(b"\n", start)
                if end < 0:
                    break
                yield offset + start, data[start : end + 1]
                start = end + 1
            offset += start
            carry = data[start:]


# --- retention -----------------------------------------------------------------------------


def remove_loaded_segments(
    spool_dir: Path, loaded_through_seq: int, older_than_seconds: float
) -> list[Path]:
    """Delete segments whose every event is at or below `loaded_through_seq` and whose
    last write is older than the retention window. The newest segment always stays:
    it carries the writer's next sequence number."""
    spool_dir = Path(spool_dir)
    segments = SpoolReader(spool_dir).snapshot()
    cutoff = time.time() - older_than_seconds
    removed = []
    for segment, following in itertools.pairwise(segments):
        if following.first_seq - 1 <= loaded_through_seq and segment.mtime < cutoff:
            segment.path.unlink()
            removed.append(segment.path)
    if removed:
        fsync_dir(spool_dir)
    return removed


# --- the tap's face ------------------------------------------------------------------------


def open_local_writer(
    location: Location, listener_id: str, on_commit: Callable[[int, float], None] | None
) -> SpoolWriter:
    return SpoolWriter(
        DataDir(location.data_dir).spool,
        location.segment_max_bytes or DEFAULT_SEGMENT_MAX_BYTES,
        on_commit=on_commit,
        lock_wait_seconds=location.lock_wait_seconds,
        listener_id=listener_id,
    )


class LocalSource:
    """One tap run's view of a data directory's spool."""

    spool_id = None

    def __init__(self, location: Location) -> None:
        self.layout = DataDir(location.data_dir)
        self.reader = SpoolReader(self.layout.spool)

    @contextmanager
    def exclusive_run(self) -> Iterator[None]:
        """flock on DATA_DIR/tap.lock: overlapping runs (cron) fail fast instead of racing.
        The spool is looked for first, so a wrong data_dir leaves nothing behind."""
        if not self.layout.spool.is_dir():
            raise SpoolNotFound(
                f"no spool at {self.layout.spool}: data_dir must be the listener's --data-dir"
            )
        with LockFile(self.layout.tap_lock) as lock:
            if not lock.try_exclusive():
                raise TapAlreadyRunning(
                    f"another tap-vero-webhook run holds {lock.path}; overlapping runs "
                    "are refused, the next scheduled run picks up from here"
                )
            yield

    def lines_after(self, after_seq: int | None, spool_id: str | None = None) -> Iterator[bytes]:
        """The reader's lines; then `BookmarkNotInSpool` if the bookmark is past everything
        this spool ever accepted (no line follows such a bookmark, so none was yielded)."""
        yield from self.reader.lines_after(after_seq)
        if after_seq is not None and int(after_seq) > self.reader.high_water:
            raise BookmarkNotInSpool(
                f"the state's bookmark ({after_seq}) is past the newest event this spool ever "
                f"accepted (seq {self.reader.high_water}): the spool in {self.layout.spool} "
                "was replaced or reset. Nothing was emitted. If that is intended, clear the "
                "state (meltano state clear …) to load this spool from its start."
            )

    def remove_loaded(self, loaded_through: int, older_than_seconds: float) -> list[str]:
        removed = remove_loaded_segments(self.layout.spool, loaded_through, older_than_seconds)
        return [path.name for path in removed]

    def close(self) -> None:
        pass
