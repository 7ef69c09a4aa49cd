"""Shared fixtures: the real listener as a subprocess on a real port, the real CLI, PostgreSQL."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

BIN = Path(sys.executable).parent
VERO_WEBHOOK = str(BIN / "vero-webhook")
TAP = str(BIN / "tap-vero-webhook")
PG_DSN = os.environ.get("TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

_LISTENING = re.compile(r"listening on http://([^:\s]+):(\d+)")


def run_cli(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run `vero-webhook ARGS` and capture its output."""
    return subprocess.run(
        [VERO_WEBHOOK, *args], capture_output=True, text=True, check=check, timeout=60, **kwargs
    )


def create_token(data_dir: Path, base_url: str = "http://127.0.0.1") -> str:
    """A new webhook token (the secret part of the URL) made with the real CLI."""
    url = run_cli("token", "create", "--data-dir", str(data_dir), "--base-url", base_url)
    return url.stdout.strip().splitlines()[-1].rsplit("/hooks/", 1)[1]


@dataclass
class Listener:
    """A `vero-webhook serve` process on a free local port."""

    data_dir: Path
    process: subprocess.Popen
    log_path: Path
    base_url: str = ""
    tokens: list[str] = field(default_factory=list)

    def hook_url(self, token: str | None = None) -> str:
        return f"{self.base_url}/hooks/{token or self.tokens[0]}"

    def post(self, body, token: str | None = None, **kwargs) -> requests.Response:
        """POST `body` (a dict/list as JSON, or raw bytes) to the webhook URL."""
        if isinstance(body, (bytes, str)):
            headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
            return requests.post(
                self.hook_url(token), data=body, headers=headers, timeout=30, **kwargs
            )
        return requests.post(self.hook_url(token), json=body, timeout=30, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        """kill -9: no chance to clean up."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()


def start_listener(
    data_dir: Path, *args: str, env: dict | None = None, timeout: float = 20
) -> Listener:
    """Start `vero-webhook serve` on a free port and wait until it answers /healthz."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / f"{data_dir.name}-listener-{time.monotonic_ns()}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [VERO_WEBHOOK, "serve", "--data-dir", str(data_dir), "--port", "0", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    listener = Listener(data_dir, process, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = _LISTENING.search(listener.log())
        if match:
            listener.base_url = f"http://{match.group(1)}:{match.group(2)}"
            try:
                requests.get(f"{listener.base_url}/healthz", timeout=2)
                return listener
            except requests.ConnectionError:
                pass
        if process.poll() is not None:
            raise RuntimeError(f"listener exited with {process.returncode}:\n{listener.log()}")
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"listener did not start:\n{listener.log()}")


@contextmanager
def mounted_tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """A small tmpfs at `mount_point` (made here), unmounted afterwards, to fill a disk for
    real. Needs root (CI runs as root); elsewhere the test is skipped, loudly."""
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        reason = (
            f"FULL-DISK TESTS NOT RUN: cannot mount a tmpfs (uid {os.getuid()}; needs root or "
            f"CAP_SYS_ADMIN): {result.stderr.strip() or result.returncode}"
        )
        warnings.warn(reason, stacklevel=1)
        pytest.skip(reason)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def listener(data_dir: Path):
    """A running listener with one webhook token."""
    token = create_token(data_dir)
    running = start_listener(data_dir)
    running.tokens.append(token)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """The local PostgreSQL; under CI a missing server is a failure, elsewhere a skip."""
    import psycopg

    try:
        with psycopg.connect(PG_DSN, connect_timeout=5) as conn:
            conn.execute("select 1")
    except psycopg.OperationalError as exc:
        reason = f"PostgreSQL at {PG_DSN!r} is unreachable: {exc}"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    return PG_DSN
