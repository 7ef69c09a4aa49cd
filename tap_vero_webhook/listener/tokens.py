"""Webhook tokens: the secret in each webhook URL. Create, list, revoke, verify.

A token is 256 random bits; only its SHA-256 is stored (a slow password hash adds
nothing for a secret that cannot be guessed). The store lives in the data
directory, readable by its owner only:

    tokens.json             [{"id", "sha256", "created_at", "revoked_at"}] (the CLI writes it)
    tokens-last-used.json   {"<id>": "<time>"}                         (the listener writes it)

Two writers never share a file, so a revocation can never be lost to a listener
recording a last use. The listener re-reads tokens.json when it changes, so a
revocation holds from the very next request.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from tap_vero_webhook.data_dir import DataDir
from tap_vero_webhook.files import ensure_private_dir, read_json, write_private_json
from tap_vero_webhook.locks import LockFile
from tap_vero_webhook.timestamps import utc_now

MAX_ACTIVE_TOKENS = 2
LAST_USED_FLUSH_SECONDS = 60.0


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


def read_token_records(data_dir: Path) -> list[TokenRecord]:
    return [TokenRecord(**item) for item in read_json(DataDir(data_dir).tokens, [])]


def read_last_used(data_dir: Path) -> dict[str, str]:
    return dict(read_json(DataDir(data_dir).tokens_last_used, {}))


class TokenStore:
    """The operator's side: create, list and revoke webhook tokens."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = ensure_private_dir(Path(data_dir))

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        with LockFile(DataDir(self.data_dir).tokens_lock) as lock, lock.exclusive():
            yield

    def _save(self, records: list[TokenRecord]) -> None:
        write_private_json(DataDir(self.data_dir).tokens, [asdict(record) for record in records])

    def create(self) -> tuple[TokenRecord, str]:
        """Make a new token; return its record and the secret, which is never stored."""
        with self._exclusive():
            records = read_token_records(self.data_dir)
            active = [record for record in records if record.active]
            if len(active) >= MAX_ACTIVE_TOKENS:
                ids = ", ".join(record.id for record in active)
                raise TokenError(
                    f"{MAX_ACTIVE_TOKENS} webhook URLs are already active ({ids}); "
                    "revoke one first with: vero-webhook token revoke ID"
                )
            secret = secrets.token_urlsafe(32)
            taken = {record.id for record in records}
            token_id = secrets.token_hex(4)
            while token_id in taken:
                token_id = secrets.token_hex(4)
            record = TokenRecord(id=token_id, sha256=token_digest(secret), created_at=utc_now())
            self._save([*records, record])
            return record, secret

    def revoke(self, token_id: str) -> TokenRecord:
        with self._exclusive():
            records = read_token_records(self.data_dir)
            for index, record in enumerate(records):
                if record.id == token_id and record.active:
                    revoked = TokenRecord(record.id, record.sha256, record.created_at, utc_now())
                    records[index] = revoked
                    self._save(records)
                    return revoked
            raise TokenError(f"no active webhook URL has the id {token_id!r}")

    def list(self, include_revoked: bool = False) -> list[dict]:
        """Ids and times only: the secret is never shown again after `create`."""
        last_used = read_last_used(self.data_dir)
        return [
            {
                "id": record.id,
                "created_at": record.created_at,
                "last_used_at": last_used.get(record.id),
                "revoked_at": record.revoked_at,
            }
            for record in read_token_records(self.data_dir)
            if include_revoked or record.active
        ]


class TokenVerifier:
    """The listener's side: which active token, if any, a presented secret is."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self._path = DataDir(self.data_dir).tokens
        self._lock = threading.Lock()
        self._seen_version: tuple[int, int, int] | None = None
        self._active: list[tuple[str, bytes]] = []
        self._last_used: dict[str, str] = read_last_used(self.data_dir)
        self._last_flush = time.monotonic()
        self._dirty = False

    def _refresh(self) -> None:
        try:
            stat = os.stat(self._path)
            version = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            version = None
        if version == self._seen_version:
            return
        with self._lock:
            records = read_token_records(self.data_dir) if version else []
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
            write_private_json(DataDir(self.data_dir).tokens_last_used, snapshot)
        except OSError:
            with self._lock:
                self._dirty = True  # a full disk must not fail the request; try later
