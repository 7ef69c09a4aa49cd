"""The one hot path, in plain WSGI: a well-formed webhook POST that gets a 200.

Flask's request and response machinery costs about as much as the whole durable
append, so a POST /hooks/<token> with a valid token, a JSON content type, a
Content-Length within the cap and a body of valid events is accepted here.
Anything else, including every refusal, falls through to the Flask app (with the
body put back), which gives the precise answer; so does a spool failure, which the
Flask route answers (503, or 413) without appending again.
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tap_vero_webhook.listener.errors import JSON
from tap_vero_webhook.listener.payloads import PayloadError
from tap_vero_webhook.spool import SpoolError, Stamp

if TYPE_CHECKING:
    from tap_vero_webhook.listener.app import ListenerState

HOOKS_PREFIX = "/hooks/"
SPOOL_FAILURE = "vero_webhook.spool_failure"
"""Where the fast path leaves a spool failure for the Flask route to answer (in the WSGI
environ): the route must not append the events a second time."""
REDACTED_HOOK_PATH = "/hooks/<redacted>"

_FAST_CONTENT_TYPES = frozenset(
    (
        "application/json",
        "application/json;charset=utf-8",
        "application/json;charset=utf8",
        'application/json;charset="utf-8"',
    )
)


def accepted_body(stamps: Sequence[Stamp]) -> bytes:
    """The 200 answer: ``{"accepted": N, "ids": [...]}``, the ids in event order."""
    return b'{"accepted":%d,"ids":["%s"]}\n' % (
        len(stamps),
        '","'.join(stamp.id for stamp in stamps).encode(),
    )


class AcceptPath:
    def __init__(self, flask_wsgi_app, state: ListenerState) -> None:
        self.flask_wsgi_app = flask_wsgi_app
        self.state = state
        self.max_body_bytes = state.settings.max_body_bytes

    def __call__(self, environ: dict, start_response):
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") != "POST" or not path.startswith(HOOKS_PREFIX):
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
        token_id = self.state.tokens.verify(path[len(HOOKS_PREFIX) :])
        if token_id is None:
            return self.flask_wsgi_app(environ, start_response)
        body = environ["wsgi.input"].read(int(length_text))
        try:
            stamps = self.state.accept(body)
        except (PayloadError, SpoolError) as exc:
            environ["wsgi.input"] = io.BytesIO(body)
            if isinstance(exc, SpoolError):
                environ[SPOOL_FAILURE] = exc
            return self.flask_wsgi_app(environ, start_response)
        payload = accepted_body(stamps)
        start_response("200 OK", [("Content-Type", JSON), ("Content-Length", str(len(payload)))])
        self.state.access.note(
            "POST", REDACTED_HOOK_PATH, 200, len(body), len(stamps), started, token_id, None
        )
        self.state.metrics.accepted(len(stamps))
        return [payload]
