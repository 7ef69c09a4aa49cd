"""kill -9 under load, again and again: every acknowledged event is in the spool exactly once."""

from __future__ import annotations

import random
import threading
import time

import pytest
import requests

from tests.helpers import create_token, running_listener, spooled, start_listener
from tests.vero_events import event_stream

CLIENTS = 16
CYCLES = 5


def hammer(
    url: str, stop: threading.Event, acknowledged: list[str], sent: list[int], errors: list[str]
) -> None:
    """Post events (some as arrays) on one keep-alive connection until the listener dies."""
    session = requests.Session()
    rng = random.Random(url + threading.current_thread().name)
    events = event_stream(60, seed=rng.randrange(1000))
    index = 0
    while not stop.is_set():
        size = rng.choice((1, 1, 1, 3))
        body = [events[(index + k) % len(events)] for k in range(size)]
        index += size
        try:
            response = session.post(url, json=body[0] if size == 1 else body, timeout=10)
        except requests.RequestException:
            return  # killed: whatever got no answer may or may not be in the spool
        sent[0] += 1
        if response.status_code != 200 or len(response.json()["ids"]) != size:
            errors.append(f"{response.status_code}: {response.text}")
            return
        acknowledged.extend(response.json()["ids"])


@pytest.mark.slow
def test_every_acknowledged_event_survives_kill_9_under_load(tmp_path):
    data_dir = tmp_path / "data"
    token = create_token(data_dir)
    acknowledged: list[str] = []
    errors: list[str] = []
    for cycle in range(CYCLES):
        running = start_listener(data_dir)
        stop = threading.Event()
        sent = [0]
        clients = [
            threading.Thread(
                target=hammer,
                args=(running.hook_url(token), stop, acknowledged, sent, errors),
                name=f"c{cycle}-{n}",
            )
            for n in range(CLIENTS)
        ]
        for client in clients:
            client.start()
        time.sleep(random.uniform(0.8, 2.0))
        running.kill()
        stop.set()
        for client in clients:
            client.join(timeout=30)
        assert not errors
        assert sent[0] > 0, f"cycle {cycle}: no request was answered before the kill"

        envelopes = spooled(data_dir)  # raises if damaged
        ids = [envelope["id"] for envelope in envelopes]
        assert len(ids) == len(set(ids)), "an event is in the spool twice"
        assert set(acknowledged) <= set(ids), "an acknowledged event is missing"
        seqs = [envelope["seq"] for envelope in envelopes]
        assert seqs == sorted(set(seqs))

    with running_listener(data_dir) as running:  # and after the last kill, it serves again
        response = running.post({"type": "sent", "after": "the last crash"}, token=token)
        assert response.status_code == 200
    envelopes = spooled(data_dir)
    assert envelopes[-1]["id"] == response.json()["ids"][0]
    assert envelopes[-1]["seq"] > envelopes[-2]["seq"]
    assert len(acknowledged) > CYCLES * CLIENTS
