"""`target-vero-postgres`: MeltanoLabs target-postgres 0.8.1 with two hot-path overrides.

The same settings, tables, columns and values as target-postgres; only the
message reader (msgspec instead of the stdlib's json, numbers still exact) and
the sink's batch path (`sinks.CopySink`) differ. bench/bench_load.py measures
what they buy; docs/load-path.md says what was tried.
"""

from __future__ import annotations

from singer_sdk.contrib.msgspec import MsgSpecReader
from target_postgres.target import TargetPostgres

from target_vero_postgres.sinks import CopySink


class TargetVeroPostgres(TargetPostgres):
    """target-postgres, its name and settings kept (TARGET_POSTGRES_* still apply)."""

    default_sink_class = CopySink
    message_reader_class = MsgSpecReader


if __name__ == "__main__":
    TargetVeroPostgres.cli()
