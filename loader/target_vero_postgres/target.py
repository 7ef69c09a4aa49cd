"""`target-vero-postgres`: MeltanoLabs target-postgres 0.8.1 with hot-path overrides.

The same settings, tables, columns and values as target-postgres; what differs is
the message reader (msgspec on stdin's bytes instead of the stdlib's json on text,
numbers still exact), the RECORD path for the common case (one pass, see
`sinks.CopySink.take_record_message`) and the sink's batch path (`sinks.CopySink`).
bench/bench_load.py measures what they buy; docs/load-path.md says what was tried.
"""

from __future__ import annotations

import sys
import typing as t
from collections import Counter, defaultdict

from singer_sdk import typing as th
from singer_sdk.contrib.msgspec import MsgSpecReader
from singer_sdk.mapper import SameRecordTransform
from singer_sdk.singerlib import SingerMessageType
from target_postgres.target import TargetPostgres

from tap_vero_webhook import record_pipes
from target_vero_postgres.sinks import CopySink

RECORD_PIPES = th.Property(
    "record_pipes",
    th.BooleanType,
    default=True,
    description=(
        "Ask tap-vero-webhook, through the state this target emits, to send its records "
        "through a named pipe instead of stdout from its next run on (the tap and this "
        "target on one machine; about 2x faster under Meltano, docs/load-path.md)."
    ),
)


RECORD_LINE = b'{"type":"RECORD",'
"""How a RECORD line that `take_record_line` may take begins (as tap-vero-webhook writes it)."""


class BinaryMsgSpecReader(MsgSpecReader):
    """The SDK's msgspec reader on stdin's bytes: msgspec decodes UTF-8 itself, so no
    line is decoded to text first (nor encoded back by msgspec). A RECORD line is first
    offered to `take_record_line` (set by the target), which takes it straight into a
    row or declines it; every other line is read as the SDK's reader reads it."""

    take_record_line: t.Callable[[bytes], bool] | None = None

    @property
    def default_input(self) -> t.IO[bytes]:
        return sys.stdin.buffer

    def process_lines(self, file_input, callbacks) -> Counter[str]:
        """The SDK's `GenericSingerReader.process_lines`, RECORD lines offered first."""
        take = self.take_record_line
        stats: dict[str, int] = defaultdict(int)
        for line in file_input or self.default_input:
            self._current_message = line
            if take is not None and line.startswith(RECORD_LINE) and take(line):
                stats[SingerMessageType.RECORD] += 1
                continue
            line_dict = self.deserialize_json(line)
            self.assert_line_requires(line_dict, requires={"type"})
            record_type = line_dict["type"]
            if callback := callbacks.get(record_type):
                callback(line_dict)
            else:
                self._process_unknown_message(line_dict)
            stats[record_type] += 1
        return Counter(**stats)


class TargetVeroPostgres(TargetPostgres):
    """target-postgres, its name and settings kept (TARGET_POSTGRES_* still apply)."""

    default_sink_class = CopySink
    message_reader_class = BinaryMsgSpecReader
    config_jsonschema = {
        **TargetPostgres.config_jsonschema,
        "properties": {
            **TargetPostgres.config_jsonschema["properties"],
            **RECORD_PIPES.to_dict(),
        },
    }

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.message_reader.take_record_line = self._take_record_line

    def _take_record_line(self, line: bytes, stream: str | None = None) -> bool:
        """`_process_record_message` for a RECORD line of `stream` (default: of the
        last RECORD message's stream) when `CopySink.take_record_line` takes it; False
        (nothing done) otherwise."""
        sink = self._copy_sink(stream or self.__dict__.get("_last_record_stream"))
        if sink is None or not sink.take_record_line(line):
            return False
        self._after_taken_record(sink)
        return True

    def _write_state_message(self, state: dict) -> None:
        """The state, with the ask for record pipes unless `record_pipes` is off."""
        if self.config.get("record_pipes", True):
            state = record_pipes.with_request(state)
        super()._write_state_message(state)

    def _process_batch_message(self, message_dict: dict) -> None:
        """A record pipe's RECORD lines, each as if it had come on stdin; other BATCH
        messages as the SDK reads them."""
        if not record_pipes.is_pipe_batch(message_dict):
            super()._process_batch_message(message_dict)
            return
        stream = message_dict["stream"]
        for url in message_dict["manifest"]:
            with record_pipes.open_for_reading(url, sys.stdin.fileno()) as lines:
                count = self._take_record_lines(stream, lines)
            self.logger.info("record pipe: %d records of '%s'", count, stream)

    def _take_record_lines(self, stream: str, lines: t.Iterable[bytes]) -> int:
        """`_process_record_message` for each line, its common case straight from the
        line (`CopySink.take_record_line`; no SCHEMA message comes in between, so the
        stream's sink and maps stay as they are)."""
        decode = self.message_reader.deserialize_json
        count = 0
        for line in lines:
            if not line.endswith(b"\n"):
                raise record_pipes.PipeError(
                    f"the record pipe for {stream!r} ended in the middle of a record after "
                    f"{count} records: the tap stopped (the batch is not committed)"
                )
            count += 1
            if not self._take_record_line(line, stream):
                message = decode(line)
                if message.get("type") != "RECORD" or message.get("stream") != stream:
                    raise record_pipes.PipeError(
                        f"a record pipe for {stream!r} carried something else: {line[:200]!r}"
                    )
                self._process_record_message(message)
        return count

    def _process_record_message(self, message_dict: dict) -> None:
        """The SDK's record path, in one pass (`CopySink.take_record_message`) when
        the stream has no maps and no flattening; otherwise the SDK's own. Its stream's
        next RECORD lines are offered to `_take_record_line`."""
        self.__dict__["_last_record_stream"] = message_dict.get("stream")
        sink = self._copy_sink(message_dict.get("stream"))
        if (
            sink is None
            or "record" not in message_dict
            or not sink.take_record_message(message_dict)
        ):
            super()._process_record_message(message_dict)
            return
        self._after_taken_record(sink)

    def _after_taken_record(self, sink: CopySink) -> None:
        """What the SDK's record path does after a record: drain a full sink, and any
        sink past its maximum age."""
        if sink.is_full:
            self.logger.info(
                "Target sink for '%s' is full. Current size is '%s'. Draining...",
                sink.stream_name,
                sink.current_size,
            )
            self.drain_one(sink)
        self._handle_max_record_age()

    def _process_schema_message(self, message_dict: dict) -> None:
        """A changed schema makes the SDK set up a new sink, whose table changes would
        wait forever on the open COPY of the old one: drain the old one first (its rows
        are committed, as the SDK would do next; no state is emitted before)."""
        sink = self._sinks_active.get(message_dict.get("stream"))
        if (
            isinstance(sink, CopySink)
            and sink.has_open_copy
            and (
                sink.original_schema != message_dict.get("schema")
                or sink.key_properties != message_dict.get("key_properties")
            )
        ):
            self.drain_one(sink)
        super()._process_schema_message(message_dict)

    def _copy_sink(self, stream_name: str | None) -> CopySink | None:
        maps = self.mapper.stream_maps.get(stream_name)
        sink = self._sinks_active.get(stream_name)
        cached = self.__dict__.get("_copy_sink_for")
        if (
            cached is not None
            and cached[0] == stream_name
            and cached[1] is maps
            and cached[2] is sink
        ):
            return cached[3]
        fast = None
        if maps and len(maps) == 1 and isinstance(sink, CopySink):
            (stream_map,) = maps
            if (
                type(stream_map) is SameRecordTransform
                and not stream_map.flattening_enabled
                and stream_map.stream_alias == stream_name
            ):
                fast = sink
        self.__dict__["_copy_sink_for"] = (stream_name, maps, sink, fast)
        return fast
