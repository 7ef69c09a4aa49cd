"""The tap's settings: its Singer config, mapped once to a typed object.

`TapSettings` declares each setting with its default and description; the tap's
`config_jsonschema` (what `--about` prints and Meltano reads) is made from it,
and the stream reads its config through `TapSettings.from_tap_config`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from singer_sdk import typing as th

from tap_vero_webhook.settings import build, setting, settings_of

DAY_SECONDS = 86400


@dataclass(frozen=True)
class TapSettings:
    data_dir: Path = setting(
        help=(
            "The listener's --data-dir (the spool is its spool/ folder). "
            "The tap needs read and write access: it keeps a lock file there and "
            "removes loaded segments past the retention."
        ),
        title="Data directory",
    )
    retention_days: float = setting(
        7,
        "Spool segments wholly at or below the bookmark of the state this run was "
        "given (so committed by the destination), and last written longer ago than "
        "this, are removed at the end of a run. Until then a replay without state "
        "re-emits them. Nothing past the bookmark is ever removed.",
        title="Retention (days)",
    )

    @classmethod
    def from_tap_config(cls, config: Mapping[str, Any]) -> TapSettings:
        return build(cls, config)

    @property
    def retention_seconds(self) -> float:
        return float(self.retention_days) * DAY_SECONDS


_JSON_TYPES = {Path: th.StringType, str: th.StringType, int: th.IntegerType}
_JSON_TYPES |= {float: th.NumberType, bool: th.BooleanType}


def config_jsonschema() -> dict:
    """The tap's config JSON schema, from `TapSettings`."""
    properties = [
        th.Property(
            declared.name,
            _JSON_TYPES[declared.type],
            required=declared.required,
            default=None if declared.required else declared.default,
            title=declared.title,
            description=declared.help,
        )
        for declared in settings_of(TapSettings)
    ]
    return th.PropertiesList(*properties).to_dict()
