"""End to end: events posted over HTTP → listener → spool → `meltano run` → a table, in SQL.

Everything is real: the `vero-webhook serve` process, the Meltano project in this
repository with its installed plugins (`.meltano/`), target-postgres against the
local PostgreSQL, target-duckdb writing a DuckDB file. A `meltano run` costs about
ten seconds, so one listener, one Meltano system database and one fresh
PostgreSQL schema serve the whole module, and the steps build on each other
through module-scoped fixtures: each test names the step it needs, so any single
test still runs alone. Meltano Hub is pointed at a closed port: any Hub lookup
would fail the run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from tests.helpers import (
    DUCKDB_PYTHON,
    MELTANO,
    POSTGRES_STATE_ID,
    ROOT,
    TAP,
    TARGET_POSTGRES,
    Site,
    Warehouse,
    meltano,
    running_jobs,
    running_listener,
    target_postgres_env,
)
from tests.helpers import meltano_env as meltano_env_for
from tests.vero_events import EMAIL_TYPES, EVENT_TYPES, make_event, vero_examples

pytestmark = pytest.mark.slow

LATEST_QUERY_MARK = "<!-- tested: latest user_updated per user -->"

STRING_COLUMNS = (
    "type",
    "message_id",
    "sender_ip",
    "user_agent",
    "bounce_type",
    "bounce_code",
    "bounce_message",
)
OBJECT_COLUMNS = ("user", "campaign", "event", "changes")
TIME_COLUMNS = tuple(f"{event_type}_at" for event_type in EMAIL_TYPES)
TYPED_COLUMNS = STRING_COLUMNS + OBJECT_COLUMNS + TIME_COLUMNS


# --- what a user expects to find in the table -------------------------------------------------


def nul_replaced(value):
    """The documented U+0000 handling: PostgreSQL rejects it in JSONB and TEXT, so the
    tap turns it into U+FFFD, in keys and values alike."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {nul_replaced(key): nul_replaced(item) for key, item in value.items()}
    if isinstance(value, list):
        return [nul_replaced(item) for item in value]
    return value


def expected_column(event: dict, column: str):
    """A documented field lands in its column when its value has the column's type;
    otherwise the column is NULL (the value is still in `payload`)."""
    value = event.get(column)
    if column in STRING_COLUMNS:
        return value if isinstance(value, str) else None
    if column in OBJECT_COLUMNS:
        return value if isinstance(value, dict) else None
    fits_bigint = type(value) is int and -(2**63) <= value < 2**63
    return value if fits_bigint else None


def bodies_to_post() -> list[dict | list[dict]]:
    """Realistic bodies: every type twice, Vero's own examples, the awkward cases, a
    run of user_updated events for the latest-per-user query, and one array body."""
    bodies: list[dict | list[dict]] = [
        make_event(event_type, n) for n, event_type in enumerate(EVENT_TYPES * 2)
    ]
    bodies += vero_examples()

    nul = make_event("opened", 100)
    nul["user_agent"] = "Mozilla/5.0\u0000(injected)"
    nul["campaign"]["name"] = "Zero\u0000byte"
    nul["extra\u0000key"] = ["a\u0000b", {"k\u0000": "v"}]
    bodies.append(nul)

    big = make_event("clicked", 101)
    big["clicked_at"] = 2**64 + 5  # too big for the BIGINT column: NULL there, exact in payload
    big["vero_account_id"] = 123456789012345678901234567890
    bodies.append(big)

    unicode = make_event("user_created", 102)
    unicode["user"]["firstname"] = "Zoë 李 🎉 Ünïcødé"
    unicode["user"]["note"] = "right-to-left: שלום, emoji: 👩‍💻"
    bodies.append(unicode)

    unknown = make_event("delivered", 103)
    unknown["vero_new_field"] = {"nested": [1, 2.5, {"deep": None}], "flag": True}
    unknown["message_id"] = 12345  # wrong type for its column: NULL there, kept in payload
    bodies.append(unknown)

    for n, (user_id, tag) in enumerate(
        [(501, "a"), ("501", "b"), (502, "c"), (501, "d"), ("503", "e"), (502, "f")]
    ):
        bodies.append(
            {
                "type": "user_updated",
                "user": {"id": user_id, "email": f"u{user_id}@example.com"},
                "changes": {"_tags": {"add": [f"{tag}-{n}"], "remove": []}},
            }
        )

    bodies.append([make_event("sent", 104), make_event("converted", 105)])
    return bodies


# --- the running pieces ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module")
def site(workdir: Path):
    with running_listener(workdir / "data", new_token=True) as listener:
        yield Site(listener)


@pytest.fixture(scope="module")
def meltano_env(workdir: Path, site: Site) -> dict[str, str]:
    return meltano_env_for(workdir, site.listener.data_dir)


@pytest.fixture(scope="module")
def warehouse(pg_dsn: str, meltano_env: dict[str, str]):
    schema = f"e2e_{uuid.uuid4().hex[:12]}"
    env = {**meltano_env, **target_postgres_env(pg_dsn, schema)}
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        yield Warehouse(conn, schema, env)
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.execute(f"DROP SCHEMA IF EXISTS {schema}_pipe CASCADE")


def load_into_postgres(warehouse: Warehouse) -> None:
    meltano(warehouse.env, "run", "tap-vero-webhook", "target-postgres")


# --- the steps ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def posted(site: Site) -> datetime:
    """Every realistic body posted once; returns when posting began (UTC, naive)."""
    began = datetime.now(UTC).replace(tzinfo=None)
    site.post(bodies_to_post())
    return began


@pytest.fixture(scope="module")
def first_load(posted: datetime, warehouse: Warehouse) -> datetime:
    """The job the crontab runs; the later steps run its task by plugin names, which
    only works out because both share one state id."""
    meltano(warehouse.env, "run", "vero-to-postgres")
    return posted


@pytest.fixture(scope="module")
def idle_rerun(first_load, warehouse: Warehouse) -> tuple[tuple, tuple]:
    """A second run with nothing posted since: (count, last batch time) before and after."""
    summary = "SELECT (count(*), max(_sdc_batched_at)) FROM {data}"
    before = warehouse.scalar(summary)
    load_into_postgres(warehouse)
    return before, warehouse.scalar(summary)


@pytest.fixture(scope="module")
def between_runs(idle_rerun, site: Site, warehouse: Warehouse) -> list[str]:
    """Events posted after two runs arrive in the next; returns their ids."""
    already = len(site.accepted)
    site.post([make_event(EVENT_TYPES[n % 12], 300 + n) for n in range(12)])
    load_into_postgres(warehouse)
    return site.accepted_ids()[already:]


@pytest.fixture(scope="module")
def replay(between_runs, warehouse: Warehouse) -> datetime:
    """State cleared, then a run re-sends the whole spool; returns the last batch time before."""
    batched_before = warehouse.scalar("SELECT max(_sdc_batched_at) FROM {data}")
    meltano(warehouse.env, "state", "clear", "--force", POSTGRES_STATE_ID)
    load_into_postgres(warehouse)
    return batched_before


# --- PostgreSQL ----------------------------------------------------------------------------------


@pytest.mark.postgres
def test_one_row_per_accepted_event_in_posting_order(first_load, site: Site, warehouse):
    rows = warehouse.rows("__sdc_primary_key, _sdc_webhook_sequence")
    assert [row["__sdc_primary_key"] for row in rows] == site.accepted_ids()
    sequences = [row["_sdc_webhook_sequence"] for row in rows]
    assert sequences == sorted(set(sequences)), "sequence must rise strictly in posting order"


@pytest.mark.postgres
def test_payload_is_the_event_as_posted(first_load, site: Site, warehouse):
    payloads = {row["__sdc_primary_key"]: row["payload"] for row in warehouse.rows()}
    for event_id, event in site.accepted:
        assert payloads[event_id] == nul_replaced(event), event_id


@pytest.mark.postgres
def test_typed_columns_hold_the_documented_fields(first_load, site: Site, warehouse):
    rows = {row["__sdc_primary_key"]: row for row in warehouse.rows()}
    now = datetime.now(UTC).replace(tzinfo=None)
    for event_id, event in site.accepted:
        row = rows[event_id]
        for column in TYPED_COLUMNS:
            assert row[column] == nul_replaced(expected_column(event, column)), (event_id, column)
        received = row["_sdc_webhook_received_at"]
        assert first_load - timedelta(seconds=5) <= received <= now, received


@pytest.mark.postgres
def test_awkward_values_survive(first_load, warehouse):
    """NUL, integers beyond 64 bits, unicode and unknown fields, checked in SQL itself."""
    data = f"{warehouse.schema}.data"
    big = warehouse.conn.execute(
        f"SELECT clicked_at, payload->>'clicked_at', payload->>'vero_account_id' "
        f"FROM {data} WHERE payload ? 'vero_account_id'"
    ).fetchone()
    assert big == (None, str(2**64 + 5), "123456789012345678901234567890")
    nul = warehouse.conn.execute(
        f"SELECT user_agent, campaign->>'name' FROM {data} WHERE payload ? 'extra\ufffdkey'"
    ).fetchone()
    assert nul == ("Mozilla/5.0\ufffd(injected)", "Zero\ufffdbyte")
    name = warehouse.conn.execute(
        f"""SELECT "user"->>'firstname' FROM {data} WHERE "user"->>'firstname' LIKE 'Zo%'"""
    ).fetchone()
    assert name == ("Zoë 李 🎉 Ünïcødé",)
    unknown = warehouse.conn.execute(
        f"SELECT message_id, payload->'vero_new_field'->'nested'->2 FROM {data} "
        f"WHERE payload ? 'vero_new_field'"
    ).fetchone()
    assert unknown == (None, {"deep": None})


def latest_query_text() -> str:
    """The exact SQL that README.md gives for "latest version per key"."""
    docs = (ROOT / "README.md").read_text()
    match = re.search(re.escape(LATEST_QUERY_MARK) + r"\s*```sql\n(.*?)```", docs, re.DOTALL)
    assert match, f"README.md lost the SQL block after {LATEST_QUERY_MARK}"
    return match.group(1)


def expected_latest_user_updates(site: Site) -> dict[str, dict]:
    """Per user id (a number and its string are the same user), the last changes posted."""
    latest = {}
    for _, event in site.accepted:
        if event["type"] == "user_updated":
            latest[str(event["user"]["id"])] = nul_replaced(event["changes"])
    return latest


@pytest.mark.postgres
def test_latest_version_per_key_query_from_the_docs(first_load, site: Site, warehouse):
    sql = latest_query_text().replace("stitch_vero.data", f"{warehouse.schema}.data")
    with warehouse.conn.cursor(row_factory=psycopg.rows.dict_row) as cursor:
        rows = cursor.execute(sql).fetchall()
    assert {row["user_id"]: row["changes"] for row in rows} == expected_latest_user_updates(site)
    assert len(rows) == len({row["user_id"] for row in rows})


@pytest.mark.postgres
def test_a_second_run_loads_nothing_new(idle_rerun):
    before, after = idle_rerun
    assert after == before, "rows were re-loaded or added by a run with nothing new"


@pytest.mark.postgres
def test_events_posted_between_runs_arrive_in_the_next_run(between_runs, site: Site, warehouse):
    rows = warehouse.rows("__sdc_primary_key")
    assert [row["__sdc_primary_key"] for row in rows] == site.accepted_ids()
    assert [row["__sdc_primary_key"] for row in rows[-len(between_runs) :]] == between_runs


@pytest.mark.postgres
def test_replay_with_state_cleared_adds_no_duplicates(replay, site: Site, warehouse):
    rows = warehouse.rows("__sdc_primary_key, _sdc_batched_at")
    assert [row["__sdc_primary_key"] for row in rows] == site.accepted_ids()
    assert all(row["_sdc_batched_at"] > replay for row in rows), "the replay re-sent everything"


@pytest.mark.postgres
def test_overlapping_runs_are_refused_and_lose_nothing(replay, site: Site, warehouse):
    """While one run is in flight (held stopped here, as a slow load would be), a second
    `meltano run` of the same pipeline is refused; the first then finishes the job."""
    site.post([make_event(EVENT_TYPES[n % 12], 400 + n) for n in range(6)])
    first = subprocess.Popen(
        [MELTANO, "run", "tap-vero-webhook", "target-postgres"],
        cwd=ROOT,
        env=warehouse.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while running_jobs(warehouse.env) == 0:
            assert first.poll() is None, first.stderr.read()[-4000:]
            assert time.monotonic() < deadline, "the first run never started"
            time.sleep(0.1)
        first.send_signal(signal.SIGSTOP)
        second = meltano(warehouse.env, "run", "tap-vero-webhook", "target-postgres", check=False)
        assert second.returncode != 0
        assert "is already running" in second.stderr
    finally:
        first.send_signal(signal.SIGCONT)
        _, errors = first.communicate(timeout=300)
    assert first.returncode == 0, errors[-4000:]
    rows = warehouse.rows("__sdc_primary_key")
    assert [row["__sdc_primary_key"] for row in rows] == site.accepted_ids()


@pytest.mark.postgres
def test_plain_singer_pipe_with_the_ready_config(first_load, site: Site, warehouse, workdir):
    """`tap-vero-webhook --config tap.json | target-postgres --config target_config/postgres.json`
    without Meltano; the target's last line is the state to pass to the next run."""
    ready = json.loads((ROOT / "target_config" / "postgres.json").read_text())
    assert ready["use_copy"] is True
    assert ready["default_target_schema"] == "stitch_vero"
    config = {
        **ready,
        "host": warehouse.env["TARGET_POSTGRES_HOST"],
        "port": int(warehouse.env["TARGET_POSTGRES_PORT"]),
        "user": warehouse.env["TARGET_POSTGRES_USER"],
        "password": warehouse.env["TARGET_POSTGRES_PASSWORD"],
        "database": warehouse.env["TARGET_POSTGRES_DATABASE"],
        "default_target_schema": f"{warehouse.schema}_pipe",
    }
    (workdir / "tap.json").write_text(json.dumps({"data_dir": str(site.listener.data_dir)}))
    (workdir / "postgres.json").write_text(json.dumps(config))
    pipe = subprocess.run(
        [
            "bash",
            "-o",
            "pipefail",
            "-c",
            f"{TAP} --config {workdir / 'tap.json'} "
            f"| {TARGET_POSTGRES} --config {workdir / 'postgres.json'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert pipe.returncode == 0, pipe.stderr[-4000:]
    loaded = warehouse.conn.execute(
        f"SELECT __sdc_primary_key FROM {warehouse.schema}_pipe.data ORDER BY _sdc_webhook_sequence"
    ).fetchall()
    expected = site.accepted_ids()
    assert [key for (key,) in loaded] == expected
    state = json.loads(pipe.stdout.strip().splitlines()[-1])
    bookmark = state["bookmarks"]["data"]["replication_key_value"]
    assert bookmark == warehouse.scalar(
        f"SELECT max(_sdc_webhook_sequence) FROM {warehouse.schema}_pipe.data"
    )


# --- DuckDB, the embedded default -----------------------------------------------------------------

DUCKDB_READ = """
import json, sys
import duckdb
db = duckdb.connect(sys.argv[1], read_only=True)
rows = db.execute(
    "SELECT __sdc_primary_key, payload, \\"user\\"->>'email', campaign->>'name' "
    "FROM stitch_vero.data ORDER BY _sdc_webhook_sequence"
).fetchall()
latest = db.execute(sys.argv[2]).fetchall()
names = [d[0] for d in db.description]
print(json.dumps({"rows": rows, "latest": [dict(zip(names, row)) for row in latest]}, default=str))
"""


def test_embedded_duckdb_loads_every_event_with_queryable_json(
    posted, site: Site, meltano_env, workdir
):
    """target-duckdb with duckdb >= 1.3 drops the first record of each batch; small batches
    and an exact id-for-id comparison catch that. DuckDB needs its folder made first."""
    path = workdir / "duck" / "vero.duckdb"
    path.parent.mkdir()
    env = {**meltano_env, "TARGET_DUCKDB_PATH": str(path), "TARGET_DUCKDB_BATCH_SIZE_ROWS": "7"}
    meltano(env, "run", "tap-vero-webhook", "target-duckdb")
    read = subprocess.run(
        [str(DUCKDB_PYTHON), "-c", DUCKDB_READ, str(path), latest_query_text()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert read.returncode == 0, read.stderr
    result = json.loads(read.stdout)
    rows = result["rows"]
    assert [row[0] for row in rows] == site.accepted_ids()
    events = dict(site.accepted)
    for key, payload, email, campaign_name in rows:
        event = nul_replaced(events[key])
        assert json.loads(payload) == event
        assert email == event["user"]["email"]
        assert campaign_name == (event.get("campaign") or {}).get("name")
    latest = {row["user_id"]: json.loads(row["changes"]) for row in result["latest"]}
    assert latest == expected_latest_user_updates(site)


# --- `make run` ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Console:
    """The output of a running process, line by line, as a newcomer sees it."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._reader.start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 120) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := re.search(pattern, line):
                    return match
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern!r} in:\n" + "\n".join(self.lines))


def test_quickstart_shows_posted_events_in_duckdb_and_ctrl_c_stops_everything(meltano_env, workdir):
    """What `make run` prints works as printed: the curl line posts an event, the next
    load reports it, the query lines find it in the table and in the models built
    after the load; Ctrl-C ends every process it started."""
    port = free_port()
    env = {
        **meltano_env,
        "VERO_WEBHOOK_DATA_DIR": str(workdir / "quickstart-data"),
        "VERO_WEBHOOK_PORT": str(port),
        "TARGET_DUCKDB_PATH": str(workdir / "quickstart-output" / "vero.duckdb"),
        "LOAD_EVERY_SECONDS": "1",
    }
    process = subprocess.Popen(
        [str(ROOT / "scripts" / "quickstart.sh")],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        # a terminal's Ctrl-C reaches a shell whose SIGINT is not ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    console = Console(process)
    try:
        console.wait_for(rf"^\s+http://127\.0\.0\.1:{port}/hooks/\S+$")
        curl = console.wait_for(r"^\s+(curl .*)$").group(1)
        query = console.wait_for(r"^\s+(scripts/query\.sh .*)$").group(1)
        campaigns = console.wait_for(r"^\s+(scripts/query\.sh .*vero__campaigns.*)$").group(1)
        posted = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=30)
        assert json.loads(posted.stdout)["accepted"] == 1, posted
        console.wait_for(r"load done: .*\b1 rows in stitch_vero\.data")
        table = subprocess.run(
            ["bash", "-c", query], cwd=ROOT, env=env, capture_output=True, text=True, timeout=90
        )
        assert "ada@example.com" in table.stdout, table.stderr
        models = subprocess.run(
            ["bash", "-c", campaigns], cwd=ROOT, env=env, capture_output=True, text=True, timeout=90
        )
        assert re.search(r"│\s+7\s+│\s+Welcome\s+│\s+1\s+│", models.stdout), (
            models.stdout + models.stderr
        )
    finally:
        os.killpg(process.pid, signal.SIGINT)
        status = process.wait(timeout=60)
    assert status == 0, "\n".join(console.lines)
    console.wait_for(r"^stopped\.")
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):
        os.killpg(process.pid, 0)  # nothing it started is left running
