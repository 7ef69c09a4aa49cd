"""Durable acceptance vs a no-op Flask app: requests/s and p50/p99 at 16 keep-alive connections.

Both servers run as separate processes on the same waitress settings (threads,
connection limit, body cap); the no-op app parses the JSON and answers 200, the
listener authenticates, validates, stamps, appends and fdatasyncs (group commit)
before it answers. Runs alternate (no-op, listener, listener, no-op, ...) so that
noise from a shared machine falls on both alike; the ratio is the listener's
median over the no-op's median, measured in this same run.

The load comes from `wrk` (C, one thread: it leaves the cores to the servers)
with a realistic Vero event; without wrk, a Python client on raw http.client
stands in, which on a 2-core box is itself the bottleneck, so its ratio reads
high. Usage::

    .venv/bin/python bench/bench_listener.py [--duration 8] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tap_vero_webhook.data_dir import DataDir  # noqa: E402
from tests.vero_events import make_event  # noqa: E402

BIN = Path(sys.executable).parent
LISTENING = re.compile(r"listening on http://([^:\s]+):(\d+)")
WRK_REPORT = "BENCH-JSON "

WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = %s

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests":%%d,"duration_us":%%d,"p50_us":%%d,"p99_us":%%d,' ..
    '"errors":%%d,"non_2xx":%%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""


def realistic_body() -> bytes:
    """One Vero `delivered` event, as Vero posts it (about 800 bytes)."""
    return json.dumps(make_event("delivered", 4242), ensure_ascii=False).encode()


# --- the baseline -------------------------------------------------------------------


def serve_noop(port: int, threads: int) -> None:
    """A Flask app that only parses the JSON and answers 200, on the listener's waitress
    options (`ServerSettings.waitress_options`, at the listener's defaults)."""
    from flask import Flask, jsonify, request
    from waitress.server import create_server

    from tap_vero_webhook.listener.server import ListenerChannel
    from tap_vero_webhook.listener.settings import ListenerSettings, ServerSettings
    from tap_vero_webhook.settings import default_of

    app = Flask("noop")

    @app.post("/hooks/<path:token>")
    def receive(token: str):
        request.get_json()
        return jsonify(accepted=1)

    max_body_bytes = default_of(ListenerSettings, "max_body_bytes")
    options = ServerSettings(port=port, threads=threads).waitress_options(max_body_bytes)
    server = create_server(app, **options)
    server.channel_class = ListenerChannel
    print(f"listening on http://{server.effective_host}:{server.effective_port}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.run()


# --- servers as subprocesses -----------------------------------------------------------


class Server:
    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict | None = None):
        self.name = name
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            match = LISTENING.search(log_path.read_text(errors="replace"))
            if match:
                self.base = f"http://{match.group(1)}:{match.group(2)}"
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{name} did not start:\n{log_path.read_text(errors='replace')}")

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# --- load generators -------------------------------------------------------------------


def run_wrk(url: str, body: bytes, connections: int, duration: float, workdir: Path) -> dict:
    script = workdir / "post.lua"
    script.write_text(WRK_SCRIPT % (lua_string(body), WRK_REPORT))
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(line for line in out.splitlines() if line.startswith(WRK_REPORT))
    raw = json.loads(line[len(WRK_REPORT) :])
    return {
        "requests_per_s": raw["requests"] / (raw["duration_us"] / 1e6),
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "requests": raw["requests"],
        "failures": raw["errors"] + raw["non_2xx"],
    }


def lua_string(data: bytes) -> str:
    return (
        '"'
        + "".join(
            f"\\{byte:03d}" if byte < 32 or byte in b'"\\' or byte > 126 else chr(byte)
            for byte in data
        )
        + '"'
    )


def run_python(url: str, body: bytes, connections: int, duration: float, workdir: Path) -> dict:
    """http.client on keep-alive connections, one thread each (CPU-bound on small boxes)."""
    parts = urlsplit(url)
    deadline = time.monotonic() + duration
    latencies: list[list[float]] = [[] for _ in range(connections)]
    failures = [0] * connections
    headers = {"Content-Type": "application/json"}

    def client(index: int) -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        mine = latencies[index]
        while time.monotonic() < deadline:
            started = time.perf_counter()
            conn.request("POST", parts.path, body, headers)
            response = conn.getresponse()
            response.read()
            mine.append(time.perf_counter() - started)
            if response.status != 200:
                failures[index] += 1
        conn.close()

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    every = sorted(latency for mine in latencies for latency in mine)
    return {
        "requests_per_s": len(every) / elapsed,
        "p50_ms": every[len(every) // 2] * 1000,
        "p99_ms": every[min(len(every) - 1, int(len(every) * 0.99))] * 1000,
        "requests": len(every),
        "failures": sum(failures),
    }


# --- the run ------------------------------------------------------------------------


def summarize(runs: list[dict]) -> dict:
    return {
        key: statistics.median(run[key] for run in runs)
        for key in ("requests_per_s", "p50_ms", "p99_ms", "cpu_ms_per_request")
    } | {"requests": sum(r["requests"] for r in runs), "failures": sum(r["failures"] for r in runs)}


def fdatasync_latency_ms(directory: Path, count: int = 200) -> dict:
    """p50/p99 of appending one event-sized line and fdatasync-ing it, on the spool's disk:
    the floor under every acknowledgement, and the main thing a shared disk makes vary."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    timings = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            os.write(fd, b"x" * 800 + b"\n")
            os.fdatasync(fd)
            timings.append((time.perf_counter() - started) * 1000)
    finally:
        os.close(fd)
        path.unlink()
    timings.sort()
    return {"p50_ms": round(timings[count // 2], 3), "p99_ms": round(timings[int(count * 0.99)], 3)}


def count_spooled(spool_dir: Path) -> int:
    return sum(path.read_bytes().count(b"\n") for path in spool_dir.glob("*.jsonl"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each server")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=16, help="waitress threads, both servers")
    parser.add_argument("--client", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--listener-arg", action="append", default=[], help="extra `vero-webhook serve` argument"
    )
    parser.add_argument("--serve-noop", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_noop:
        serve_noop(args.port, args.threads)
        return 0

    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "python"
    load = run_wrk if client == "wrk" else run_python
    body = realistic_body()

    # a real disk (not tmpfs), or fdatasync would cost nothing
    workdir = Path(tempfile.mkdtemp(prefix="bench-listener-", dir=ROOT / "bench"))
    data_dir = workdir / "data"
    try:
        url = (
            subprocess.run(
                [
                    str(BIN / "vero-webhook"),
                    "token",
                    "create",
                    "--data-dir",
                    str(data_dir),
                    "--base-url",
                    "http://x",
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        token = url.rsplit("/hooks/", 1)[1]
        noop = Server(
            "no-op",
            [sys.executable, __file__, "--serve-noop", "--threads", str(args.threads)],
            workdir / "noop.log",
        )
        listener = Server(
            "listener",
            [
                str(BIN / "vero-webhook"),
                "serve",
                "--data-dir",
                str(data_dir),
                "--port",
                "0",
                "--threads",
                str(args.threads),
                *args.listener_arg,
            ],
            workdir / "listener.log",
        )
        servers = {"noop": noop, "listener": listener}
        results: dict[str, list[dict]] = {"noop": [], "listener": []}
        try:
            for server in servers.values():  # warm-up, not counted
                load(f"{server.base}/hooks/{token}", body, args.connections, 1, workdir)
            fsync_before = fdatasync_latency_ms(workdir)
            spooled_before = count_spooled(DataDir(data_dir).spool)
            for round_index in range(args.rounds):
                order = ["noop", "listener"] if round_index % 2 == 0 else ["listener", "noop"]
                for name in order:
                    cpu_before = servers[name].cpu_seconds()
                    run = load(
                        f"{servers[name].base}/hooks/{token}",
                        body,
                        args.connections,
                        args.duration,
                        workdir,
                    )
                    cpu = servers[name].cpu_seconds() - cpu_before
                    run["cpu_ms_per_request"] = cpu * 1000 / max(1, run["requests"])
                    results[name].append(run)
                    print(
                        f"round {round_index + 1} {name:<8} {run['requests_per_s']:8.0f} req/s"
                        f"  p50 {run['p50_ms']:6.2f} ms  p99 {run['p99_ms']:6.2f} ms"
                        f"  cpu {run['cpu_ms_per_request']:.2f} ms/req  failures {run['failures']}",
                        flush=True,
                    )
            spooled = count_spooled(DataDir(data_dir).spool) - spooled_before
            fsync_after = fdatasync_latency_ms(workdir)
        finally:
            for server in servers.values():
                server.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    noop_summary, listener_summary = summarize(results["noop"]), summarize(results["listener"])
    ratio = listener_summary["requests_per_s"] / noop_summary["requests_per_s"]
    pair_ratios = [
        lis["requests_per_s"] / base["requests_per_s"]
        for lis, base in zip(results["listener"], results["noop"], strict=True)
    ]
    report = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.platform()}",
        "python": platform.python_version(),
        "client": client,
        "connections": args.connections,
        "waitress_threads": args.threads,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "body_bytes": len(body),
        "fdatasync_before": fsync_before,
        "fdatasync_after": fsync_after,
        "noop": noop_summary,
        "listener": listener_summary,
        "ratio_requests_per_s": round(ratio, 3),
        "ratio_per_round": [round(r, 3) for r in pair_ratios],
        "listener_events_spooled": spooled,
    }
    print()
    print(f"{'':<10}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for name, summary in (("no-op", noop_summary), ("listener", listener_summary)):
        print(
            f"{name:<10}{summary['requests_per_s']:>10.0f}"
            f"{summary['p50_ms']:>10.2f}{summary['p99_ms']:>10.2f}"
        )
    print(
        f"fdatasync of one line on this disk, before/after: p50 {fsync_before['p50_ms']}/"
        f"{fsync_after['p50_ms']} ms, p99 {fsync_before['p99_ms']}/{fsync_after['p99_ms']} ms"
    )
    print(
        f"ratio (listener / no-op req/s, medians): {ratio:.3f}   per round: "
        + " ".join(f"{r:.3f}" for r in pair_ratios)
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
