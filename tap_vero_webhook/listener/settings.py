"""The listener's settings: what `vero-webhook serve` takes, each default written once.

Three objects, one per concern: `ListenerSettings` (what the app does with a
request), `ServerSettings` (how waitress serves it) and `LogSettings`. The CLI
makes one option and one `VERO_WEBHOOK_*` environment variable per field.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from tap_vero_webhook.listener.payloads import DEFAULT_MAX_BODY_BYTES
from tap_vero_webhook.listener.rejects import (
    DEFAULT_BODY_CAP,
    DEFAULT_MAX_BYTES_PER_DAY,
    DEFAULT_RETENTION_DAYS,
)
from tap_vero_webhook.location import DEFAULT_STREAM, Location, check_jetstream
from tap_vero_webhook.settings import SettingError, default_of, setting
from tap_vero_webhook.spool import LISTENER_ID
from tap_vero_webhook.spool.local import DEFAULT_SEGMENT_MAX_BYTES

SERVER_IDENT = "vero-webhook"


@dataclass(frozen=True)
class ListenerSettings:
    data_dir: Path = setting(
        help="Directory holding the spool and the token store (created 0700 if missing)."
    )
    max_body_bytes: int = setting(
        DEFAULT_MAX_BODY_BYTES,
        "Largest request body accepted; bigger ones get 413 unread.",
        minimum=1,
    )
    segment_max_bytes: int = setting(
        DEFAULT_SEGMENT_MAX_BYTES,
        "Start a new spool segment once the current one is this large.",
        minimum=1,
    )
    rejects_retention_days: int = setting(
        DEFAULT_RETENTION_DAYS,
        "Days refused requests are kept in DATA_DIR/rejects/ (one file per UTC day).",
        minimum=0,
    )
    rejects_body_cap: int = setting(
        DEFAULT_BODY_CAP,
        "Bytes of each refused body kept in the rejects folder (0 keeps none).",
        minimum=0,
    )
    rejects_max_bytes_per_day: int = setting(
        DEFAULT_MAX_BYTES_PER_DAY,
        "Past this size a day's rejects file stops growing; later refusals are only counted.",
        minimum=0,
    )
    metrics: bool = setting(
        True, "Serve Prometheus metrics on GET /metrics (no token; same address as the hooks)."
    )
    spool_lock_timeout: int = setting(
        30,
        "Seconds to wait at start for the listener that still holds the spool (say, one "
        "draining after SIGTERM) to let go, before refusing to start.",
        minimum=0,
    )
    listener_id: str = setting(
        "",
        "Name stamped on every event this listener accepts (_sdc_webhook_listener): "
        "letters, digits, _ and -. Empty: this host's short name.",
    )
    spool_url: str = setting(
        "",
        "NATS servers of a JetStream cluster, e.g. nats://h1:4222,nats://h2:4222: the spool "
        "is then a replicated stream there, shared by every listener. Empty: the local "
        "spool in --data-dir.",
    )
    spool_stream: str = setting(
        DEFAULT_STREAM, "The JetStream stream of the spool (with --spool-url)."
    )
    spool_replicas: int = setting(
        default_of(Location, "replicas"),
        "Copies JetStream keeps of each event, when this listener creates the stream "
        "(with --spool-url); an existing stream with fewer is refused.",
        minimum=1,
        maximum=5,
    )
    spool_max_bytes: int = setting(
        0,
        "Size limit of the stream, when this listener creates it (with --spool-url); a "
        "full stream answers 503, never drops events. 0: the servers' storage limit.",
        minimum=0,
    )
    spool_max_age: int = setting(
        0,
        "Seconds JetStream keeps an event, loaded or not, when this listener creates the "
        "stream (with --spool-url). 0: until the tap's retention removes it.",
        minimum=0,
    )
    spool_publish_timeout: int = setting(
        default_of(Location, "publish_timeout"),
        "Seconds a request waits for JetStream to acknowledge its events (a leader "
        "election takes a few), with --spool-url; then it gets 503.",
        minimum=1,
        maximum=100,
    )

    def __post_init__(self) -> None:
        listener_id = self.listener_id or socket.gethostname().split(".")[0]
        if not LISTENER_ID.match(listener_id):
            raise SettingError(
                f"--listener-id {listener_id!r}: use 1 to 64 letters, digits, _ or -"
            )
        object.__setattr__(self, "listener_id", listener_id)
        if self.spool_url:
            try:
                check_jetstream(self.spool_url, self.spool_stream, "--spool-url", "--spool-stream")
            except ValueError as exc:
                raise SettingError(str(exc)) from None

    def spool_location(self) -> Location:
        return Location(
            data_dir=Path(self.data_dir),
            url=self.spool_url or None,
            stream=self.spool_stream,
            segment_max_bytes=self.segment_max_bytes,
            lock_wait_seconds=self.spool_lock_timeout,
            replicas=self.spool_replicas,
            max_bytes=self.spool_max_bytes,
            max_age_seconds=self.spool_max_age,
            publish_timeout=self.spool_publish_timeout,
        )


@dataclass(frozen=True)
class ServerSettings:
    host: str = setting(
        "127.0.0.1", "Address to bind. Keep 127.0.0.1 behind a TLS proxy; 0.0.0.0 exposes it."
    )
    port: int = setting(
        8080, "TCP port to listen on (0 picks a free one).", minimum=0, maximum=65535
    )
    threads: int = setting(
        16,
        "Worker threads; concurrent requests share one fsync (group commit).",
        minimum=1,
        maximum=1024,
    )
    connection_limit: int = setting(
        500,
        "Open connections at most; more wait in the listen backlog (keep it under the "
        "process's open-file limit, `ulimit -n`).",
        minimum=1,
    )
    channel_timeout: int = setting(
        60, "Seconds an idle or trickling connection is kept before it is closed.", minimum=1
    )
    shutdown_timeout: int = setting(
        20,
        "Seconds a drain after SIGTERM may take: requests in flight finish and get their "
        "answer, then the listener exits, at the latest after this (keep it under "
        "systemd's TimeoutStopSec).",
        minimum=1,
    )

    def waitress_options(self, max_body_bytes: int, sock: socket.socket | None = None) -> dict:
        """The options `waitress.create_server` gets, for a body cap of `max_body_bytes`;
        with `sock` (socket activation), waitress serves it instead of binding host:port."""
        where = {"sockets": [sock]} if sock else {"host": self.host, "port": self.port}
        return {
            **where,
            "threads": self.threads,
            "connection_limit": self.connection_limit,
            "channel_timeout": self.channel_timeout,
            # check timeouts often enough that channel_timeout holds to within a few seconds
            "cleanup_interval": max(1, min(30, self.channel_timeout // 4)),
            # waitress refuses a Content-Length >= this before reading the body
            "max_request_body_size": max_body_bytes + 1,
            "asyncore_use_poll": True,  # select() fails past 1024 open connections
            "ident": SERVER_IDENT,
        }


@dataclass(frozen=True)
class LogSettings:
    log_format: str = setting(
        "text",
        "Log lines as plain text or as JSON objects, one per line.",
        choices=("text", "json"),
    )
    log_level: str = setting(
        "INFO", "Least severe log level written.", choices=("DEBUG", "INFO", "WARNING", "ERROR")
    )
