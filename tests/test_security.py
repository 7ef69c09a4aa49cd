"""The security contract: the token stays secret, the files stay private, a wrong or
revoked token is refused (in constant time, from the very next request), path tricks
are harmless, and a flood of wrong tokens barely slows the right ones."""

from __future__ import annotations

import ast
import hashlib
import hmac
import inspect
import json
import os
import stat
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import requests

from tap_vero_webhook.listener.tokens import TokenStore, TokenVerifier
from tap_vero_webhook.location import Location
from tests.helpers import (
    create_token_with_id,
    raw_http,
    run_cli,
    running_listener,
    spool_files,
    spooled,
    start_listener,
    status_of,
    token_id_of,
)


def every_file(root: Path) -> list[Path]:
    return [path for path in Path(root).rglob("*") if path.is_file()]


def test_a_token_never_appears_in_a_log_an_output_or_a_file(tmp_path):
    """After `token create` prints it once, no log line, CLI output, response or file holds
    the secret, whatever is thrown at the listener (DEBUG logs, JSON logs, every refusal)."""
    data_dir = tmp_path / "data"
    created = run_cli("token", "create", "--data-dir", str(data_dir), "--base-url", "http://h")
    token = created.stdout.strip().splitlines()[-1].rsplit("/hooks/", 1)[1]
    second, _ = create_token_with_id(data_dir)
    assert token not in created.stderr
    assert created.stdout.count(token) == 1
    assert created.stdout.strip().splitlines()[-1].endswith(f"/hooks/{token}")

    outputs = []
    for log_format in ("text", "json"):
        listener = start_listener(data_dir, "--log-format", log_format, "--log-level", "DEBUG")
        url = listener.hook_url(token)
        answers = [
            requests.post(url, json={"type": "sent", "user": {"id": 1}}, timeout=10),
            requests.post(url, data=b'{"type":', headers={"Content-Type": "application/json"}),
            requests.post(url, data=b"{}", headers={"Content-Type": "text/plain"}),
            requests.get(url, timeout=10),
            requests.put(url, json={}, timeout=10),
            requests.post(f"{url}/extra", json={"type": "sent"}, timeout=10),
            requests.post(f"{url}?token={token}", json={"type": "sent"}, timeout=10),
            requests.post(f"{listener.base_url}/hooks/{token[:-1]}", json={}, timeout=10),
            requests.get(f"{listener.base_url}/{token}", timeout=10),
        ]
        raw_answers = [
            raw_http(  # waitress refuses before the app runs: 413 with the token in the path
                listener.base_url,
                f"POST /hooks/{token} HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
                f"Content-Length: {10**12}\r\n\r\n".encode(),
            ),
            raw_http(  # a request line far too long: 431 from waitress
                listener.base_url,
                f"POST /hooks/{token}{'x' * 300_000} HTTP/1.1\r\nHost: h\r\n\r\n".encode(),
            ),
            raw_http(  # broken chunked framing
                listener.base_url,
                f"POST /hooks/{token} HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
                "Transfer-Encoding: chunked\r\n\r\nzz\r\n".encode(),
            ),
            raw_http(
                listener.base_url,
                f"BREW /hooks/{token} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".encode(),
            ),
        ]
        assert answers[0].status_code == 200
        assert [status_of(answer) for answer in raw_answers] == [413, 431, 400, 405]
        metrics = requests.get(f"{listener.base_url}/metrics", timeout=10)
        outputs += [answer.text + str(answer.headers) for answer in [*answers, metrics]]
        outputs += [answer.decode(errors="replace") for answer in raw_answers]
        listener.stop()
        outputs.append(listener.log())
        assert "/hooks/<redacted>" in listener.log()

    for args in (["list"], ["list", "--json"], ["list", "--all", "--json"]):
        listed = run_cli("token", *args, "--data-dir", str(data_dir))
        outputs += [listed.stdout, listed.stderr]
    ids = [item["id"] for item in json.loads(outputs[-2])]
    revoked = run_cli("token", "revoke", ids[0], "--data-dir", str(data_dir))
    outputs += [revoked.stdout, revoked.stderr]

    for secret in (token, second):
        for text in outputs:
            assert secret not in text
        for path in [*every_file(data_dir), *every_file(tmp_path)]:
            assert secret.encode() not in path.read_bytes(), path
            assert secret not in str(path)


def test_token_store_and_spool_are_private_whatever_the_umask(tmp_path):
    """0600 files and 0700 directories, even when the operator's umask is 000."""
    data_dir = tmp_path / "data"
    previous = os.umask(0)
    try:
        token, _ = create_token_with_id(data_dir)
        listener = start_listener(data_dir)
        assert listener.post({"type": "sent"}, token=token).status_code == 200
        assert listener.post(b"{bad", token=token).status_code == 400  # fills rejects/
        listener.stop()
        run_cli("token", "create", "--data-dir", str(data_dir), "--base-url", "http://h")
    finally:
        os.umask(previous)
    found = {path.relative_to(data_dir).as_posix() for path in data_dir.rglob("*")}
    assert {"tokens.json", "spool", "spool/00000000000000000001.jsonl"} <= found
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    for path in data_dir.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))


def test_verify_compares_every_active_token_with_compare_digest():
    """The source of TokenVerifier.verify: hmac.compare_digest over every active token,
    no break or return inside the loop (an early exit would leak which token matched)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(TokenVerifier.verify)))
    loops = [node for node in ast.walk(tree) if isinstance(node, ast.For)]
    assert len(loops) == 1
    assert not [n for n in ast.walk(loops[0]) if isinstance(n, (ast.Break, ast.Return))]
    calls = [ast.unparse(n.func) for n in ast.walk(loops[0]) if isinstance(n, ast.Call)]
    assert calls == ["hmac.compare_digest"]
    source = inspect.getsource(TokenVerifier.verify)
    assert " == " not in source and "startswith" not in source


def test_verify_calls_compare_digest_once_per_active_token(tmp_path, monkeypatch):
    """Whether the first, the second or no token matches, the work is the same."""
    store = TokenStore(Location(data_dir=tmp_path))
    _, first = store.create()
    _, second = store.create()
    verifier = TokenVerifier(Location(data_dir=tmp_path), "test")
    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    for secret, matched in ((first, True), (second, True), ("wrong", False)):
        calls.clear()
        assert (verifier.verify(secret) is not None) is matched
        assert len(calls) == 2


def digest_prefix_twin(secret: str, shared_bytes: int) -> str:
    """A wrong secret whose SHA-256 shares its first `shared_bytes` bytes with `secret`'s."""
    target = hashlib.sha256(secret.encode()).digest()[:shared_bytes]
    for counter in range(50_000_000):
        candidate = f"twin-{counter}"
        if hashlib.sha256(candidate.encode()).digest()[:shared_bytes] == target:
            return candidate
    raise AssertionError("no twin found")


def interleaved_medians(functions: dict, rounds: int = 60, calls: int = 2000) -> dict:
    """Median ns per call of each function, measured in interleaved rounds so that
    machine noise (other tests run beside us) hits all of them alike."""
    samples: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(rounds):
        for name, function in functions.items():
            started = time.perf_counter_ns()
            for _ in range(calls):
                function()
            samples[name].append((time.perf_counter_ns() - started) / calls)
    return {name: statistics.median(values) for name, values in samples.items()}


@pytest.mark.slow
def test_a_wrong_token_is_refused_in_constant_time(tmp_path):
    """A wrong token takes as long to refuse whether it shares nothing, all but its last
    character, or (after hashing) its first two digest bytes with the right one; and a
    digest sharing 31 of 32 bytes compares as fast as one sharing none.

    The listener hashes the presented token before comparing, so a shared *token*
    prefix gives no shared *digest* prefix; the digest-prefix case needs a found twin
    (2 bytes = 4 hex characters is what a brute force finds in a second)."""
    store = TokenStore(Location(data_dir=tmp_path))
    _, right = store.create()
    store.create()
    verifier = TokenVerifier(Location(data_dir=tmp_path), "test")
    wrong_same_prefix = right[:-1] + ("A" if right[-1] != "A" else "B")
    wrong_nothing_shared = "".join("A" if c != "A" else "B" for c in right)
    wrong_digest_twin = digest_prefix_twin(right, 2)
    assert verifier.verify(wrong_same_prefix) is None
    assert verifier.verify(wrong_digest_twin) is None

    medians = interleaved_medians(
        {
            "token sharing no character": lambda: verifier.verify(wrong_nothing_shared),
            "token sharing 42 of 43 characters": lambda: verifier.verify(wrong_same_prefix),
            "token whose digest shares 4 hex characters": lambda: verifier.verify(
                wrong_digest_twin
            ),
        }
    )
    baseline = medians["token sharing no character"]
    for value in medians.values():
        assert 0.8 < value / baseline < 1.25, medians

    digest = hashlib.sha256(right.encode()).digest()
    none_shared = bytes(b ^ 0xFF for b in digest)
    all_but_last = digest[:-1] + bytes([digest[-1] ^ 0xFF])
    raw = interleaved_medians(
        {
            "digest sharing 0 bytes": lambda: hmac.compare_digest(digest, none_shared),
            "digest sharing 31 bytes": lambda: hmac.compare_digest(digest, all_but_last),
        },
        calls=20_000,
    )
    assert 0.8 < raw["digest sharing 31 bytes"] / raw["digest sharing 0 bytes"] < 1.25, raw
    print(f"\nconstant time (median ns per call): {medians} {raw}")


def test_a_revoked_token_is_refused_on_the_very_next_request(tmp_path):
    """Rotation without a restart, three times over: revoke A and A's next POST is refused
    while B works; a token created while the listener runs works on its first POST."""
    data_dir = tmp_path / "data"
    old, old_id = create_token_with_id(data_dir)
    new, _ = create_token_with_id(data_dir)
    with running_listener(data_dir) as listener:
        for round_number in range(3):
            assert listener.post({"type": "sent", "n": round_number}, token=old).ok
            run_cli("token", "revoke", old_id, "--data-dir", str(data_dir))
            refused = listener.post({"type": "sent"}, token=old)
            assert refused.status_code == 401, refused.text
            assert refused.json()["error"]["code"] == "invalid_token"
            assert listener.post({"type": "sent"}, token=new).ok
            old, old_id = new, token_id_of(data_dir, new)
            new, _ = create_token_with_id(data_dir)
            assert listener.post({"type": "sent"}, token=new).ok


PATH_TRICKS = [
    "..",
    "../healthz",
    "../../etc/passwd",
    "%2e%2e",
    "%2e%2e%2fhealthz",
    "..%2F..%2Fhealthz",
    "%2F",
    "a%2Fb",
    "%252e%252e",
    "%00",
    "token%00.json",
    "..;/healthz",
    "./.",
    "~",
    "%ff%fe",
    "tokens.json",
    "spool/00000000000000000001.jsonl",
    "x" * 100_000,
]


@pytest.fixture(scope="module")
def module_listener(tmp_path_factory):
    with running_listener(tmp_path_factory.mktemp("security") / "data", new_token=True) as running:
        yield running


@pytest.mark.parametrize("trick", PATH_TRICKS, ids=[t[:20] for t in PATH_TRICKS])
def test_path_tricks_in_the_token_segment_are_harmless(module_listener, trick):
    """Sent raw (no client normalises the dots away): refused with 401/404/405,
    never a 500, never a token or a file's contents in the answer, nothing spooled."""
    before = spool_files(module_listener.data_dir)
    for prefix in ("/hooks/", f"/hooks/{module_listener.tokens[0]}/", "/hooks/../hooks/"):
        answer = raw_http(
            module_listener.base_url,
            f"POST {prefix}{trick} HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
            'Content-Length: 15\r\nConnection: close\r\n\r\n{"type":"sent"}'.encode(),
        )
        assert status_of(answer) in (401, 404, 405), answer[:300]
        body = answer.split(b"\r\n\r\n", 1)[1]
        assert module_listener.tokens[0].encode() not in answer
        assert b"sha256" not in body and b'"seq"' not in body
    assert spool_files(module_listener.data_dir) == before
    assert requests.get(f"{module_listener.base_url}/healthz", timeout=5).ok


def test_a_token_too_long_for_the_request_line_gets_431(module_listener):
    before = spool_files(module_listener.data_dir)
    answer = raw_http(
        module_listener.base_url,
        f"POST /hooks/{'a' * 300_000} HTTP/1.1\r\nHost: h\r\n\r\n".encode(),
    )
    assert status_of(answer) == 431, answer[:300]
    assert spool_files(module_listener.data_dir) == before
    assert requests.get(f"{module_listener.base_url}/healthz", timeout=5).ok


FLOOD = """
import collections, json, sys, threading, requests
method, url, per_thread = sys.argv[1], sys.argv[2], int(sys.argv[3])
statuses = collections.Counter()
def hammer():
    session = requests.Session()
    for _ in range(per_thread):
        statuses[session.request(method, url, json={"type": "sent"}, timeout=60).status_code] += 1
threads = [threading.Thread(target=hammer) for _ in range(8)]
for thread in threads: thread.start()
for thread in threads: thread.join()
print(json.dumps(statuses))
"""


@pytest.mark.slow
def test_a_flood_of_wrong_tokens_is_refused_while_every_right_one_is_accepted(tmp_path):
    """8 threads in another process post 2,400 wrong-token requests flat out while valid
    POSTs go on: every wrong one gets 401 and is counted, every valid one gets 200, and
    the spool holds exactly the valid events. (What the flood costs the valid posts'
    latency, against a health-check flood, is measured in bench/bench_flood.py.)"""
    with running_listener(tmp_path / "data", new_token=True) as listener:
        flood = subprocess.Popen(
            [sys.executable, "-c", FLOOD, "POST", f"{listener.base_url}/hooks/not-a-token", "300"],
            stdout=subprocess.PIPE,
            text=True,
        )
        session, acknowledged = requests.Session(), []
        while flood.poll() is None or not acknowledged:
            response = session.post(listener.hook_url(), json={"n": len(acknowledged)}, timeout=60)
            assert response.status_code == 200, response.text
            acknowledged += response.json()["ids"]
        statuses = json.loads(flood.communicate(timeout=300)[0])
        metrics = requests.get(f"{listener.base_url}/metrics", timeout=30).text
    assert statuses == {"401": 2400}
    assert 'vero_webhook_requests_rejected_total{reason="invalid_token"} 2400.0' in metrics
    assert [envelope["id"] for envelope in spooled(listener.data_dir)] == acknowledged
