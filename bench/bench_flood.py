"""A flood of wrong tokens against a flood of health checks: what each costs valid POSTs.

p50 latency of valid webhook POSTs (one keep-alive connection, one at a time) while
8 threads in another process send flat out either POSTs with a wrong token or
GET /healthz. On 2 shared cores any flood that saturates the CPU slows everything,
so the figure that says something about the listener is the ratio of the two: a
wrong token must cost no more than a health check (no lock, no disk write, no
slow path). Rounds alternate the two floods; medians are compared::

    .venv/bin/python bench/bench_flood.py [--rounds 3] [--seconds 6]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import running_listener  # noqa: E402

FLOOD = """
import sys, threading, time, requests
method, url, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
count = [0]
def hammer():
    session = requests.Session()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        session.request(method, url, json={"type": "sent"}, timeout=30)
        count[0] += 1
threads = [threading.Thread(target=hammer) for _ in range(8)]
for thread in threads: thread.start()
for thread in threads: thread.join()
print(count[0])
"""


def p50_of_valid_posts(listener, count: int = 120) -> float:
    session = requests.Session()
    latencies = []
    for number in range(count):
        started = time.perf_counter()
        response = session.post(listener.hook_url(), json={"type": "sent", "n": number}, timeout=30)
        latencies.append(time.perf_counter() - started)
        if response.status_code != 200:
            raise SystemExit(f"a valid POST got {response.status_code}: {response.text}")
    return statistics.median(latencies)


def p50_during_flood(listener, method: str, url: str, seconds: float) -> tuple[float, float]:
    """(p50 of valid POSTs, flood requests/s) while 8 threads send `method url` flat out."""
    flood = subprocess.Popen(
        [sys.executable, "-c", FLOOD, method, url, str(seconds)], stdout=subprocess.PIPE, text=True
    )
    time.sleep(1)
    p50 = p50_of_valid_posts(listener)
    return p50, int(flood.communicate(timeout=seconds + 120)[0]) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each flood")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_listener(Path(tmp) / "data", new_token=True) as listener,
    ):
        quiet = p50_of_valid_posts(listener)
        floods = {
            "wrong token": ("POST", f"{listener.base_url}/hooks/not-a-token"),
            "health check": ("GET", f"{listener.base_url}/healthz"),
        }
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in floods}
        for round_index in range(args.rounds):
            order = list(floods) if round_index % 2 == 0 else list(reversed(floods))
            for name in order:
                p50, rate = p50_during_flood(listener, *floods[name], args.seconds)
                results[name].append((p50, rate))
                print(f"round {round_index + 1} {name:<13} p50 {p50 * 1000:6.2f} ms beside "
                      f"{rate:5.0f} req/s", flush=True)  # fmt: skip
    wrong = statistics.median(p50 for p50, _ in results["wrong token"])
    health = statistics.median(p50 for p50, _ in results["health check"])
    print(f"quiet p50 {quiet * 1000:.2f} ms")
    ratio = wrong / health
    print(f"ratio (p50 beside a wrong-token flood / beside a health-check flood): {ratio:.2f}")


if __name__ == "__main__":
    main()
