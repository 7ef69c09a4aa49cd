"""Tap throughput: records/s of `tap-vero-webhook` over a spool of realistic Vero events,
written to /dev/null, as a ratio to a hand-written stdlib-json loop run in the same bench.

    .venv/bin/python bench/bench_tap.py [--events 200000] [--rounds 3] [--rss-events 1000000]

Both sides are whole processes (interpreter start included), run alternately,
and the median of each is compared. Peak RSS comes from wait4() of each process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tap_vero_webhook.data_dir import DataDir  # noqa: E402
from tap_vero_webhook.listener.payloads import encode_event  # noqa: E402
from tap_vero_webhook.spool.local import SpoolWriter  # noqa: E402
from tests.vero_events import event_stream  # noqa: E402

BIN = Path(sys.executable).parent
# Set on our dev machines, not in a deployment: unbuffered stdout, no .pyc files.
UNREALISTIC_ENV = ("PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE")


def build_spool(data_dir: Path, count: int) -> int:
    """Write `count` events with the real SpoolWriter, in batches; return spool bytes."""
    events = [encode_event(event) for event in event_stream(min(count, 50_000))]
    writer = SpoolWriter(DataDir(data_dir).spool)
    written = 0
    while written < count:
        batch = events[: min(1000, count - written)]
        writer.append(batch)
        written += len(batch)
    writer.close()
    return sum(path.stat().st_size for path in DataDir(data_dir).spool.glob("*.jsonl"))


def timed_run(argv: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one process writing to /dev/null."""
    with open(os.devnull, "wb") as devnull:
        started = time.perf_counter()
        env = {k: v for k, v in os.environ.items() if k not in UNREALISTIC_ENV}
        process = subprocess.Popen(argv, stdout=devnull, stderr=subprocess.DEVNULL, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv[0]} failed with {status}")
    return elapsed, usage.ru_maxrss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rss-events", type=int, default=1_000_000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        spool_bytes = build_spool(data_dir, args.events)
        config = Path(tmp) / "tap.json"
        config.write_text(json.dumps({"data_dir": str(data_dir)}))
        tap = [str(BIN / "tap-vero-webhook"), "--config", str(config)]
        baseline = [
            sys.executable,
            str(ROOT / "bench" / "baseline_singer_loop.py"),
            str(DataDir(data_dir).spool),
        ]
        tap_runs, baseline_runs, tap_rss = [], [], 0
        for _ in range(args.rounds):
            seconds, _rss = timed_run(baseline)
            baseline_runs.append(seconds)
            seconds, rss = timed_run(tap)
            tap_runs.append(seconds)
            tap_rss = max(tap_rss, rss)
        tap_rate = args.events / statistics.median(tap_runs)
        baseline_rate = args.events / statistics.median(baseline_runs)
        print(f"spool: {args.events} events, {spool_bytes / 1e6:.0f} MB")
        print(
            f"baseline (stdlib json loop): {baseline_rate:,.0f} records/s "
            f"(runs: {', '.join(f'{s:.2f}s' for s in baseline_runs)})"
        )
        print(
            f"tap-vero-webhook:            {tap_rate:,.0f} records/s "
            f"(runs: {', '.join(f'{s:.2f}s' for s in tap_runs)})"
        )
        print(f"ratio tap/baseline: {tap_rate / baseline_rate:.2f}")
        print(f"tap peak RSS at {args.events} events: {tap_rss / 1024:.0f} MiB")

    if args.rss_events:
        with tempfile.TemporaryDirectory() as tmp:
            data_dir = Path(tmp) / "data"
            build_spool(data_dir, args.rss_events)
            config = Path(tmp) / "tap.json"
            config.write_text(json.dumps({"data_dir": str(data_dir)}))
            seconds, rss = timed_run([str(BIN / "tap-vero-webhook"), "--config", str(config)])
            print(
                f"tap peak RSS at {args.rss_events} events: {rss / 1024:.0f} MiB "
                f"({args.rss_events / seconds:,.0f} records/s)"
            )


if __name__ == "__main__":
    main()
