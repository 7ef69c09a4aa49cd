"""The JetStream listener against the local-spool listener and a no-op Flask app, in one run.

Three servers, each its own process on the same waitress settings: the no-op app
(parse the JSON, answer 200), `vero-webhook serve` on the local spool (fdatasync,
group commit), and `vero-webhook serve --spool-url` on a 3-node JetStream cluster
on loopback (`sync_interval: always`, an R3 stream: each 2xx waits for a quorum to
store the event). `wrk` posts one realistic Vero event over 16 keep-alive
connections; rounds rotate the order of the servers so that a shared machine's
noise falls on all three; medians are compared. The goal of issue 12: the JetStream
listener at 0.5 or more of the local-spool listener's requests/s::

    .venv/bin/python bench/bench_jetstream.py [--duration 8] [--rounds 3]

The cluster's three servers share the machine with the listener and wrk (2 cores
here): a real deployment gives each its own host.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_listener import (  # noqa: E402
    BIN,
    Server,
    realistic_body,
    run_python,
    run_wrk,
    summarize,
)
from tests.helpers import NatsCluster  # noqa: E402


def token(*where: str) -> str:
    made = subprocess.run(
        [str(BIN / "vero-webhook"), "token", "create", *where, "--base-url", "http://x"],
        capture_output=True,
        text=True,
        check=True,
    )
    return made.stdout.strip().splitlines()[-1].rsplit("/hooks/", 1)[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each server")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=16, help="waitress threads, all servers")
    args = parser.parse_args()
    load = run_wrk if shutil.which("wrk") else run_python
    body = realistic_body()

    workdir = Path(tempfile.mkdtemp(prefix="bench-jetstream-", dir=ROOT / "bench"))
    try:
        with NatsCluster(workdir / "nats") as cluster:
            data_dir, js_dir = workdir / "data", workdir / "js-data"
            tokens = {
                "listener": token("--data-dir", str(data_dir)),
                "jetstream": token("--spool-url", cluster.url),
            }
            tokens["noop"] = "x"
            serve = [str(BIN / "vero-webhook"), "serve", "--port", "0"]
            serve += ["--threads", str(args.threads)]
            noop = [sys.executable, str(ROOT / "bench" / "bench_listener.py"), "--serve-noop"]
            noop += ["--threads", str(args.threads)]
            servers = {
                "noop": Server("no-op", noop, workdir / "noop.log"),
                "listener": Server(
                    "listener", [*serve, "--data-dir", str(data_dir)], workdir / "listener.log"
                ),
                "jetstream": Server(
                    "jetstream",
                    [*serve, "--data-dir", str(js_dir), "--spool-url", cluster.url],
                    workdir / "jetstream.log",
                ),
            }
            results: dict[str, list[dict]] = {name: [] for name in servers}
            try:
                for name, server in servers.items():  # warm-up, not counted
                    load(f"{server.base}/hooks/{tokens[name]}", body, args.connections, 1, workdir)
                names = list(servers)
                for round_index in range(args.rounds):
                    order = names[round_index % 3 :] + names[: round_index % 3]
                    for name in order:
                        server = servers[name]
                        cpu_before = server.cpu_seconds()
                        run = load(
                            f"{server.base}/hooks/{tokens[name]}",
                            body,
                            args.connections,
                            args.duration,
                            workdir,
                        )
                        cpu = server.cpu_seconds() - cpu_before
                        run["cpu_ms_per_request"] = cpu * 1000 / max(1, run["requests"])
                        results[name].append(run)
                        print(
                            f"round {round_index + 1} {name:<10} {run['requests_per_s']:8.0f} "
                            f"req/s  p50 {run['p50_ms']:6.2f} ms  p99 {run['p99_ms']:7.2f} ms  "
                            f"cpu {run['cpu_ms_per_request']:.2f} ms/req  "
                            f"failures {run['failures']}",
                            flush=True,
                        )
            finally:
                for server in servers.values():
                    server.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    summary = {name: summarize(runs) for name, runs in results.items()}
    print()
    print(f"{'':<11}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for name, figures in summary.items():
        print(
            f"{name:<11}{figures['requests_per_s']:>10.0f}"
            f"{figures['p50_ms']:>10.2f}{figures['p99_ms']:>10.2f}"
        )
    per_round = [
        js["requests_per_s"] / local["requests_per_s"]
        for js, local in zip(results["jetstream"], results["listener"], strict=True)
    ]
    jetstream, local = summary["jetstream"]["requests_per_s"], summary["listener"]["requests_per_s"]
    print(
        f"ratio jetstream / local-spool listener (req/s, medians): {jetstream / local:.3f}"
        f"   per round: {' '.join(f'{ratio:.3f}' for ratio in per_round)}"
    )
    noop = summary["noop"]["requests_per_s"]
    print(f"ratio local-spool listener / no-op: {local / noop:.3f}")
    print(f"ratio jetstream / no-op: {jetstream / noop:.3f}")
    print(f"(median of per-round ratios jetstream/local: {statistics.median(per_round):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
