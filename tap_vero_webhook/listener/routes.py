"""The endpoints: POST /hooks/<token>, GET /healthz and GET /metrics.

Only refusals reach `receive` (an accepted POST is answered by `accept.AcceptPath`
before Flask runs), plus the rare retry after a spool failure on the fast path;
it checks in the order that gives the most precise answer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Flask, Response, g, jsonify, request

from tap_vero_webhook.listener.accept import SPOOL_FAILURE, accepted_body
from tap_vero_webhook.listener.errors import JSON, Refusal
from tap_vero_webhook.listener.payloads import PayloadError
from tap_vero_webhook.spool import SpoolError, SpoolFull, SpoolTooLarge

if TYPE_CHECKING:
    from tap_vero_webhook.listener.app import ListenerState

ACCEPTED_CONTENT_TYPES = ("application/json",)
ACCEPTED_CHARSETS = ("utf-8", "utf8")


def init_app(app: Flask, state: ListenerState) -> None:
    max_body_bytes = state.settings.max_body_bytes

    @app.post("/hooks/<path:token>")
    def receive(token: str) -> Response:
        token_id = state.tokens.verify(token)
        if token_id is None:
            raise Refusal(401, "invalid_token", "unknown or revoked webhook URL")
        g.token_id = token_id
        if request.mimetype not in ACCEPTED_CONTENT_TYPES:
            shown = request.mimetype or "none"
            raise Refusal(
                415,
                "unsupported_content_type",
                f"Content-Type is {shown[:100]}; send application/json",
            )
        charset = request.mimetype_params.get("charset", "utf-8").lower()
        if charset not in ACCEPTED_CHARSETS:
            raise Refusal(
                415, "unsupported_charset", f"charset {charset[:40]} is not supported; send UTF-8"
            )
        body = g.body = request.get_data(cache=False)
        if len(body) > max_body_bytes:
            raise Refusal(
                413, "body_too_large", f"the body is over the {max_body_bytes}-byte limit"
            )
        try:
            failure = request.environ.pop(SPOOL_FAILURE, None)
            if failure is not None:
                raise failure
            stamps = state.accept(body)
        except PayloadError as exc:
            raise Refusal(400, exc.code, exc.message) from None
        except SpoolTooLarge as exc:
            raise Refusal(413, "body_too_large", str(exc)) from None
        except SpoolFull as exc:
            raise Refusal(503, "spool_full", f"the spool is full ({exc}); retry later") from None
        except SpoolError as exc:
            raise Refusal(
                503, "spool_unavailable", f"the event could not be stored ({exc}); retry later"
            ) from None
        g.events = len(stamps)
        return Response(accepted_body(stamps), mimetype=JSON)

    @app.get("/healthz")
    def healthz() -> Response:
        writable = state.spool.writable()
        response = jsonify(status="ok" if writable else "unavailable", spool_writable=writable)
        response.status_code = 200 if writable else 503
        return response

    if state.settings.metrics:

        @app.get("/metrics")
        def metrics() -> Response:
            """Prometheus text format; no token needed, as it holds no secret."""
            body, content_type = state.metrics.exposition()
            return Response(body, content_type=content_type)
