"""The `data` stream's schema: the one place its columns are defined.

Columns are Vero's documented top-level fields, typed once for life, plus our
stamps. Every event also travels whole in `payload`, so a field Vero adds later
is never lost. A value whose type does not match its column leaves the column
empty (NULL); it is still in `payload`.
"""

from __future__ import annotations

STREAM = "data"
"""The tap's one stream, and the table it loads into."""
KEY = "__sdc_primary_key"
RECEIVED_AT = "_sdc_webhook_received_at"
SEQUENCE = "_sdc_webhook_sequence"
LISTENER = "_sdc_webhook_listener"
PAYLOAD = "payload"

EMAIL_EVENT_TYPES = (
    "sent",
    "delivered",
    "opened",
    "clicked",
    "bounced",
    "failed",
    "converted",
    "unsubscribed",
    "resubscribed",
    "complained",
)
USER_EVENT_TYPES = ("user_created", "user_updated")
EVENT_TYPES = EMAIL_EVENT_TYPES + USER_EVENT_TYPES

STRING_COLUMNS = (
    "type",
    "message_id",
    "sender_ip",
    "user_agent",
    "bounce_type",
    "bounce_code",
    "bounce_message",
)
OBJECT_COLUMNS = ("user", "campaign", "event", "changes")
UNIX_TIME_COLUMNS = tuple(f"{event_type}_at" for event_type in EMAIL_EVENT_TYPES)

_BIGINT_MIN, _BIGINT_MAX = -(2**63), 2**63 - 1


def _is_string(value: object) -> bool:
    return type(value) is str


def _is_object(value: object) -> bool:
    return type(value) is dict


def _is_bigint(value: object) -> bool:
    return type(value) is int and _BIGINT_MIN <= value <= _BIGINT_MAX


COLUMN_ACCEPTS = {
    **dict.fromkeys(STRING_COLUMNS, _is_string),
    **dict.fromkeys(OBJECT_COLUMNS, _is_object),
    **dict.fromkeys(UNIX_TIME_COLUMNS, _is_bigint),
}
"""For each typed event column: whether a value fits its column type."""


def _column(json_type: str, description: str) -> dict:
    return {"type": [json_type, "null"], "description": description}


DATA_SCHEMA: dict = {
    "type": "object",
    "properties": {
        KEY: {
            "type": ["string"],
            "description": "UUID the listener gave the event on arrival; the same on every replay.",
        },
        RECEIVED_AT: {
            "type": ["string"],
            "format": "date-time",
            "description": "When the listener accepted the event (UTC).",
        },
        SEQUENCE: {
            "type": ["integer"],
            "description": "Arrival order, strictly increasing (gaps possible).",
        },
        LISTENER: {
            "type": ["string", "null"],
            "description": "The listener that accepted the event (--listener-id; null for "
            "events spooled before listeners were named).",
        },
        "type": _column("string", "Vero event type: sent, delivered, opened, … user_updated."),
        "user": _column("object", "The Vero user; `id` may be a number or a string."),
        "campaign": _column("object", "The campaign of an email event."),
        "event": _column("object", "The triggering event of a campaign, if any."),
        "changes": _column("object", "What changed, for user_updated."),
        "message_id": _column("string", "Vero's id of the email message."),
        "sender_ip": _column("string", "Sending IP, for delivered."),
        "user_agent": _column("string", "Reader's user agent, for opened and clicked."),
        "bounce_type": _column("string", "hard or soft, for bounced."),
        "bounce_code": _column("string", "SMTP code, for bounced."),
        "bounce_message": _column("string", "SMTP message, for bounced."),
        **{
            name: _column("integer", f"Unix seconds of the {name[:-3]} event.")
            for name in UNIX_TIME_COLUMNS
        },
        PAYLOAD: {
            "type": ["object"],
            "description": "The whole event exactly as posted (U+0000 replaced, see README).",
        },
    },
    "required": [KEY, RECEIVED_AT, SEQUENCE, PAYLOAD],
}
