"""The sink: target-postgres' PostgresSink with a faster batch path, same rows.

What target-postgres 0.8.1 does per batch, and what this sink does instead:

- It keeps every record as a dict, then serializes each JSONB value with
  simplejson when the batch drains. Here each record becomes its COPY row as it
  arrives, JSONB values serialized with msgspec (the same JSON values, so the
  same jsonb; absent objects still become JSON `null`, as SQLAlchemy's JSONB
  type stores them).
- It COPYs the batch into a temporary table, INSERTs the rows whose key is new,
  then UPDATEs every row of the batch (the just-inserted ones too): three writes
  per row. Here the batch is COPYed straight into the table under a savepoint.
  A key that is already there (a replay) makes that COPY fail; the savepoint is
  rolled back and the batch takes target-postgres' own path (temporary table,
  insert, update), so what the table holds is the same either way.

- The SDK takes each RECORD message through stream maps, a copy of the record,
  the `_sdc_*` metadata as ISO strings, a timestamp pass that looks up every
  column's type for every record and parses those strings back, and a key check.
  `take_record_message` does the same for the common case (no stream maps, no
  flattening, no validation, metadata on, no NUL sanitizing, only known fields)
  in one pass that builds the COPY row, datetimes sent as their ISO text; any
  other record takes the SDK's path.
- Each batch's COPY is opened by its first row and fed as records arrive, so
  PostgreSQL works while the target reads; the drain only ends it and commits.

Everything else (table creation and evolution, the metadata's values,
validation, timestamp parsing and its error treatment, NUL sanitizing) is
target-postgres' and the SDK's own code.
"""

from __future__ import annotations

import datetime
import decimal
import time
import typing as t

import msgspec
import psycopg
from psycopg import sql
from singer_sdk.helpers._compat import datetime_fromisoformat
from singer_sdk.helpers._typing import get_datelike_property_type
from sqlalchemy.dialects.postgresql import JSONB
from target_postgres.sinks import PostgresSink

from tap_vero_webhook.timestamps import utc_timestamp

_json = msgspec.json.Encoder(
    enc_hook=lambda value: value.isoformat(sep="T") if hasattr(value, "isoformat") else str(value),
    decimal_format="number",
)
_SAVEPOINT = "target_vero_postgres_copy"


def _encode_jsonb(value: t.Any) -> str:
    return _json.encode(value).decode()


class CopySink(PostgresSink):
    """One table; records → COPY rows as they arrive; a batch → one COPY."""

    def take_record_message(self, message: dict) -> bool:
        """One RECORD message → one COPY row, as the SDK's path followed by
        `process_record` would build it; False (nothing taken) when the record needs
        that path: an unknown field (the SDK warns), a missing key (it raises), or a
        setting the one-pass path does not cover."""
        record = message["record"]
        plan = self._record_plan()
        if plan is None or not record.keys() <= plan.known:
            return False
        if not all(map(record.__contains__, plan.keys)):
            return False
        row = list(map(record.get, plan.names))
        for position, encode in plan.encoded:
            row[position] = encode(row[position])
        self._take_row(plan, row, message.get("time_extracted"), message.get("version"))
        return True

    def take_record_line(self, line: bytes) -> bool:
        """`take_record_message` for a RECORD line not decoded yet: decoded straight
        into the row (JSONB values kept as the JSON text they are, so never built as
        objects and encoded again). False (nothing taken) where that would be False,
        or for a line that is not such a RECORD message."""
        plan = self._record_plan()
        if plan is None:
            return False
        try:
            message = plan.line_decoder.decode(line)
        except msgspec.ValidationError:  # an unknown field, or not a RECORD line
            return False
        if message.stream != self.stream_name:
            return False
        row = list(msgspec.structs.astuple(message.record))
        for position in plan.key_positions:
            if row[position] is msgspec.UNSET:
                return False
        for position, encode in plan.encoded_as_text:
            row[position] = encode(row[position])
        self._take_row(plan, row, message.time_extracted, message.version)
        return True

    def _take_row(self, plan: _RecordPlan, row: list, time_extracted, version) -> None:
        """A record's row, its values in place, completed as upstream does: its
        `_add_sdc_metadata_to_record`, in METADATA's order (its ISO strings, which the
        timestamp pass parses back, go to COPY as ISO text: what psycopg would send for
        the datetime at a third of its cost, parsed by PostgreSQL into the same
        timestamp), then its timestamp pass."""
        context = self._get_context({})  # the SDK's batch context (it ignores the record)
        batch_text = context.get("batch_text")
        if batch_text is None:  # once per batch: its start time, as ISO text
            batch_start = context.get("batch_start_time")
            batch_text = context["batch_text"] = batch_start and batch_start.isoformat()
        clock = time.time()
        now = utc_timestamp(clock)  # the same instant as upstream's isoformat(), in UTC
        extracted, received, batched, deleted, sequence, table_version, started = plan.metadata
        row[extracted] = self._timestamp_text("_sdc_extracted_at", time_extracted)
        row[received] = now
        row[batched] = batch_text or now
        row[deleted] = self._timestamp_text("_sdc_deleted_at", row[deleted])
        row[sequence] = round(clock * 1000)
        row[table_version] = version
        row[started] = self.sync_started_at
        for position in plan.datetimes:
            row[position] = self._timestamp_text(plan.names[position], row[position])
        self.tally_record_read()
        self._add_row(context, tuple([row[position] for position in plan.key_positions]), row)
        self.record_counter_metric.increment()

    def _timestamp_text(self, name: str, value: t.Any) -> t.Any:
        """A date-time column's value as COPY gets it: a string parsed (as upstream
        does) and sent as ISO text; the last one is remembered, since a record's
        `time_extracted` and its arrival time are often one string."""
        if type(value) is not str:
            return value.isoformat() if isinstance(value, datetime.datetime) else value
        last = self.__dict__.get("_last_timestamp")
        if last is not None and last[0] == value:
            return last[1]
        parsed = self._parse_datelike(name, value)
        text = parsed.isoformat() if isinstance(parsed, datetime.datetime) else parsed
        self.__dict__["_last_timestamp"] = (value, text)
        return text

    def _parse_datelike(self, name: str, value: str) -> t.Any:
        try:
            return datetime_fromisoformat(value)
        except ValueError:  # upstream's own handling, per field, as it does it
            field = {name: value}
            super()._parse_timestamps_in_record(
                field,
                {"properties": {name: self.schema["properties"][name]}},
                self.datetime_error_treatment,
            )
            return field[name]

    def _record_plan(self) -> _RecordPlan | None:
        cached = self.__dict__.get("_plan", False)
        if cached is False:
            cached = self.__dict__["_plan"] = _RecordPlan.for_sink(self)
        return cached

    def process_record(self, record: dict, context: dict) -> None:
        if self.connector.sanitize_null_text_characters:
            record = {name: self.sanitize_null_text_characters(v) for name, v in record.items()}
        get = record.get
        row = [
            get(name) if encode is None else encode(get(name)) for name, encode in self._encoders()
        ]
        self._add_row(context, tuple([record[name] for name in self._keys()]), row)

    def _add_row(self, context: dict, key: tuple, row: list) -> None:
        """Keep the row (for a replay's upsert) and stream it into the batch's COPY,
        opened by the batch's first row, so PostgreSQL works while records arrive."""
        rows = context.get("rows")
        if rows is None:
            rows = context["rows"] = []
            context["copy"] = _OpenCopy(self)
        rows.append((key, row))
        context["copy"].write_row(row)

    def prepared_table(self, connection) -> t.Any:
        """The table, made or changed for this sink's schema by upstream's
        `prepare_table` in the first batch's transaction; later batches of the sink (the
        same schema: a new one makes a new sink) use what it returned."""
        cached = self.__dict__.get("_prepared_table")
        if cached is None:
            cached = self.__dict__["_prepared_table"] = self.connector.prepare_table(
                full_table_name=self.full_table_name,
                schema=self.schema,
                primary_keys=self.key_properties,
                as_temp_table=False,
                connection=connection,
            )
        return cached

    @property
    def has_open_copy(self) -> bool:
        return bool(self._pending_batch and self._pending_batch.get("copy"))

    def _parse_timestamps_in_record(self, record: dict, schema: dict, treatment) -> None:
        """Upstream's own parsing, shown only the date-like columns: it otherwise looks up
        every column's type for every record. A field the schema lacks takes upstream's
        path as it is (which warns about it)."""
        if schema is self.schema and record.keys() <= schema["properties"].keys():
            schema = self._datelike_schema()
        super()._parse_timestamps_in_record(record, schema, treatment)

    def _datelike_schema(self) -> dict:
        cached = self.__dict__.get("_datelike")
        if cached is None:
            properties = self.schema["properties"]
            cached = {
                "properties": {
                    name: prop
                    for name, prop in properties.items()
                    if get_datelike_property_type(prop)
                },
                "additionalProperties": True,  # the other columns: skipped, known to be there
            }
            self.__dict__["_datelike"] = cached
        return cached

    def _keys(self) -> list[str]:
        cached = self.__dict__.get("_key_names")
        if cached is None:
            cached = self.__dict__["_key_names"] = list(self.key_properties)
        return cached

    def process_batch(self, context: dict) -> None:
        rows, stream = context.get("rows"), context.pop("copy", None)
        if stream is None:
            return
        with stream:
            if stream.finish():
                return
            self.logger.info(
                "Keys of this batch are already in %s (a replay): upserting through a "
                "temporary table",
                self.full_table_name,
            )
            latest = {key: row for key, row in rows}  # the last record per key, as upstream
            temp_table = self.connector.copy_table_structure(
                full_table_name=self.temp_table_name,
                from_table=stream.table,
                as_temp_table=True,
                connection=stream.connection,
            )
            self._copy(stream.cursor, temp_table, latest.values())
            self.upsert(
                from_table=temp_table,
                to_table=stream.table,
                schema=self.schema,
                join_keys=self.key_properties,
                connection=stream.connection,
            )
            self.connector.drop_table(table=temp_table, connection=stream.connection)

    def _copy(self, cursor: psycopg.Cursor, table, rows: t.Iterable[list]) -> None:
        with cursor.copy(self._copy_statement(table)) as copy:
            for row in rows:
                copy.write_row(row)

    def _copy_statement(self, table) -> sql.Composed:
        parts = (table.schema, table.name) if table.schema else (table.name,)
        return sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier(*parts),
            sql.SQL(", ").join(sql.Identifier(column) for column, _ in self._encoders()),
        )

    def _encoders(self) -> list[tuple[str, t.Callable[[t.Any], t.Any] | None]]:
        """(column, how a value is sent) for every column of the schema, in order:
        JSONB through msgspec, the rest through the column type's own bind processor."""
        cached = self.__dict__.get("_column_encoders")
        if cached is None:
            dialect = self.connector._engine.dialect
            cached = [
                (
                    column.name,
                    _encode_jsonb
                    if isinstance(column.type, JSONB)
                    else column.type.bind_processor(dialect),
                )
                for column in self.column_representation(self.schema)
            ]
            self.__dict__["_column_encoders"] = cached
        return cached


class _OpenCopy:
    """A batch's transaction and its COPY into the table, open from the batch's first
    row to its drain, under a savepoint: a key already in the table (a replay)
    fails the COPY, and the savepoint is rolled back for the upsert."""

    def __init__(self, sink: CopySink) -> None:
        self.connection = sink.connector._engine.connect()
        self.transaction = self.connection.begin()
        self.table = sink.prepared_table(self.connection)
        self.cursor = self.connection.connection.cursor()
        self.cursor.execute(f"SAVEPOINT {_SAVEPOINT}")
        self._context = self.cursor.copy(sink._copy_statement(self.table))
        self._copy = self._context.__enter__()
        self._error: BaseException | None = None

    def write_row(self, row: list) -> None:
        if self._error is None:
            try:
                self._copy.write_row(row)
            except psycopg.Error as exc:  # the server gave up: the rest is not sent
                self._error = exc

    def finish(self) -> bool:
        """End the COPY: True if it stored the batch, False (savepoint rolled back) if a
        key was already there."""
        failed = self._error
        try:
            if failed is None:
                self._context.__exit__(None, None, None)
            else:
                self._context.__exit__(type(failed), failed, failed.__traceback__)
        except psycopg.Error as exc:
            failed = failed or exc
        if failed is None:
            self.cursor.execute(f"RELEASE SAVEPOINT {_SAVEPOINT}")
            return True
        if isinstance(failed, psycopg.errors.UniqueViolation):
            self.cursor.execute(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
            return False
        raise failed

    def __enter__(self) -> _OpenCopy:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.transaction.commit()
            else:
                self.transaction.rollback()
        finally:
            self.connection.close()


METADATA = (
    "_sdc_extracted_at",
    "_sdc_received_at",
    "_sdc_batched_at",
    "_sdc_deleted_at",
    "_sdc_sequence",
    "_sdc_table_version",
    "_sdc_sync_started_at",
)
"""The SDK's record metadata columns, in the order `take_record_message` fills them."""


class _RecordPlan(t.NamedTuple):
    """How `take_record_message` and `take_record_line` build a row, by position in
    COPY's column order."""

    known: frozenset[str]  # every field a record may carry (else: the SDK's path, which warns)
    keys: list[str]
    key_positions: list[int]
    names: list[str]  # the columns, in COPY order
    metadata: list[int]  # where METADATA's values go
    datetimes: list[int]  # date-time columns but METADATA's: ISO strings, parsed, as ISO text
    encoded: list[tuple[int, t.Callable[[t.Any], t.Any]]]  # JSONB and other bind processors
    encoded_as_text: list[tuple[int, t.Callable[[t.Any], t.Any]]]  # the same for JSON text
    line_decoder: msgspec.json.Decoder  # a RECORD line → its row's values, in COPY order

    @classmethod
    def for_sink(cls, sink: CopySink) -> _RecordPlan | None:
        """None if a setting needs the SDK's path for every record."""
        if (
            sink._validator is not None
            or not sink.include_sdc_metadata_properties
            or sink.connector.sanitize_null_text_characters
        ):
            return None
        properties = sink.schema["properties"]
        kinds = {name: get_datelike_property_type(prop) for name, prop in properties.items()}
        if any(kind not in (None, "date-time") for kind in kinds.values()):
            return None  # dates and times of day: the SDK's own parsers
        encoders = sink._encoders()
        names = [name for name, _ in encoders]
        if not set(METADATA) <= set(names):
            return None
        keys = list(sink.key_properties)
        return cls(
            known=frozenset(properties),
            keys=keys,
            key_positions=[names.index(name) for name in keys],
            names=names,
            metadata=[names.index(name) for name in METADATA],
            datetimes=[
                i
                for i, name in enumerate(names)
                if kinds.get(name) == "date-time" and name not in METADATA
            ],
            encoded=[(i, encode) for i, (_, encode) in enumerate(encoders) if encode is not None],
            encoded_as_text=[
                (i, _json_text if encode is _encode_jsonb else encode)
                for i, (_, encode) in enumerate(encoders)
                if encode is not None
            ],
            line_decoder=_line_decoder(encoders, set(keys)),
        )


def _json_text(value: msgspec.Raw) -> str:
    return str(value, "utf-8")


def _line_decoder(encoders: list, keys: set[str]) -> msgspec.json.Decoder:
    """A decoder of RECORD lines whose record becomes a struct with one field per column,
    in COPY order (an unknown field fails it): JSONB columns as their JSON text (JSON
    null when absent), key columns UNSET when absent, the others as the SDK's reader
    decodes them (floats as Decimal)."""
    fields = []
    for position, (name, encode) in enumerate(encoders):
        if encode is _encode_jsonb:
            fields.append((f"c{position}", msgspec.Raw, msgspec.Raw(b"null")))
        else:
            fields.append((f"c{position}", t.Any, msgspec.UNSET if name in keys else None))
    record = msgspec.defstruct(
        "Record",
        fields,
        forbid_unknown_fields=True,
        rename={f"c{position}": str(name) for position, (name, _) in enumerate(encoders)},
    )
    message = msgspec.defstruct(
        "RecordMessage",
        [
            ("type", t.Literal["RECORD"]),
            ("stream", str),
            ("record", record),
            ("time_extracted", t.Any, None),
            ("version", t.Any, None),
        ],
    )
    return msgspec.json.Decoder(message, float_hook=decimal.Decimal)
