"""Serving the listener on waitress, with JSON errors even for what waitress refuses itself."""

from __future__ import annotations

import logging
import signal

from waitress.channel import HTTPChannel
from waitress.server import create_server
from waitress.task import ErrorTask

from tap_vero_webhook.listener.app import create_app
from tap_vero_webhook.listener.errors import JSON, error_body
from tap_vero_webhook.listener.logs import redact
from tap_vero_webhook.listener.rejects import Rejection
from tap_vero_webhook.listener.settings import ListenerSettings, ServerSettings


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


class JSONErrorChannel(HTTPChannel):
    """Also ages a connection from the first byte of the request it is receiving, so
    channel_timeout bounds a sender trickling bytes, not only an idle one (waitress alone
    resets the clock on every byte, letting a slow sender hold a connection forever)."""

    error_task_class = JSONErrorTask
    _request_started: float | None = None

    def received(self, data: bytes) -> bool:
        if self.request is None:
            self._request_started = self.last_activity
        result = super().received(data)
        if self.request is not None and self._request_started is not None:
            self.last_activity = self._request_started
        return result


def build_server(settings: ListenerSettings, server_settings: ServerSettings):
    """The app on a waitress server bound as `server_settings` say (not yet running)."""
    app = create_app(settings)
    server = create_server(app, **server_settings.waitress_options(settings.max_body_bytes))
    server.channel_class = JSONErrorChannel
    server.listener_state = app.state  # for JSONErrorTask's rejects
    return app, server


def serve(settings: ListenerSettings, server_settings: ServerSettings) -> None:
    app, server = build_server(settings, server_settings)
    log = logging.getLogger("tap_vero_webhook.server")

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    log.info(
        "listening on http://%s:%s (data dir %s, %d threads, body cap %d bytes)",
        server.effective_host,
        server.effective_port,
        settings.data_dir,
        server_settings.threads,
        settings.max_body_bytes,
    )
    try:
        server.run()
    finally:
        server.close()
        app.state.close()
        log.info("stopped")
