"""The shipped loader, target-vero-postgres, stores what stock target-postgres stores.

Both run as real processes on the same saved tap output (awkward events included)
into two fresh schemas; every column but the four that record the load's own
time must be equal row for row, and the column types too. A second run of the
same output (a replay: every key already there) takes the upsert path and still
leaves one row per event.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest

from tap_vero_webhook.data_dir import DataDir
from tap_vero_webhook.listener.payloads import encode_event
from tap_vero_webhook.spool.local import SpoolWriter
from tests.helpers import (
    MELTANO,
    PG_DSN,
    ROOT,
    TAP,
    TARGET_POSTGRES,
    closed_hub_env,
    ensure_plugins_installed,
    target_postgres_config,
)
from tests.vero_events import event_stream, make_event

pytestmark = pytest.mark.postgres

TARGET_VERO_POSTGRES = TARGET_POSTGRES.parent / "target-vero-postgres"
LOAD_TIME_COLUMNS = ("_sdc_received_at", "_sdc_batched_at", "_sdc_sequence", "_sdc_sync_started_at")


def awkward_events() -> list[dict]:
    nul = make_event("opened", 1)
    nul["user_agent"] = "Mozilla/5.0\u0000(injected)"
    nul["extra\u0000key"] = ["a\u0000b", {"k\u0000": "v"}]
    big = make_event("clicked", 2)
    big["clicked_at"] = 2**64 + 5
    big["vero_account_id"] = 123456789012345678901234567890
    floats = make_event("delivered", 3)
    floats["score"] = [0.1000000000000000055, 2.5, -1e-7, 1e300]
    floats["message_id"] = 12345
    unicode = make_event("user_created", 4)
    unicode["user"]["firstname"] = "Zoë 李 🎉 \\ \t tab \n newline"
    return [nul, big, floats, unicode]


@pytest.fixture(scope="module")
def tap_output(tmp_path_factory) -> Path:
    """The tap's output over 2,500 events (so several batches of 1,000)."""
    env = {**closed_hub_env(), "UV_COMPILE_BYTECODE": "1"}
    ensure_plugins_installed(env)
    if not TARGET_VERO_POSTGRES.exists():  # installed before meltano.yml named it: `make plugins`
        subprocess.run(
            [MELTANO, "install", "loader", "target-postgres"],
            cwd=ROOT,
            env=env,
            check=True,
            timeout=900,
        )
    work = tmp_path_factory.mktemp("load-path")
    writer = SpoolWriter(DataDir(work / "data").spool)
    events = awkward_events() + event_stream(2_496)
    for first in range(0, len(events), 100):
        writer.append([encode_event(event) for event in events[first : first + 100]])
    writer.close()
    (work / "tap.json").write_text(json.dumps({"data_dir": str(work / "data")}))
    output = work / "tap-output.jsonl"
    with open(output, "wb") as out:
        subprocess.run(
            [TAP, "--config", str(work / "tap.json")], stdout=out, check=True, timeout=120
        )
    return output


@pytest.fixture
def schemas(pg_dsn):
    made: list[str] = []

    def new() -> str:
        made.append(f"loadpath_{uuid.uuid4().hex[:10]}")
        return made[-1]

    yield new
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for schema in made:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def load(target: Path, tap_output: Path, schema: str, work: Path) -> None:
    config = work / f"{schema}.json"
    config.write_text(json.dumps(target_postgres_config(PG_DSN, schema, batch_size_rows=1000)))
    with open(tap_output, "rb") as stdin:
        done = subprocess.run(
            [str(target), "--config", str(config)],
            stdin=stdin,
            capture_output=True,
            timeout=300,
        )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]


def table(dsn: str, schema: str) -> tuple[list, list]:
    """(column names and types, rows in arrival order without the load-time columns)."""
    with psycopg.connect(dsn) as conn:
        columns = conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = 'data' ORDER BY ordinal_position",
            (schema,),
        ).fetchall()
        kept = ", ".join(f'"{name}"' for name, _ in columns if name not in LOAD_TIME_COLUMNS)
        # jsonb as text: JSON null and SQL NULL must not look alike
        kept_text = ", ".join(
            f'"{name}"::text IS NULL, "{name}"::text'
            for name, _ in columns
            if name not in LOAD_TIME_COLUMNS
        )
        rows = conn.execute(
            f"SELECT {kept}, {kept_text} FROM {schema}.data AS d ORDER BY d._sdc_webhook_sequence"
        ).fetchall()
        keys = conn.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary",
            (f"{schema}.data",),
        ).fetchall()
    return [*columns, ("primary key", keys)], rows


def test_the_shipped_loader_stores_what_target_postgres_stores(
    tap_output, schemas, pg_dsn, tmp_path
):
    stock, shipped = schemas(), schemas()
    load(TARGET_POSTGRES, tap_output, stock, tmp_path)
    load(TARGET_VERO_POSTGRES, tap_output, shipped, tmp_path)
    stock_columns, stock_rows = table(pg_dsn, stock)
    shipped_columns, shipped_rows = table(pg_dsn, shipped)
    assert shipped_columns == stock_columns
    assert len(shipped_rows) == len(stock_rows) == 2_500
    for mine, theirs in zip(shipped_rows, stock_rows, strict=True):
        assert mine == theirs


def test_a_replay_upserts_one_row_per_event(tap_output, schemas, pg_dsn, tmp_path):
    schema = schemas()
    load(TARGET_VERO_POSTGRES, tap_output, schema, tmp_path)
    with psycopg.connect(pg_dsn) as conn:
        first = conn.execute(f"SELECT max(_sdc_batched_at) FROM {schema}.data").fetchone()[0]
    _, before = table(pg_dsn, schema)
    load(TARGET_VERO_POSTGRES, tap_output, schema, tmp_path)
    _, after = table(pg_dsn, schema)
    assert after == before
    with psycopg.connect(pg_dsn) as conn:
        count, distinct, oldest = conn.execute(
            f"SELECT count(*), count(DISTINCT __sdc_primary_key), min(_sdc_batched_at) "
            f"FROM {schema}.data"
        ).fetchone()
    assert count == distinct == 2_500
    assert oldest > first, "the replay re-wrote every row"


def test_a_schema_changed_mid_batch_loads_both_parts(tap_output, schemas, pg_dsn, tmp_path):
    """A batch's COPY stays open until it drains; a new column in between needs an ALTER
    TABLE, which must not wait on that open COPY (it would, forever)."""
    lines = tap_output.read_bytes().splitlines()
    schema_message = json.loads(lines[0])
    assert schema_message["type"] == "SCHEMA"
    records = [line for line in lines if line.startswith(b'{"type":"RECORD"')][:10]
    wider = json.loads(lines[0])
    wider["schema"]["properties"]["extra"] = {"type": ["string", "null"]}
    later = []
    for line in records[5:]:
        message = json.loads(line)
        message["record"]["extra"] = "added"
        later.append(json.dumps(message).encode())
    stream = tmp_path / "changed.jsonl"
    stream.write_bytes(b"\n".join([lines[0], *records[:5], json.dumps(wider).encode(), *later]))
    target_schema = schemas()
    load(TARGET_VERO_POSTGRES, stream, target_schema, tmp_path)
    with psycopg.connect(pg_dsn) as conn:
        extra = conn.execute(
            f"SELECT extra FROM {target_schema}.data ORDER BY _sdc_webhook_sequence"
        ).fetchall()
    assert extra == [(None,)] * 5 + [("added",)] * 5
