"""Settings as data: each setting is a dataclass field carrying its default and help.

A settings class (the listener's, the server's, the tap's) declares its fields
with `setting(...)`; everything else reads them from there: the `vero-webhook
serve` options and their environment variables (`cli.py`), the tap's config
schema (`tap_settings.py`), and the tests that keep the docs true. So a default
or a help text is written once, beside the field it belongs to.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REQUIRED = dataclasses.MISSING


class SettingError(ValueError):
    """A setting's value cannot work; the message names the setting."""


def setting(
    default: Any = REQUIRED,
    help: str = "",
    *,
    title: str | None = None,
    minimum: int | None = None,
    maximum: int | None = None,
    choices: tuple[str, ...] | None = None,
) -> Any:
    """A settings field: its default (none: required), a help text, and its bounds."""
    metadata = {
        "help": help,
        "title": title,
        "minimum": minimum,
        "maximum": maximum,
        "choices": choices,
    }
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Setting:
    """What is declared about one setting, read back from its field."""

    name: str
    type: type
    default: Any
    help: str
    title: str | None
    minimum: int | None
    maximum: int | None
    choices: tuple[str, ...] | None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


def settings_of(cls: type) -> list[Setting]:
    """The settings a settings class declares, in declaration order."""
    hints = typing.get_type_hints(cls)
    found = []
    for field in dataclasses.fields(cls):
        kind = hints[field.name]
        if isinstance(kind, types.UnionType):  # `X | None`: the setting's type is X
            kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
        found.append(
            Setting(
                name=field.name,
                type=kind,
                default=field.default,
                help=field.metadata.get("help", ""),
                title=field.metadata.get("title"),
                minimum=field.metadata.get("minimum"),
                maximum=field.metadata.get("maximum"),
                choices=field.metadata.get("choices"),
            )
        )
    return found


def default_of(cls: type, name: str) -> Any:
    """The default a settings class declares for `name`."""
    return next(declared.default for declared in settings_of(cls) if declared.name == name)


def build(cls: type, values: Mapping[str, Any]) -> Any:
    """An instance of settings class `cls` from `values`, taking only its own names."""
    names = {field.name for field in dataclasses.fields(cls)}
    kwargs = {name: value for name, value in values.items() if name in names}
    hints = typing.get_type_hints(cls)
    for name, value in kwargs.items():
        if Path in (hints[name], *typing.get_args(hints[name])) and value is not None:
            kwargs[name] = Path(value)
    return cls(**kwargs)
