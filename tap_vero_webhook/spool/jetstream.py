"""The JetStream spool: accepted events in a replicated NATS JetStream stream.

The second backend of the spool (the contract is in `__init__.py`): any number of
listeners write to one stream; an acknowledged event survives the loss of a
machine; the tap runs anywhere that reaches the cluster. Read top-down:

**Format.** One stream (default `vero_webhook`), subjects
``<stream>.events.<listener id>``. Each message holds the events of one or more
accepted requests as `STAMPED` lines, in the order they were accepted; its
``Nats-Msg-Id`` is the id of its first event. A reader turns each event into an
`ENVELOPE` line whose sequence number is derived from the stream's::

    _sdc_webhook_sequence = stream sequence * 1,000,000 + the event's place in its message

so it strictly increases across all listeners, in the order the stream committed
the events (one message holds at most `EVENTS_PER_MESSAGE` events, and far fewer
fit in a message anyway).

**The stream's settings.** Created if missing: file storage, `replicas` copies
(3 by default), `discard: new` (a full stream refuses new events, 503, rather than
delete unloaded ones), `max_bytes` and `max_age` as given (none by default). A
stream that exists already is used as it is, unless a setting of it could drop
events the tap has not loaded yet: then it is refused, naming the setting.

**The writer** (`JetStreamWriter`, the listener's face). A request thread queues
its events and sleeps; the connection's loop packs every request queued so far
into as few messages as fit (group commit: while `MESSAGES_IN_FLIGHT` messages
await their acks, new requests queue up), publishes them, and wakes each caller
once the message carrying its events is acknowledged, which JetStream does once a
quorum of the stream's servers has stored it. A request's events always travel in
one message, so an array is stored whole or not at all. A publish that gets no ack (a
leader election takes seconds) is retried with the same ``Nats-Msg-Id``, which
JetStream deduplicates, for up to `publish_timeout` seconds; then the request
gets 503.

**The source** (`JetStreamSource`, the tap's face). One run at a time, by a lease
(`LEASE_SECONDS`, renewed while the run lasts) in the key-value bucket
``<stream>_tap``. Reads go through an ephemeral pull consumer from the bookmark's
message up to the stream's last message when the read began. The spool's id is
the stream's name and creation time, so a bookmark from a deleted and recreated
stream is refused. Retention purges messages older than the window and below the
bookmark's own message (which may be loaded only in part).

Threads: a `JetStreamWriter` is safe to share between request threads; a source
belongs to one run.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import nats.errors
import nats.js.errors
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
)

from tap_vero_webhook.jetstream_client import (
    STREAM_FULL,
    NatsConnection,
    NatsUnavailable,
    with_retries,
)
from tap_vero_webhook.location import Location, parse_spool_url
from tap_vero_webhook.spool import (
    STAMPED,
    BookmarkNotInSpool,
    EventIds,
    SpoolError,
    SpoolFull,
    SpoolNotFound,
    SpoolTooLarge,
    SpoolUnavailable,
    Stamp,
    TapAlreadyRunning,
)
from tap_vero_webhook.timestamps import utc_now

__all__ = ["EVENTS_PER_MESSAGE", "JetStreamSource", "JetStreamWriter", "SpoolMisconfigured"]

log = logging.getLogger(__name__)

EVENTS_PER_MESSAGE = 1_000_000
"""The factor between a stream sequence and the events' sequence numbers."""
HEADER_ALLOWANCE = 512
"""Bytes of a message's size budget kept for its headers (Nats-Msg-Id and the like)."""
ATTEMPT_SECONDS = 2.0
"""How long one publish waits for its ack before it is sent again (same Nats-Msg-Id)."""
DUPLICATE_WINDOW_SECONDS = 120.0
"""JetStream's deduplication window: retries of one request must all fall inside it."""
MESSAGE_TOO_LARGE = 10054  # err_code: "message size exceeds maximum allowed"
MESSAGES_IN_FLIGHT = 2
"""Messages a writer has waiting for their acks at most; requests arriving meanwhile queue
up and share the next message (fewer round trips per request)."""
LEASE_SECONDS = 30
"""How long a tap run's lease outlives the run if it dies without letting go."""
FETCH_BATCH = 1000


class SpoolMisconfigured(SpoolError):
    """The stream exists with settings that could drop events not yet loaded."""


def stream_subject(stream: str, listener_id: str = "*") -> str:
    return f"{stream}.events.{listener_id}"


def spool_id_of(info: StreamInfo) -> str:
    """A stream's identity for bookmarks: its name and the time it was created."""
    created = info.created
    if created is None:  # pragma: no cover - every server since 2.2 sends it
        raise SpoolError(f"the stream {info.config.name} reports no creation time")
    return f"{info.config.name}@{created.astimezone(UTC).isoformat()}"


# --- the stream's settings -----------------------------------------------------------------


def stream_config(location: Location) -> StreamConfig:
    """The stream this listener creates when there is none."""
    max_age = float(location.max_age_seconds)
    return StreamConfig(
        name=location.stream,
        description="Vero webhook events accepted by tap-vero-webhook listeners",
        subjects=[stream_subject(location.stream, ">")],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=location.replicas,
        discard=DiscardPolicy.NEW,
        max_bytes=location.max_bytes if location.max_bytes > 0 else -1,
        max_msgs=-1,
        max_age=max_age,
        max_msgs_per_subject=-1,
        duplicate_window=min(DUPLICATE_WINDOW_SECONDS, max_age) if max_age else 0,
        deny_delete=True,
        deny_purge=False,
    )


def unsafe_settings(config: StreamConfig, location: Location) -> list[str]:
    """What, in an existing stream's settings, could drop events the tap has not loaded."""
    problems = []
    if config.retention not in (None, RetentionPolicy.LIMITS):
        problems.append(
            f"retention is {config.retention.value}: JetStream deletes events once they are "
            "consumed, loaded or not (the spool needs retention: limits)"
        )
    if config.storage == StorageType.MEMORY:
        problems.append("storage is memory: a restart of the servers loses every event in it")
    if config.discard != DiscardPolicy.NEW:
        problems.append(
            "discard is old: a full stream deletes its oldest events, loaded or not "
            "(the spool needs discard: new, so that a full stream refuses new ones)"
        )
    if config.max_age and abs(config.max_age - location.max_age_seconds) > 1e-3:
        problems.append(
            f"max_age is {config.max_age:g} s: JetStream deletes events older than that, "
            f"loaded or not (accept it with --spool-max-age {config.max_age:g})"
        )
    if config.max_msgs_per_subject and config.max_msgs_per_subject > 0:
        problems.append(
            f"max_msgs_per_subject is {config.max_msgs_per_subject}: a listener's older "
            "events would be deleted, loaded or not"
        )
    if (config.num_replicas or 1) < location.replicas:
        problems.append(
            f"num_replicas is {config.num_replicas or 1}, fewer than --spool-replicas "
            f"{location.replicas}: losing a server could lose acknowledged events"
        )
    if config.allow_msg_ttl:
        problems.append("allow_msg_ttl is on: a message could be given a time to live")
    if config.allow_rollup_hdrs:
        problems.append("allow_rollup_hdrs is on: a Nats-Rollup header would purge events")
    if config.sealed:
        problems.append("the stream is sealed: nothing can be added to it")
    wanted = stream_subject(location.stream, ">")
    if wanted not in (config.subjects or []):
        problems.append(f"its subjects {config.subjects} do not include {wanted}")
    return problems


async def ensure_stream(connection: NatsConnection, location: Location) -> StreamInfo:
    """The stream, created if missing; refused (`SpoolMisconfigured`) if it could drop
    unloaded events."""
    js = connection.js

    async def find_or_create() -> StreamInfo:
        try:
            return await js.stream_info(location.stream)
        except nats.js.errors.NotFoundError:
            pass
        try:
            return await js.add_stream(stream_config(location))
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code == 10058:  # created meanwhile by another listener
                return await js.stream_info(location.stream)
            raise SpoolMisconfigured(
                f"cannot create the stream {location.stream}: {exc.description}"
            ) from None

    info = await with_retries(find_or_create, location.publish_timeout)
    problems = unsafe_settings(info.config, location)
    if problems:
        raise SpoolMisconfigured(
            f"the JetStream stream {location.stream} could drop events not yet loaded: "
            + "; ".join(problems)
            + ". Fix the stream (nats stream edit) or give the listener its own --spool-stream."
        )
    return info


# --- the writer ----------------------------------------------------------------------------


@dataclass
class _Publication:
    """One request's events, waiting for the message that carries them to be acked."""

    data: bytes
    first_id: str
    events: int
    waiter: threading.Lock = field(default_factory=threading.Lock)
    seq: int | None = None  # the sequence number of its first event, once acked
    error: SpoolError | None = None


def _messages(queued: list[_Publication], limit: int) -> Iterator[list[_Publication]]:
    """The queued requests packed, in order, into messages of at most `limit` bytes and
    `EVENTS_PER_MESSAGE` events (a request alone fits: `append` checked)."""
    message: list[_Publication] = []
    size = events = 0
    for publication in queued:
        if message and (
            size + len(publication.data) > limit or events + publication.events > EVENTS_PER_MESSAGE
        ):
            yield message
            message, size, events = [], 0, 0
        message.append(publication)
        size += len(publication.data)
        events += publication.events
    if message:
        yield message


class JetStreamWriter:
    def __init__(
        self,
        location: Location,
        listener_id: str,
        on_commit: Callable[[int, float], None] | None = None,
    ) -> None:
        """`on_commit(events, seconds)` is called on the connection's loop after each
        acknowledged message (for metrics), never on a request's path."""
        self.location = location
        self.listener_id = listener_id
        self._listener = listener_id.encode()
        self._subject = stream_subject(location.stream, listener_id)
        self._on_commit = on_commit
        self.connection = NatsConnection(
            parse_spool_url(location.url), f"vero-webhook {listener_id}"
        )
        try:
            info = connection_call(
                self.connection, ensure_stream(self.connection, location), location
            )
        except Exception:
            self.connection.close()
            raise
        limit = self.connection.client.max_payload
        if info.config.max_msg_size and info.config.max_msg_size > 0:
            limit = min(limit, info.config.max_msg_size)
        self.max_entry_bytes = limit - HEADER_ALLOWANCE
        """The largest message body this writer can publish (the server's max_payload, or
        the stream's max_msg_size, less room for headers)."""
        self._lock = threading.Lock()
        self._ids = EventIds()
        self._queue: collections.deque[_Publication] = collections.deque()
        self._drainer_idle = True
        self._wake = asyncio.Event()
        self._drainer = self.connection.submit(self._drain())
        self._in_flight: set[asyncio.Task] = set()

    def append(self, encoded_events: Sequence[bytes]) -> list[Stamp]:
        """Publish the events as one message; their stamps once JetStream has acked it."""
        if len(encoded_events) > EVENTS_PER_MESSAGE:
            raise SpoolTooLarge(
                EVENTS_PER_MESSAGE, f"one request may hold at most {EVENTS_PER_MESSAGE} events"
            )
        with self._lock:
            now = utc_now()
            ids = self._ids.take(len(encoded_events))
        stamp = now.encode()
        data = b"".join(
            STAMPED % (stamp, event_id.encode(), self._listener, event)
            for event_id, event in zip(ids, encoded_events, strict=True)
        )
        if len(data) > self.max_entry_bytes:
            raise SpoolTooLarge(
                self.max_entry_bytes,
                f"the events take {len(data)} bytes in the spool; its NATS servers take at "
                f"most {self.max_entry_bytes} in one message (max_payload)",
            )
        publication = _Publication(data, ids[0], len(ids))
        publication.waiter.acquire()
        with self._lock:
            self._queue.append(publication)
            wake, self._drainer_idle = self._drainer_idle, False
        if wake:
            self.connection.loop.call_soon_threadsafe(self._wake.set)
        if not publication.waiter.acquire(timeout=self.location.publish_timeout + 10):
            raise SpoolUnavailable("JetStream did not answer in time; retry later")
        if publication.error is not None:
            raise publication.error
        return [Stamp(publication.seq + index, event_id, now) for index, event_id in enumerate(ids)]

    async def _drain(self) -> None:
        """The loop's side, JetStream's group commit: while `MESSAGES_IN_FLIGHT` messages
        wait for their acks, requests queue up; then every request queued so far goes out
        together, packed into as few messages as fit, and each caller wakes once the
        message that carries its events is acked."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while True:
                if len(self._in_flight) >= MESSAGES_IN_FLIGHT:
                    await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                with self._lock:
                    queued = list(self._queue)
                    self._queue.clear()
                    if not queued:
                        self._drainer_idle = True
                        break
                for message in _messages(queued, self.max_entry_bytes):
                    task = asyncio.ensure_future(self._publish(message))
                    self._in_flight.add(task)
                    task.add_done_callback(self._in_flight.discard)
                await asyncio.sleep(0)

    async def _publish(self, message: list[_Publication]) -> None:
        started = time.perf_counter()
        data = b"".join(publication.data for publication in message)
        error: SpoolError | None = None
        try:

            async def publish_once():
                return await self.connection.js.publish(
                    self._subject,
                    data,
                    timeout=ATTEMPT_SECONDS,
                    stream=self.location.stream,
                    headers={"Nats-Msg-Id": message[0].first_id},
                )

            ack = await with_retries(publish_once, self.location.publish_timeout)
        except nats.js.errors.APIError as exc:
            error = _api_error(exc, self.max_entry_bytes)
        except NatsUnavailable as exc:
            error = SpoolUnavailable(
                f"JetStream did not acknowledge within {self.location.publish_timeout:g} s ({exc})"
            )
        except Exception as exc:  # a request must get its 503, never hang or 500
            log.warning("publishing to JetStream failed", exc_info=True)
            error = SpoolUnavailable(f"JetStream: {type(exc).__name__}")
        seq = None if error else ack.seq * EVENTS_PER_MESSAGE
        for publication in message:
            publication.error = error
            publication.seq = seq
            if seq is not None:
                seq += publication.events
            publication.waiter.release()
        if error is None and self._on_commit is not None:
            events = sum(publication.events for publication in message)
            self._on_commit(events, time.perf_counter() - started)

    def writable(self) -> bool:
        return self.connection.connected

    def usage(self) -> dict[str, tuple[str, float]]:
        try:
            info = self.connection.call(self.connection.js.stream_info(self.location.stream), 5)
        except Exception:
            return {}
        return {
            "bytes": ("Bytes in the spool's JetStream stream, loaded or not.", info.state.bytes),
            "messages": ("Messages (requests) in the spool's stream.", info.state.messages),
        }

    def close(self) -> None:
        """Wait for the messages in flight, then close the connection."""
        deadline = time.monotonic() + self.location.publish_timeout + 5
        while (self._queue or self._in_flight) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._drainer.cancel()
        self.connection.close()


def _api_error(exc: nats.js.errors.APIError, limit: int) -> SpoolError:
    if exc.err_code == STREAM_FULL:
        return SpoolFull(f"the JetStream stream is full ({exc.description}); retry later")
    if exc.err_code == MESSAGE_TOO_LARGE:
        return SpoolTooLarge(limit, f"JetStream refused the message: {exc.description}")
    return SpoolUnavailable(f"JetStream: {exc.description or exc}")


def connection_call(connection: NatsConnection, coroutine, location: Location):
    """`connection.call` with the bound every spool operation gets, and NATS's own
    errors turned into the spool's."""
    try:
        return connection.call(coroutine, location.publish_timeout + 10)
    except NatsUnavailable as exc:
        raise SpoolUnavailable(f"the JetStream cluster at {location.url}: {exc}") from None


# --- the source ----------------------------------------------------------------------------


class JetStreamSource:
    def __init__(self, location: Location) -> None:
        self.location = location
        self.connection = NatsConnection(parse_spool_url(location.url), "tap-vero-webhook")
        try:
            self.info = self._call(self._stream_info())
        except Exception:
            self.connection.close()
            raise
        self.spool_id = spool_id_of(self.info)

    def _call(self, coroutine):
        return connection_call(self.connection, coroutine, self.location)

    async def _stream_info(self) -> StreamInfo:
        async def fetch():
            try:
                return await self.connection.js.stream_info(self.location.stream)
            except nats.js.errors.NotFoundError:
                raise SpoolNotFound(
                    f"no JetStream stream {self.location.stream} at {self.location.url}: "
                    "spool_stream must be the listeners' --spool-stream"
                ) from None

        return await with_retries(fetch, self.location.publish_timeout)

    # one run at a time

    @contextmanager
    def exclusive_run(self) -> Iterator[None]:
        """A lease in the bucket `<stream>_tap`: taken, renewed every third of its length
        while the run lasts, given back at its end. A run that died without giving it
        back blocks the next for at most `LEASE_SECONDS`, which the next run waits out."""
        bucket = self._call(self._lease_bucket())
        holder = json.dumps(
            {"host": socket.gethostname(), "pid": os.getpid(), "since": utc_now()}
        ).encode()
        revision = self._call(self._take_lease(bucket, holder))
        renewal = self.connection.submit(self._renew_lease(bucket, holder, revision))
        try:
            yield
        finally:
            renewal.cancel()
            try:
                self._call(with_retries(lambda: bucket.purge("run"), LEASE_SECONDS / 3))
            except SpoolError:
                log.warning("the tap's lease was not given back; it lapses by itself")

    async def _lease_bucket(self):
        js = self.connection.js
        name = f"{self.location.stream}_tap"

        async def find_or_create():
            try:
                return await js.key_value(name)
            except nats.js.errors.BucketNotFoundError:
                config = KeyValueConfig(
                    bucket=name,
                    history=1,
                    replicas=self.info.config.num_replicas or 1,
                    storage=StorageType.FILE,
                )
                return await js.create_key_value(config)

        return await with_retries(find_or_create, self.location.publish_timeout)

    async def _take_lease(self, bucket, holder: bytes) -> int:
        deadline = time.monotonic() + LEASE_SECONDS + 5
        while True:
            try:
                return await with_retries(
                    lambda: bucket.create("run", holder, msg_ttl=LEASE_SECONDS),
                    self.location.publish_timeout,
                )
            except nats.js.errors.KeyWrongLastSequenceError:
                try:
                    held = await bucket.get("run")
                except nats.js.errors.KeyNotFoundError:
                    continue  # it lapsed or was given back meanwhile
                if held.value == holder:  # ours: a first try stored, its answer lost
                    return held.revision
                if time.monotonic() > deadline:
                    raise TapAlreadyRunning(
                        f"another tap-vero-webhook run holds the lease on the stream "
                        f"{self.location.stream} ({held.value.decode()}); overlapping runs "
                        "are refused, the next scheduled run picks up from here"
                    ) from None
                await asyncio.sleep(1)

    async def _renew_lease(self, bucket, holder: bytes, revision: int) -> None:
        while True:
            await asyncio.sleep(LEASE_SECONDS / 3)
            try:
                revision = await bucket.update("run", holder, last=revision, msg_ttl=LEASE_SECONDS)
            except Exception:
                log.warning("renewing the tap's lease failed; retrying", exc_info=True)

    # reading

    def lines_after(self, after_seq: int | None, spool_id: str | None) -> Iterator[bytes]:
        if spool_id is not None and spool_id != self.spool_id:
            raise BookmarkNotInSpool(
                f"the state's bookmark belongs to the spool {spool_id}, not to "
                f"{self.spool_id}: the stream was deleted and created again. Nothing was "
                "emitted. If that is intended, clear the state (meltano state clear …) to "
                "load this stream from its start."
            )
        info = self._call(self._stream_info())  # the snapshot: what is committed now
        first, last = info.state.first_seq, info.state.last_seq
        start = first
        if after_seq is not None:
            message = int(after_seq) // EVENTS_PER_MESSAGE
            if message > last:
                raise BookmarkNotInSpool(
                    f"the state's bookmark ({after_seq}) is past the newest event of the "
                    f"stream {self.location.stream} (message {last}): it was replaced or "
                    "reset. Nothing was emitted. If that is intended, clear the state "
                    "(meltano state clear …) to load this stream from its start."
                )
            if info.state.messages and message + 1 < first:
                raise BookmarkNotInSpool(
                    f"the stream {self.location.stream} no longer holds the events after the "
                    f"state's bookmark ({after_seq}): it starts at message {first}, so "
                    f"messages {message + 1}..{first - 1} were removed before they were "
                    "loaded (a max_age, or a purge by hand). Nothing was emitted."
                )
            start = max(first, message)
        if not info.state.messages or start > last:
            return
        floor = -1 if after_seq is None else int(after_seq)
        subscription = self._call(self._consumer(start))
        try:
            while True:
                for message_seq, data in self._call(self._fetch(subscription)):
                    if message_seq > last:
                        return
                    base = message_seq * EVENTS_PER_MESSAGE
                    for index, line in enumerate(data.split(b"\n")[:-1]):
                        if base + index > floor:
                            yield b'{"seq":%d,' % (base + index) + line[1:] + b"\n"
                    if message_seq == last:
                        return
        finally:
            self._call(self._drop_consumer(subscription))

    async def _consumer(self, start: int):
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=60,
            num_replicas=1,
            mem_storage=True,
        )

        async def subscribe():
            return await self.connection.js.pull_subscribe(
                "", stream=self.location.stream, config=config
            )

        return await with_retries(subscribe, self.location.publish_timeout)

    async def _fetch(self, subscription) -> list[tuple[int, bytes]]:
        async def fetch():
            messages = await subscription.fetch(FETCH_BATCH, timeout=5)
            return [(message.metadata.sequence.stream, message.data) for message in messages]

        return await with_retries(fetch, self.location.publish_timeout)

    async def _drop_consumer(self, subscription) -> None:
        try:
            info = await subscription.consumer_info()
            await self.connection.js.delete_consumer(self.location.stream, info.name)
        except Exception:  # it goes by itself after inactive_threshold
            pass
        await subscription.unsubscribe()

    # retention

    def remove_loaded(self, loaded_through: int, older_than_seconds: float) -> list[str]:
        """Purge the messages older than the window and before the bookmark's own message."""
        info = self._call(self._stream_info())
        cutoff = datetime.fromtimestamp(time.time() - older_than_seconds, tz=UTC)
        young = self._call(self._first_seq_at_or_after(cutoff))
        keep_from = min(young or info.state.last_seq + 1, loaded_through // EVENTS_PER_MESSAGE)
        if keep_from <= info.state.first_seq:
            return []
        self._call(self.connection.js.purge_stream(self.location.stream, seq=keep_from))
        return [f"stream {self.location.stream} messages {info.state.first_seq}..{keep_from - 1}"]

    async def _first_seq_at_or_after(self, moment: datetime) -> int | None:
        request = {"start_time": moment.isoformat().replace("+00:00", "Z")}
        answer = await self.connection.client.request(
            f"$JS.API.STREAM.MSG.GET.{self.location.stream}", json.dumps(request).encode(), 5
        )
        found = json.loads(answer.data)
        return None if "error" in found else found["message"]["seq"]

    def close(self) -> None:
        self.connection.close()
