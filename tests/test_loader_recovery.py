"""A loader that recovers at once after a crash, and never loads one spool twice at a time.

A real `meltano run tap-vero-webhook target-postgres` is killed with SIGKILL half-way
(what the OOM killer does), which leaves its Meltano job marked RUNNING; then the
cron line shipped in deploy/crontab.example runs, as cron would run it, and must load
everything at once, each event once: on a first run (records through Meltano) and on
a later one (records through record pipes, past Meltano). And while a load is in
flight, neither the shipped line nor a forced `meltano run` may load the same spool.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid

import psycopg
import pytest

from tap_vero_webhook import record_pipes
from tap_vero_webhook.data_dir import DataDir
from tap_vero_webhook.locks import LockFile
from tests.helpers import (
    MELTANO,
    POSTGRES_STATE_ID,
    ROOT,
    Warehouse,
    meltano,
    meltano_env,
    running_jobs,
    running_listener,
    target_postgres_env,
    wait_for,
)
from tests.vero_events import event_stream

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

SHIPPED_PROJECT = "/srv/vero-meltano"


def shipped_cron_command() -> str:
    """The command of deploy/crontab.example's schedule line (after the five time fields
    and the user), pointed at this checkout instead of /srv/vero-meltano."""
    lines = (ROOT / "deploy" / "crontab.example").read_text().splitlines()
    (line,) = [line for line in lines if line.startswith("*/5 ")]
    return line.split(None, 6)[6].replace(SHIPPED_PROJECT, str(ROOT))


def run_cron_line(env: dict[str, str], **popen) -> subprocess.Popen:
    """The shipped cron line as cron runs it: by the crontab's SHELL, /bin/bash."""
    return subprocess.Popen(["/bin/bash", "-c", shipped_cron_command()], env=env, **popen)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    with running_listener(tmp_path_factory.mktemp("recovery") / "data", new_token=True) as site:
        yield site


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory, site, pg_dsn):
    schema = f"recovery_{uuid.uuid4().hex[:10]}"
    env = {
        **meltano_env(tmp_path_factory.mktemp("meltano"), site.data_dir),
        **target_postgres_env(pg_dsn, schema),
        "TARGET_POSTGRES_BATCH_SIZE_ROWS": "1000",  # commit early and often
    }
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        yield Warehouse(conn, schema, env)
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def post_backlog(site, count: int) -> list[str]:
    ids = []
    events = event_stream(500)
    for _ in range(count // 500):
        response = site.post(events)
        assert response.status_code == 200, response.text
        ids += response.json()["ids"]
    return ids


def assert_each_once(warehouse: Warehouse, expected: list[str]) -> None:
    keys = warehouse.keys()
    assert len(keys) == len(set(keys)), "an event was loaded twice"
    assert set(keys) == set(expected)


def kill_half_way_then_run_the_cron_line(site, warehouse, tmp_path) -> str:
    """Post a backlog, SIGKILL Meltano half-way through its load, run the cron line;
    every event must be there once. Returns the killed run's log. (A run killed before
    stays RUNNING in Meltano for 5 minutes: a later kill's run needs --force too.)"""
    already, stale = warehouse.keys(), running_jobs(warehouse.env)
    posted = post_backlog(site, 15_000)
    log = tmp_path / "killed-run.log"
    argv = [MELTANO, "run", *(["--force"] if stale else []), "tap-vero-webhook", "target-postgres"]
    with open(log, "wb") as out:
        killed = subprocess.Popen(
            argv, cwd=ROOT, env=warehouse.env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        assert wait_for(
            lambda: len(warehouse.keys()) >= len(already) + 2000 or killed.poll(), timeout=600
        )
        assert killed.poll() is None, log.read_text()[-3000:]
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    half_way = len(warehouse.keys()) - len(already)
    assert 0 < half_way < len(posted)
    assert running_jobs(warehouse.env) == stale + 1  # what SIGKILL leaves behind

    refused = meltano(warehouse.env, "run", "tap-vero-webhook", "target-postgres", check=False)
    assert refused.returncode != 0
    assert "is already running" in refused.stderr  # Meltano's own check, for 5 minutes

    cron = run_cron_line(warehouse.env, cwd="/")
    assert cron.wait(timeout=900) == 0
    cron_log = (ROOT / ".meltano" / "cron.log").read_text()
    assert "is already running" not in cron_log.split("Force option is enabled")[-1]
    assert_each_once(warehouse, already + posted)
    print(f"\nkilled with {half_way} of {len(posted)} rows loaded; the cron line loaded the rest")
    return log.read_text()


def test_after_a_sigkill_half_way_the_shipped_cron_line_loads_everything_at_once(
    site, warehouse, tmp_path
):
    assert warehouse.keys() == []  # a first run: no state, the records through Meltano
    killed_log = kill_half_way_then_run_the_cron_line(site, warehouse, tmp_path)
    assert "records go through record pipes" not in killed_log


def test_the_same_half_way_through_record_pipes(site, warehouse, tmp_path):
    """A later run, with the state target-vero-postgres wrote: the records go through
    pipes, past Meltano, so a killed Meltano's tap and target are not stopped by its
    pipe breaking mid-record (the tap watches its stdout)."""
    state = meltano(warehouse.env, "state", "get", POSTGRES_STATE_ID).stdout
    assert record_pipes.requested(json.loads(state)["singer_state"])
    killed_log = kill_half_way_then_run_the_cron_line(site, warehouse, tmp_path)
    assert "records go through record pipes" in killed_log


def test_a_load_in_flight_is_never_joined_by_a_second(site, warehouse, tmp_path):
    """With a load in flight (held stopped here, as a very slow load would be), the shipped
    cron line skips its turn at once, and even a forced `meltano run` outside the flock
    loads nothing: the tap's lock on the spool refuses it. The first then loads all."""
    already = warehouse.keys()
    posted = post_backlog(site, 3_000)
    first = run_cron_line(warehouse.env, cwd="/", start_new_session=True)
    tap_lock = DataDir(site.data_dir).tap_lock

    def tap_running() -> bool:
        with LockFile(tap_lock) as probe:
            return not probe.try_exclusive()

    try:
        assert wait_for(lambda: tap_running() or first.poll() is not None, timeout=600)
        assert first.poll() is None
        os.killpg(first.pid, signal.SIGSTOP)  # bash, flock, meltano, the tap, the target
        loaded = len(warehouse.keys())

        second = run_cron_line(warehouse.env, cwd="/")
        assert second.wait(timeout=60) == 0  # flock -n -E 0: skipped, not failed
        forced = meltano(
            warehouse.env, "run", "--force", "tap-vero-webhook", "target-postgres", check=False
        )
        assert forced.returncode != 0
        assert "another tap-vero-webhook run holds" in forced.stderr
        assert len(warehouse.keys()) == loaded
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    assert first.wait(timeout=900) == 0
    assert_each_once(warehouse, already + posted)
