"""Serving the listener on waitress, with JSON errors even for what waitress refuses itself."""

from __future__ import annotations

import json
import logging
import re
import signal
import sys
import threading
import time

from waitress.channel import HTTPChannel
from waitress.server import create_server
from waitress.task import ErrorTask

from tap_vero_webhook.listener.app import RedactTokens, create_app, redact
from tap_vero_webhook.listener.rejects import Rejection
from tap_vero_webhook.listener.settings import ListenerSettings, LogSettings, ServerSettings

_LOG_FIELDS = ("status", "method", "path", "bytes", "events", "latency_ms", "token_id", "reason")


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
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
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


_NEEDS_QUOTES = re.compile(r'[ "=\\]')


def _text_value(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, float)):
        return str(value)
    text = str(value)
    if not text or _NEEDS_QUOTES.search(text) or not text.isprintable():
        return json.dumps(text)
    return text


class KeyValueFormatter(logging.Formatter):
    """Plain text: time, level, logger, message, then a request's fields as key=value."""

    _FIELDS = tuple(name for name in _LOG_FIELDS if name not in ("method", "path"))

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = [
            f"{name}={_text_value(getattr(record, name))}"
            for name in self._FIELDS
            if hasattr(record, name)
        ]
        return " ".join([line, *fields]) if fields else line


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


class BufferedStderrHandler(logging.StreamHandler):
    """Log lines to stderr through a block buffer, written out a few times a second.

    A write per line, under the handler's lock, is a syscall that hands the GIL to
    another thread on every request; under load that costs the listener more than
    its fsyncs. Warnings and errors are written at once; shutdown flushes the rest.
    """

    FLUSH_SECONDS = 0.2

    def __init__(self) -> None:
        stream = open(  # noqa: SIM115 - lives as long as the process
            sys.stderr.fileno(),
            "w",
            buffering=64 * 1024,
            encoding="utf-8",
            errors="backslashreplace",
            closefd=False,
        )
        super().__init__(stream)
        threading.Thread(target=self._flush_often, name="log-flush", daemon=True).start()

    def _flush_often(self) -> None:
        while True:
            time.sleep(self.FLUSH_SECONDS)
            self.flush()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
            if record.levelno >= logging.WARNING:
                self.stream.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


def configure_logging(settings: LogSettings) -> None:
    """Log to stderr, one line per record, never with a token in it."""
    handler = BufferedStderrHandler()
    handler.addFilter(RedactTokens())
    if settings.log_format == "json":
        handler.setFormatter(JSONLineFormatter())
    else:
        handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # no formatter here shows these; skipping them is the logging HOWTO's "Optimization"
    logging._srcfile = None  # the caller's file and line: a stack walk per record
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def build_server(settings: ListenerSettings, server_settings: ServerSettings):
    """The app on a waitress server bound as `server_settings` say (not yet running)."""
    app = create_app(settings)
    server = create_server(app, **server_settings.waitress_options(settings.max_body_bytes))
    server.channel_class = JSONErrorChannel
    server.listener_state = app.extensions["vero_webhook"]  # for JSONErrorTask's rejects
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
        app.extensions["vero_webhook"].close()
        log.info("stopped")
