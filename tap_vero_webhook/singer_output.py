"""Singer messages to stdout, encoded with msgspec and flushed only when it matters.

RECORD lines are buffered; SCHEMA and STATE lines flush the buffer, so a target
always holds every record a STATE message vouches for.
"""

from __future__ import annotations

import datetime
import decimal
import sys
import typing as t

import msgspec
from singer_sdk.singerlib.encoding.base import GenericSingerWriter
from singer_sdk.singerlib.encoding.simple import Message, RecordMessage


def _encode_other(value: t.Any) -> t.Any:
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    return str(value)


class BufferedMsgspecWriter(GenericSingerWriter[bytes, Message]):
    """The tap's message writer: msgspec encoding, stdout flushed on non-RECORD messages."""

    def __init__(self) -> None:
        self._encoder = msgspec.json.Encoder(enc_hook=_encode_other, decimal_format="number")

    def serialize_message(self, message: Message) -> bytes:
        if type(message) is RecordMessage:
            line = {"type": "RECORD", "stream": message.stream, "record": message.record}
            if message.version is not None:
                line["version"] = message.version
            if message.time_extracted is not None:
                line["time_extracted"] = message.time_extracted
            return self._encoder.encode(line) + b"\n"
        return self._encoder.encode(message.to_dict()) + b"\n"

    def write_message(self, message: Message) -> None:
        out = sys.stdout.buffer
        out.write(self.serialize_message(message))
        if type(message) is not RecordMessage:
            out.flush()
