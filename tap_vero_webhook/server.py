"""Serving the listener on waitress, with JSON errors even for what waitress refuses itself."""

from __future__ import annotations

import json
import logging
import signal
import sys

from waitress.channel import HTTPChannel
from waitress.server import create_server
from waitress.task import ErrorTask

from tap_vero_webhook.listener import ListenerSettings, RedactTokens, create_app, redact

_LOG_FIELDS = ("status", "method", "path", "bytes", "events", "latency_ms", "token_id", "reason")


class JSONErrorTask(ErrorTask):
    """Waitress answers oversized or malformed HTTP before the app runs; keep our error shape."""

    def execute(self) -> None:
        error = self.request.error
        code = error.reason.lower().replace(" ", "_")
        if error.code == 413:
            code = "body_too_large"
        body = json.dumps({"error": {"code": code, "message": redact(str(error.body))}}).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class JSONErrorChannel(HTTPChannel):
    error_task_class = JSONErrorTask


class JSONLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _LOG_FIELDS:
            if hasattr(record, name):
                line[name] = getattr(record, name)
        if record.exc_info:
            line["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(line)


def configure_logging(log_format: str = "text", level: str = "INFO") -> None:
    """Log to stderr, one line per record, never with a token in it."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactTokens())
    if log_format == "json":
        handler.setFormatter(JSONLineFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def build_server(settings: ListenerSettings, host: str, port: int, threads: int, **adjustments):
    """The app on a waitress server bound to host:port (not yet running)."""
    app = create_app(settings)
    server = create_server(
        app,
        host=host,
        port=port,
        threads=threads,
        ident="vero-webhook",
        # waitress refuses a Content-Length >= this before reading the body
        max_request_body_size=settings.max_body_bytes + 1,
        **adjustments,
    )
    server.channel_class = JSONErrorChannel
    return app, server


def serve(settings: ListenerSettings, host: str, port: int, threads: int, **adjustments) -> None:
    app, server = build_server(settings, host, port, threads, **adjustments)
    log = logging.getLogger("tap_vero_webhook.server")

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    log.info(
        "listening on http://%s:%s (data dir %s, %d threads, body cap %d bytes)",
        server.effective_host,
        server.effective_port,
        settings.data_dir,
        threads,
        settings.max_body_bytes,
    )
    try:
        server.run()
    finally:
        server.close()
        app.extensions["vero_webhook"].close()
        log.info("stopped")
