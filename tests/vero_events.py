"""Realistic Vero webhook events of every type, shaped after Vero's published examples.

Used by the tests and the benchmarks alike. `tests/data/vero_examples.json` holds
Vero's own examples; `make_event` varies them deterministically.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tap_vero_webhook.schema import EMAIL_EVENT_TYPES, EVENT_TYPES, USER_EVENT_TYPES

EXAMPLES_PATH = Path(__file__).parent / "data" / "vero_examples.json"

EMAIL_TYPES = EMAIL_EVENT_TYPES
USER_TYPES = USER_EVENT_TYPES


def vero_examples() -> list[dict]:
    """Vero's published example bodies, one per documented type."""
    return json.loads(EXAMPLES_PATH.read_text())


def make_event(event_type: str, n: int, rng: random.Random | None = None) -> dict:
    """A realistic event of `event_type`; `n` varies ids and times."""
    rng = rng or random.Random(n)
    user_id: int | str = 1000 + n % 5000
    if event_type == "bounced" or n % 7 == 0:
        user_id = str(user_id)  # Vero sends ids as strings sometimes
    user = {"id": user_id, "email": f"user{user_id}@example.com"}
    if event_type in USER_TYPES:
        event: dict = {"type": event_type, "user": user}
        if event_type == "user_created":
            user.update(firstname=rng.choice(["Steve", "Ana", "Zoë", "李"]), company="Vero")
        else:
            event["changes"] = {"_tags": {"add": [f"tag-{n % 11}"], "remove": ["inactive"]}}
        return event
    event = {
        f"{event_type}_at": 1_735_000_000 + n,
        "type": event_type,
        "user": user,
        "campaign": {
            "id": 900 + n % 40,
            "type": "transactional",
            "name": "Order confirmation",
            "group": "Order confirmation - Email 6",
            "channel": "email",
            "subject": "Your order is being processed! ✓",
            "trigger-event": "purchased item",
            "permalink": f"http://app.getvero.com/view/1/{n:032x}",
            "sent_to": user["email"],
            "variation": "Variation A",
            "tags": "tag 1, tag 2",
        },
        "message_id": f"20260730123456.{n}.1B72E094173067F0F@veromail.com",
    }
    if event_type in ("unsubscribed", "resubscribed"):
        del event["campaign"], event["message_id"]
    if event_type in ("sent", "delivered"):
        event["event"] = {"name": "purchased item", "triggered_at": 1_735_000_000 + n - 60}
    if event_type == "delivered":
        event["sender_ip"] = "127.0.0.1"
    if event_type in ("opened", "clicked"):
        event["user_agent"] = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_10_3) AppleWebKit/537.36"
    if event_type == "bounced":
        event.update(
            bounce_type="hard",
            bounce_code="521",
            bounce_message="521 5.2.1 : AOL will not accept delivery of this message.",
        )
    return event


def event_stream(count: int, seed: int = 7) -> list[dict]:
    """`count` events cycling through every type."""
    rng = random.Random(seed)
    return [make_event(EVENT_TYPES[n % len(EVENT_TYPES)], n, rng) for n in range(count)]
