"""Several listeners, both ways: behind HAProxy on one replicated JetStream spool, and one
local spool per host loaded into one table. Real servers, started by the tests: a 3-node
NATS cluster, HAProxy (Debian's), the listeners, Meltano, target-postgres, PostgreSQL.
"""

from __future__ import annotations

import random
import re
import time
import uuid

import psycopg
import pytest

from tests.helpers import (
    ROOT,
    Haproxy,
    NatsCluster,
    Senders,
    Site,
    Warehouse,
    create_token,
    free_ports,
    meltano,
    meltano_env,
    run_cli,
    start_listener,
    stream_info,
    target_postgres_env,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

LATEST_QUERY_MARK = "<!-- tested: latest user_updated per user -->"


@pytest.fixture
def warehouse(pg_dsn, tmp_path):
    schema = f"several_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        yield Warehouse(conn, schema, target_postgres_env(pg_dsn, schema))
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def test_behind_haproxy_a_killed_stream_leader_and_listener_lose_no_acknowledged_event(
    tmp_path, warehouse
):
    """Eight senders post through HAProxy to two listeners on one R3 stream; mid-load the
    stream's leader server and one listener are killed with -9, then both restart. A real
    `meltano run` then loads the stream: every acknowledged event once, each sender's
    events in the order it posted them, and no event twice under two keys."""
    with NatsCluster(tmp_path / "nats") as cluster:
        made = run_cli(
            "token", "create", "--spool-url", cluster.url, "--base-url", "http://h"
        )  # fmt: skip
        token = made.stdout.strip().rsplit("/hooks/", 1)[1]
        ports = dict(zip(("web-1", "web-2"), free_ports(2), strict=True))

        def listener(name: str):
            return start_listener(
                tmp_path / name, "--spool-url", cluster.url, "--listener-id", name,
                "--port", str(ports[name]), "--spool-publish-timeout", "30",
            )  # fmt: skip

        listeners = {name: listener(name) for name in ports}
        try:
            with Haproxy(tmp_path, ports) as balancer:
                senders = Senders(f"{balancer.base_url}/hooks/{token}", keep_alive=True)
                try:
                    assert wait_for(lambda: len(senders.acknowledged) > 300, timeout=120)
                    leader = cluster.node(stream_info(cluster.url).cluster.leader)
                    cluster.kill(leader)
                    time.sleep(random.uniform(0.5, 1.5))
                    victim = random.choice(list(listeners))
                    listeners[victim].kill()
                    time.sleep(2)
                    cluster.start(leader)
                    listeners[victim] = listener(victim)
                    cluster.wait_healthy()
                    acked_before = len(senders.acknowledged)
                    assert wait_for(
                        lambda: len(senders.acknowledged) > acked_before + 300, timeout=120
                    )
                finally:
                    senders.finish()
        finally:
            for running in listeners.values():
                running.stop()

        env = {**meltano_env(tmp_path, spool_url=cluster.url), **warehouse.env}
        meltano(env, "run", "tap-vero-webhook", "target-postgres")
    rows = warehouse.rows(
        "__sdc_primary_key AS id, _sdc_webhook_sequence AS seq, _sdc_webhook_listener AS host, "
        "payload->>'sender' AS sender, (payload->>'n')::int AS n"
    )
    keys = [str(row["id"]) for row in rows]
    assert len(keys) == len(set(keys))
    assert set(senders.acknowledged) <= set(keys), "an acknowledged event is missing"
    posted = [(row["sender"], row["n"], row["seq"] % 1_000_000) for row in rows]
    assert len(posted) == len(set(posted)), "one posted event was stored twice"
    assert {row["host"] for row in rows} == {"web-1", "web-2"}
    by_id = {str(row["id"]): row for row in rows}
    for sender, ids in senders.acknowledged_by_sender.items():
        sequences = [by_id[event_id]["seq"] for event_id in ids]
        assert sequences == sorted(sequences), f"sender {sender}'s events out of order"
    print(
        f"\n{len(senders.acknowledged)} acknowledged, {len(keys)} loaded "
        f"({len(keys) - len(senders.acknowledged)} stored but unanswered), "
        f"{len(senders.failures)} failed requests (in flight at the kills); leader "
        f"{leader.name} and listener {victim} killed"
    )


def latest_query() -> str:
    docs = (ROOT / "README.md").read_text()
    match = re.search(re.escape(LATEST_QUERY_MARK) + r"\s*```sql\n(.*?)```", docs, re.DOTALL)
    assert match, f"README.md lost the SQL block after {LATEST_QUERY_MARK}"
    return match.group(1)


def user_update(user_id, tag: str) -> dict:
    return {
        "type": "user_updated",
        "user": {"id": user_id, "email": f"u{user_id}@example.com"},
        "changes": {"_tags": {"add": [tag], "remove": []}},
    }


def test_one_local_spool_per_host_loads_into_one_table_and_the_latest_query_holds(
    tmp_path, warehouse
):
    """Two listeners, each its own data directory and listener id, each loaded with its
    own Meltano state (--state-id-suffix), into one table. Their sequences overlap (each
    host counts from 1), so the README's latest-version query must order by arrival
    time first; its answer is the update posted last, wherever it landed."""
    hosts = {}
    for name in ("host-a", "host-b"):
        data_dir = tmp_path / name
        token = create_token(data_dir)
        listener = start_listener(data_dir, "--listener-id", name)
        listener.tokens.append(token)
        hosts[name] = Site(listener)
    try:
        # b's events have low sequences but come last in time; a's come first
        plan = [("host-a", 1, "a1"), ("host-a", 2, "a2"), ("host-a", 1, "a3"),
                ("host-a", 3, "a4"), ("host-b", 1, "b1"), ("host-b", "2", "b2"),
                ("host-a", 3, "a5")]  # fmt: skip
        expected = {}
        for host, user_id, tag in plan:
            hosts[host].post([user_update(user_id, tag)])
            expected[str(user_id)] = {"_tags": {"add": [tag], "remove": []}}
            time.sleep(0.01)  # arrival times a clock can tell apart
    finally:
        for site in hosts.values():
            site.listener.stop()

    env = {**meltano_env(tmp_path / "meltano"), **warehouse.env}
    for host, site in hosts.items():  # one Meltano project, one state per host
        host_env = {**env, "TAP_VERO_WEBHOOK_DATA_DIR": str(site.listener.data_dir)}
        meltano(host_env, "run", "--state-id-suffix", host, "tap-vero-webhook", "target-postgres")
    states = meltano(env, "state", "list").stdout.split()
    assert sorted(states) == [
        f"prod:tap-vero-webhook-to-target-postgres:{host}" for host in sorted(hosts)
    ]
    rows = warehouse.rows("__sdc_primary_key, _sdc_webhook_listener, _sdc_webhook_sequence")
    everything = {event_id for site in hosts.values() for event_id in site.accepted_ids()}
    assert {str(row["__sdc_primary_key"]) for row in rows} == everything
    assert len(rows) == len(everything)  # keys never collide across hosts
    assert {row["_sdc_webhook_listener"] for row in rows} == set(hosts)

    sql = latest_query().replace("stitch_vero.data", f"{warehouse.schema}.data")
    with warehouse.conn.cursor(row_factory=psycopg.rows.dict_row) as cursor:
        latest = {row["user_id"]: row["changes"] for row in cursor.execute(sql).fetchall()}
    assert latest == expected
