"""The shipped loader, target-vero-postgres, stores what stock target-postgres stores.

Both run as real processes on the same saved tap output (awkward events included)
into two fresh schemas; every column but the four that record the load's own
time must be equal row for row, and the column types too. A second run of the
same output (a replay: every key already there) takes the upsert path and still
leaves one row per event.

Record pipes (`tap_vero_webhook.record_pipes`): the real tap piped into the real
target, given the state the target asks for them with, stores the same rows as
the tap's stdout does; only a target that asks gets them; a target or a tap
killed half-way leaves nothing on disk that the next run loads twice or keeps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest

from tap_vero_webhook import record_pipes
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
    tap_config,
    target_postgres_config,
    wait_for,
    write_json,
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


def write_spool(data_dir: Path, events: list[dict]) -> Path:
    writer = SpoolWriter(DataDir(data_dir).spool)
    for first in range(0, len(events), 100):
        writer.append([encode_event(event) for event in events[first : first + 100]])
    writer.close()
    return data_dir


@pytest.fixture(scope="module")
def spool(tmp_path_factory) -> Path:
    """A spool of 2,500 events, awkward ones first (so several batches of 1,000)."""
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
    return write_spool(work / "data", awkward_events() + event_stream(2_496))


@pytest.fixture(scope="module")
def tap_output(spool, tmp_path_factory) -> Path:
    """The tap's output (RECORD lines on stdout: no state) over `spool`."""
    work = tmp_path_factory.mktemp("tap-output")
    output = work / "tap-output.jsonl"
    with open(output, "wb") as out:
        config = tap_config(work, spool)
        subprocess.run([TAP, "--config", str(config)], stdout=out, check=True, timeout=120)
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


def target_config(work: Path, schema: str, **settings) -> Path:
    config = target_postgres_config(PG_DSN, schema, batch_size_rows=1000, **settings)
    return write_json(work / f"{schema}-{uuid.uuid4().hex[:6]}.json", config)


def load(target: Path, tap_output: Path, schema: str, work: Path, **settings) -> list[dict]:
    """`target` on the saved `tap_output`; returns the states it emitted."""
    config = target_config(work, schema, **settings)
    with open(tap_output, "rb") as stdin:
        done = subprocess.run(
            [str(target), "--config", str(config)],
            stdin=stdin,
            capture_output=True,
            timeout=300,
        )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


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


# --- record pipes ------------------------------------------------------------------------


class Piped:
    """The real tap piped into the real target-vero-postgres, both with their own TMPDIR."""

    def __init__(self, data_dir: Path, schema: str, work: Path, state: dict | None) -> None:
        self.tmp = work / "tmp"
        self.tmp.mkdir(exist_ok=True)
        env = {**os.environ, "TMPDIR": str(self.tmp)}
        argv = [TAP, "--config", str(tap_config(work, data_dir))]
        if state is not None:
            argv += ["--state", str(write_json(work / f"state-{uuid.uuid4().hex[:6]}.json", state))]
        self.tap_log, self.target_log = work / "tap.log", work / "target.log"
        self.states_file = work / f"states-{uuid.uuid4().hex[:6]}.jsonl"
        with open(self.tap_log, "wb") as tap_err:
            self.tap = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=tap_err, env=env)
        with open(self.target_log, "wb") as err, open(self.states_file, "wb") as out:
            self.target = subprocess.Popen(
                [str(TARGET_VERO_POSTGRES), "--config", str(target_config(work, schema))],
                stdin=self.tap.stdout, stdout=out, stderr=err, env=env,
            )  # fmt: skip
        self.tap.stdout.close()

    def wait(self) -> tuple[int, int]:
        return self.tap.wait(timeout=300), self.target.wait(timeout=300)

    def kill(self) -> None:
        for process in (self.tap, self.target):
            if process.poll() is None:
                process.kill()
                process.wait()

    @property
    def states(self) -> list[dict]:
        return [json.loads(line) for line in self.states_file.read_text().splitlines()]

    def pipe_directories(self) -> list[Path]:
        return list(self.tmp.glob(f"{record_pipes.DIRECTORY_PREFIX}*"))


def piped(data_dir: Path, schema: str, work: Path, state: dict | None) -> Piped:
    run = Piped(data_dir, schema, work, state)
    try:
        assert run.wait() == (0, 0), run.tap_log.read_text()[-2000:] + run.target_log.read_text()
    finally:
        run.kill()
    return run


def keys_in(dsn: str, schema: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        try:
            return [key for (key,) in conn.execute(f"SELECT __sdc_primary_key FROM {schema}.data")]
        except psycopg.errors.UndefinedTable:
            return []


def test_records_through_pipes_store_what_stdout_stores(
    spool, tap_output, schemas, pg_dsn, tmp_path
):
    on_stdout, through_pipes = schemas(), schemas()
    load(TARGET_VERO_POSTGRES, tap_output, on_stdout, tmp_path)
    run = piped(spool, through_pipes, tmp_path, state=record_pipes.with_request({}))

    assert "records go through record pipes" in run.tap_log.read_text()
    target_log = run.target_log.read_text()
    assert "0 records, 1 batch manifests" in target_log  # nothing but SCHEMA/BATCH/STATE on stdin
    assert "record pipe: 2500 records of 'data'" in target_log
    assert table(pg_dsn, through_pipes) == table(pg_dsn, on_stdout)
    last = run.states[-1]
    assert last["bookmarks"]["data"]["replication_key_value"] == 2_500
    assert record_pipes.requested(last)  # and so the next run's records go through pipes too
    assert run.pipe_directories() == []  # the run's directory and its pipe are gone


def test_only_a_target_that_asks_gets_pipes(spool, tap_output, schemas, tmp_path):
    # stdout unless the state asks: a first run (no state), a state from another target
    assert b'"type":"BATCH"' not in tap_output.read_bytes()
    assert b'"type":"RECORD"' in tap_output.read_bytes()
    # which target asks: target-vero-postgres unless told not to; stock target-postgres never
    assert record_pipes.requested(load(TARGET_VERO_POSTGRES, tap_output, schemas(), tmp_path)[-1])
    no = load(TARGET_VERO_POSTGRES, tap_output, schemas(), tmp_path, record_pipes=False)
    assert not record_pipes.requested(no[-1])
    assert not record_pipes.requested(load(TARGET_POSTGRES, tap_output, schemas(), tmp_path)[-1])
    # and a tap handed a state that does not ask writes RECORD lines on stdout
    assert no[-1]["bookmarks"]["data"]["replication_key_value"] == 2_500


@pytest.fixture(scope="module")
def backlog(tmp_path_factory) -> tuple[Path, int]:
    """A spool of 20,000 events: enough that a run is killed half-way."""
    count = 20_000
    events = event_stream(5_000)
    data_dir = tmp_path_factory.mktemp("backlog") / "data"
    writer = SpoolWriter(DataDir(data_dir).spool)
    for _ in range(count // len(events)):
        for first in range(0, len(events), 500):
            writer.append([encode_event(event) for event in events[first : first + 500]])
    writer.close()
    return data_dir, count


def test_a_target_killed_half_way_through_a_pipe_loses_nothing(backlog, schemas, pg_dsn, tmp_path):
    data_dir, count = backlog
    schema = schemas()
    run = Piped(data_dir, schema, tmp_path, state=record_pipes.with_request({}))
    try:
        assert wait_for(lambda: len(keys_in(pg_dsn, schema)) >= 1000 or run.target.poll(), 300)
        run.target.send_signal(signal.SIGKILL)
        assert run.tap.wait(timeout=120) == 1  # it stopped: nobody reads its pipe any more
    finally:
        run.kill()
    half_way = len(keys_in(pg_dsn, schema))
    assert 0 < half_way < count
    tap_log = run.tap_log.read_text()
    assert "Traceback" not in tap_log, tap_log[-2000:]
    assert run.pipe_directories() == []  # the tap removed its directory on the way out

    again = piped(data_dir, schema, tmp_path, state=run.states[-1] if run.states else None)
    keys = keys_in(pg_dsn, schema)
    assert len(keys) == len(set(keys)) == count
    assert again.states[-1]["bookmarks"]["data"]["replication_key_value"] == count


def test_a_tap_killed_half_way_leaves_no_records_and_the_next_run_tidies_up(
    backlog, schemas, pg_dsn, tmp_path
):
    data_dir, count = backlog
    schema = schemas()
    run = Piped(data_dir, schema, tmp_path, state=record_pipes.with_request({}))
    try:
        # its pipe is open once the name is gone from the run's directory
        def pipe_open() -> bool:
            found = run.pipe_directories()
            return bool(found) and not any(found[0].iterdir())

        assert wait_for(pipe_open, timeout=120)
        run.tap.send_signal(signal.SIGKILL)
        # killed between two records, the target commits what it got; in the middle of
        # one, it says so and commits nothing more (as when stdout ends mid-line)
        if run.target.wait(timeout=300) != 0:
            assert "ended in the middle of a record" in run.target_log.read_text()
    finally:
        run.kill()
    (left,) = run.pipe_directories()  # a killed tap cannot tidy up...
    assert list(left.iterdir()) == []  # ...but no records stay behind with its directory
    assert left.stat().st_mode & 0o777 == 0o700  # which only its owner could ever open
    loaded = len(keys_in(pg_dsn, schema))
    assert loaded < count

    piped(data_dir, schema, tmp_path, state=record_pipes.with_request({}))
    assert run.pipe_directories() == []  # ...the next run removes what the killed one left
    keys = keys_in(pg_dsn, schema)
    assert len(keys) == len(set(keys)) == count


def test_a_target_that_never_opens_the_pipe_stops_the_tap_with_a_message(spool, tmp_path):
    """A consumer that reads the BATCH message and goes away (not a record pipe reader)."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    state = write_json(tmp_path / "state.json", record_pipes.with_request({}))
    argv = [TAP, "--config", str(tap_config(tmp_path, spool)), "--state", str(state)]
    tap = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    schema_line, batch_line = tap.stdout.readline(), tap.stdout.readline()
    tap.stdout.close()  # gone, without opening the pipe
    _, stderr = tap.communicate(timeout=120)
    assert json.loads(schema_line)["type"] == "SCHEMA"
    batch = json.loads(batch_line)
    assert batch["type"] == "BATCH" and batch["encoding"]["format"] == record_pipes.FORMAT
    assert tap.returncode == 1
    assert b"the target stopped reading" in stderr
    assert b"Traceback" not in stderr
    assert list(tmp_path.glob(f"{record_pipes.DIRECTORY_PREFIX}*")) == []


def test_a_tap_told_not_to_writes_records_on_stdout_though_the_target_asks(spool, tmp_path):
    state = write_json(tmp_path / "state.json", record_pipes.with_request({}))
    config = tap_config(tmp_path, spool, record_pipes=False)
    done = subprocess.run(
        [TAP, "--config", str(config), "--state", str(state)],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    assert b"record_pipes is off" in done.stderr
    types = [json.loads(line)["type"] for line in done.stdout.splitlines()]
    assert types.count("RECORD") == 2_500 and "BATCH" not in types
