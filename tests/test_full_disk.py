"""A full disk under the spool: the listener answers 503 (so Vero retries), never stores
part of an event, keeps the spool readable by the tap, and accepts again once space is
freed. The spool sits on a 512 KiB tmpfs the test mounts (root only)."""

from __future__ import annotations

import json
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tap_vero_webhook.data_dir import DataDir
from tests.helpers import create_token, mounted_tmpfs, run_tap, running_listener, spooled

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 512 KiB tmpfs."""
    with mounted_tmpfs(tmp_path / "small-disk", "512k") as mount_point:
        yield mount_point


def event(number: int) -> dict:
    """A Vero-like event of about 3 KB, so the small disk fills in a couple of hundred POSTs."""
    return {
        "type": "opened",
        "opened_at": 1_700_000_000 + number,
        "user": {"id": number, "email": f"user{number}@example.com"},
        "campaign": {"id": 7, "name": "Welcome", "subject": "x" * 3000},
        "n": number,
    }


def test_a_full_disk_gets_503_and_no_partial_event_then_recovers(small_disk, tmp_path):
    data_dir = small_disk / "data"
    token = create_token(data_dir)
    filler = small_disk / "filler"
    filler.write_bytes(os.urandom(96 * 1024))  # the space we free at the end
    with running_listener(data_dir) as listener:
        listener.tokens.append(token)
        acked: list[str] = []
        refusals = []
        for number in range(1000):
            response = listener.post(event(number))
            if response.status_code == 200:
                assert not refusals, "accepted after a 503 before any space was freed"
                acked += response.json()["ids"]
                continue
            assert response.status_code == 503, response.text
            assert response.headers["Content-Type"].startswith("application/json")
            assert response.json()["error"]["code"] == "spool_unavailable"
            refusals.append(number)
            if len(refusals) == 20:
                break
        assert len(refusals) == 20, "the 512 KiB disk never filled"
        assert len(acked) > 50

        # still up and answering, and a whole batch is refused as a unit
        health = requests.get(f"{listener.base_url}/healthz", timeout=5)
        assert health.headers["Content-Type"].startswith("application/json")
        assert health.status_code in (200, 503)
        batch = listener.post([event(5000 + i) for i in range(10)])
        assert batch.status_code == 503

        # the spool holds exactly the acknowledged events, each whole, none torn
        segments = sorted(DataDir(data_dir).spool.glob("*.jsonl"))
        raw = b"".join(segment.read_bytes() for segment in segments)
        assert raw.endswith(b"\n")
        envelopes = [json.loads(line) for line in raw.splitlines()]
        assert [envelope["id"] for envelope in envelopes] == acked
        read_back = spooled(data_dir)
        assert [envelope["id"] for envelope in read_back] == acked
        assert [envelope["event"] for envelope in read_back] == [
            event(n) for n in range(len(acked))
        ]

        # the tap reads the full spool without a hitch, while the listener still runs
        records = run_tap(tmp_path, data_dir).records
        assert [record["__sdc_primary_key"] for record in records] == acked

        # free space: accepted again, and the sequence carries on past the refusals
        filler.unlink()
        after = listener.post(event(9999))
        assert after.status_code == 200, after.text
        assert requests.get(f"{listener.base_url}/healthz", timeout=5).status_code == 200
        last = spooled(data_dir)
        assert [envelope["id"] for envelope in last] == [*acked, *after.json()["ids"]]
        seqs = [envelope["seq"] for envelope in last]
        assert seqs == sorted(set(seqs))
        uuid.UUID(after.json()["ids"][0])
        assert listener.process.poll() is None
    assert "Traceback" not in listener.log()


def test_concurrent_posts_filling_the_disk_leave_only_whole_acknowledged_events(
    small_disk, tmp_path
):
    """Eight senders at once: group commits fail part-way through their write when the disk
    fills; every line of a failed group must be cut away again, so the spool holds exactly
    the acknowledged events."""
    data_dir = small_disk / "data"
    token = create_token(data_dir)
    with running_listener(data_dir) as listener:
        listener.tokens.append(token)

        def send(number: int) -> tuple[int, list[str]]:
            body = event(number) if number % 3 else [event(number), event(number + 100_000)]
            response = listener.post(body)
            assert response.status_code in (200, 503), response.text
            return response.status_code, response.json().get("ids", [])

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(send, range(400)))
        acked = {event_id for status, ids in answers if status == 200 for event_id in ids}
        assert sum(status == 503 for status, _ in answers) > 20
        raw = b"".join(
            path.read_bytes() for path in sorted(DataDir(data_dir).spool.glob("*.jsonl"))
        )
        assert raw.endswith(b"\n")
        spooled = [json.loads(line) for line in raw.splitlines()]
        assert {envelope["id"] for envelope in spooled} == acked
        assert len(spooled) == len(acked)
        records = run_tap(tmp_path, data_dir).records
        assert {record["__sdc_primary_key"] for record in records} == acked
