"""Where the shared state of the listeners lives: one data directory, or a JetStream cluster.

The spool (`spool/`) and the token store (`listener/tokens.py`) each keep their
state where a `Location` says; each chooses its backend from it, in one place:
`spool.open_writer`, `spool.open_source`, `tokens.token_shelf`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_STREAM = "vero_webhook"
STREAM_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""What a JetStream stream name may be here (it also names the stream's subjects and
key-value buckets)."""
NATS_SCHEMES = ("nats", "tls")


def parse_spool_url(urls: str) -> list[str]:
    """`nats://h1:4222,nats://h2:4222` → the server URLs, or ValueError saying what is wrong."""
    servers = [part.strip() for part in urls.split(",") if part.strip()]
    if not servers:
        raise ValueError("names no server; give nats://host:port[,nats://host:port...]")
    for server in servers:
        parts = urlsplit(server)
        if parts.scheme not in NATS_SCHEMES or not parts.hostname:
            raise ValueError(f"{server!r} is not a nats://host:port URL")
        try:
            parts.port  # noqa: B018 - raises for a port that is not a number
        except ValueError:
            raise ValueError(f"{server!r} has a port that is not a number") from None
    return servers


def check_jetstream(url: str, stream: str, url_setting: str, stream_setting: str) -> None:
    """Raise ValueError naming the setting (`url_setting`, `stream_setting`) whose value
    cannot name a JetStream spool."""
    try:
        parse_spool_url(url)
    except ValueError as exc:
        raise ValueError(f"{url_setting} {url!r} {exc}") from None
    if not STREAM_NAME.match(stream):
        raise ValueError(f"{stream_setting} {stream!r}: use letters, digits, _ or -")


@dataclass(frozen=True)
class Location:
    """Where the listeners' shared state is kept, and how: in a data directory (the local
    spool, tokens.json), or, given `url`, in a JetStream cluster (a stream, key-value
    buckets)."""

    data_dir: Path | None = None
    url: str | None = None
    stream: str = DEFAULT_STREAM
    # local spool
    segment_max_bytes: int | None = None
    lock_wait_seconds: float = 0
    # JetStream
    replicas: int = 3  # copies of each event (and of the key-value buckets)
    max_bytes: int = -1
    max_age_seconds: float = 0
    publish_timeout: int = 15  # seconds a publish or an API call may keep retrying

    @property
    def replicated(self) -> bool:
        return self.url is not None

    def describe(self) -> str:
        if self.replicated:
            return f"JetStream stream {self.stream} at {self.url}"
        return f"data dir {self.data_dir}"
