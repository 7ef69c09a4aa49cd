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

from tap_vero_webhook.location import DEFAULT_STREAM, Location, check_jetstream
from tap_vero_webhook.settings import SettingError, build, setting, settings_of

DAY_SECONDS = 86400


@dataclass(frozen=True)
class TapSettings:
    data_dir: Path | None = setting(
        None,
        "The listener's --data-dir (the spool is its spool/ folder). "
        "The tap needs read and write access: it keeps a lock file there and "
        "removes loaded segments past the retention. Give this or spool_url.",
        title="Data directory",
    )
    spool_url: str | None = setting(
        None,
        "The listeners' --spool-url: NATS servers of the JetStream cluster whose stream "
        "is the spool, e.g. nats://h1:4222,nats://h2:4222. Give this or data_dir.",
        title="Spool URL (JetStream)",
    )
    spool_stream: str = setting(
        DEFAULT_STREAM,
        "The listeners' --spool-stream: the JetStream stream of the spool (with spool_url).",
        title="Spool stream (JetStream)",
    )
    retention_days: float = setting(
        7,
        "Spool segments (JetStream: messages) wholly at or below the bookmark of the state "
        "this run was given (so committed by the destination), and last written longer ago "
        "than this, are removed at the end of a run. Until then a replay without state "
        "re-emits them. Nothing past the bookmark is ever removed.",
        title="Retention (days)",
    )
    record_pipes: bool = setting(
        True,
        "Send records through a named pipe when the state's target asked for them "
        "(target-vero-postgres does), past Meltano's pipe; false: always on stdout.",
        title="Record pipes",
    )

    def __post_init__(self) -> None:
        if (self.data_dir is None) == (self.spool_url is None):
            raise SettingError(
                "give data_dir (the listener's --data-dir) or spool_url (the listeners' "
                "--spool-url)" + (", not both" if self.data_dir is not None else "")
            )
        if self.spool_url is not None:
            try:
                check_jetstream(self.spool_url, self.spool_stream, "spool_url", "spool_stream")
            except ValueError as exc:
                raise SettingError(str(exc)) from None

    @classmethod
    def from_tap_config(cls, config: Mapping[str, Any]) -> TapSettings:
        """The settings of a tap config; an empty data_dir or spool_url counts as unset."""
        given = {name: value for name, value in config.items() if value != ""}
        return build(cls, given)

    @property
    def retention_seconds(self) -> float:
        return float(self.retention_days) * DAY_SECONDS

    def spool_location(self) -> Location:
        return Location(data_dir=self.data_dir, url=self.spool_url, stream=self.spool_stream)


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
