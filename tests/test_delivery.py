"""The delivery guarantee, "accepted ⇒ loaded exactly once", under faults.

- A listener restart after any damage to the spool's tail keeps every complete event,
  exactly once, and the sequence keeps increasing (hypothesis, the real SpoolWriter).
- kill -9 of the listener at random moments under concurrent load, then the real tap
  piped into the real target-postgres: every acknowledged event is in the table once.
- kill -9 of the tap/target pipeline half-way, then a re-run from the last committed
  state: every event is still there exactly once.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tap_vero_webhook.spool.local import SpoolWriter
from tests.helpers import (
    PG_DSN,
    TAP,
    create_token,
    installed_target_postgres,
    read_envelopes,
    running_listener,
    spooled,
    start_listener,
    target_postgres_config,
)
from tests.vero_events import EVENT_TYPES, make_event

# --- the restart path: damaged tails -------------------------------------------------


def write_events(spool_dir: Path, count: int, first: int = 0) -> list[int]:
    """Append `count` events (one or several per batch) with the real writer; their seqs."""
    writer = SpoolWriter(spool_dir, segment_max_bytes=700)
    try:
        seqs = []
        number = first
        while number < first + count:
            size = min(1 + number % 3, first + count - number)
            batch = [
                json.dumps({"type": "sent", "n": n}).encode() for n in range(number, number + size)
            ]
            seqs += [stamp.seq for stamp in writer.append(batch)]
            number += size
        return seqs
    finally:
        writer.close()


damage = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1), st.just(b"")),
    st.tuples(
        st.just("append"),
        st.just(1.0),
        st.binary(min_size=1, max_size=300).map(lambda b: b.replace(b"\n", b"")),
    ),
    st.tuples(st.just("zero-fill"), st.floats(0, 1), st.integers(0, 4096).map(lambda n: b"\0" * n)),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(before=st.integers(1, 25), after=st.integers(0, 8), harm=damage)
def test_a_restart_after_a_damaged_tail_keeps_every_complete_event_once(
    tmp_path_factory, before, after, harm
):
    """Damage the newest segment's tail the ways a crash can (torn at any byte, a partial
    write of garbage, a zero-filled extent), restart a writer, append more: the reader
    yields every event that was complete before the damage, then the new ones, each
    once, seq strictly increasing, and never a byte of the damaged tail."""
    spool_dir = tmp_path_factory.mktemp("spool")
    write_events(spool_dir, before)
    newest = sorted(spool_dir.glob("*.jsonl"))[-1]
    data = newest.read_bytes()
    kind, where, extra = harm
    cut = int(len(data) * where)
    if kind == "truncate":
        damaged = data[:cut]
    elif kind == "append":
        damaged = data + extra
    else:  # zero-fill from `cut`: the file keeps (at least) its size, the tail is NULs
        damaged = data[:cut] + b"\0" * (len(data) - cut) + extra
    newest.write_bytes(damaged)
    surviving_in_newest = damaged.count(b"\n")  # the damage itself never holds a newline
    older = sum(path.read_bytes().count(b"\n") for path in sorted(spool_dir.glob("*.jsonl"))[:-1])
    expected_old = list(range(older + surviving_in_newest))

    write_events(spool_dir, after, first=1000)
    envelopes = read_envelopes(spool_dir)
    assert [e["event"]["n"] for e in envelopes] == expected_old + list(range(1000, 1000 + after))
    seqs = [e["seq"] for e in envelopes]
    assert seqs == sorted(set(seqs))
    raw = b"".join(path.read_bytes() for path in sorted(spool_dir.glob("*.jsonl")))
    assert (b"\0" not in raw and raw.endswith(b"\n")) or not raw
    assert raw.count(b"\n") == len(envelopes)


# --- kill -9 under load, then the real tap into PostgreSQL ---------------------------


@dataclass
class Load:
    """Senders posting events (one, or arrays of three) as fast as the listener takes them."""

    url: str
    acked: list[str] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)
    failures: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    numbers: itertools.count = field(default_factory=itertools.count)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self) -> None:
        session = requests.Session()
        while not self.stop.is_set():
            n = next(self.numbers)
            event = make_event(EVENT_TYPES[n % len(EVENT_TYPES)], n)
            body = event if n % 4 else [event, make_event("opened", -n), make_event("clicked", -n)]
            try:
                response = session.post(self.url, json=body, timeout=10)
            except requests.RequestException:
                with self.lock:
                    self.failures += 1
                session = requests.Session()
                time.sleep(0.01)
                continue
            with self.lock:
                if response.status_code == 200:
                    self.acked += response.json()["ids"]
                else:
                    self.refused.append(response.status_code)


@dataclass
class Pipeline:
    """`tap-vero-webhook --config … [--state …] | target-postgres --config …`, plain Singer."""

    data_dir: Path
    work: Path
    schema: str
    runs: int = 0

    def configs(self) -> tuple[Path, Path]:
        tap = self.work / "tap.json"
        tap.write_text(json.dumps({"data_dir": str(self.data_dir)}))
        target = self.work / "target.json"
        config = target_postgres_config(PG_DSN, self.schema, batch_size_rows=1000)
        target.write_text(json.dumps(config))
        return tap, target

    def start(self, state: dict | None) -> tuple[subprocess.Popen, subprocess.Popen]:
        self.runs += 1
        tap_config, target_config = self.configs()
        command = [TAP, "--config", str(tap_config)]
        if state is not None:
            state_file = self.work / f"state-{self.runs}.json"
            state_file.write_text(json.dumps(state))
            command += ["--state", str(state_file)]
        with (
            open(self.work / f"tap-{self.runs}.log", "wb") as tap_log,
            open(self.work / f"target-{self.runs}.log", "wb") as target_log,
        ):
            tap = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=tap_log)
            target = subprocess.Popen(
                [installed_target_postgres(), "--config", str(target_config)],
                stdin=tap.stdout,
                stdout=subprocess.PIPE,
                stderr=target_log,
            )
        tap.stdout.close()
        return tap, target

    def run(self, state: dict | None) -> dict:
        """A whole run; the last state the target emitted (= committed)."""
        tap, target = self.start(state)
        output, _ = target.communicate(timeout=600)
        assert tap.wait(timeout=60) == 0, (self.work / f"tap-{self.runs}.log").read_text()[-3000:]
        assert target.returncode == 0, (self.work / f"target-{self.runs}.log").read_text()[-3000:]
        states = [json.loads(line) for line in output.splitlines() if line.strip()]
        assert states, "the target committed no state"
        return states[-1]


def keys_in_table(dsn: str, schema: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        try:
            rows = conn.execute(f"SELECT __sdc_primary_key FROM {schema}.data").fetchall()
        except psycopg.errors.UndefinedTable:
            return []
    return [str(row[0]) for row in rows]


@pytest.fixture
def warehouse_schema(pg_dsn):
    schema = f"delivery_{uuid.uuid4().hex[:10]}"
    yield schema
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def assert_exactly_once(dsn: str, schema: str, expected: set[str]) -> list[str]:
    keys = keys_in_table(dsn, schema)
    assert len(keys) == len(set(keys)), "an event was loaded twice"
    missing = expected - set(keys)
    assert not missing, f"{len(missing)} acknowledged events are not in the table"
    return keys


@pytest.mark.slow
@pytest.mark.postgres
def test_kill_9_under_load_then_load_every_acknowledged_event_exactly_once(
    tmp_path, pg_dsn, warehouse_schema
):
    seed = int(os.environ.get("DELIVERY_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    data_dir = tmp_path / "data"
    token = create_token(data_dir)
    listener = start_listener(data_dir, "--threads", "8")
    load = Load(listener.hook_url(token))
    senders = [threading.Thread(target=load.send) for _ in range(6)]
    for sender in senders:
        sender.start()
    crashes = 0
    try:
        for _ in range(8):
            time.sleep(rng.uniform(0.2, 1.0))
            listener.kill()
            crashes += 1
            listener = start_listener(data_dir, "--threads", "8")
            load.url = listener.hook_url(token)
        time.sleep(0.5)
    finally:
        load.stop.set()
        for sender in senders:
            sender.join()
        listener.stop()
    assert crashes == 8
    assert not load.refused, f"answers other than 200 (never a 5xx): {load.refused[:20]}"
    acked = set(load.acked)
    assert len(acked) == len(load.acked) > 200

    in_spool = {envelope["id"] for envelope in spooled(data_dir)}
    assert acked <= in_spool

    pipeline = Pipeline(data_dir, tmp_path, warehouse_schema)
    state = pipeline.run(None)
    keys = assert_exactly_once(pg_dsn, warehouse_schema, acked)
    assert set(keys) == in_spool  # durable but unanswered events are loaded too, once
    print(
        f"\ndelivery (seed {seed}): {len(acked)} acknowledged, {len(keys)} loaded "
        f"({len(keys) - len(acked)} durable but cut off before their answer), {crashes} crashes, "
        f"{load.failures} connection failures while down"
    )

    # --- kill the pipeline half-way, re-run from the last committed state ---
    # First the whole run (tap and target), then the tap alone (the target sees its
    # output end mid-stream and may commit what it has; its last state is then used).
    total = len(in_spool)
    for kill_target in (True, False):
        new_ids = post_batches(data_dir, token, 60, 100)
        acked.update(new_ids)
        total += len(new_ids)
        loaded_before = len(keys_in_table(pg_dsn, warehouse_schema))
        tap, target = pipeline.start(state)
        deadline = time.monotonic() + 300
        while len(keys_in_table(pg_dsn, warehouse_schema)) < loaded_before + 1000:
            assert time.monotonic() < deadline and target.poll() is None, "the run ended early"
            time.sleep(0.05)
        tap.kill()
        if kill_target:
            target.kill()
        output, _ = target.communicate(timeout=120)
        tap.wait()
        half_way = len(keys_in_table(pg_dsn, warehouse_schema)) - loaded_before
        assert 0 < half_way < len(new_ids), half_way
        committed = [json.loads(line) for line in output.splitlines() if line.strip()]
        state = committed[-1] if committed else state  # the last state the target committed

        state = pipeline.run(state)
        keys = assert_exactly_once(pg_dsn, warehouse_schema, acked)
        assert len(keys) == total
        assert state["bookmarks"]["data"]["replication_key_value"] == max(
            envelope["seq"] for envelope in spooled(data_dir)
        )
        print(
            f"{'tap and target' if kill_target else 'tap'} killed with {half_way} of "
            f"{len(new_ids)} new rows loaded; the re-run from the last committed state "
            f"({'a new one' if committed else 'the previous run'}) loaded all, once"
        )


def post_batches(data_dir: Path, token: str, posts: int, per_post: int) -> list[str]:
    """Arrays of events to a fresh listener on the data dir; the acknowledged ids."""
    ids = []
    with running_listener(data_dir) as listener:
        for number in range(posts):
            base = 100_000 + len(ids) + number * per_post
            batch = [make_event(EVENT_TYPES[i % 12], base + i) for i in range(per_post)]
            response = listener.post(batch, token=token)
            assert response.status_code == 200, response.text
            ids += response.json()["ids"]
    return ids
