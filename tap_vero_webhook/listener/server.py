"""Serving the listener on waitress, with JSON errors even for what waitress refuses itself."""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time

from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.server import create_server
from waitress.task import ErrorTask

from tap_vero_webhook.listener.activation import inherited_socket
from tap_vero_webhook.listener.app import create_app
from tap_vero_webhook.listener.errors import JSON, error_body
from tap_vero_webhook.listener.logs import redact
from tap_vero_webhook.listener.rejects import Rejection
from tap_vero_webhook.listener.settings import ListenerSettings, ServerSettings

IDLE_GRACE_SECONDS = 1.0
"""How long a drain keeps an idle keep-alive connection open: a sender about to reuse it
gets its answer (with `Connection: close`) rather than a closed connection."""

log = logging.getLogger("tap_vero_webhook.server")


class JSONErrorTask(ErrorTask):
    """Waitress answers oversized or malformed HTTP before the app runs; keep our error shape."""

    def execute(self) -> None:
        error = self.request.error
        code = error.reason.lower().replace(" ", "_")
        message = redact(str(error.body))
        if error.code == 413:
            code = "body_too_large"
            # waitress's own text names max_request_body_size, which is the cap + 1
            cap = self.channel.adj.max_request_body_size - 1
            message = f"the body is over the {cap}-byte limit"
        body = error_body(code, message)
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", JSON))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)
        self._note(error.code, code, message)

    def _note(self, status: int, code: str, message: str) -> None:
        """Log, count and keep this refusal like the app's own (its body was never read)."""
        try:
            request = self.request
            path = getattr(request, "path", "") or ""
            method = getattr(request, "command", None) or "-"
            size = getattr(request, "content_length", 0) or None
            token_id = None
            state = getattr(self.channel.server, "listener_state", None)
            if state is not None and path.startswith("/hooks/"):
                token_id = state.tokens.verify(path[len("/hooks/") :])
                state.reject(
                    Rejection(
                        status=status,
                        reason=code,
                        message=message,
                        method=method,
                        size=size,
                        token_id=token_id,
                        content_type=request.headers.get("CONTENT_TYPE"),
                        remote_addr=self.channel.addr[0] if self.channel.addr else None,
                    )
                )
            if state is not None:
                state.access.note(
                    method, redact(path) or "-", status, size or 0, 0, None, token_id, code
                )
        except Exception:
            logging.getLogger(__name__).warning("could not note a refused request", exc_info=True)


class ListenerChannel(HTTPChannel):
    """A connection, as waitress serves it, with two changes.

    It ages from the first byte of the request it is receiving, so channel_timeout
    bounds a sender trickling bytes, not only an idle one (waitress alone resets the
    clock on every byte, letting a slow sender hold a connection forever). And while
    the server drains, every answer it sends says `Connection: close` and the
    connection closes after it, so a keep-alive sender reconnects, to whichever
    process then accepts on the socket. (An app may not set `Connection` itself:
    PEP 3333 calls it hop-by-hop; waitress's task decides it from the request's.)
    """

    error_task_class = JSONErrorTask
    _request_started: float | None = None

    def received(self, data: bytes) -> bool:
        if self.request is None:
            self._request_started = self.last_activity
        result = super().received(data)
        if self.request is not None and self._request_started is not None:
            self.last_activity = self._request_started
        return result

    def service(self) -> None:
        if getattr(self.server, "draining", False) and self.requests:
            self.requests[0].headers["CONNECTION"] = "close"
        super().service()

    @property
    def idle(self) -> bool:
        """No request in flight or being received, nothing left to send."""
        return not (self.requests or self.request is not None or self.total_outbufs_len)


def build_server(
    settings: ListenerSettings, server_settings: ServerSettings, sock: socket.socket | None = None
):
    """The app on a waitress server, bound as `server_settings` say or serving `sock` (a
    socket passed by socket activation); not yet running."""
    app = create_app(settings)
    options = server_settings.waitress_options(settings.max_body_bytes, sock)
    server = create_server(app, **options)
    server.channel_class = ListenerChannel
    server.draining = False
    server.listener_state = app.state  # for JSONErrorTask's rejects
    return app, server


def serve(settings: ListenerSettings, server_settings: ServerSettings) -> None:
    """Serve until SIGTERM or SIGINT, then drain (`drain`) and release the spool.

    Raises `ActivationError` for a socket-activation environment that names no usable
    socket, `SpoolBusy` for a spool another listener keeps."""
    sock = inherited_socket()
    app, server = build_server(settings, server_settings, sock)
    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        stop.set()
        server.pull_trigger()  # wake the loop now, not at its next timeout

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    log.info(
        "listening on http://%s:%s (%s; data dir %s, %d threads, body cap %d bytes)",
        server.effective_host,
        server.effective_port,
        "socket passed by the service manager" if sock else "bound here",
        settings.data_dir,
        server_settings.threads,
        settings.max_body_bytes,
    )
    try:
        while not stop.is_set():
            wasyncore.loop(timeout=1.0, map=server._map, use_poll=True, count=1)
        drain(server, server_settings.shutdown_timeout)
    finally:
        wasyncore.close_all(server._map, ignore_all=True)
        server.task_dispatcher.shutdown(timeout=1)
        app.state.close()  # token last-use times, the spool, rejects, the access log
        log.info("stopped")


def drain(server, timeout: float) -> None:
    """Stop accepting and let every started request finish and be answered.

    The listening socket is closed at once: one held by a service manager stays open,
    so the kernel queues new connections for the next process; one bound here closes.
    A request received, or being received, is served to the end and its answer sent
    with `Connection: close`; an idle keep-alive connection is closed once it has been
    idle for `IDLE_GRACE_SECONDS` since the drain began; everything still open at
    `timeout` seconds (a sender trickling its body, say) is cut off.
    """
    started, began = time.monotonic(), time.time()
    deadline = started + timeout
    server.draining = True
    wasyncore.dispatcher.close(server)  # the listening socket, not the trigger
    channels = _channels(server)
    log.info("draining: stopped accepting; %d connections open", len(channels))
    while channels and time.monotonic() < deadline:
        now = time.time()
        for channel in channels:
            if channel.idle and now - max(channel.last_activity, began) >= IDLE_GRACE_SECONDS:
                channel.will_close = True  # closed by the loop, like a timed-out channel
        wasyncore.loop(timeout=0.05, map=server._map, use_poll=True, count=1)
        channels = _channels(server)
    if channels:
        log.warning(
            "drain: gave up after %.1f s with %d connections still open (--shutdown-timeout)",
            time.monotonic() - started,
            len(channels),
        )
    else:
        log.info("drained in %.2f s", time.monotonic() - started)


def _channels(server) -> list[ListenerChannel]:
    return [item for item in server._map.values() if isinstance(item, ListenerChannel)]
