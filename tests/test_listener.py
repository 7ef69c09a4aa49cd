"""The webhook endpoint over real HTTP: every answer of issue 2, and what reaches the spool.

Each refusal is checked for its exact status and JSON error code, and for leaving
the spool byte-for-byte as it was. Most tests share one listener (a module
fixture) to stay fast; tests that need their own settings start their own.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tap_vero_webhook.data_dir import DataDir
from tests.helpers import (
    JSON_HEADERS,
    assert_error,
    create_token,
    create_token_with_id,
    json_body_of,
    mounted_tmpfs,
    raw_http,
    run_cli,
    running_listener,
    spool_files,
    spooled,
    start_listener,
    status_of,
)
from tests.vero_events import event_stream, vero_examples


def post_raw(listener, body: bytes, headers: dict | None = None, token: str | None = None):
    return requests.post(
        listener.hook_url(token),
        data=body,
        headers=JSON_HEADERS if headers is None else headers,
        timeout=30,
    )


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One listener for the many one-request checks, with a 100 kB body cap."""
    data_dir = tmp_path_factory.mktemp("shared") / "data"
    with running_listener(data_dir, "--max-body-bytes", "100000", new_token=True) as running:
        token = running.tokens[0]
        assert running.post(vero_examples()[0]).status_code == 200  # the spool is not empty
        yield running
        disconnect_mid_request(running.base_url, token)
    assert token not in running.log()  # after every request of this module, and those
    assert token.encode() not in b"".join(spool_files(data_dir).values())


@pytest.fixture
def unchanged_spool(shared):
    """Asserts, after the test, that the shared spool is byte-for-byte what it was."""
    before = spool_files(shared.data_dir)
    yield shared
    assert spool_files(shared.data_dir) == before


# --- what is accepted ------------------------------------------------------------------


def test_every_vero_example_is_accepted_and_spooled_exactly_as_posted(listener):
    examples = vero_examples()
    ids = []
    for example in examples:
        response = listener.post(example)
        assert response.status_code == 200
        answer = response.json()
        assert answer["accepted"] == 1
        ids.extend(answer["ids"])
    envelopes = spooled(listener.data_dir)
    assert [envelope["event"] for envelope in envelopes] == examples
    assert [envelope["id"] for envelope in envelopes] == ids
    assert [envelope["seq"] for envelope in envelopes] == list(range(1, len(examples) + 1))
    assert all(envelope["received_at"].endswith("Z") for envelope in envelopes)


def test_an_array_of_objects_is_accepted_whole_in_order(shared):
    before = len(spooled(shared.data_dir))
    events = event_stream(25)
    response = shared.post(events)
    assert response.status_code == 200
    ids = response.json()["ids"]
    assert response.json()["accepted"] == 25
    assert len(set(ids)) == 25
    new = spooled(shared.data_dir)[before:]
    assert [envelope["event"] for envelope in new] == events
    assert [envelope["id"] for envelope in new] == ids
    seqs = [envelope["seq"] for envelope in new]
    assert seqs == list(range(seqs[0], seqs[0] + 25))


def test_text_with_nul_is_accepted_and_spooled(shared):
    body = b'{"type":"opened","note":"a\\u0000b","user":{"id":1}}'
    response = post_raw(shared, body)
    assert response.status_code == 200
    envelope = spooled(shared.data_dir)[-1]
    assert envelope["id"] == response.json()["ids"][0]
    assert envelope["event"]["note"] == "a\x00b"


def test_big_integers_stay_exact_in_the_spool(shared):
    big = 123456789012345678901234567890123456789
    body = b'{"type":"sent","user":{"id":%d},"n":-%d}' % (big, big)
    response = post_raw(shared, body)
    assert response.status_code == 200
    segment = sorted(DataDir(shared.data_dir).spool.glob("*.jsonl"))[-1]
    last_line = segment.read_bytes().splitlines()[-1]
    assert b'"id":%d' % big in last_line
    assert b'"n":-%d' % big in last_line
    event = spooled(shared.data_dir)[-1]["event"]
    assert event["user"]["id"] == big
    assert event["n"] == -big


def test_unicode_passes_through_unchanged(shared):
    event = {"type": "user_created", "user": {"id": "ü", "name": "Zoë 李 ✓ 😀 \u2028"}}
    for body in (
        json.dumps(event, ensure_ascii=False).encode(),  # raw UTF-8
        json.dumps(event).encode(),  # \u escapes, surrogate pairs included
    ):
        response = post_raw(shared, body, {"Content-Type": "application/json; charset=UTF-8"})
        assert response.status_code == 200
        assert spooled(shared.data_dir)[-1]["event"] == event


def test_healthz_says_ok_and_writable(shared):
    response = requests.get(f"{shared.base_url}/healthz", timeout=10)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "spool_writable": True}


# --- what is refused, and leaves the spool alone ----------------------------------------

BAD_BODIES = [
    pytest.param(b'{"type": "opened",', "invalid_json", id="malformed"),
    pytest.param(b"", "empty_body", id="empty"),
    pytest.param(b"  \n ", "empty_body", id="whitespace-only"),
    pytest.param(b'{"a": NaN}', "invalid_json", id="NaN"),
    pytest.param(b'{"a": Infinity}', "invalid_json", id="Infinity"),
    pytest.param(b'{"a": -Infinity}', "invalid_json", id="-Infinity"),
    pytest.param(b'{"a": "caf\xe9"}', "invalid_utf8", id="latin-1-byte"),
    pytest.param(b'{"a": "\xed\xa0\x80"}', "invalid_utf8", id="utf8-encoded-surrogate"),
    pytest.param(b'{"a": "\\ud800"}', "invalid_unicode", id="lone-high-surrogate"),
    pytest.param(b'{"a": "x\\udc00y"}', "invalid_unicode", id="lone-low-surrogate"),
    pytest.param(b'[{"a": 1}, {"b": "\\ud83d"}]', "invalid_unicode", id="surrogate-in-2nd-event"),
    pytest.param(b"\xef\xbb\xbf{}", "invalid_json", id="BOM"),
    pytest.param(b'{"a": 1, "a": 2}', "duplicate_key", id="duplicate-key"),
    pytest.param(b'{"u": {"id": 1, "id": 1}}', "duplicate_key", id="nested-duplicate-key"),
    pytest.param(b'"an event"', "wrong_shape", id="string"),
    pytest.param(b"42", "wrong_shape", id="number"),
    pytest.param(b"null", "wrong_shape", id="null"),
    pytest.param(b'[{"a": 1}, 2]', "wrong_shape", id="array-with-a-number"),
    pytest.param(b'[{"a": 1}, [{}]]', "wrong_shape", id="array-with-an-array"),
    pytest.param(b"[]", "wrong_shape", id="empty-array"),
    pytest.param(b'{"a": 1e400}', "number_out_of_range", id="1e400"),
    pytest.param(b'{"a": -1e400}', "number_out_of_range", id="-1e400"),
    pytest.param(b'{"a": 1} {"b": 2}', "invalid_json", id="two-documents"),
    pytest.param(b"[" * 40_000 + b"]" * 40_000, "too_deep", id="deep-nesting"),
    pytest.param(b'{"a":' * 129 + b"1" + b"}" * 129, "too_deep", id="129-levels"),
]


@pytest.fixture
def answers(app, client):
    """The in-process app's test client (answers only; sockets are tested for real above
    and below), asserting after the test that its spool is byte-for-byte what it was."""
    before = spool_files(app.state.settings.data_dir)
    yield client
    assert spool_files(app.state.settings.data_dir) == before


def post_to(client, app, body: bytes, headers: dict | None = None, token: str | None = None):
    token = token or app.config["TEST_TOKEN"]
    return client.post(
        f"/hooks/{token}", data=body, headers=JSON_HEADERS if headers is None else headers
    )


@pytest.mark.parametrize(("body", "code"), BAD_BODIES)
def test_a_body_that_is_not_events_gets_400(app, answers, body, code):
    assert_error(post_to(answers, app, body), 400, code)


def test_an_array_with_one_bad_event_stores_none_of_them(app, answers):
    body = json.dumps([*event_stream(5), "not an event"]).encode()
    assert_error(post_to(answers, app, body), 400, "wrong_shape")


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        pytest.param({"Content-Type": "text/plain"}, "unsupported_content_type", id="text"),
        pytest.param(
            {"Content-Type": "application/x-www-form-urlencoded"},
            "unsupported_content_type",
            id="form",
        ),
        pytest.param({}, "unsupported_content_type", id="missing"),
        pytest.param(
            {"Content-Type": "application/json; charset=latin-1"}, "unsupported_charset", id="l1"
        ),
        pytest.param(
            {"Content-Type": "application/json; charset=utf-16"}, "unsupported_charset", id="u16"
        ),
    ],
)
def test_a_wrong_or_missing_content_type_gets_415(app, answers, headers, code):
    response = post_to(answers, app, json.dumps(vero_examples()[0]).encode(), headers)
    assert_error(response, 415, code)


def test_an_unknown_token_gets_401(app, answers):
    response = post_to(answers, app, b"{}", token=secrets.token_urlsafe(32))
    assert_error(response, 401, "invalid_token")


def test_a_get_or_put_on_a_webhook_url_gets_405_with_allow(app, answers):
    url = f"/hooks/{app.config['TEST_TOKEN']}"
    for response in (answers.get(url), answers.put(url, json={})):
        assert_error(response, 405, "method_not_allowed")
        assert response.headers["Allow"] == "POST"


@pytest.mark.parametrize("path", ["/", "/hooks", "/hooks/", "/nope", "/healthz/x"])
def test_other_paths_get_404(answers, path):
    assert_error(answers.post(path, json={}), 404, "not_found")
    assert_error(answers.get(path), 404, "not_found")


def test_the_factory_wires_the_endpoints_and_owns_its_state(app):
    """create_app builds one app per call, with its own state, and exactly these routes."""
    rules = {(rule.rule, method) for rule in app.url_map.iter_rules() for method in rule.methods}
    assert rules >= {("/hooks/<path:token>", "POST"), ("/healthz", "GET"), ("/metrics", "GET")}
    assert {rule.rule for rule in app.url_map.iter_rules()} == {
        "/hooks/<path:token>",
        "/healthz",
        "/metrics",
        "/static/<path:filename>",
    }
    assert app.state.settings.max_body_bytes == 100_000
    assert app.state.spool.spool_dir == DataDir(app.state.settings.data_dir).spool


def test_a_content_length_over_the_cap_gets_413_without_the_body_being_read(unchanged_spool):
    """Headers announce a terabyte, 2 bytes follow: the answer comes at once, not after 1 TB
    (waiting for the body would end, after the 60 s channel timeout, in no answer)."""
    request = (
        f"POST /hooks/{unchanged_spool.tokens[0]} HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000000000000\r\n\r\n{}"
    ).encode()
    raw = raw_http(unchanged_spool.base_url, request)
    status, answer = status_of(raw), json_body_of(raw)
    assert status == 413
    assert answer["error"]["code"] == "body_too_large"
    assert "100000" in answer["error"]["message"]


def test_a_chunked_body_over_the_cap_gets_413(unchanged_spool):
    def chunks():
        yield b'{"type": "sent", "pad": "'
        for _ in range(30):
            yield b"x" * 10_000
        yield b'"}'

    response = requests.post(
        unchanged_spool.hook_url(), data=chunks(), headers=JSON_HEADERS, timeout=30
    )
    assert_error(response, 413, "body_too_large")


def test_a_chunked_body_under_the_cap_is_accepted(shared):
    def chunks():
        yield b'{"type": "sent", '
        yield b'"user": {"id": 7}}'

    response = requests.post(shared.hook_url(), data=chunks(), headers=JSON_HEADERS, timeout=30)
    assert response.status_code == 200
    assert spooled(shared.data_dir)[-1]["event"] == {"type": "sent", "user": {"id": 7}}


def test_a_body_just_over_the_cap_gets_413_and_one_at_the_cap_is_accepted(shared):
    def body_of(size: int) -> bytes:
        prefix, suffix = b'{"pad":"', b'"}'
        return prefix + b"x" * (size - len(prefix) - len(suffix)) + suffix

    before = spool_files(shared.data_dir)
    assert_error(post_raw(shared, body_of(100_001)), 413, "body_too_large")
    assert spool_files(shared.data_dir) == before
    assert post_raw(shared, body_of(100_000)).status_code == 200


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.one_of(
        st.binary(max_size=300),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
            lambda children: (
                st.lists(children, max_size=4)
                | st.dictionaries(st.text(max_size=8), children, max_size=4)
            ),
            max_leaves=12,
        ).map(lambda value: json.dumps(value).encode()),
    )
)
def test_no_input_gets_a_500(shared, body):
    response = post_raw(shared, body)
    assert response.status_code in (200, 400), response.text
    assert response.headers["Content-Type"].startswith("application/json")
    if response.status_code == 400:
        assert response.json()["error"]["code"]


# --- tokens ---------------------------------------------------------------------------


def test_a_revoked_token_gets_the_same_401_as_an_unknown_one_on_the_next_request(listener):
    second, second_id = create_token_with_id(listener.data_dir)
    assert post_raw(listener, b'{"a": 1}', token=second).status_code == 200
    run_cli("token", "revoke", second_id, "--data-dir", str(listener.data_dir))
    before = spool_files(listener.data_dir)
    revoked = post_raw(listener, b'{"a": 2}', token=second)
    unknown = post_raw(listener, b'{"a": 2}', token=secrets.token_urlsafe(32))
    assert_error(revoked, 401, "invalid_token")
    assert revoked.json() == unknown.json()
    assert spool_files(listener.data_dir) == before
    assert post_raw(listener, b'{"a": 3}').status_code == 200  # the other token still works


# --- 503 when the spool cannot be written -------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path):
    """A 256 kB tmpfs as the data dir."""
    with mounted_tmpfs(tmp_path / "data", "256k") as mount_point:
        yield mount_point


def test_a_full_disk_gets_503_leaves_the_spool_intact_and_recovers(tiny_disk):
    token = create_token(tiny_disk)
    with running_listener(tiny_disk) as running:
        first = running.post(vero_examples()[0], token=token)
        assert first.status_code == 200
        filler = tiny_disk / "filler"
        with open(filler, "wb", buffering=0) as handle:
            try:
                while True:
                    handle.write(b"\0" * 4096)
            except OSError:
                pass
        before = spool_files(tiny_disk)
        big_event = {"type": "sent", "pad": "x" * 20_000}  # needs fresh pages, there are none
        refused = running.post(big_event, token=token)
        assert_error(refused, 503, "spool_unavailable")
        assert spool_files(tiny_disk) == before
        assert [e["id"] for e in spooled(tiny_disk)] == first.json()["ids"]
        health = requests.get(f"{running.base_url}/healthz", timeout=10)
        assert health.status_code == 503
        assert health.json()["spool_writable"] is False

        filler.unlink()
        accepted = running.post(big_event, token=token)
        assert accepted.status_code == 200
        envelopes = spooled(tiny_disk)
        assert [e["id"] for e in envelopes] == first.json()["ids"] + accepted.json()["ids"]
        assert envelopes[-1]["event"] == big_event
        assert envelopes[-1]["seq"] > envelopes[0]["seq"]
        assert requests.get(f"{running.base_url}/healthz", timeout=10).status_code == 200
    assert token not in running.log()


# --- secrets, files, binding -------------------------------------------------------------


def disconnect_mid_request(base_url: str, token: str) -> None:
    """Half a body, then gone; and a whole request whose sender leaves before the answer."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"POST /hooks/{token} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            'Content-Length: 500\r\n\r\n{"type": "se'.encode()
        )
    for _ in range(10):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            sock.sendall(
                f"POST /hooks/{token} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                "Content-Length: 2\r\n\r\n{}".encode()
            )


def test_tokens_never_reach_the_log_the_spool_or_an_error_body(tmp_path):
    data_dir = tmp_path / "data"
    token = create_token(data_dir)
    revoked, revoked_id = create_token_with_id(data_dir)
    for log_format in ("text", "json"):
        running = start_listener(
            data_dir,
            "--log-format",
            log_format,
            "--log-level",
            "DEBUG",
            "--max-body-bytes",
            "10000",
        )
        running.tokens.append(token)
        bodies = []
        answers = [
            running.post({"type": "sent", "echo": token}),  # a token in the payload is data
            post_raw(running, b"{nope"),
            post_raw(running, b"{}", {"Content-Type": "text/plain"}),
            post_raw(running, b"{}", token=token + "x"),
            post_raw(running, b"{}", token=token + "/../../x"),
            requests.get(running.hook_url(), timeout=10),
            requests.post(f"{running.base_url}/hooks//{token}", json={}, timeout=10),
            requests.post(f"{running.base_url}/hooks/{token}?t={token}", json={}, timeout=10),
            requests.post(
                running.hook_url(),
                data=(b"x" * 1000 for _ in range(20)),
                headers=JSON_HEADERS,
                timeout=30,
            ),
        ]
        if log_format == "text":
            run_cli("token", "revoke", revoked_id, "--data-dir", str(data_dir))
        answers.append(post_raw(running, b"{}", token=revoked))
        disconnect_mid_request(running.base_url, token)
        time.sleep(0.5)
        assert requests.get(f"{running.base_url}/healthz", timeout=10).status_code == 200
        running.stop()
        for answer in answers:
            assert answer.status_code != 500
            bodies.append(answer.content)
            assert "Location" not in answer.headers or token not in answer.headers["Location"]
        log = running.log()
        assert "/hooks/<redacted>" in log
        for secret in (token, revoked):
            assert secret not in log
            assert all(secret.encode() not in body for body in bodies[1:])
    spool = b"".join(spool_files(data_dir).values())
    # only where the sender put it inside an event's own data
    assert spool.count(token.encode()) == 2
    assert revoked.encode() not in spool


def test_files_are_private_and_the_listener_binds_localhost(listener):
    assert listener.post(vero_examples()[0]).status_code == 200
    assert listener.base_url.startswith("http://127.0.0.1:")
    data_dir = listener.data_dir
    checked = []
    for root, dirs, files in os.walk(data_dir):
        for name in dirs:
            assert stat.S_IMODE((Path(root) / name).stat().st_mode) == 0o700, name
        for name in files:
            assert stat.S_IMODE((Path(root) / name).stat().st_mode) == 0o600, name
            checked.append(name)
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert "tokens.json" in checked
    assert "00000000000000000001.jsonl" in checked
    port = int(listener.base_url.rsplit(":", 1)[1])
    for address in other_local_addresses():
        with pytest.raises(OSError):
            socket.create_connection((address, port), timeout=2).close()


def other_local_addresses() -> list[str]:
    """This machine's non-loopback IPv4 addresses (the listener must not answer on them)."""
    if not shutil.which("hostname"):
        return []
    result = subprocess.run(["hostname", "-I"], capture_output=True, text=True)
    return [a for a in result.stdout.split() if "." in a and not a.startswith("127.")]
