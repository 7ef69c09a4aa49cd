"""The webhook listener's Flask app: `create_app(settings)` builds it.

Nothing is configured at import time. `ListenerState` is what one app owns (its
spool writer, its view of the token store, its rejects folder, metrics and access
log); `create_app` reads as the table of contents of the app.
"""

from __future__ import annotations

import logging

from flask import Flask, request

from tap_vero_webhook.data_dir import DataDir
from tap_vero_webhook.files import ensure_private_dir
from tap_vero_webhook.listener import errors, request_log, routes
from tap_vero_webhook.listener.accept import AcceptPath
from tap_vero_webhook.listener.access_log import AccessLog
from tap_vero_webhook.listener.logs import redact
from tap_vero_webhook.listener.metrics import ListenerMetrics
from tap_vero_webhook.listener.payloads import encode_event, parse_events
from tap_vero_webhook.listener.rejects import Rejection, RejectLog
from tap_vero_webhook.listener.settings import ListenerSettings
from tap_vero_webhook.listener.tokens import TokenVerifier
from tap_vero_webhook.spool import Stamp, open_writer

log = logging.getLogger("tap_vero_webhook.server")

STATE_KEY = "vero_webhook"
"""Where the app keeps its `ListenerState`: ``app.extensions[STATE_KEY]``."""


class ListenerState:
    def __init__(self, settings: ListenerSettings) -> None:
        layout = DataDir(ensure_private_dir(settings.data_dir))
        location = settings.spool_location()
        self.settings = settings
        self.rejects = RejectLog(
            layout.rejects,
            settings.rejects_retention_days,
            settings.rejects_body_cap,
            settings.rejects_max_bytes_per_day,
        )
        self.metrics = ListenerMetrics(self.rejects)
        self.spool = open_writer(location, settings.listener_id, self.metrics.observe_commit)
        self.metrics.watch_spool(self.spool)
        try:
            self.tokens = TokenVerifier(location, settings.listener_id)
        except Exception:
            self.spool.close()
            raise
        self.access = AccessLog()
        cap = self.spool.max_entry_bytes
        if cap is not None and settings.max_body_bytes > cap:
            log.warning(
                "--max-body-bytes is %d, but the spool takes at most %d bytes of events in one "
                "request (the NATS servers' max_payload): bigger bodies get 413. Raise "
                "max_payload in the servers' config, or lower --max-body-bytes.",
                settings.max_body_bytes,
                cap,
            )

    def accept(self, body: bytes) -> list[Stamp]:
        """Parse a body strictly and append its events durably: the one accept step,
        shared by the fast path and the Flask route. Raises PayloadError or a SpoolError,
        having stored nothing."""
        return self.spool.append([encode_event(event) for event in parse_events(body)])

    def reject(self, rejection: Rejection) -> None:
        """Count a refused webhook request and keep it in the rejects folder."""
        self.metrics.rejected(rejection.reason)
        self.rejects.record(rejection)

    def close(self) -> None:
        self.tokens.close()
        self.spool.close()
        self.rejects.close()
        self.access.close()


class ListenerApp(Flask):
    def log_exception(self, exc_info) -> None:
        """Flask's version logs the request path, which holds the token."""
        self.logger.error(
            "unhandled error in %s %s", request.method, redact(request.path), exc_info=exc_info
        )

    @property
    def state(self) -> ListenerState:
        return self.extensions[STATE_KEY]


def create_app(settings: ListenerSettings) -> ListenerApp:
    app = ListenerApp(__name__)
    # else /hooks//<token> answers a 308 that echoes the token back in Location
    app.url_map.merge_slashes = False
    # else OPTIONS gets an empty text/html 200; every answer here is JSON (405 with Allow)
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    state = app.extensions[STATE_KEY] = ListenerState(settings)

    routes.init_app(app, state)
    errors.init_app(app, settings)
    request_log.init_app(app, state)
    app.wsgi_app = AcceptPath(app.wsgi_app, state)
    return app
