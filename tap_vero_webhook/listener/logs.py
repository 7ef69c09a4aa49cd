"""The listener's log lines: token redaction, the two line formats, a buffered handler.

Every handler the listener logs through gets `RedactTokens`, so no line (ours,
waitress's, Flask's) ever holds a webhook token. `configure_logging` sets up the
one stderr handler `vero-webhook serve` writes to.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time

from tap_vero_webhook.listener.settings import LogSettings

LOG_FIELDS = ("status", "method", "path", "bytes", "events", "latency_ms", "token_id", "reason")
"""The fields of an access line (`access_log.py`), in the order they are shown."""

_TOKEN_IN_PATH = re.compile(r"(/hooks/)[^\s\"'?#]*")
# a webhook path whose token segment is not (only) the redaction mark
_UNREDACTED_PATH = re.compile(r"/hooks/(?!<redacted>(?:[\s\"'?#]|$))[^\s\"'?#]")
# what `secrets.token_urlsafe(32)` makes, wherever it shows up (a URL pasted without /hooks/)
_TOKEN_SHAPED = re.compile(r"(?<![\w-])[\w-]{43}(?![\w-])", re.ASCII)


def redact(text: str) -> str:
    """Replace the token segment of any webhook path in `text`, and anything token-shaped."""
    return _TOKEN_SHAPED.sub("<redacted>", _TOKEN_IN_PATH.sub(r"\1<redacted>", text))


class RedactTokens(logging.Filter):
    """A log filter that keeps webhook tokens out of every line it passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if _UNREDACTED_PATH.search(message) or _TOKEN_SHAPED.search(message):
            record.msg, record.args = redact(message), None
        return True


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

    _FIELDS = tuple(name for name in LOG_FIELDS if name not in ("method", "path"))

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
        for name in LOG_FIELDS:
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
