"""The tap's catalog, and `tap-vero-webhook`'s entry point that answers `--discover`.

Meltano runs `tap-vero-webhook --config … --discover` before every run (it keeps
no catalog cache for a `pip_url: -e` plugin), and the answer never changes: one
stream, `data`, whose schema is `schema.py`'s. Built here from those facts
without the Singer SDK, discovery answers in milliseconds instead of importing
the SDK first (about 0.35 s of every run, idle ones too; docs/load-path.md).
tests/test_tap.py checks that this catalog is, value for value, the one the SDK
builds. Any other command line goes to the SDK's CLI, as before.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tap_vero_webhook.schema import DATA_SCHEMA, KEY, SEQUENCE, STREAM

AUTOMATIC = (KEY, SEQUENCE)
"""Columns every selection keeps: the key and the replication key."""


def catalog() -> dict:
    """The catalog the SDK's discovery prints for this tap (static: no setting changes it)."""
    properties = [
        {
            "breadcrumb": ["properties", name],
            "metadata": {"inclusion": "automatic" if name in AUTOMATIC else "available"},
        }
        for name in DATA_SCHEMA["properties"]
    ]
    stream = {
        "inclusion": "available",
        "selected": True,
        "selected-by-default": True,
        "table-key-properties": [KEY],
        "replication-key": SEQUENCE,
        "valid-replication-keys": [SEQUENCE],
    }
    return {
        "streams": [
            {
                "tap_stream_id": STREAM,
                "replication_key": SEQUENCE,
                "replication_method": "INCREMENTAL",
                "key_properties": [KEY],
                "schema": DATA_SCHEMA,
                "stream": STREAM,
                "metadata": [*properties, {"breadcrumb": [], "metadata": stream}],
            }
        ]
    }


def main() -> None:
    """`tap-vero-webhook`: discovery as asked by Meltano answered here, the rest by the SDK."""
    if is_plain_discovery(sys.argv[1:]):
        print(json.dumps(catalog(), indent=2))
        return
    from tap_vero_webhook.tap import TapVeroWebhook

    TapVeroWebhook.cli()


def is_plain_discovery(args: list[str]) -> bool:
    """`--discover` with readable JSON `--config` files (or ENV) and at most a readable
    `--state` file (Meltano passes one; discovery ignores it): what the SDK would answer
    with `catalog()`, validating no setting. Anything else, a file it could not read
    included, is the SDK's to answer."""
    if args.count("--discover") != 1:
        return False
    rest = [arg for arg in args if arg != "--discover"]
    options, values = rest[::2], rest[1::2]
    if len(rest) % 2 or set(options) - {"--config", "--state"} or options.count("--state") > 1:
        return False
    for option, value in zip(options, values, strict=True):
        if option == "--config" and value == "ENV":
            continue
        try:
            text = Path(value).read_text()
            if option == "--config" and not isinstance(json.loads(text), dict):
                return False
        except (OSError, ValueError):
            return False
    return True
