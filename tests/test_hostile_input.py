"""Hostile input against the real listener: every malformed request gets its precise 4xx,
the listener stays up and answers others meanwhile, and nothing reaches the spool.

Raw sockets send what an HTTP client library would not (chunked bodies past the cap,
lying Content-Lengths, bytes trickled one at a time, hundreds of idle connections).
"""

from __future__ import annotations

import contextlib
import socket
import time

import pytest
import requests

from tests.helpers import post_head, raw_http, running_listener, spool_files, status_of

CAP = 1_000_000  # a 1 MB body cap keeps the oversized cases quick; the default is 20 MB


@pytest.fixture(scope="module")
def hostile_listener(tmp_path_factory):
    """One listener for the whole corpus, with a 1 MB cap and a 3 s channel timeout."""
    data_dir = tmp_path_factory.mktemp("hostile") / "data"
    args = ("--max-body-bytes", str(CAP), "--channel-timeout", "3", "--threads", "4")
    with running_listener(data_dir, *args, new_token=True) as running:
        yield running


def assert_healthy(listener) -> None:
    response = requests.get(f"{listener.base_url}/healthz", timeout=5)
    assert response.status_code == 200, response.text
    assert listener.process.poll() is None


# (name, body, expected status, expected error code)
MALFORMED_BODIES = [
    ("truncated object", b'{"type":"sent","user":{"id":1}', 400, "invalid_json"),
    ("truncated string", b'{"type":"se', 400, "invalid_json"),
    ("truncated array", b'[{"type":"sent"},', 400, "invalid_json"),
    ("invalid UTF-8", b'{"type":"sent","name":"\xff\xfe"}', 400, "invalid_utf8"),
    ("overlong UTF-8 slash", b'{"a":"\xc0\xaf"}', 400, "invalid_utf8"),
    ("UTF-16 text", '{"type":"sent"}'.encode("utf-16"), 400, "invalid_utf8"),
    ("byte-order mark", b'\xef\xbb\xbf{"type":"sent"}', 400, "invalid_json"),
    ("NaN", b'{"type":"sent","score":NaN}', 400, "invalid_json"),
    ("Infinity", b'{"type":"sent","score":Infinity}', 400, "invalid_json"),
    ("-Infinity", b'{"type":"sent","score":-Infinity}', 400, "invalid_json"),
    ("duplicate keys", b'{"type":"sent","type":"opened"}', 400, "duplicate_key"),
    ("nested duplicate keys", b'{"user":{"id":1,"id":2}}', 400, "duplicate_key"),
    ("100,000 nested arrays", b"[" * 100_000 + b"]" * 100_000, 400, "too_deep"),
    ("100,000 nested arrays, unclosed", b"[" * 99_999, 400, "too_deep"),
    ("100,000 nested objects", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, 400, "too_deep"),
    ("body over the cap", b'{"pad":"' + b"x" * CAP + b'"}', 413, "body_too_large"),
    ("1e400", b'{"type":"sent","n":1e400}', 400, "number_out_of_range"),
    ("-1e400", b'{"type":"sent","n":-1e400}', 400, "number_out_of_range"),
    ("5000-digit integer", b'{"type":"sent","n":' + b"9" * 5000 + b"}", 400, "number_out_of_range"),
    ("array with a number", b'[{"type":"sent"},2]', 400, "wrong_shape"),
    ("array with a string", b'[{"type":"sent"},"x"]', 400, "wrong_shape"),
    ("array with null", b'[{"type":"sent"},null]', 400, "wrong_shape"),
    ("array of arrays", b'[[{"type":"sent"}]]', 400, "wrong_shape"),
    ("empty array", b"[]", 400, "wrong_shape"),
    ("bare string", b'"sent"', 400, "wrong_shape"),
    ("bare null", b"null", 400, "wrong_shape"),
    ("bare number", b"42", 400, "wrong_shape"),
    ("lone surrogate escape", b'{"name":"\\ud800"}', 400, "invalid_unicode"),
    ("raw control character", b'{"name":"a\x01b"}', 400, "invalid_json"),
    ("NUL byte", b"\x00", 400, "invalid_json"),
    ("trailing garbage", b'{"type":"sent"} x', 400, "invalid_json"),
    ("two documents", b'{"type":"sent"}{"type":"opened"}', 400, "invalid_json"),
    ("single quotes", b"{'type':'sent'}", 400, "invalid_json"),
    ("empty body", b"", 400, "empty_body"),
    ("whitespace only", b" \r\n\t ", 400, "empty_body"),
]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [case[1:] for case in MALFORMED_BODIES],
    ids=[case[0] for case in MALFORMED_BODIES],
)
def test_malformed_body_is_refused_with_its_reason(hostile_listener, body, status, code):
    before = spool_files(hostile_listener.data_dir)
    response = hostile_listener.post(body)
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["error"]["code"] == code
    assert spool_files(hostile_listener.data_dir) == before
    assert_healthy(hostile_listener)


CONTENT_TYPES = [
    ("text/plain", "unsupported_content_type"),
    ("application/x-www-form-urlencoded", "unsupported_content_type"),
    ("multipart/form-data; boundary=x", "unsupported_content_type"),
    ("application/jsonx", "unsupported_content_type"),
    ("application/json; charset=latin-1", "unsupported_charset"),
    ("application/json; charset=utf-16", "unsupported_charset"),
    (None, "unsupported_content_type"),
]


@pytest.mark.parametrize(
    ("content_type", "code"), CONTENT_TYPES, ids=[c[0] or "missing" for c in CONTENT_TYPES]
)
def test_wrong_or_missing_content_type_is_refused(hostile_listener, content_type, code):
    before = spool_files(hostile_listener.data_dir)
    headers = {"Content-Type": content_type} if content_type else {}
    response = requests.post(
        hostile_listener.hook_url(), data=b'{"type":"sent"}', headers=headers, timeout=10
    )
    assert response.status_code == 415, response.text
    assert response.json()["error"]["code"] == code
    assert spool_files(hostile_listener.data_dir) == before
    assert_healthy(hostile_listener)


def test_declared_length_over_the_cap_is_refused_unread(hostile_listener):
    """A Content-Length over the cap gets 413 before a byte of the body is sent. (Had the
    listener waited for the body, the 3 s channel timeout would close the connection
    with no answer at all.)"""
    before = spool_files(hostile_listener.data_dir)
    head = post_head(
        hostile_listener.tokens[0], "Content-Type: application/json", f"Content-Length: {10**12}"
    )
    answer = raw_http(hostile_listener.base_url, head)
    assert status_of(answer) == 413, answer[:300]
    assert b'"body_too_large"' in answer
    assert spool_files(hostile_listener.data_dir) == before
    assert_healthy(hostile_listener)


def test_chunked_body_past_the_cap_is_refused(hostile_listener):
    """Transfer-Encoding: chunked carries no length up front; the cap still holds."""
    before = spool_files(hostile_listener.data_dir)
    head = post_head(
        hostile_listener.tokens[0], "Content-Type: application/json", "Transfer-Encoding: chunked"
    )
    chunk = b'{"type":"sent","pad":"' + b"x" * 30_000 + b'"}'
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(40))  # 1.2 MB
    answer = raw_http(hostile_listener.base_url, head + chunks + b"0\r\n\r\n")
    assert status_of(answer) == 413, answer[:300]
    assert b'"body_too_large"' in answer
    assert spool_files(hostile_listener.data_dir) == before
    assert_healthy(hostile_listener)


def test_chunked_body_under_the_cap_is_accepted(hostile_listener):
    """The control for the case above: chunked encoding itself is fine."""
    head = post_head(
        hostile_listener.tokens[0],
        "Content-Type: application/json",
        "Transfer-Encoding: chunked",
        "Connection: close",
    )
    body = b'{"type":"sent","user":{"id":7}}'
    answer = raw_http(
        hostile_listener.base_url, head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    )
    assert status_of(answer) == 200, answer[:300]
    spooled = b"".join(spool_files(hostile_listener.data_dir).values())
    assert b'"event":{"type":"sent","user":{"id":7}}}\n' in spooled


def test_malformed_chunked_encoding_is_refused(hostile_listener):
    before = spool_files(hostile_listener.data_dir)
    head = post_head(
        hostile_listener.tokens[0], "Content-Type: application/json", "Transfer-Encoding: chunked"
    )
    answer = raw_http(hostile_listener.base_url, head + b"zz\r\n{}\r\n0\r\n\r\n")
    assert status_of(answer) == 400, answer[:300]
    assert spool_files(hostile_listener.data_dir) == before
    assert_healthy(hostile_listener)


def test_body_shorter_than_its_content_length_is_cut_off(hostile_listener):
    """A sender that promises 1000 bytes and stalls after 20 is closed after the
    channel timeout (3 s here), not before, with nothing spooled."""
    before = spool_files(hostile_listener.data_dir)
    with socket.create_connection(hostile_listener.address, timeout=120) as sock:
        head = post_head(
            hostile_listener.tokens[0], "Content-Type: application/json", "Content-Length: 1000"
        )
        sock.sendall(head + b'{"type":"sent","x":"')
        started = time.monotonic()
        assert sock.recv(1024) == b""  # closed, unanswered
        waited = time.monotonic() - started
    assert waited >= 2, waited
    assert spool_files(hostile_listener.data_dir) == before
    assert_healthy(hostile_listener)


@pytest.mark.slow
def test_trickling_sender_is_cut_off_and_others_are_served_meanwhile(hostile_listener):
    """One byte every 0.3 s keeps a connection 'active' forever unless the listener bounds
    the whole request; it must (the channel timeout is 3 s), and it must answer other
    requests while the trickle lasts."""
    before = spool_files(hostile_listener.data_dir)
    answered = 0
    with socket.create_connection(hostile_listener.address, timeout=20) as sock:
        sock.sendall(
            post_head(
                hostile_listener.tokens[0], "Content-Type: application/json", "Content-Length: 5000"
            )
        )
        started = time.monotonic()
        cut_off_after = None
        while time.monotonic() - started < 60:
            try:
                sock.sendall(b" ")
            except (BrokenPipeError, ConnectionResetError):
                cut_off_after = time.monotonic() - started
                break
            assert requests.get(f"{hostile_listener.base_url}/healthz", timeout=30).ok
            answered += 1
            time.sleep(0.3)
    assert cut_off_after is not None, "a sender trickling a byte every 0.3 s was never cut off"
    assert cut_off_after >= 2, cut_off_after
    assert answered >= 3
    assert spool_files(hostile_listener.data_dir) == before
    assert_healthy(hostile_listener)


@pytest.mark.slow
def test_many_idle_connections_do_not_block_a_real_request(tmp_path):
    """200 open, silent sockets against a listener allowing 1000 connections: a real
    POST still gets through while they stay open (the channel timeout is 120 s)."""
    args = ("--connection-limit", "1000", "--channel-timeout", "120")
    with (
        running_listener(tmp_path / "data", *args, new_token=True) as listener,
        contextlib.ExitStack() as sockets,
    ):
        idle = [
            sockets.enter_context(socket.create_connection(listener.address)) for _ in range(200)
        ]
        for sock in idle[:100]:
            sock.sendall(b"POST /hooks/x HTTP/1.1\r\nHost")  # half a request line, silence
        time.sleep(0.5)
        response = listener.post({"type": "sent", "user": {"id": 1}})
        assert response.status_code == 200, response.text


@pytest.mark.slow
def test_idle_connections_past_the_limit_are_shed_by_the_channel_timeout(tmp_path):
    """With more idle sockets than --connection-limit, new connections wait in the backlog;
    the channel timeout must shed the idle ones so a real request gets through within a
    few timeouts, not hang forever (the POST's own timeout is 120 s)."""
    args = ("--connection-limit", "100", "--channel-timeout", "2")
    with (
        running_listener(tmp_path / "data", *args, new_token=True) as listener,
        contextlib.ExitStack() as sockets,
    ):
        for _ in range(200):
            sockets.enter_context(socket.create_connection(listener.address))
        time.sleep(0.3)
        response = requests.post(
            listener.hook_url(), json={"type": "sent", "user": {"id": 1}}, timeout=120
        )
        assert response.status_code == 200, response.text


def test_the_listener_still_accepts_after_the_corpus(hostile_listener):
    """The refusals above were refusals of the input, not a broken listener."""
    before = spool_files(hostile_listener.data_dir)
    response = hostile_listener.post([{"type": "sent", "user": {"id": 1}}, {"type": "opened"}])
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 2
    after = b"".join(spool_files(hostile_listener.data_dir).values())
    assert len(after) > len(b"".join(before.values()))
    log = hostile_listener.log()
    assert "Traceback" not in log
    assert "status=400" in log and "status=413" in log
    assert "status=5" not in log  # no 5xx for any of it
