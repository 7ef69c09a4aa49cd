"""The JSON error answer, built in one place for the Flask app and for waitress.

Every refusal has the one shape ``{"error": {"code": ..., "message": ...}}``: the
app's (`Refusal`, HTTP errors, the rare 500) and waitress's own (an oversized or
malformed request refused before the app runs, `server.JSONErrorTask`).
"""

from __future__ import annotations

import json

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from tap_vero_webhook.listener.settings import ListenerSettings

JSON = "application/json"


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode() + b"\n"


def error_response(status: int, code: str, message: str) -> Response:
    return Response(error_body(code, message), status=status, mimetype=JSON)


class Refusal(Exception):
    """A request the app refuses: answered `status` with this code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def init_app(app: Flask, settings: ListenerSettings) -> None:
    """Answer every refusal and error in the one JSON shape; `g.reason` names it for the
    request log."""

    @app.errorhandler(Refusal)
    def refused(exc: Refusal) -> Response:
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
