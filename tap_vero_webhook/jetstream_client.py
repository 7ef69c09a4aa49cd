"""A NATS connection for synchronous callers: nats-py's asyncio client on its own loop thread.

nats-py is asyncio only; the listener's request threads (waitress) and the tap (the
Singer SDK) are not. A `NatsConnection` runs one event loop in a daemon thread and
connects there; `call(coroutine, timeout)` runs a coroutine on that loop from any
thread and returns its result. Everything that touches the client goes through the
loop, so a `NatsConnection` is safe to share between threads.

Connection options are those a long-running service needs (measured against a
3-node nats-server 2.15 cluster): reconnect forever, half a second apart; a ping
every 5 s, so a dead server is noticed in about 10 s rather than 4 minutes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client

log = logging.getLogger("tap_vero_webhook.nats")

CONNECT_TIMEOUT_SECONDS = 2.0
"""One connection attempt to one server."""
FIRST_CONNECT_SECONDS = 20.0
"""How long to keep trying the servers at start before giving up with a clear error."""


STREAM_FULL = 10077  # err_code: "maximum bytes/messages exceeded" (discard: new)


class NatsUnavailable(Exception):
    """The cluster cannot be reached (at start), or an operation did not finish in time."""


class NatsConnection:
    def __init__(self, servers: list[str], name: str) -> None:
        self.servers = servers
        self._closing = False
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="nats", daemon=True)
        self._thread.start()
        try:
            self.client: Client = self.call(self._connect(name), FIRST_CONNECT_SECONDS + 5)
        except Exception as exc:
            self._stop_loop()
            reason = str(exc) or type(exc).__name__
            raise NatsUnavailable(
                f"cannot reach the NATS cluster at {', '.join(servers)}: {reason}"
            ) from None
        self.js = self.client.jetstream(timeout=5)

    async def _connect(self, name: str) -> Client:
        async def error_cb(exc: Exception) -> None:
            log.warning("NATS: %s", exc or type(exc).__name__)

        async def disconnected_cb() -> None:
            if not self._closing:
                log.warning("NATS: disconnected; reconnecting")

        async def reconnected_cb() -> None:
            log.info("NATS: reconnected to %s", self.client.connected_url.netloc)

        return await asyncio.wait_for(
            nats.connect(
                servers=self.servers,
                name=name,
                connect_timeout=CONNECT_TIMEOUT_SECONDS,
                reconnect_time_wait=0.5,
                max_reconnect_attempts=-1,
                ping_interval=5,
                max_outstanding_pings=2,
                error_cb=error_cb,
                disconnected_cb=disconnected_cb,
                reconnected_cb=reconnected_cb,
            ),
            FIRST_CONNECT_SECONDS,
        )

    def call(self, coroutine: Coroutine[Any, Any, Any], timeout: float) -> Any:
        """Run `coroutine` on the connection's loop; its result, or its exception. Past
        `timeout` seconds it is cancelled and `NatsUnavailable` raised."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise NatsUnavailable(f"no answer from the NATS cluster within {timeout:g} s") from None

    def submit(self, coroutine: Coroutine[Any, Any, Any]) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    @property
    def connected(self) -> bool:
        return self.client.is_connected

    def close(self) -> None:
        self._closing = True
        try:
            self.call(self.client.drain(), 10)
        except Exception:  # closing must not fail a shutdown
            log.warning("NATS: the connection did not close cleanly", exc_info=True)
        self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


TRANSIENT = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    asyncio.TimeoutError,
)
"""What a publish or an API call can meet while the cluster elects a leader or a server
restarts: worth another try."""


async def with_retries(operation: Callable, seconds: float):
    """`await operation()`, tried again on transient errors for up to `seconds`."""
    deadline = time.monotonic() + seconds
    delay = 0.05
    while True:
        try:
            return await operation()
        except TRANSIENT as exc:
            if getattr(exc, "err_code", None) == STREAM_FULL:
                raise  # not transient: a full stream stays full until the tap catches up
            if time.monotonic() + delay > deadline:
                raise NatsUnavailable(f"{type(exc).__name__} {exc}".strip()) from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
