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

Everything else (table creation and evolution, record metadata, validation,
timestamp parsing, NUL sanitizing) is target-postgres' and the SDK's own code.
"""

from __future__ import annotations

import typing as t

import msgspec
import psycopg
from psycopg import sql
from singer_sdk.helpers._typing import get_datelike_property_type
from sqlalchemy.dialects.postgresql import JSONB
from target_postgres.sinks import PostgresSink

_json = msgspec.json.Encoder(
    enc_hook=lambda value: value.isoformat(sep="T") if hasattr(value, "isoformat") else str(value),
    decimal_format="number",
)
_SAVEPOINT = "target_vero_postgres_copy"


def _encode_jsonb(value: t.Any) -> str:
    return _json.encode(value).decode()


class CopySink(PostgresSink):
    """One table; records → COPY rows as they arrive; a batch → one COPY."""

    def process_record(self, record: dict, context: dict) -> None:
        if self.connector.sanitize_null_text_characters:
            record = {name: self.sanitize_null_text_characters(v) for name, v in record.items()}
        get = record.get
        row = [
            get(name) if encode is None else encode(get(name)) for name, encode in self._encoders()
        ]
        key = tuple([record[name] for name in self._keys()])
        context.setdefault("rows", []).append((key, row))

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
        rows = context.get("rows")
        if not rows:
            return
        with self.connector._connect() as connection, connection.begin():
            table = self.connector.prepare_table(
                full_table_name=self.full_table_name,
                schema=self.schema,
                primary_keys=self.key_properties,
                as_temp_table=False,
                connection=connection,
            )
            cursor = connection.connection.cursor()
            if self._copy_into_table(cursor, table, rows):
                return
            self.logger.info(
                "Keys of this batch are already in %s (a replay): upserting through a "
                "temporary table",
                self.full_table_name,
            )
            latest = {key: row for key, row in rows}  # the last record per key, as upstream
            temp_table = self.connector.copy_table_structure(
                full_table_name=self.temp_table_name,
                from_table=table,
                as_temp_table=True,
                connection=connection,
            )
            self._copy(cursor, temp_table, latest.values())
            self.upsert(
                from_table=temp_table,
                to_table=table,
                schema=self.schema,
                join_keys=self.key_properties,
                connection=connection,
            )
            self.connector.drop_table(table=temp_table, connection=connection)

    def _copy_into_table(self, cursor: psycopg.Cursor, table, rows: list) -> bool:
        """COPY the batch into the table itself; False (and nothing written) if a key
        is already there or repeats within the batch."""
        if self.append_only:
            self._copy(cursor, table, (row for _, row in rows))
            return True
        cursor.execute(f"SAVEPOINT {_SAVEPOINT}")
        try:
            self._copy(cursor, table, (row for _, row in rows))
        except psycopg.errors.UniqueViolation:
            cursor.execute(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
            return False
        cursor.execute(f"RELEASE SAVEPOINT {_SAVEPOINT}")
        return True

    def _copy(self, cursor: psycopg.Cursor, table, rows: t.Iterable[list]) -> None:
        parts = (table.schema, table.name) if table.schema else (table.name,)
        name = sql.Identifier(*parts)
        statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
            name, sql.SQL(", ").join(sql.Identifier(column) for column, _ in self._encoders())
        )
        with cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)

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
