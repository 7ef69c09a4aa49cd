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

from singer_sdk.contrib.msgspec import MsgSpecReader
from singer_sdk.mapper import SameRecordTransform
from target_postgres.target import TargetPostgres

from target_vero_postgres.sinks import CopySink


class BinaryMsgSpecReader(MsgSpecReader):
    """The SDK's msgspec reader on stdin's bytes: msgspec decodes UTF-8 itself, so no
    line is decoded to text first (nor encoded back by msgspec)."""

    @property
    def default_input(self) -> t.IO[bytes]:
        return sys.stdin.buffer


class TargetVeroPostgres(TargetPostgres):
    """target-postgres, its name and settings kept (TARGET_POSTGRES_* still apply)."""

    default_sink_class = CopySink
    message_reader_class = BinaryMsgSpecReader

    def _process_record_message(self, message_dict: dict) -> None:
        """The SDK's record path, in one pass (`CopySink.take_record_message`) when
        the stream has no maps and no flattening; otherwise the SDK's own."""
        sink = self._copy_sink(message_dict.get("stream"))
        if (
            sink is None
            or "record" not in message_dict
            or not sink.take_record_message(message_dict)
        ):
            super()._process_record_message(message_dict)
            return
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
