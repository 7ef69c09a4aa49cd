"""The JetStream spool, on a 3-node cluster the tests start (nats-server 2.15, sync_interval
always): listeners publish, the real tap reads, state and retention behave as with the
local spool, and every refusal is precise.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time

import nats
import pytest
import requests
from nats.js.api import DiscardPolicy, StorageType, StreamConfig

from tap_vero_webhook.location import Location
from tap_vero_webhook.spool.jetstream import EVENTS_PER_MESSAGE, JetStreamSource
from tests.helpers import (
    TAP,
    VERO_WEBHOOK,
    NatsCluster,
    assert_error,
    run_cli,
    run_tap,
    running_listener,
    state_at,
    stream_info,
    tap_config,
    wait_for,
)
from tests.vero_events import event_stream, make_event

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with NatsCluster(tmp_path_factory.mktemp("nats")) as running:
        yield running


def js_token(cluster: NatsCluster, stream: str) -> tuple[str, str]:
    """A webhook token (secret, id) kept in the cluster's bucket for `stream`."""
    made = run_cli(
        "token", "create", "--spool-url", cluster.url, "--spool-stream", stream,
        "--base-url", "http://h",
    )  # fmt: skip
    secret = made.stdout.strip().splitlines()[-1].rsplit("/hooks/", 1)[1]
    return secret, made.stderr.split("Created webhook URL ", 1)[1].split()[0]


def js_listener(tmp_path, cluster: NatsCluster, stream: str, name: str, *args: str):
    return running_listener(
        tmp_path / name,
        "--spool-url", cluster.url, "--spool-stream", stream, "--listener-id", name, *args,
    )  # fmt: skip


def tap_over(tmp_path, cluster: NatsCluster, stream: str, **kwargs):
    return run_tap(tmp_path, None, spool_url=cluster.url, spool_stream=stream, **kwargs)


def test_two_listeners_share_one_stream_and_the_tap_reads_it_in_commit_order(cluster, tmp_path):
    stream = "shared"
    token, _ = js_token(cluster, stream)
    with (
        js_listener(tmp_path, cluster, stream, "web-1") as first,
        js_listener(tmp_path, cluster, stream, "web-2") as second,
    ):
        posted = []
        for number in range(6):
            listener = (first, second)[number % 2]
            body = [make_event("sent", number), make_event("opened", number)]
            response = listener.post(body if number == 3 else body[0], token=token)
            assert response.status_code == 200, response.text
            posted += zip(response.json()["ids"], body, strict=False)
    run = tap_over(tmp_path, cluster, stream)
    assert run.keys == [event_id for event_id, _ in posted]
    assert [record["payload"] for record in run.records] == [event for _, event in posted]
    assert [record["_sdc_webhook_listener"] for record in run.records] == [
        "web-1", "web-2", "web-1", "web-2", "web-2", "web-1", "web-2",
    ]  # fmt: skip
    sequences = [record["_sdc_webhook_sequence"] for record in run.records]
    assert sequences == sorted(set(sequences))
    # one message per request: its events share the stream sequence, in posting order
    assert sequences[3] + 1 == sequences[4]
    assert sequences[4] // EVENTS_PER_MESSAGE == sequences[3] // EVENTS_PER_MESSAGE
    assert run.states[-1]["bookmarks"]["data"]["spool_id"].startswith(f"{stream}@")


def test_state_resume_replay_and_a_bookmark_inside_a_request(cluster, tmp_path):
    stream = "resume"
    token, _ = js_token(cluster, stream)
    with js_listener(tmp_path, cluster, stream, "web-1") as listener:
        listener.tokens.append(token)
        first_ids = []
        for chunk in range(4):
            events = event_stream(3, seed=chunk)
            first_ids += listener.post(events).json()["ids"]
        first = tap_over(tmp_path, cluster, stream)
        assert first.keys == first_ids
        assert tap_over(tmp_path, cluster, stream, state=first.states[-1]).records == []

        later_ids = listener.post(event_stream(2, seed=9)).json()["ids"]
        resumed = tap_over(tmp_path, cluster, stream, state=first.states[-1])
        assert resumed.keys == later_ids

        inside = first.records[4]  # the second event of the second request
        bookmark = {**first.states[-1]["bookmarks"]["data"]}
        bookmark["replication_key_value"] = inside["_sdc_webhook_sequence"]
        partial = tap_over(tmp_path, cluster, stream, state={"bookmarks": {"data": bookmark}})
        assert partial.keys == first_ids[5:] + later_ids
        assert tap_over(tmp_path, cluster, stream).keys == first_ids + later_ids  # replay


def test_events_accepted_while_the_tap_runs_are_loaded_now_or_next_time(cluster, tmp_path):
    stream = "during"
    token, _ = js_token(cluster, stream)
    posted: list[str] = []
    stop = threading.Event()
    with js_listener(tmp_path, cluster, stream, "web-1") as listener:
        listener.tokens.append(token)

        def keep_posting() -> None:
            number = 0
            while not stop.is_set():
                posted.extend(listener.post(event_stream(3, seed=number)).json()["ids"])
                number += 1

        poster = threading.Thread(target=keep_posting)
        poster.start()
        emitted, state = [], None
        try:
            for _ in range(4):
                run = tap_over(tmp_path, cluster, stream, state=state)
                emitted += run.keys
                state = run.states[-1]
        finally:
            stop.set()
            poster.join()
        emitted += tap_over(tmp_path, cluster, stream, state=state).keys
    assert len(posted) > 0
    assert emitted == posted  # each acknowledged event exactly once, in commit order


def test_a_run_waits_while_another_holds_the_lease_and_then_reads(cluster, tmp_path):
    """One tap run at a time: while a run holds the stream's lease, the next one waits
    (here the holder lets go after 3 s; a killed run's lease lapses within 30 s)."""
    stream = "lease"
    token, _ = js_token(cluster, stream)
    with js_listener(tmp_path, cluster, stream, "web-1") as listener:
        listener.tokens.append(token)
        ids = listener.post(event_stream(4)).json()["ids"]
    holder = JetStreamSource(Location(url=cluster.url, stream=stream))
    config = tap_config(tmp_path, None, spool_url=cluster.url, spool_stream=stream)
    try:
        with holder.exclusive_run():
            waiting = subprocess.Popen(
                [TAP, "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            time.sleep(3)
            assert waiting.poll() is None, "the second run did not wait for the lease"
        output, errors = waiting.communicate(timeout=120)
    finally:
        holder.close()
    assert waiting.returncode == 0, errors.decode()[-2000:]
    records = [json.loads(line) for line in output.splitlines() if b'"RECORD"' in line]
    assert [record["record"]["__sdc_primary_key"] for record in records] == ids


def test_a_bookmark_from_a_recreated_stream_is_refused_before_anything_is_emitted(
    cluster, tmp_path
):
    stream = "recreated"
    token, _ = js_token(cluster, stream)
    with js_listener(tmp_path, cluster, stream, "web-1") as listener:
        listener.tokens.append(token)
        listener.post(event_stream(3))
    old_state = tap_over(tmp_path, cluster, stream).states[-1]

    async def recreate():
        client = await nats.connect(servers=cluster.url.split(","))
        await client.jetstream().delete_stream(stream)
        await client.close()

    asyncio.run(recreate())
    with js_listener(tmp_path, cluster, stream, "web-1") as listener:
        listener.tokens.append(token)
        for _ in range(5):
            assert listener.post(event_stream(2)).status_code == 200
    refused = tap_over(tmp_path, cluster, stream, state=old_state, check=False)
    assert refused.returncode == 1
    assert "deleted and created again" in refused.stderr
    assert refused.records == []
    assert "Traceback" not in refused.stderr

    stale = state_at(50 * EVENTS_PER_MESSAGE)  # an old state with no spool id: too far
    past = tap_over(tmp_path, cluster, stream, state=stale, check=False)
    assert past.returncode == 1
    assert "is past the newest event" in past.stderr
    assert past.records == []


def test_retention_purges_only_what_the_state_vouches_for_and_is_old_enough(cluster, tmp_path):
    stream = "retention"
    token, _ = js_token(cluster, stream)
    with js_listener(tmp_path, cluster, stream, "web-1") as listener:
        listener.tokens.append(token)
        ids = [listener.post(event).json()["ids"][0] for event in event_stream(10)]
    everything = tap_over(tmp_path, cluster, stream)
    bookmark = everything.records[5]["_sdc_webhook_sequence"]
    state = {"bookmarks": {"data": {**everything.states[-1]["bookmarks"]["data"]}}}
    state["bookmarks"]["data"]["replication_key_value"] = bookmark

    kept = tap_over(tmp_path, cluster, stream, state=state, retention_days=30)
    assert kept.keys == ids[6:]
    assert stream_info(cluster.url, stream).state.messages == 10  # too young to go

    tap_over(tmp_path, cluster, stream, state=state, retention_days=0)
    after = stream_info(cluster.url, stream).state
    assert (after.first_seq, after.messages) == (bookmark // EVENTS_PER_MESSAGE, 5)
    assert tap_over(tmp_path, cluster, stream).keys == ids[5:]  # a replay reaches back so far


def test_a_stream_that_could_drop_unloaded_events_is_refused_naming_the_setting(cluster, tmp_path):
    async def make_risky():
        client = await nats.connect(servers=cluster.url.split(","))
        await client.jetstream().add_stream(
            StreamConfig(
                name="risky",
                subjects=["risky.events.>"],
                storage=StorageType.FILE,
                num_replicas=3,
                discard=DiscardPolicy.OLD,
                max_age=3600,
            )
        )
        await client.close()

    asyncio.run(make_risky())
    data_dir = tmp_path / "data"
    refused = subprocess.run(
        [VERO_WEBHOOK, "serve", "--data-dir", str(data_dir), "--port", "0",
         "--spool-url", cluster.url, "--spool-stream", "risky"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode == 1
    assert "discard is old" in refused.stderr
    assert "max_age is 3600 s" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_full_stream_answers_503_and_keeps_every_acknowledged_event(cluster, tmp_path):
    stream = "small"
    token, _ = js_token(cluster, stream)
    with js_listener(tmp_path, cluster, stream, "web-1", "--spool-max-bytes", "30000") as listener:
        listener.tokens.append(token)
        acked, refused = [], []
        for number in range(200):
            response = listener.post(make_event("delivered", number))
            if response.status_code == 200:
                assert not refused, "accepted after the stream said it was full"
                acked += response.json()["ids"]
            else:
                assert_error(response, 503, "spool_full")
                refused.append(number)
                if len(refused) == 5:
                    break
    assert len(refused) == 5 and len(acked) > 10
    assert tap_over(tmp_path, cluster, stream).keys == acked


def test_a_body_larger_than_one_message_is_413_and_the_listener_says_so_at_start(cluster, tmp_path):
    stream = "large"
    token, _ = js_token(cluster, stream)
    args = ("--max-body-bytes", "3000000")
    with js_listener(tmp_path, cluster, stream, "web-1", *args) as listener:
        listener.tokens.append(token)
        assert "the spool takes at most" in listener.log()
        big = {"type": "sent", "pad": "x" * 1_200_000}
        assert_error(listener.post(big), 413, "body_too_large")
        assert listener.post({"type": "sent"}).status_code == 200
    assert len(tap_over(tmp_path, cluster, stream).records) == 1


def test_a_revocation_on_one_host_is_refused_by_every_listener_within_a_second(cluster, tmp_path):
    stream = "rotation"
    old, old_id = js_token(cluster, stream)
    new, _ = js_token(cluster, stream)
    with (
        js_listener(tmp_path, cluster, stream, "web-1") as first,
        js_listener(tmp_path, cluster, stream, "web-2") as second,
    ):
        for listener in (first, second):
            assert listener.post({"type": "sent"}, token=old).status_code == 200
        run_cli("token", "revoke", old_id, "--spool-url", cluster.url, "--spool-stream", stream)
        revoked_at = time.monotonic()
        refused = wait_for(
            lambda: all(
                listener.post({"type": "sent"}, token=old).status_code == 401
                for listener in (first, second)
            ),
            timeout=10,
        )
        took = time.monotonic() - revoked_at
        assert refused
        for listener in (first, second):
            assert listener.post({"type": "sent"}, token=new).status_code == 200
    print(f"\nrevocation refused by both listeners {took:.2f} s after `token revoke`")
    listed = list_tokens_js(cluster, stream)
    assert {item["id"] for item in listed} == {item["id"] for item in listed if item["id"]}
    assert old_id not in {item["id"] for item in listed}
    assert all(item["last_used_at"] for item in listed)  # both listeners' last uses


def list_tokens_js(cluster: NatsCluster, stream: str) -> list[dict]:
    return json.loads(
        run_cli(
            "token", "list", "--json", "--spool-url", cluster.url, "--spool-stream", stream
        ).stdout
    )


def test_at_most_two_tokens_are_active_across_the_cluster(cluster):
    stream = "limit"
    js_token(cluster, stream)
    js_token(cluster, stream)
    third = run_cli(
        "token", "create", "--spool-url", cluster.url, "--spool-stream", stream,
        "--base-url", "http://h", check=False,
    )  # fmt: skip
    assert third.returncode == 1
    assert "revoke one first" in third.stderr
    assert "/hooks/" not in third.stdout
    assert len(list_tokens_js(cluster, stream)) == 2


def test_bad_spool_settings_are_refused_by_name(data_dir, tmp_path):
    cases = [
        (["--spool-url", "http://h:4222"], "--spool-url 'http://h:4222'"),
        (["--spool-url", "nats://h:4222", "--spool-stream", "a.b"], "--spool-stream 'a.b'"),
        (["--listener-id", "web 1"], "--listener-id 'web 1'"),
    ]
    for args, named in cases:
        done = subprocess.run(
            [VERO_WEBHOOK, "serve", "--data-dir", str(data_dir), *args],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 1, done.stderr
        assert named in done.stderr
        assert "Traceback" not in done.stderr
    both = run_tap(tmp_path, data_dir, check=False, spool_url="nats://h:4222")
    assert both.returncode == 1
    assert "give data_dir" in both.stderr and "not both" in both.stderr
    unreachable = run_cli("token", "list", "--spool-url", "nats://127.0.0.1:9", check=False)
    assert unreachable.returncode == 1
    assert "cannot reach the NATS cluster at nats://127.0.0.1:9" in unreachable.stderr


def test_without_a_quorum_a_request_waits_its_bound_then_gets_503(tmp_path):
    """Two of three servers down: JetStream cannot acknowledge; the listener answers 503
    after --spool-publish-timeout, never 500, and stores the event once a quorum is back
    if the sender retries."""
    with NatsCluster(tmp_path / "nats") as cluster:
        stream = "quorum"
        token, _ = js_token(cluster, stream)
        with js_listener(tmp_path, cluster, stream, "web-1", "--spool-publish-timeout", "3") as one:
            one.tokens.append(token)
            assert one.post({"type": "sent", "n": 0}).status_code == 200
            for node in cluster.nodes[1:]:
                cluster.kill(node)
            refused = one.post({"type": "sent", "n": 1})
            assert_error(refused, 503, "spool_unavailable")
            for node in cluster.nodes[1:]:
                cluster.start(node)
            cluster.wait_healthy()
            assert wait_for(
                lambda: one.post({"type": "sent", "n": 2}).status_code == 200, timeout=60
            )
            assert requests.get(f"{one.base_url}/healthz", timeout=10).status_code == 200
        payloads = [r["payload"]["n"] for r in tap_over(tmp_path, cluster, stream).records]
    assert payloads[0] == 0 and payloads[-1] == 2
