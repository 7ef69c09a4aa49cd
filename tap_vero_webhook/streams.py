"""The `data` stream: spool envelopes → records, resumable by arrival sequence."""

from __future__ import annotations

import time
import typing as t
from collections.abc import Iterator
from contextlib import contextmanager

import msgspec
from singer_sdk import Stream
from singer_sdk.helpers._catalog import pop_deselected_record_properties
from singer_sdk.singerlib.encoding.simple import RecordMessage

from tap_vero_webhook.data_dir import DataDir
from tap_vero_webhook.locks import LockFile
from tap_vero_webhook.schema import (
    COLUMN_ACCEPTS,
    DATA_SCHEMA,
    KEY,
    PAYLOAD,
    RECEIVED_AT,
    SEQUENCE,
)
from tap_vero_webhook.spool.local import SpoolReader, remove_loaded_segments
from tap_vero_webhook.tap_settings import TapSettings
from tap_vero_webhook.timestamps import parse_utc_timestamp

NUL_ESCAPE = b"\\u0000"
NUL_REPLACEMENT = "\ufffd"

_decode_envelope = msgspec.json.Decoder().decode


class TapAlreadyRunning(RuntimeError):
    """Another run of the tap is reading this spool."""


class SpoolNotFound(RuntimeError):
    """`data_dir` holds no spool: a wrong path would otherwise load nothing, silently."""


class BookmarkAheadOfSpool(RuntimeError):
    """The state vouches for events this spool never had: it was replaced or reset."""


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
    }
    for name, value in event.items():
        accepts = COLUMN_ACCEPTS.get(name)
        if accepts is not None and accepts(value):
            record[name] = value
    record[PAYLOAD] = event
    return record


class DataStream(Stream):
    """Every accepted Vero event, once, in arrival order."""

    name = "data"
    primary_keys: t.ClassVar[list[str]] = [KEY]
    replication_key = SEQUENCE
    is_sorted = True
    schema = DATA_SCHEMA

    @property
    def settings(self) -> TapSettings:
        return TapSettings.from_tap_config(self.config)

    @property
    def data_dir(self) -> DataDir:
        return DataDir(self.settings.data_dir)

    def get_records(self, context: dict | None) -> t.Iterator[dict]:
        loaded_through = self.get_starting_replication_key_value(context)
        self.__dict__.pop("_bookmark", None)
        spool_dir = self.data_dir.spool
        if not spool_dir.is_dir():
            raise SpoolNotFound(
                f"no spool at {spool_dir}: data_dir must be the listener's --data-dir"
            )
        with self._exclusive_run():
            reader = SpoolReader(spool_dir)
            started, count, first, last = time.monotonic(), 0, None, None
            for line in reader.lines_after(loaded_through):
                record = record_from_envelope(line)
                last = record[SEQUENCE]
                first = last if first is None else first
                count += 1
                yield record
            if loaded_through is not None and int(loaded_through) > reader.high_water:
                raise BookmarkAheadOfSpool(
                    f"the state's bookmark ({loaded_through}) is past the newest event this "
                    f"spool ever accepted (seq {reader.high_water}): the spool in {spool_dir} "
                    "was replaced or reset. Nothing was emitted. If that is intended, clear "
                    "the state (meltano state clear …) to load this spool from its start."
                )
            if loaded_through is not None:  # only once the bookmark is known to be this spool's
                self._remove_loaded_segments(int(loaded_through))
            self.logger.info(
                "tap run: emitted %d events, seq %s..%s (after bookmark %s) in %.2f s",
                count,
                first,
                last,
                loaded_through,
                time.monotonic() - started,
            )

    @contextmanager
    def _exclusive_run(self) -> Iterator[None]:
        """flock on DATA_DIR/tap.lock: overlapping runs (cron) fail fast instead of racing."""
        with LockFile(self.data_dir.tap_lock) as lock:
            if not lock.try_exclusive():
                raise TapAlreadyRunning(
                    f"another tap-vero-webhook run holds {lock.path}; overlapping runs "
                    "are refused, the next scheduled run picks up from here"
                )
            yield

    def _remove_loaded_segments(self, loaded_through: int) -> None:
        retention_seconds = self.settings.retention_seconds
        removed = remove_loaded_segments(self.data_dir.spool, loaded_through, retention_seconds)
        for path in removed:
            self.logger.info("retention: removed %s (loaded, older than retention)", path.name)

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
