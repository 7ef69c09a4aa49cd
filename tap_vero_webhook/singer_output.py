"""Singer messages to stdout, encoded with msgspec and flushed only when it matters.

RECORD lines are gathered in a buffer of our own (stdout may be unbuffered, e.g.
under PYTHONUNBUFFERED=1); SCHEMA and STATE lines flush it, so a target always
holds every record a STATE message vouches for. When the target asked for record
pipes (`record_pipes`), RECORD lines go through a pipe instead, announced by a BATCH
message and closed by the next SCHEMA or STATE message.
"""

from __future__ import annotations

import datetime
import decimal
import os
import sys
import typing as t

import msgspec
from singer_sdk.singerlib.encoding.base import GenericSingerWriter
from singer_sdk.singerlib.encoding.simple import Message, RecordMessage

from tap_vero_webhook import record_pipes

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
        self._pipes: record_pipes.TapPipes | None = None
        self._pipe: tuple[str, int] | None = None  # (stream, descriptor) RECORD lines go to

    def send_records_through_pipes(self) -> None:
        """From now on, RECORD lines go through record pipes (`record_pipes`)."""
        self._pipes = record_pipes.TapPipes(sys.stdout.fileno())

    def serialize_message(self, message: Message) -> bytes:
        payload = self._line(message) if type(message) is RecordMessage else message.to_dict()
        return self._encoder.encode(payload) + b"\n"

    def write_message(self, message: Message) -> None:
        if type(message) is RecordMessage:
            if self._pipes is not None and (self._pipe is None or self._pipe[0] != message.stream):
                self._open_pipe(message.stream)
            self._encoder.encode_into(self._line(message), self._pending, -1)
            self._pending += b"\n"
            if len(self._pending) < FLUSH_BYTES:
                return
        else:
            self._close_pipe()
            self._pending += self.serialize_message(message)
        self.flush()

    def _open_pipe(self, stream: str) -> None:
        self._close_pipe()
        pipe = self._pipes.make()
        self._pending += self._encoder.encode(record_pipes.batch_message(stream, pipe)) + b"\n"
        self.flush()
        self._pipe = (stream, self._pipes.open_for_writing(pipe))

    def _close_pipe(self) -> None:
        """The open pipe's last records, then its end (the target reads on to stdout)."""
        if self._pipe is not None:
            self.flush()
            _, fd = self._pipe
            self._pipe = None
            os.close(fd)

    def end_pipes(self) -> None:
        """Closes a pipe still open (a run that failed: its unsent records dropped) and
        removes the pipes' directory."""
        if self._pipe is not None:
            os.close(self._pipe[1])
            self._pipe = None
            self._pending = bytearray()  # a failed write may still hold a view of the old
        if self._pipes is not None:
            self._pipes.close()

    def _line(self, message: RecordMessage) -> dict:
        line = {"type": "RECORD", "stream": message.stream, "record": message.record}
        if message.version is not None:
            line["version"] = message.version
        if message.time_extracted is not None:
            line["time_extracted"] = message.time_extracted
        return line

    def flush(self) -> None:
        if self._pipe is not None:
            self._pipes.check_reader()  # e.g. Meltano killed: stop, as a write there would
            _write_all(self._pipe[1], self._pending)
        else:
            out = sys.stdout.buffer
            out.write(self._pending)
            out.flush()
        self._pending.clear()


def _write_all(fd: int, data: bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
