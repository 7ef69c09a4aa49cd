"""Per request, once answered: an access line, the metrics, and a copy of any refusal.

The Flask side of the request log (the fast path notes its own accepted
requests). A refused webhook request is kept in the rejects folder; keeping it
must never change the answer.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from flask import Flask, Response, g, request

from tap_vero_webhook.listener.accept import HOOKS_PREFIX
from tap_vero_webhook.listener.logs import redact
from tap_vero_webhook.listener.rejects import Rejection

if TYPE_CHECKING:
    from tap_vero_webhook.listener.app import ListenerState


def init_app(app: Flask, state: ListenerState) -> None:
    @app.before_request
    def start_clock() -> None:
        g.started = time.perf_counter()
        g.token_id = None
        g.events = 0
        g.reason = None

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
        elif request.path.startswith(HOOKS_PREFIX):
            try:
                state.reject(_rejection(response, state.rejects.body_cap))
            except Exception:
                app.logger.warning("could not note a refused request", exc_info=True)
        return response


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
