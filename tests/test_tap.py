"""The tap, run as its real CLI over spools the real listener wrote."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from singer_sdk.testing import get_tap_test_class

from tap_vero_webhook.data_dir import DataDir
from tap_vero_webhook.listener.payloads import encode_event
from tap_vero_webhook.locks import LockFile
from tap_vero_webhook.schema import EVENT_TYPES
from tap_vero_webhook.spool.local import SpoolWriter, list_segments, segment_name
from tap_vero_webhook.tap import TapVeroWebhook
from tests.helpers import (
    TAP,
    post_all,
    run_tap,
    running_listener,
    state_at,
    tap_config,
    write_json,
)
from tests.vero_events import event_stream, make_event, vero_examples


def _standard_test_spool() -> str:
    """A spool for the SDK's standard tests, written by the listener's own SpoolWriter."""
    data_dir = Path(tempfile.mkdtemp(prefix="tap-standard-tests-"))
    writer = SpoolWriter(DataDir(data_dir).spool)
    writer.append([encode_event(event) for event in event_stream(60)])
    writer.close()
    return str(data_dir)


TestTapVeroWebhookStandard = get_tap_test_class(
    TapVeroWebhook, config={"data_dir": _standard_test_spool()}
)


# --- records ---------------------------------------------------------------------------


def test_records_carry_each_posted_event_whole_with_stamps_and_typed_columns(listener, tmp_path):
    events = vero_examples() + [
        make_event(event_type, n) for n, event_type in enumerate(EVENT_TYPES)
    ]
    ids = post_all(listener, events)
    run = run_tap(tmp_path, listener.data_dir)

    assert run.keys == ids
    sequences = [record["_sdc_webhook_sequence"] for record in run.records]
    assert sequences == sorted(set(sequences))
    for message, posted in zip(run.record_messages, events, strict=True):
        record = message["record"]
        assert record["payload"] == posted
        assert (
            message["time_extracted"].replace("+00:00", "Z") == record["_sdc_webhook_received_at"]
        )
        assert record["type"] == posted["type"]
        assert record["user"] == posted["user"]
        for column in ("campaign", "event", "changes", "message_id", "bounce_code", "user_agent"):
            assert record.get(column) == posted.get(column)
        at = f"{posted['type']}_at"
        assert record.get(at) == posted.get(at)
    assert {type(r["user"]["id"]) for r in run.records} == {int, str}
    assert run.bookmark == sequences[-1]

    schema = run.schemas[0]
    assert schema["key_properties"] == ["__sdc_primary_key"]
    properties = schema["schema"]["properties"]
    assert properties["user"]["type"] == ["object", "null"]
    assert properties["sent_at"]["type"] == ["integer", "null"]
    assert properties["_sdc_webhook_sequence"]["type"] == ["integer"]


def test_payload_is_exact_big_integers_unicode_and_unknown_fields(listener, tmp_path):
    body = (
        '{"type":"sent","sent_at":1735000000,"user":{"id":123456789012345678901234567890,'
        '"email":"zoë@example.com"},"campaign":{"name":"Ünïcødé 李 🎉"},'
        '"brand_new_field":{"nested":[1,2.5,"x"]},"score":0.1}'
    )
    assert listener.post(body.encode()).status_code == 200
    run = run_tap(tmp_path, listener.data_dir)

    line = next(line for line in run.stdout.splitlines() if '"RECORD"' in line)
    assert "123456789012345678901234567890" in line
    record = run.records[0]
    assert record["payload"] == json.loads(body)
    assert record["payload"]["brand_new_field"] == {"nested": [1, 2.5, "x"]}
    assert record["campaign"]["name"] == "Ünïcødé 李 🎉"
    assert "brand_new_field" not in record  # not a column, but never dropped: it is in payload


def test_the_deepest_event_the_listener_accepts_is_read_back_whole(listener, tmp_path):
    deepest = b'{"type":"sent","x":' + b'{"a":' * 126 + b"1" + b"}" * 127  # 128 levels
    assert listener.post(deepest).status_code == 200
    assert run_tap(tmp_path, listener.data_dir).records[0]["payload"] == json.loads(deepest)


def test_a_value_of_the_wrong_type_leaves_its_column_empty_and_stays_in_payload(listener, tmp_path):
    posted = {
        "type": "sent",
        "sent_at": "yesterday",
        "user": "not-an-object",
        "opened_at": 2**70,
        "message_id": 42,
    }
    assert listener.post(posted).status_code == 200
    record = run_tap(tmp_path, listener.data_dir).records[0]
    assert record["payload"] == posted
    for column in ("sent_at", "user", "opened_at", "message_id"):
        assert column not in record
    assert record["type"] == "sent"


def test_nul_characters_are_replaced_in_records_but_kept_in_the_spool(listener, tmp_path):
    body = '{"type":"sent","message_id":"a\\u0000b","user":{"id":1,"na\\u0000me":"x\\u0000"}}'
    assert listener.post(body.encode()).status_code == 200
    record = run_tap(tmp_path, listener.data_dir).records[0]
    assert record["message_id"] == "a\ufffdb"
    assert record["payload"]["user"] == {"id": 1, "na\ufffdme": "x\ufffd"}
    assert "\x00" not in json.dumps(record, ensure_ascii=False)
    spooled = (DataDir(listener.data_dir).spool / segment_name(1)).read_text()
    assert "a\\u0000b" in spooled


def test_discovery_answers_the_sdks_catalog_without_loading_the_sdk(tmp_path):
    """`--discover` as Meltano asks it (before every run) is answered from schema.py; the
    catalog must be the very one the SDK builds, and other command lines the SDK's."""
    config = str(tap_config(tmp_path, tmp_path / "data"))
    state = str(write_json(tmp_path / "state.json", {}))
    fast = subprocess.run(
        [TAP, "--config", config, "--state", state, "--discover"],  # as Meltano asks
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    sdk = TapVeroWebhook(config={"data_dir": str(tmp_path / "data")}, validate_config=False)
    assert json.loads(fast.stdout) == sdk.catalog_dict
    assert fast.stderr == ""  # no SDK: it would have logged
    probe = (
        "import sys; from tap_vero_webhook.catalog import main; main(); "
        "print('singer_sdk' in sys.modules, file=sys.stderr)"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe, "--config", config, "--discover"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert loaded.stderr.strip() == "False"
    # anything else is the SDK's: a config that is not there, --about, --discover with more
    missing = subprocess.run(
        [TAP, "--config", str(tmp_path / "nowhere.json"), "--discover"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert missing.returncode != 0 and "nowhere.json" in missing.stderr
    about = subprocess.run([TAP, "--about", "--format", "json"], capture_output=True, text=True)
    assert json.loads(about.stdout)["name"] == "tap-vero-webhook"


def test_deselected_columns_are_left_out(listener, tmp_path):
    post_all(listener, vero_examples()[:3])
    catalog = json.loads(
        subprocess.run(
            [TAP, "--config", str(tap_config(tmp_path, listener.data_dir)), "--discover"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    for entry in catalog["streams"][0]["metadata"]:
        breadcrumb = entry["breadcrumb"]
        if breadcrumb == []:
            entry["metadata"]["selected"] = True
        elif breadcrumb[-1] in ("message_id", "campaign"):
            entry["metadata"]["selected"] = False
    run = run_tap(tmp_path, listener.data_dir, catalog=catalog)
    assert len(run.records) == 3
    for record in run.records:
        assert "message_id" not in record and "campaign" not in record
        assert record["payload"]["message_id"]  # the whole event is still there
    assert "message_id" not in run.schemas[0]["schema"]["properties"]


# --- state and replay ------------------------------------------------------------------


def test_state_resumes_exactly_after_the_bookmark(listener, tmp_path):
    first_ids = post_all(listener, event_stream(30))
    first = run_tap(tmp_path, listener.data_dir)
    assert first.keys == first_ids

    again = run_tap(tmp_path, listener.data_dir, state=first.states[-1])
    assert again.records == []
    assert again.bookmark == first.bookmark

    later_ids = post_all(listener, event_stream(12, seed=99))
    second = run_tap(tmp_path, listener.data_dir, state=first.states[-1])
    assert second.keys == later_ids

    middle = first.records[9]["_sdc_webhook_sequence"]
    partial = run_tap(tmp_path, listener.data_dir, state=state_at(middle))
    assert partial.keys == first_ids[10:] + later_ids


def test_without_state_everything_retained_is_replayed_with_the_same_keys(listener, tmp_path):
    ids = post_all(listener, event_stream(25), per_request=5)
    assert run_tap(tmp_path, listener.data_dir).keys == ids
    assert run_tap(tmp_path, listener.data_dir).keys == ids


def test_events_accepted_while_the_tap_runs_are_emitted_now_or_next_time(listener, tmp_path):
    posted: list[str] = []
    stop = threading.Event()

    def keep_posting() -> None:
        n = 0
        while not stop.is_set():
            posted.extend(post_all(listener, event_stream(5, seed=n), per_request=5))
            n += 1

    poster = threading.Thread(target=keep_posting)
    poster.start()
    emitted: list[str] = []
    state = None
    try:
        for _ in range(6):
            run = run_tap(tmp_path, listener.data_dir, state=state)
            emitted += run.keys
            state = run.states[-1]
    finally:
        stop.set()
        poster.join()
    emitted += run_tap(tmp_path, listener.data_dir, state=state).keys
    assert len(posted) > 0
    assert emitted == posted  # each acknowledged event exactly once, in arrival order


@pytest.mark.slow
def test_a_run_killed_half_way_loses_nothing_when_rerun_from_its_last_state(listener, tmp_path):
    events = event_stream(500)
    ids = []
    for _ in range(50):  # 25,000 events: the SDK emits STATE every 10,000 records
        ids += post_all(listener, events, per_request=500)
    config = tap_config(tmp_path, listener.data_dir)
    process = subprocess.Popen(
        [TAP, "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    emitted, last_state = [], None
    for raw in process.stdout:
        message = json.loads(raw)
        if message["type"] == "RECORD":
            emitted.append(message["record"]["__sdc_primary_key"])
        elif message["type"] == "STATE" and emitted:
            last_state = message["value"]
            process.send_signal(signal.SIGKILL)
            break
    process.wait()
    assert last_state is not None
    bookmark = last_state["bookmarks"]["data"]["replication_key_value"]
    assert 0 < len(emitted) < len(ids)

    rerun = run_tap(tmp_path, listener.data_dir, state=last_state)
    assert rerun.records[0]["_sdc_webhook_sequence"] == bookmark + 1
    assert set(emitted) | set(rerun.keys) == set(ids)
    assert emitted[: ids.index(rerun.keys[0])] + rerun.keys == ids


def test_a_torn_last_line_is_never_emitted(listener, tmp_path):
    ids = post_all(listener, event_stream(4))
    listener.kill()
    segment = list_segments(DataDir(listener.data_dir).spool)[-1].path
    with open(segment, "ab") as handle:
        handle.write(b'{"seq":5,"received_at":"2026-01-01T00:00:00.000000Z","id":"torn","ev')
    run = run_tap(tmp_path, listener.data_dir)
    assert run.keys == ids


def test_overlapping_runs_are_refused_with_a_clear_message(listener, tmp_path):
    post_all(listener, event_stream(3))
    with LockFile(DataDir(listener.data_dir).tap_lock) as another_run:
        assert another_run.try_exclusive()
        run = run_tap(tmp_path, listener.data_dir, check=False)
    assert run.returncode != 0
    assert "another tap-vero-webhook run" in run.stderr
    assert run.records == []


# --- retention -------------------------------------------------------------------------


def segmented_spool(tmp_path: Path, count: int, days_old: float) -> tuple[Path, list, list]:
    """A spool of `count` events in many small segments, written by the real listener,
    every segment last written `days_old` days ago: (data dir, ids, segments)."""
    data_dir = tmp_path / "data"
    with running_listener(data_dir, "--segment-max-bytes", "2000", new_token=True) as listener:
        ids = post_all(listener, event_stream(count))
    old = time.time() - days_old * 86400
    for segment in list_segments(DataDir(data_dir).spool):
        os.utime(segment.path, (old, old))
    return data_dir, ids, list_segments(DataDir(data_dir).spool)


def test_retention_removes_only_loaded_segments_older_than_the_window(tmp_path):
    data_dir, ids, segments = segmented_spool(tmp_path, 40, days_old=10)
    assert len(segments) >= 5

    bookmark = segments[3].first_seq  # segments 0..2 are wholly loaded, 3 only partly
    kept_back = run_tap(tmp_path, data_dir, state=state_at(bookmark), retention_days=30)
    assert len(list_segments(DataDir(data_dir).spool)) == len(segments)

    run = run_tap(tmp_path, data_dir, state=state_at(bookmark), retention_days=7)
    remaining = [segment.first_seq for segment in list_segments(DataDir(data_dir).spool)]
    assert remaining == [segment.first_seq for segment in segments[3:]]
    assert run.keys == kept_back.keys == ids[bookmark:]

    replay = run_tap(tmp_path, data_dir)  # a reset replays everything retained
    assert replay.keys == ids[segments[3].first_seq - 1 :]

    everything = run_tap(tmp_path, data_dir, state=state_at(len(ids)), retention_days=0)
    assert everything.records == []
    assert [s.first_seq for s in list_segments(DataDir(data_dir).spool)] == [segments[-1].first_seq]


def test_a_bookmark_past_the_spool_fails_loudly_and_removes_nothing(tmp_path):
    data_dir, ids, segments = segmented_spool(tmp_path, 20, days_old=30)
    assert len(segments) > 2

    assert run_tap(tmp_path, data_dir, state=state_at(len(ids)), retention_days=60).records == []
    run = run_tap(tmp_path, data_dir, state=state_at(len(ids) + 500), check=False, retention_days=0)
    assert run.returncode != 0
    assert "was replaced or reset" in run.stderr
    assert list_segments(DataDir(data_dir).spool) == segments  # a foreign state deletes nothing


def test_a_data_dir_without_a_spool_is_an_error(tmp_path):
    run = run_tap(tmp_path, tmp_path / "not-the-data-dir", check=False)
    assert run.returncode != 0
    assert "no spool at" in run.stderr
    assert not (tmp_path / "not-the-data-dir").exists()
