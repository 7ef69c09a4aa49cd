"""The webhook listener: a Flask app that turns Vero's POSTs into durable spool lines.

`create_app(settings)` builds it; nothing is configured at import time. Every
answer, success or error, is a small JSON object; errors have the one shape
``{"error": {"code": ..., "message": ...}}``.
"""

from __future__ import annotations

import io
import logging
import re
import time

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from tap_vero_webhook.data_dir import DataDir
from tap_vero_webhook.files import ensure_private_dir
from tap_vero_webhook.listener.access_log import AccessLog
from tap_vero_webhook.listener.metrics import ListenerMetrics
from tap_vero_webhook.listener.payloads import PayloadError, encode_event, parse_events
from tap_vero_webhook.listener.rejects import Rejection, RejectLog
from tap_vero_webhook.listener.settings import ListenerSettings
from tap_vero_webhook.listener.tokens import TokenVerifier
from tap_vero_webhook.spool import SpoolUnavailable, SpoolWriter, Stamp

ACCEPTED_CONTENT_TYPES = ("application/json",)

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


class ListenerState:
    """What one app instance owns: its spool writer, its view of the token store, its
    rejects folder and its metrics."""

    def __init__(self, settings: ListenerSettings) -> None:
        layout = DataDir(ensure_private_dir(settings.data_dir))
        self.settings = settings
        self.rejects = RejectLog(
            layout.rejects,
            settings.rejects_retention_days,
            settings.rejects_body_cap,
            settings.rejects_max_bytes_per_day,
        )
        self.metrics = ListenerMetrics(layout.spool, self.rejects)
        self.spool = SpoolWriter(
            layout.spool, settings.segment_max_bytes, on_commit=self.metrics.observe_commit
        )
        self.tokens = TokenVerifier(settings.data_dir)
        self.access = AccessLog()

    def accept(self, body: bytes) -> list[Stamp]:
        """Parse a body strictly and append its events durably: the one accept step,
        shared by the fast path and the Flask route. Raises PayloadError or
        SpoolUnavailable, having written nothing."""
        return self.spool.append([encode_event(event) for event in parse_events(body)])

    def reject(self, rejection: Rejection) -> None:
        """Count a refused webhook request and keep it in the rejects folder."""
        self.metrics.rejected(rejection.reason)
        self.rejects.record(rejection)

    def close(self) -> None:
        self.tokens.flush_last_used()
        self.spool.close()
        self.rejects.close()
        self.access.close()


class _Refusal(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(status: int, code: str, message: str) -> Response:
    response = jsonify(error={"code": code, "message": message})
    response.status_code = status
    return response


class ListenerApp(Flask):
    def log_exception(self, exc_info) -> None:
        """Flask's version logs the request path, which holds the token."""
        self.logger.error(
            "unhandled error in %s %s", request.method, redact(request.path), exc_info=exc_info
        )


def _rejection(response: Response, body_cap: int) -> Rejection:
    """The refusal of the current request, for the rejects folder (never its path)."""
    body = g.get("body")
    size = request.content_length
    if body is not None and size is None:
        size = len(body)  # a chunked body the app read whole
    if body is None:
        try:  # refused before the body was read (bad token, content type, method)
            body = request.stream.read(body_cap + 1)
        except Exception:
            body = None
    answer = response.get_json(silent=True) if response.is_json else None
    error = answer.get("error") if isinstance(answer, dict) else None
    return Rejection(
        status=response.status_code,
        reason=g.get("reason") or "error",
        message=error.get("message") if isinstance(error, dict) else None,
        method=request.method,
        size=size,
        token_id=g.get("token_id"),
        content_type=request.headers.get("Content-Type"),
        remote_addr=request.remote_addr,
        body=body,
    )


_FAST_CONTENT_TYPES = frozenset(
    (
        "application/json",
        "application/json;charset=utf-8",
        "application/json;charset=utf8",
        'application/json;charset="utf-8"',
    )
)
_FAST_HEADERS_BASE = [("Content-Type", "application/json")]


class AcceptPath:
    """The one hot path, in plain WSGI: a well-formed webhook POST that gets a 200.

    Flask's request and response machinery costs about as much as the whole
    durable append, so a POST /hooks/<token> with a valid token, a JSON content
    type, a Content-Length within the cap and a body of valid events is accepted
    here. Anything else, including every refusal, falls through to the Flask app
    (with the body put back), which gives the precise answer; so does a spool
    failure, where the Flask route tries once more and answers 503.
    """

    def __init__(self, flask_wsgi_app, state: ListenerState) -> None:
        self.flask_wsgi_app = flask_wsgi_app
        self.state = state
        self.max_body_bytes = state.settings.max_body_bytes

    def __call__(self, environ: dict, start_response):
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") != "POST" or not path.startswith("/hooks/"):
            return self.flask_wsgi_app(environ, start_response)
        started = time.perf_counter()
        length_text = environ.get("CONTENT_LENGTH", "")
        content_type = environ.get("CONTENT_TYPE", "").replace(" ", "").lower()
        if (
            content_type not in _FAST_CONTENT_TYPES
            or not length_text.isdigit()
            or int(length_text) > self.max_body_bytes
        ):
            return self.flask_wsgi_app(environ, start_response)
        token_id = self.state.tokens.verify(path[len("/hooks/") :])
        if token_id is None:
            return self.flask_wsgi_app(environ, start_response)
        body = environ["wsgi.input"].read(int(length_text))
        try:
            stamps = self.state.accept(body)
        except (PayloadError, SpoolUnavailable):
            environ["wsgi.input"] = io.BytesIO(body)
            return self.flask_wsgi_app(environ, start_response)
        payload = b'{"accepted":%d,"ids":["%s"]}\n' % (
            len(stamps),
            '","'.join(stamp.id for stamp in stamps).encode(),
        )
        start_response("200 OK", [*_FAST_HEADERS_BASE, ("Content-Length", str(len(payload)))])
        self.state.access.note(
            "POST", "/hooks/<redacted>", 200, len(body), len(stamps), started, token_id, None
        )
        self.state.metrics.accepted(len(stamps))
        return [payload]


def create_app(settings: ListenerSettings) -> ListenerApp:
    app = ListenerApp(__name__)
    # else /hooks//<token> answers a 308 that echoes the token back in Location
    app.url_map.merge_slashes = False
    # else OPTIONS gets an empty text/html 200; every answer here is JSON (405 with Allow)
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    state = ListenerState(settings)
    app.extensions["vero_webhook"] = state

    @app.before_request
    def start_clock() -> None:
        g.started = time.perf_counter()
        g.token_id = None
        g.events = 0
        g.reason = None

    @app.post("/hooks/<path:token>")
    def receive(token: str) -> Response:
        token_id = state.tokens.verify(token)
        if token_id is None:
            raise _Refusal(401, "invalid_token", "unknown or revoked webhook URL")
        g.token_id = token_id
        if request.mimetype not in ACCEPTED_CONTENT_TYPES:
            shown = request.mimetype or "none"
            raise _Refusal(
                415,
                "unsupported_content_type",
                f"Content-Type is {shown[:100]}; send application/json",
            )
        charset = request.mimetype_params.get("charset", "utf-8").lower()
        if charset not in ("utf-8", "utf8"):
            raise _Refusal(
                415, "unsupported_charset", f"charset {charset[:40]} is not supported; send UTF-8"
            )
        body = g.body = request.get_data(cache=False)
        if len(body) > settings.max_body_bytes:
            raise _Refusal(
                413, "body_too_large", f"the body is over the {settings.max_body_bytes}-byte limit"
            )
        try:
            stamps = state.accept(body)
        except PayloadError as exc:
            raise _Refusal(400, exc.code, exc.message) from None
        except SpoolUnavailable as exc:
            raise _Refusal(
                503, "spool_unavailable", f"the event could not be stored ({exc}); retry later"
            ) from None
        g.events = len(stamps)
        return jsonify(accepted=len(stamps), ids=[stamp.id for stamp in stamps])

    @app.get("/healthz")
    def healthz() -> Response:
        writable = state.spool.writable()
        response = jsonify(status="ok" if writable else "unavailable", spool_writable=writable)
        response.status_code = 200 if writable else 503
        return response

    if settings.metrics:

        @app.get("/metrics")
        def metrics() -> Response:
            """Prometheus text format; no token needed, as it holds no secret."""
            body, content_type = state.metrics.exposition()
            return Response(body, content_type=content_type)

    @app.errorhandler(_Refusal)
    def refused(exc: _Refusal) -> Response:
        g.reason = exc.code
        return error_response(exc.status, exc.code, exc.message)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        code = (exc.name or "error").lower().replace(" ", "_")
        g.reason = code
        messages = {
            404: "no such endpoint; webhooks are posted to /hooks/<token>",
            405: f"{request.method} is not allowed here",
            413: f"the body is over the {settings.max_body_bytes}-byte limit",
        }
        response = error_response(exc.code or 500, code, messages.get(exc.code, exc.description))
        allowed = getattr(exc, "valid_methods", None)
        if allowed:  # a 405 must say what is allowed (RFC 9110)
            response.headers["Allow"] = ", ".join(allowed)
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        app.log_exception((type(exc), exc, exc.__traceback__))
        g.reason = "internal_error"
        return error_response(500, "internal_error", "the listener failed; retry later")

    @app.after_request
    def log_request(response: Response) -> Response:
        state.access.note(
            request.method,
            redact(request.path),
            response.status_code,
            request.content_length or 0,
            g.get("events", 0),
            g.get("started"),
            g.get("token_id"),
            g.get("reason"),
        )
        if response.status_code < 400:
            if g.get("events"):
                state.metrics.accepted(g.events)
        elif request.path.startswith("/hooks/"):
            try:
                state.reject(_rejection(response, state.rejects.body_cap))
            except Exception:  # keeping a copy must never change the answer
                app.logger.warning("could not note a refused request", exc_info=True)
        return response

    app.wsgi_app = AcceptPath(app.wsgi_app, state)
    return app
