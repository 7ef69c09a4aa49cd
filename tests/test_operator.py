"""The operator's view: request logs, the rejects folder, `vero-webhook report`, /metrics.

Everything runs against the real `vero-webhook serve` over HTTP and the real CLI.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tap_vero_webhook.data_dir import DataDir
from tap_vero_webhook.listener.access_log import AccessLog
from tap_vero_webhook.listener.logs import RedactTokens
from tap_vero_webhook.spool.local import segment_name
from tests.helpers import (
    TAP,
    VERO_WEBHOOK,
    create_token,
    fill_disk,
    mounted_tmpfs,
    run_cli,
    running_listener,
    token_id_of,
    wait_for,
)
from tests.vero_events import make_event

ACCESS = "tap_vero_webhook.access"


def access_lines(log: str) -> list[str]:
    """The access-log lines of webhook POSTs (not the fixture's /healthz probes)."""
    return [line for line in log.splitlines() if f" {ACCESS} POST " in line]


def key_values(line: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in line.split() if "=" in part)


def rejects_today(data_dir: Path) -> list[dict]:
    path = DataDir(data_dir).rejects / f"{datetime.now(UTC):%Y-%m-%d}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def scrape(listener) -> dict[str, float]:
    """Every sample of /metrics by name and labels, parsed by prometheus_client."""
    response = requests.get(f"{listener.base_url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


# --- logs ---------------------------------------------------------------------------


def test_each_request_logs_one_key_value_line_with_its_fields_and_never_the_token(listener):
    token_id = token_id_of(listener.data_dir, listener.tokens[0])
    stranger = "Zm9yZ2VkLXRva2VuLXRoYXQtbXVzdC1uZXZlci1iZS1sb2dnZWQ"
    assert listener.post([make_event("sent", 1), make_event("opened", 2)]).status_code == 200
    assert listener.post(b'{"type": "sent",').status_code == 400
    assert listener.post(make_event("sent", 3), token=stranger).status_code == 401

    lines = wait_for(
        lambda: len(access_lines(listener.log())) >= 3 and access_lines(listener.log())
    )
    accepted, malformed, unknown = (key_values(line) for line in lines[:3])
    assert accepted["status"] == "200"
    assert accepted["events"] == "2"
    assert int(accepted["bytes"]) > 100
    assert float(accepted["latency_ms"]) > 0
    assert accepted["token_id"] == token_id
    assert accepted["reason"] == "-"
    assert malformed["status"] == "400"
    assert malformed["reason"] == "invalid_json"
    assert malformed["events"] == "0"
    assert malformed["bytes"] == str(len(b'{"type": "sent",'))
    assert malformed["token_id"] == token_id
    assert unknown["status"] == "401"
    assert unknown["reason"] == "invalid_token"
    assert unknown["token_id"] == "-"
    assert all("POST /hooks/<redacted>" in line for line in lines[:3])

    listener.stop()
    log = listener.log()
    assert listener.tokens[0] not in log
    assert stranger not in log


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_access_lines_are_written_later_in_order_with_the_time_of_their_request():
    logger = logging.getLogger("tests.access_log")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    collect = Collect()
    logger.addHandler(collect)
    access = AccessLog(logger)
    try:
        noted_between = []
        for number in range(5):
            before = time.time()
            access.note("POST", "/hooks/<redacted>", 200, 10 + number, 1, None, "t1", None)
            noted_between.append((before, time.time()))
            time.sleep(0.01)
        assert wait_for(lambda: len(collect.records) == 5, timeout=5)
        assert [record.bytes for record in collect.records] == [10, 11, 12, 13, 14]
        for record, (before, after) in zip(collect.records, noted_between, strict=True):
            assert before <= record.created <= after
            assert record.msecs == int((record.created % 1) * 1000)
            assert record.getMessage() == "POST /hooks/<redacted>"

        logger.setLevel(logging.WARNING)  # access lines are INFO: nothing is even noted
        access.note("POST", "/hooks/<redacted>", 200, 99, 1, None, "t1", None)
        logger.setLevel(logging.INFO)
        access.note("GET", "/healthz", 200, 0, 0, None, None, None)
    finally:
        access.close()  # writes out what is still pending
        logger.removeHandler(collect)
    assert [record.bytes for record in collect.records] == [10, 11, 12, 13, 14, 0]


@pytest.mark.parametrize(
    ("message", "shown"),
    [
        ("POST /hooks/<redacted>", "POST /hooks/<redacted>"),
        ("POST /hooks/<redacted>?x=1", "POST /hooks/<redacted>?x=1"),
        ("POST /hooks/s3cret", "POST /hooks/<redacted>"),
        ("POST /hooks/<redacted>s3cret", "POST /hooks/<redacted>"),
        ("POST /hooks/<redacted>/s3cret", "POST /hooks/<redacted>"),
        ("pasted " + "A" * 43 + " here", "pasted <redacted> here"),
    ],
)
def test_the_log_filter_redacts_any_token_left_in_a_line(message, shown):
    record = logging.LogRecord("x", logging.INFO, "f", 1, "%s", (message,), None)
    assert RedactTokens().filter(record)
    assert record.getMessage() == shown


def test_json_log_format_has_the_same_fields(data_dir):
    token = create_token(data_dir)
    with running_listener(data_dir, "--log-format", "json") as running:
        running.tokens.append(token)
        assert running.post(make_event("clicked", 5)).status_code == 200
        assert running.post(b"[]").status_code == 400
    records = [json.loads(line) for line in running.log().splitlines() if line.startswith("{")]
    access = [r for r in records if r["logger"] == ACCESS and r["method"] == "POST"]
    assert [record["status"] for record in access] == [200, 400]
    assert access[0]["events"] == 1
    assert access[0]["token_id"] == token_id_of(data_dir, token)
    assert access[0]["reason"] is None
    assert access[0]["latency_ms"] > 0
    assert access[1]["reason"] == "wrong_shape"
    assert access[1]["bytes"] == 2
    assert token not in running.log()


# --- the rejects folder ---------------------------------------------------------------


def test_refused_requests_are_kept_with_reason_size_token_id_and_capped_body(data_dir):
    token = create_token(data_dir)
    with running_listener(
        data_dir, "--rejects-body-cap", "1000", "--max-body-bytes", "100000"
    ) as running:
        running.tokens.append(token)
        token_id = token_id_of(data_dir, token)
        long_invalid = ('{"type": "sent", "note": "x' + "é" * 3000).encode()  # 6027 bytes, no end
        not_utf8 = b'{"type": "caf\xe9"}'
        assert running.post(long_invalid).status_code == 400
        assert running.post(not_utf8).status_code == 400
        assert running.post(b"hello", headers={"Content-Type": "text/plain"}).status_code == 415
        assert running.post(b'{"type": "sent"}', token="not-a-token").status_code == 401
        too_big = running.post(b"[" + b" " * 200_000 + b"]")
        assert too_big.status_code == 413  # waitress refuses it before the app reads it
        assert running.post(make_event("sent", 9)).status_code == 200  # not a reject
        assert requests.get(f"{running.base_url}/nope", timeout=5).status_code == 404

    records = rejects_today(data_dir)
    assert [(r["reason"], r["status"]) for r in records] == [
        ("invalid_json", 400),
        ("invalid_utf8", 400),
        ("unsupported_content_type", 415),
        ("invalid_token", 401),
        ("body_too_large", 413),
    ]
    invalid, latin1, plain, stranger, big = records
    assert invalid["size"] == len(long_invalid)
    assert invalid["token_id"] == token_id
    assert invalid["content_type"] == "application/json"
    assert invalid["body_encoding"] == "utf-8"
    assert invalid["body_truncated"] is True
    # the cap cut a two-byte "é" in half: the half is dropped, the text kept
    assert invalid["body"] == long_invalid[:999].decode()
    assert invalid["message"].startswith("malformed JSON")
    assert latin1["body_encoding"] == "base64"
    assert base64.b64decode(latin1["body"]) == not_utf8
    assert latin1["body_truncated"] is False
    assert plain["body"] == "hello"
    assert plain["content_type"] == "text/plain"
    assert stranger["token_id"] is None
    assert stranger["body"] == '{"type": "sent"}'
    assert big["size"] == 200_002
    assert big["token_id"] == token_id
    assert big["body"] is None

    text = DataDir(data_dir).rejects.joinpath(f"{datetime.now(UTC):%Y-%m-%d}.jsonl").read_text()
    assert token not in text
    assert "/hooks/" not in text
    assert stat.S_IMODE(os.stat(DataDir(data_dir).rejects).st_mode) == 0o700
    for path in DataDir(data_dir).rejects.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_rejects_older_than_the_retention_are_removed_at_start(data_dir):
    rejects = DataDir(data_dir).rejects
    rejects.mkdir(parents=True)
    today = datetime.now(UTC).date()
    old = rejects / f"{today - timedelta(days=4):%Y-%m-%d}.jsonl"
    recent = rejects / f"{today - timedelta(days=2):%Y-%m-%d}.jsonl"
    for path in (old, recent):
        path.write_text('{"reason": "invalid_json", "status": 400}\n')
    with running_listener(data_dir, "--rejects-retention-days", "3", new_token=True):
        pass
    assert not old.exists()
    assert recent.exists()


def test_a_full_rejects_day_only_counts_and_an_unwritable_folder_never_turns_4xx_into_500(
    tmp_path,
):
    capped = tmp_path / "capped"
    token = create_token(capped)
    with running_listener(capped, "--rejects-max-bytes-per-day", "1500") as running:
        running.tokens.append(token)
        for _ in range(5):
            assert running.post(b"{" + b" " * 400).status_code == 400
        samples = scrape(running)
    kept = rejects_today(capped)
    assert 1 <= len(kept) < 5
    assert samples["vero_webhook_rejects_recorded_total"] == len(kept)
    assert samples["vero_webhook_rejects_unrecorded_total"] == 5 - len(kept)
    assert samples["vero_webhook_requests_rejected_total{reason=invalid_json}"] == 5

    broken = tmp_path / "broken"
    token = create_token(broken)
    DataDir(broken).rejects.write_text("a file where the folder should be")
    with running_listener(broken) as running:
        running.tokens.append(token)
        assert running.post(b"{").status_code == 400
        assert running.post(b"{}", token="wrong").status_code == 401
        assert running.post(make_event("sent", 1)).status_code == 200
        samples = scrape(running)
    assert samples["vero_webhook_rejects_unrecorded_total"] == 2
    assert "could not be recorded" in running.log()


# --- /metrics -------------------------------------------------------------------------


def test_metrics_count_accepted_events_rejects_commits_and_spool_size(listener):
    before = scrape(listener)
    assert before["vero_webhook_events_accepted_total"] == 0
    assert before["vero_webhook_spool_segments"] == 1

    assert listener.post([make_event("sent", 1), make_event("delivered", 2)]).status_code == 200
    assert listener.post(make_event("opened", 3)).status_code == 200
    assert listener.post(b"{").status_code == 400
    assert listener.post(b"{}", token="wrong").status_code == 401
    assert listener.post(b"{}", token="wrong").status_code == 401
    after = scrape(listener)

    assert after["vero_webhook_events_accepted_total"] == 3
    assert after["vero_webhook_requests_accepted_total"] == 2
    assert after["vero_webhook_requests_rejected_total{reason=invalid_json}"] == 1
    assert after["vero_webhook_requests_rejected_total{reason=invalid_token}"] == 2
    assert after["vero_webhook_spool_commit_events_count"] == 2
    assert after["vero_webhook_spool_commit_events_sum"] == 3
    assert after["vero_webhook_spool_commit_seconds_count"] == 2
    assert 0 < after["vero_webhook_spool_commit_seconds_sum"] < 30
    assert after["vero_webhook_spool_commit_events_bucket{le=+Inf}"] == 2
    spool_bytes = sum(p.stat().st_size for p in DataDir(listener.data_dir).spool.glob("*.jsonl"))
    assert after["vero_webhook_spool_bytes"] == spool_bytes > 0
    assert after["vero_webhook_spool_segments"] == 1
    assert listener.tokens[0] not in requests.get(f"{listener.base_url}/metrics", timeout=5).text


def test_metrics_can_be_turned_off(data_dir):
    with running_listener(data_dir, "--no-metrics") as running:
        assert requests.get(f"{running.base_url}/metrics", timeout=5).status_code == 404


def test_two_apps_in_one_process_keep_their_own_metrics(tmp_path):
    from tap_vero_webhook.listener.app import create_app
    from tap_vero_webhook.listener.settings import ListenerSettings

    first_dir, second_dir = tmp_path / "one", tmp_path / "two"
    first_token = create_token(first_dir)
    first = create_app(ListenerSettings(first_dir))
    second = create_app(ListenerSettings(second_dir))
    try:
        answer = first.test_client().post(f"/hooks/{first_token}", json=make_event("sent", 1))
        assert answer.status_code == 200
        first_metrics = first.test_client().get("/metrics").get_data(as_text=True)
        second_metrics = second.test_client().get("/metrics").get_data(as_text=True)
    finally:
        first.state.close()
        second.state.close()
    assert "vero_webhook_events_accepted_total 1.0" in first_metrics
    assert "vero_webhook_events_accepted_total 0.0" in second_metrics


# --- vero-webhook report ------------------------------------------------------------


def spool_lines(data_dir: Path) -> list[bytes]:
    lines = []
    for path in sorted(DataDir(data_dir).spool.glob("*.jsonl")):
        lines += path.read_bytes().splitlines(keepends=True)
    return lines


def test_report_counts_what_was_posted_refused_and_loaded(listener, tmp_path):
    posted = [make_event(kind, n) for n, kind in enumerate(["sent"] * 3 + ["opened"] * 2)]
    posted.append(make_event("user_created", 9))
    for event in posted[:4]:
        assert listener.post(event).status_code == 200
    assert listener.post(posted[4:]).status_code == 200
    assert listener.post(b"{").status_code == 400
    assert listener.post(b"[]").status_code == 400
    assert listener.post(b"{}", token="wrong").status_code == 401

    state_file = tmp_path / "state.json"
    state_file.write_text(
        json.dumps(
            {
                "bookmarks": {
                    "data": {"replication_key": "_sdc_webhook_sequence", "replication_key_value": 4}
                }
            }
        )
    )
    data_dir = str(listener.data_dir)
    report = json.loads(
        run_cli("report", "--data-dir", data_dir, "--state-file", str(state_file), "--json").stdout
    )

    today = f"{datetime.now(UTC):%Y-%m-%d}"
    assert report["accepted"]["total"] == 6
    assert report["accepted"]["by_type"] == {"opened": 2, "sent": 3, "user_created": 1}
    assert report["accepted"]["by_day"] == [
        {"day": today, "events": 6, "by_type": {"opened": 2, "sent": 3, "user_created": 1}}
    ]
    reasons = {(r["reason"], r["status"]): r["requests"] for r in report["rejected"]["by_reason"]}
    assert reasons == {("invalid_json", 400): 1, ("wrong_shape", 400): 1, ("invalid_token", 401): 1}
    assert report["rejected"]["total"] == 3

    lines = spool_lines(listener.data_dir)
    waiting = [line for line in lines if json.loads(line)["seq"] > 4]
    backlog = report["backlog"]
    assert backlog["loaded_through_seq"] == 4
    assert backlog["events"] == 2
    assert backlog["bytes"] == sum(len(line) for line in waiting)
    assert backlog["oldest_received_at"] == json.loads(waiting[0])["received_at"]
    assert 0 <= backlog["oldest_age_seconds"] < 120
    assert report["spool"]["events"] == 6
    assert report["spool"]["bytes"] == sum(len(line) for line in lines)

    # without a state, nothing counts as loaded; the table names every section
    table = run_cli("report", "--data-dir", data_dir).stdout
    assert "ACCEPTED EVENTS (6 in 1 spool segment," in table
    assert f"{today}  sent" in table
    assert "invalid_token" in table
    assert "events waiting        6" in table


def test_report_splits_days_and_takes_the_last_state_of_target_output(tmp_path):
    """A spool written by hand over two days; the state as a target prints it, one per line."""
    data_dir = tmp_path / "data"
    DataDir(data_dir).spool.mkdir(parents=True)
    envelopes = [
        (1, "2026-11-28T23:59:59.000000Z", {"type": "sent"}),
        (2, "2026-11-29T00:00:00.000000Z", {"type": "sent"}),
        (3, "2026-11-29T10:00:00.000000Z", {"type": "bounced"}),
        (4, "2026-11-29T11:00:00.000000Z", {"no_type": True}),
    ]
    (DataDir(data_dir).spool / segment_name(1)).write_text(
        "".join(
            json.dumps({"seq": s, "received_at": t, "id": f"id-{s}", "event": e}).replace(" ", "")
            + "\n"
            for s, t, e in envelopes
        )
    )
    target_output = tmp_path / "state.jsonl"
    target_output.write_text(
        '{"bookmarks": {"data": {"replication_key_value": 1}}}\n'
        '{"bookmarks": {"data": {"replication_key_value": 2}}}\n'
    )
    report = json.loads(
        run_cli(
            "report", "--data-dir", str(data_dir), "--state-file", str(target_output), "--json"
        ).stdout
    )
    assert report["accepted"]["by_day"] == [
        {"day": "2026-11-28", "events": 1, "by_type": {"sent": 1}},
        {"day": "2026-11-29", "events": 3, "by_type": {"(no type)": 1, "bounced": 1, "sent": 1}},
    ]
    assert report["backlog"]["loaded_through_seq"] == 2
    assert report["backlog"]["events"] == 2
    assert report["backlog"]["oldest_received_at"] == "2026-11-29T10:00:00.000000Z"
    assert report["rejected"] == {"total": 0, "by_reason": []}


def test_report_refuses_two_state_sources_and_a_state_on_another_key(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    state = tmp_path / "state.json"
    state.write_text(
        '{"bookmarks": {"data": {"replication_key": "id", "replication_key_value": 3}}}'
    )
    both = run_cli(
        "report", "--data-dir", str(data_dir), "--state-file", str(state),
        "--meltano-project", str(tmp_path), check=False,
    )  # fmt: skip
    assert both.returncode == 2
    assert "not both" in both.stderr
    wrong_key = run_cli(
        "report", "--data-dir", str(data_dir), "--state-file", str(state), check=False
    )
    assert wrong_key.returncode == 1
    assert "_sdc_webhook_sequence" in wrong_key.stderr


@pytest.mark.slow
def test_report_reads_the_state_meltano_saved(listener, tmp_path):
    for n in range(5):
        assert listener.post(make_event("delivered", n)).status_code == 200
    project = tmp_path / "project"
    project.mkdir()
    (project / "meltano.yml").write_text(
        "default_environment: prod\n"
        "project_id: 5d0c6a52-8c1e-4b9e-9a51-3f3a6a7c0b11\n"
        "send_anonymous_usage_stats: false\n"
        "environments:\n- name: prod\n"
    )
    env = {**os.environ, "MELTANO_SEND_ANONYMOUS_USAGE_STATS": "false"}
    state = {
        "singer_state": {
            "bookmarks": {
                "data": {"replication_key": "_sdc_webhook_sequence", "replication_key_value": 3}
            }
        }
    }
    meltano = str(Path(VERO_WEBHOOK).parent / "meltano")
    subprocess.run(
        [meltano, "state", "set", "--force", "prod:tap-vero-webhook-to-target-postgres",
         json.dumps(state)],
        cwd=project, env=env, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    done = subprocess.run(
        [VERO_WEBHOOK, "report", "--data-dir", str(listener.data_dir),
         "--meltano-project", str(project), "--json"],
        env=env, check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    report = json.loads(done.stdout)
    assert report["backlog"]["state_source"] == (
        "Meltano state prod:tap-vero-webhook-to-target-postgres"
    )
    assert report["backlog"]["loaded_through_seq"] == 3
    assert report["backlog"]["events"] == 2


# --- the tap run's log line ----------------------------------------------------------


def test_a_tap_run_logs_events_emitted_position_range_and_time_and_report_follows_it(
    listener, tmp_path
):
    for n in range(5):
        assert listener.post(make_event("converted", n)).status_code == 200
    config, state = tmp_path / "tap.json", tmp_path / "state.json"
    config.write_text(json.dumps({"data_dir": str(listener.data_dir)}))
    state.write_text(
        json.dumps({"bookmarks": {"data": {"replication_key": "_sdc_webhook_sequence",
                                           "replication_key_value": 2}}})
    )  # fmt: skip
    done = subprocess.run(
        [TAP, "--config", str(config), "--state", str(state)],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    runs = [line for line in done.stderr.splitlines() if "tap run:" in line]
    assert len(runs) == 1
    assert "emitted 3 events, seq 3..5 (after bookmark 2) in " in runs[0]
    assert "INFO" in runs[0]

    # the tap's last STATE, as a target would confirm it: nothing is left waiting
    last_state = [line for line in done.stdout.splitlines() if '"STATE"' in line][-1]
    confirmed = tmp_path / "confirmed.json"
    confirmed.write_text(last_state + "\n")
    report = json.loads(
        run_cli(
            "report", "--data-dir", str(listener.data_dir), "--state-file", str(confirmed),
            "--json",
        ).stdout
    )  # fmt: skip
    assert report["backlog"]["loaded_through_seq"] == 5
    assert report["backlog"]["events"] == 0
    assert report["backlog"]["oldest_received_at"] is None


@pytest.mark.slow
def test_on_a_full_disk_refusals_still_get_their_4xx_and_503_and_are_counted(tmp_path):
    """The data dir on a 512 KiB tmpfs, filled up: recording fails, the answer does not."""
    with mounted_tmpfs(tmp_path / "disk", "512k") as disk:
        data_dir = disk  # the listener's log goes beside it, off the small disk
        with running_listener(data_dir, new_token=True) as running:
            fill_disk(disk / "filler")
            assert running.post(b'{"type": "sent",' + b" " * 8000).status_code == 400
            assert running.post(b"{}", token="wrong").status_code == 401
            full = running.post(make_event("sent", 1))
            assert full.status_code == 503
            assert full.json()["error"]["code"] == "spool_unavailable"
            on_full_disk = scrape(running)
            (disk / "filler").unlink()
            assert running.post(b"{").status_code == 400
            after = scrape(running)
        assert on_full_disk["vero_webhook_requests_rejected_total{reason=spool_unavailable}"] == 1
        assert on_full_disk["vero_webhook_rejects_unrecorded_total"] == 3
        assert after["vero_webhook_rejects_recorded_total"] == 1
        assert [r["reason"] for r in rejects_today(data_dir)] == ["invalid_json"]
        assert "Traceback" not in running.log()
