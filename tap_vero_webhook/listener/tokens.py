"""Webhook tokens: the secret in each webhook URL. Create, list, revoke, verify.

A token is 256 random bits; only its SHA-256 is stored (a slow password hash adds
nothing for a secret that cannot be guessed). The store is where the spool is
(its `Location`): with the local spool, two files of the data directory,
readable by their owner only::

    tokens.json             [{"id", "sha256", "created_at", "revoked_at"}] (the CLI writes it)
    tokens-last-used.json   {"<id>": "<time>"}                         (the listener writes it)

with a JetStream spool, a key-value bucket ``<stream>_tokens`` in the same cluster,
shared by every listener: key ``records`` (the same list; the CLI writes it,
compare-and-set on its revision) and ``last-used.<listener id>`` (one per listener).

Two writers never share a file or a key, so a revocation can never be lost to a
listener recording a last use, and "at most 2 active" holds against concurrent
creates. A listener sees a revocation from the very next request (local: it stats
tokens.json on every request) or within `BUCKET_REFRESH_SECONDS` (JetStream: a
background read of the bucket).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from tap_vero_webhook.data_dir import DataDir
from tap_vero_webhook.files import ensure_private_dir, read_json, write_private_json
from tap_vero_webhook.location import Location
from tap_vero_webhook.locks import LockFile
from tap_vero_webhook.timestamps import utc_now

MAX_ACTIVE_TOKENS = 2
LAST_USED_FLUSH_SECONDS = 60.0
BUCKET_REFRESH_SECONDS = 0.5

log = logging.getLogger("tap_vero_webhook.tokens")


class TokenError(Exception):
    """A token operation the operator asked for cannot be done."""


@dataclass(frozen=True)
class TokenRecord:
    id: str
    sha256: str
    created_at: str
    revoked_at: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def token_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def _records_from(value: object) -> list[TokenRecord]:
    return [TokenRecord(**item) for item in value or []]


def _records_value(records: list[TokenRecord]) -> list[dict]:
    return [asdict(record) for record in records]


# --- where the tokens are kept -----------------------------------------------------------


class TokenShelf(Protocol):
    """Where the token records and last-use times are kept."""

    def version(self) -> Hashable:
        """Changes whenever the records may have (cheap: asked on every request)."""

    def records(self) -> list[TokenRecord]: ...

    def change_records(self, change: Callable[[list[TokenRecord]], list[TokenRecord]]) -> None:
        """Replace the records with `change(records)`, atomically against other changers."""

    def last_used(self) -> dict[str, str]: ...

    def save_last_used(self, listener_id: str, used: dict[str, str]) -> None: ...

    def close(self) -> None: ...


class TokenFiles:
    """tokens.json and tokens-last-used.json in the data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.layout = DataDir(data_dir)
        self._tokens = self.layout.tokens  # stat'ed on every request

    def version(self) -> Hashable:
        try:
            stat = os.stat(self._tokens)
        except FileNotFoundError:
            return None
        return (stat.st_ino, stat.st_mtime_ns, stat.st_size)

    def records(self) -> list[TokenRecord]:
        return _records_from(read_json(self.layout.tokens, []))

    def change_records(self, change: Callable[[list[TokenRecord]], list[TokenRecord]]) -> None:
        ensure_private_dir(self.layout.root)
        with LockFile(self.layout.tokens_lock) as lock, lock.exclusive():
            write_private_json(self.layout.tokens, _records_value(change(self.records())))

    def last_used(self) -> dict[str, str]:
        return dict(read_json(self.layout.tokens_last_used, {}))

    def save_last_used(self, listener_id: str, used: dict[str, str]) -> None:
        write_private_json(self.layout.tokens_last_used, used)

    def close(self) -> None:
        pass


class TokenBucket:
    """The key-value bucket ``<stream>_tokens`` of a JetStream spool's cluster."""

    RECORDS = "records"
    LAST_USED = "last-used."

    def __init__(self, location: Location, refresh: bool = False) -> None:
        """With `refresh` (a listener), the records are read again in the background every
        `BUCKET_REFRESH_SECONDS`, so that `version` and `records` cost nothing."""
        from tap_vero_webhook.jetstream_client import NatsConnection
        from tap_vero_webhook.location import parse_spool_url

        self.location = location
        self.bucket_name = f"{location.stream}_tokens"
        self.connection = NatsConnection(parse_spool_url(location.url), "vero-webhook tokens")
        try:
            self.bucket = self._call(self._open_bucket)
            self._revision, self._records = self._call(self._read)
        except Exception:
            self.connection.close()
            raise
        self._refresher = self.connection.submit(self._refresh_often()) if refresh else None

    def _call(self, operation: Callable):
        """`await operation()` on the connection's loop, tried again while the cluster
        settles (a bucket just created, a leader being elected); any failure a
        `TokenError` that says what failed."""
        from tap_vero_webhook.jetstream_client import with_retries

        seconds = self.location.publish_timeout
        try:
            return self.connection.call(with_retries(operation, seconds), seconds + 10)
        except TokenError:
            raise
        except Exception as exc:
            reason = str(exc) or type(exc).__name__
            raise TokenError(f"the token bucket {self.bucket_name}: {reason}") from None

    async def _open_bucket(self):
        import nats.js.errors
        from nats.js.api import KeyValueConfig, StorageType

        js = self.connection.js
        try:
            return await js.key_value(self.bucket_name)
        except nats.js.errors.BucketNotFoundError:
            config = KeyValueConfig(
                bucket=self.bucket_name,
                history=5,
                replicas=self.location.replicas,
                storage=StorageType.FILE,
            )
            return await js.create_key_value(config)

    async def _read(self) -> tuple[int, list[TokenRecord]]:
        import nats.js.errors

        try:
            entry = await self.bucket.get(self.RECORDS)
        except nats.js.errors.KeyNotFoundError:
            return 0, []
        return entry.revision, _records_from(json.loads(entry.value))

    async def _refresh_often(self) -> None:
        while True:
            await asyncio.sleep(BUCKET_REFRESH_SECONDS)
            try:
                self._revision, self._records = await asyncio.wait_for(self._read(), 5)
            except Exception:  # keep the records last read while the cluster is away
                log.debug("reading the token bucket failed; retrying", exc_info=True)

    def version(self) -> Hashable:
        return self._revision

    def records(self) -> list[TokenRecord]:
        return self._records

    def change_records(self, change: Callable[[list[TokenRecord]], list[TokenRecord]]) -> None:
        self._call(lambda: self._change(change))

    async def _change(self, change) -> None:
        import nats.js.errors

        while True:
            revision, records = await self._read()
            value = json.dumps(_records_value(change(records))).encode()
            try:
                if revision:
                    await self.bucket.update(self.RECORDS, value, last=revision)
                else:
                    await self.bucket.create(self.RECORDS, value)
                return
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # another create or revoke came first: read again, decide again

    def last_used(self) -> dict[str, str]:
        return self._call(self._last_used)

    async def _last_used(self) -> dict[str, str]:
        import nats.js.errors

        merged: dict[str, str] = {}
        try:
            keys = await self.bucket.keys()
        except nats.js.errors.NoKeysError:
            return merged
        for key in keys:
            if key.startswith(self.LAST_USED):
                used = json.loads((await self.bucket.get(key)).value)
                for token_id, moment in used.items():
                    merged[token_id] = max(merged.get(token_id, ""), moment)
        return merged

    def save_last_used(self, listener_id: str, used: dict[str, str]) -> None:
        value = json.dumps(used).encode()
        self._call(lambda: self.bucket.put(f"{self.LAST_USED}{listener_id}", value))

    def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        self.connection.close()


def token_shelf(location: Location, refresh: bool = False) -> TokenShelf:
    """The tokens are kept where the spool is."""
    if location.replicated:
        return TokenBucket(location, refresh)
    return TokenFiles(location.data_dir)


# --- the operator's side and the listener's ----------------------------------------------


class TokenStore:
    """The operator's side: create, list and revoke webhook tokens."""

    def __init__(self, location: Location) -> None:
        self.shelf = token_shelf(location)

    def create(self) -> tuple[TokenRecord, str]:
        """Make a new token; return its record and the secret, which is never stored."""
        secret = secrets.token_urlsafe(32)
        made: list[TokenRecord] = []

        def add(records: list[TokenRecord]) -> list[TokenRecord]:
            ours = [record for record in records if record.sha256 == token_digest(secret)]
            if ours:  # a change retried after its first try was stored: nothing to add
                made[:] = ours
                return records
            active = [record for record in records if record.active]
            if len(active) >= MAX_ACTIVE_TOKENS:
                ids = ", ".join(record.id for record in active)
                raise TokenError(
                    f"{MAX_ACTIVE_TOKENS} webhook URLs are already active ({ids}); "
                    "revoke one first with: vero-webhook token revoke ID"
                )
            taken = {record.id for record in records}
            token_id = secrets.token_hex(4)
            while token_id in taken:
                token_id = secrets.token_hex(4)
            made[:] = [TokenRecord(id=token_id, sha256=token_digest(secret), created_at=utc_now())]
            return [*records, made[0]]

        self.shelf.change_records(add)
        return made[0], secret

    def revoke(self, token_id: str) -> TokenRecord:
        revoked: list[TokenRecord] = []

        def revoke_it(records: list[TokenRecord]) -> list[TokenRecord]:
            for index, record in enumerate(records):
                if revoked and record == revoked[0]:  # retried after its first try was stored
                    return records
                if record.id == token_id and record.active:
                    revoked[:] = [
                        TokenRecord(record.id, record.sha256, record.created_at, utc_now())
                    ]
                    return [*records[:index], revoked[0], *records[index + 1 :]]
            raise TokenError(f"no active webhook URL has the id {token_id!r}")

        self.shelf.change_records(revoke_it)
        return revoked[0]

    def list(self, include_revoked: bool = False) -> list[dict]:
        """Ids and times only: the secret is never shown again after `create`."""
        last_used = self.shelf.last_used()
        return [
            {
                "id": record.id,
                "created_at": record.created_at,
                "last_used_at": last_used.get(record.id),
                "revoked_at": record.revoked_at,
            }
            for record in self.shelf.records()
            if include_revoked or record.active
        ]

    def close(self) -> None:
        self.shelf.close()


class TokenVerifier:
    """The listener's side: which active token, if any, a presented secret is."""

    def __init__(self, location: Location, listener_id: str) -> None:
        self.shelf = token_shelf(location, refresh=True)
        self.listener_id = listener_id
        self._lock = threading.Lock()
        self._seen_version: Hashable = object()
        self._active: list[tuple[str, bytes]] = []
        self._last_used: dict[str, str] = {}
        self._last_flush = time.monotonic()
        self._dirty = False

    def _refresh(self) -> None:
        version = self.shelf.version()
        if version == self._seen_version:
            return
        with self._lock:
            records = self.shelf.records() if version else []
            self._active = [
                (record.id, bytes.fromhex(record.sha256)) for record in records if record.active
            ]
            self._seen_version = version

    def verify(self, secret: str) -> str | None:
        """The id of the active token `secret` is, else None.

        Every active token is compared, in constant time, whatever matches first.
        """
        self._refresh()
        presented = hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()
        matched = None
        for token_id, digest in self._active:
            if hmac.compare_digest(presented, digest):
                matched = token_id
        if matched is not None:
            self._note_use(matched)
        return matched

    def active_count(self) -> int:
        self._refresh()
        return len(self._active)

    def _note_use(self, token_id: str) -> None:
        with self._lock:
            self._last_used[token_id] = utc_now()
            self._dirty = True
            due = time.monotonic() - self._last_flush >= LAST_USED_FLUSH_SECONDS
        if due:
            self.flush_last_used()

    def flush_last_used(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            snapshot = dict(self._last_used)
            self._dirty = False
            self._last_flush = time.monotonic()
        try:
            self.shelf.save_last_used(self.listener_id, snapshot)
        except (OSError, TokenError):
            with self._lock:
                self._dirty = True  # a full disk must not fail the request; try later

    def close(self) -> None:
        self.flush_last_used()
        self.shelf.close()
