"""Singer messages to stdout, encoded with msgspec and flushed only when it matters.

RECORD lines are gathered in a buffer of our own (stdout may be unbuffered, e.g.
under PYTHONUNBUFFERED=1); SCHEMA and STATE lines flush it, so a target always
holds every record a STATE message vouches for.
"""

from __future__ import annotations

import datetime
import decimal
import sys
import typing as t

import msgspec
from singer_sdk.singerlib.encoding.base import GenericSingerWriter
from singer_sdk.singerlib.encoding.simple import Message, RecordMessage

FLUSH_BYTES = 256 * 1024


def _encode_other(value: t.Any) -> t.Any:
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    return str(value)


class BufferedMsgspecWriter(GenericSingerWriter[bytes, Message]):
    """The tap's message writer: msgspec encoding, stdout written in large chunks."""

    def __init__(self) -> None:
        self._encoder = msgspec.json.Encoder(enc_hook=_encode_other, decimal_format="number")
        self._pending = bytearray()

    def serialize_message(self, message: Message) -> bytes:
        payload = self._line(message) if type(message) is RecordMessage else message.to_dict()
        return self._encoder.encode(payload) + b"\n"

    def write_message(self, message: Message) -> None:
        if type(message) is RecordMessage:
            self._encoder.encode_into(self._line(message), self._pending, -1)
            self._pending += b"\n"
            if len(self._pending) < FLUSH_BYTES:
                return
        else:
            self._pending += self.serialize_message(message)
        self.flush()

    def _line(self, message: RecordMessage) -> dict:
        line = {"type": "RECORD", "stream": message.stream, "record": message.record}
        if message.version is not None:
            line["version"] = message.version
        if message.time_extracted is not None:
            line["time_extracted"] = message.time_extracted
        return line

    def flush(self) -> None:
        out = sys.stdout.buffer
        out.write(self._pending)
        out.flush()
        self._pending.clear()
