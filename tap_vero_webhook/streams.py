"""The `data` stream: spool envelopes → records, resumable by arrival sequence."""

from __future__ import annotations

import time
import typing as t

import msgspec
from singer_sdk import Stream
from singer_sdk.helpers._catalog import pop_deselected_record_properties
from singer_sdk.singerlib.encoding.simple import RecordMessage

from tap_vero_webhook.schema import (
    COLUMN_ACCEPTS,
    DATA_SCHEMA,
    KEY,
    LISTENER,
    PAYLOAD,
    RECEIVED_AT,
    SEQUENCE,
    STREAM,
)
from tap_vero_webhook.spool import SpoolSource, open_source
from tap_vero_webhook.tap_settings import TapSettings
from tap_vero_webhook.timestamps import parse_utc_timestamp

SPOOL_ID = "spool_id"
"""The bookmark's record of which spool it belongs to (for a spool that has an id)."""
NUL_ESCAPE = b"\\u0000"
NUL_REPLACEMENT = "\ufffd"

_decode_envelope = msgspec.json.Decoder().decode


def without_nul(value: t.Any) -> t.Any:
    """`value` with U+0000 replaced by U+FFFD in every string and key (PostgreSQL
    rejects U+0000 in TEXT and JSONB)."""
    if isinstance(value, str):
        return value.replace("\x00", NUL_REPLACEMENT)
    if isinstance(value, dict):
        return {without_nul(key): without_nul(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_nul(item) for item in value]
    return value


def record_from_envelope(line: bytes) -> dict:
    """One spool line → one `data` record: stamps, typed columns, and the whole payload."""
    envelope = _decode_envelope(line)
    event = envelope["event"]
    if NUL_ESCAPE in line:
        event = without_nul(event)
    record = {
        KEY: envelope["id"],
        RECEIVED_AT: envelope["received_at"],
        SEQUENCE: envelope["seq"],
        LISTENER: envelope.get("listener"),
    }
    for name, value in event.items():
        accepts = COLUMN_ACCEPTS.get(name)
        if accepts is not None and accepts(value):
            record[name] = value
    record[PAYLOAD] = event
    return record


class DataStream(Stream):
    """Every accepted Vero event, once, in arrival order."""

    name = STREAM
    primary_keys: t.ClassVar[list[str]] = [KEY]
    replication_key = SEQUENCE
    is_sorted = True
    schema = DATA_SCHEMA

    @property
    def settings(self) -> TapSettings:
        return TapSettings.from_tap_config(self.config)

    def get_records(self, context: dict | None) -> t.Iterator[dict]:
        loaded_through = self.get_starting_replication_key_value(context)
        spool_id = self.get_context_state(context).get(SPOOL_ID)
        self.__dict__.pop("_bookmark", None)
        source = open_source(self.settings.spool_location())
        try:
            with source.exclusive_run():
                self.__dict__["_spool_id"] = source.spool_id
                started, count, first, last = time.monotonic(), 0, None, None
                for line in source.lines_after(loaded_through, spool_id):
                    record = record_from_envelope(line)
                    last = record[SEQUENCE]
                    first = last if first is None else first
                    count += 1
                    yield record
                if loaded_through is not None:  # known by now to be this spool's bookmark
                    self._remove_loaded(source, int(loaded_through))
                self.logger.info(
                    "tap run: emitted %d events, seq %s..%s (after bookmark %s) in %.2f s",
                    count,
                    first,
                    last,
                    loaded_through,
                    time.monotonic() - started,
                )
        finally:
            source.close()

    def _remove_loaded(self, source: SpoolSource, loaded_through: int) -> None:
        for name in source.remove_loaded(loaded_through, self.settings.retention_seconds):
            self.logger.info("retention: removed %s (loaded, older than retention)", name)

    # The SDK's per-record path is generic; these three overrides (of singer-sdk 0.54
    # internals, pinned in pyproject.toml) keep what this stream needs and drop the
    # rest. bench/bench_tap.py shows what they buy.

    def _process_record(self, record: dict, child_context=None, partition_context=None) -> None:
        """No partitions and no child streams: nothing to do per record."""

    def _increment_stream_state(self, latest_record: dict, *, context=None) -> None:
        """Records arrive in strictly increasing seq, so the last one is the bookmark."""
        bookmark = self.__dict__.get("_bookmark")
        if bookmark is None:
            bookmark = self.get_context_state(context)
            bookmark["replication_key"] = SEQUENCE
            if self.__dict__.get("_spool_id"):
                bookmark[SPOOL_ID] = self.__dict__["_spool_id"]
            self.__dict__["_bookmark"] = bookmark
        bookmark["replication_key_value"] = latest_record[SEQUENCE]

    def _generate_record_messages(self, record: dict) -> t.Iterator[RecordMessage]:
        """Records are built typed, so the SDK's generic conformance pass is skipped;
        `time_extracted` is the arrival time, not the time of this run."""
        time_extracted = parse_utc_timestamp(record[RECEIVED_AT])
        if self._has_deselected_properties:
            pop_deselected_record_properties(record, self.schema, self.mask)
        for stream_map in self.stream_maps:
            mapped = stream_map.transform(record)
            if mapped is not None:
                yield RecordMessage(
                    stream=stream_map.stream_alias,
                    record=mapped,
                    version=self._stream_version,
                    time_extracted=time_extracted,
                )

    @property
    def _has_deselected_properties(self) -> bool:
        cached = self.__dict__.get("_deselected_cache")
        if cached is None:
            cached = any(
                not self.mask.get(("properties", name), True) for name in self.schema["properties"]
            )
            self.__dict__["_deselected_cache"] = cached
        return cached
