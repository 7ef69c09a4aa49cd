"""`vero-webhook` as the operator runs it: a subprocess, its stdout, stderr and exit code."""

from __future__ import annotations

import json
import re
import subprocess

import click
import requests

from tap_vero_webhook.cli import main
from tap_vero_webhook.data_dir import DataDir
from tests.helpers import VERO_WEBHOOK, list_tokens, run_cli, running_listener, wait_for

URL = re.compile(r"^https://hooks\.example\.com/hooks/([A-Za-z0-9_-]{43})$")


def create(data_dir, base_url="https://hooks.example.com/", check=True):
    return run_cli(
        "token", "create", "--data-dir", str(data_dir), "--base-url", base_url, check=check
    )


def test_token_create_prints_the_url_alone_on_the_last_line(data_dir):
    result = create(data_dir)
    lines = result.stdout.splitlines()
    match = URL.match(lines[-1])
    assert match, result.stdout
    secret = match.group(1)
    assert "once" in result.stderr  # the warning goes to stderr, the URL alone to stdout
    assert secret not in result.stderr
    # shown this once only: never again by list, never stored
    assert secret not in run_cli("token", "list", "--data-dir", str(data_dir)).stdout
    assert secret not in run_cli("token", "list", "--json", "--data-dir", str(data_dir)).stdout
    for path in data_dir.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_token_list_shows_ids_and_times_never_a_secret_or_hash(data_dir):
    secrets = [URL.match(create(data_dir).stdout.splitlines()[-1]).group(1) for _ in range(2)]
    tokens = list_tokens(data_dir)
    assert len(tokens) == 2
    assert len({token["id"] for token in tokens}) == 2
    for token in tokens:
        assert token["id"]
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$", token["created_at"])
        assert token["last_used_at"] is None
        assert "sha256" not in token and "secret" not in token
    stored = json.loads(DataDir(data_dir).tokens.read_text())
    digests = [record["sha256"] for record in stored]
    table = run_cli("token", "list", "--data-dir", str(data_dir)).stdout
    as_json = run_cli("token", "list", "--json", "--data-dir", str(data_dir)).stdout
    for output in (table, as_json):
        for secret in secrets:
            assert secret not in output
        for digest in digests:
            assert digest not in output
    assert table.splitlines()[0].split()[:2] == ["ID", "CREATED"]
    for token in tokens:
        assert any(line.startswith(token["id"]) for line in table.splitlines()[1:])


def test_last_use_is_listed_after_the_listener_is_used(data_dir):
    secret = URL.match(create(data_dir).stdout.splitlines()[-1]).group(1)
    with running_listener(data_dir) as running:
        assert running.post({"type": "sent"}, token=secret).status_code == 200
    assert list_tokens(data_dir)[0]["last_used_at"]  # a stop flushes last use


def test_revoke_then_a_third_create_and_its_refusal(data_dir):
    create(data_dir)
    create(data_dir)
    third = create(data_dir, check=False)
    assert third.returncode != 0
    assert "revoke one first" in third.stderr
    assert "/hooks/" not in third.stdout
    assert len(list_tokens(data_dir, "--all")) == 2

    oldest, newest = (token["id"] for token in list_tokens(data_dir))
    revoked = run_cli("token", "revoke", oldest, "--data-dir", str(data_dir))
    assert oldest in revoked.stdout
    assert [token["id"] for token in list_tokens(data_dir)] == [newest]
    everything = {token["id"]: token for token in list_tokens(data_dir, "--all")}
    assert everything[oldest]["revoked_at"]
    assert URL.match(create(data_dir).stdout.splitlines()[-1])
    assert len(list_tokens(data_dir)) == 2

    again = run_cli("token", "revoke", oldest, "--data-dir", str(data_dir), check=False)
    assert again.returncode != 0
    assert oldest in again.stderr
    unknown = run_cli("token", "revoke", "nope", "--data-dir", str(data_dir), check=False)
    assert unknown.returncode != 0


def test_every_serve_option_has_a_documented_env_var():
    serve = main.commands["serve"]
    help_text = run_cli("serve", "--help").stdout
    options = [param for param in serve.params if isinstance(param, click.Option)]
    assert {option.name for option in options} >= {
        "data_dir",
        "host",
        "port",
        "threads",
        "max_body_bytes",
    }
    for option in options:
        expected = f"VERO_WEBHOOK_{option.name.upper()}"
        assert option.envvar == expected
        assert expected in help_text, expected
        assert option.help, option.name
    assert "127.0.0.1" in help_text


def test_max_body_bytes_from_the_environment_takes_effect(data_dir):
    secret = URL.match(create(data_dir).stdout.splitlines()[-1]).group(1)
    with running_listener(data_dir, env={"VERO_WEBHOOK_MAX_BODY_BYTES": "500"}) as running:
        url = running.hook_url(secret)
        small = {"type": "sent", "pad": "x" * 300}
        big = {"type": "sent", "pad": "x" * 600}
        assert requests.post(url, json=small, timeout=30).status_code == 200
        refused = requests.post(url, json=big, timeout=30)
        assert refused.status_code == 413
        assert refused.json()["error"]["code"] == "body_too_large"
        assert "500-byte" in refused.json()["error"]["message"]


def test_serve_reads_its_data_dir_and_threads_from_the_environment(data_dir):
    log = data_dir.parent / "env-serve.log"
    data_dir.mkdir(parents=True)
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            [VERO_WEBHOOK, "serve", "--port", "0"],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env={
                "PATH": "/usr/bin:/bin",
                "VERO_WEBHOOK_DATA_DIR": str(data_dir),
                "VERO_WEBHOOK_THREADS": "3",
            },
        )
    try:
        assert wait_for(lambda: "listening on" in log.read_text())
        assert "3 threads" in log.read_text()
        assert DataDir(data_dir).spool.is_dir()
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_a_second_listener_on_the_same_data_dir_is_refused(listener):
    second = subprocess.run(
        [
            VERO_WEBHOOK,
            "serve",
            "--data-dir",
            str(listener.data_dir),
            "--port",
            "0",
            "--spool-lock-timeout",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode == 1
    message = second.stderr
    assert "Traceback" not in message
    assert "another listener" in message
    assert str(listener.process.pid) in message
    assert listener.post({"type": "sent"}).status_code == 200  # the first one is unharmed
