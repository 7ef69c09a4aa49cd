"""The load path, spool → PostgreSQL, as a user runs it, against `psql \\copy` of the same rows.

    .venv/bin/python bench/bench_load.py [--events 100000] [--rounds 3] [--rss-events 1000000]

In one run, on one backlog built through the real listener over HTTP (arrays
of 500 realistic events per POST, `tests/vero_events.event_stream`):

- every variant of the pipeline: `meltano run tap-vero-webhook target-postgres`
  in a scratch copy of this Meltano project whose only change is the variant's
  loader executable or settings ("shipped" is meltano.yml as it is), each run
  into a fresh schema with no state;
- the target alone (stock target-postgres and target-vero-postgres) on the
  tap's saved output;
- `psql \\copy` of the very rows the shipped pipeline stored (exported with
  `\\copy ... TO`) into a copy of its table (`LIKE ... INCLUDING ALL`: same
  column types, same primary key): the floor;
- an idle run (nothing new) of the shipped pipeline, its seconds split into
  Meltano's own, the tap's discovery, the tap's run and the target's run.

Rounds interleave the variants; medians are reported with each one's ratio to the
`\\copy` median of the same run. Peak RSS of every process comes from VmHWM in
/proc, sampled while it runs. The 1M-event RSS run builds its spool with the real
SpoolWriter directly (posting a million events over HTTP takes minutes) and runs
the shipped pipeline once.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_tap import build_spool  # noqa: E402
from tap_vero_webhook import record_pipes  # noqa: E402
from tests.helpers import (  # noqa: E402
    PG_DSN,
    closed_hub_env,
    create_token,
    postgres_connection,
    start_listener,
)
from tests.vero_events import event_stream  # noqa: E402

BIN = Path(sys.executable).parent
PLUGINS = ROOT / ".meltano"
TAP = PLUGINS / "extractors" / "tap-vero-webhook" / "venv" / "bin" / "tap-vero-webhook"
LOADER_BIN = PLUGINS / "loaders" / "target-postgres" / "venv" / "bin"
# Set on our dev machines, not in a deployment: unbuffered stdout, no .pyc files written.
UNREALISTIC_ENV = ("PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE")
POST_BATCH = 500
PARTS = ("meltano", "tap --discover", "tap", "target")
SAMPLE_SECONDS = 0.05

# A state like the one a pipeline's earlier runs left (no bookmark: the backlog is the
# whole spool): target-vero-postgres' asks for record pipes, stock target-postgres' does not.
EARLIER_STATE_VERO = record_pipes.with_request({})

# name → (loader executable, loader config overrides, the state of earlier runs or None);
# "shipped" is meltano.yml unchanged.
VARIANTS: dict[str, tuple[str | None, dict, dict | None]] = {
    "before: stock target-postgres": ("target-postgres", {}, None),
    "shipped, a first run (no state: stdout)": (None, {}, None),
    "shipped: record pipes (state of earlier runs)": (None, {}, EARLIER_STATE_VERO),
}
SHIPPED = "shipped: record pipes (state of earlier runs)"


# --- the backlog ---------------------------------------------------------------------


def post_backlog(data_dir: Path, count: int) -> float:
    """`count` realistic events through the real listener; seconds it took."""
    token = create_token(data_dir)
    listener = start_listener(data_dir)
    events = event_stream(count)
    session = requests.Session()
    started = time.perf_counter()
    try:
        for first in range(0, count, POST_BATCH):
            body = json.dumps(events[first : first + POST_BATCH]).encode()
            response = session.post(
                listener.hook_url(token),
                data=body,
                headers={"Content-Type": "application/json"},
                timeout=60,
            )
            assert response.status_code == 200, response.text
    finally:
        listener.stop()
    return time.perf_counter() - started


# --- processes, their time and memory ------------------------------------------------


@dataclass
class Proc:
    pid: int
    name: str
    first: float
    last: float
    hwm_kib: int = 0
    cpu: float = 0.0  # user + system seconds, as last sampled


@dataclass
class Watch:
    """Samples the process tree under `root` every 50 ms: lifetimes, peak RSS, CPU."""

    root: int
    procs: dict[int, Proc] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            now = time.perf_counter()
            for pid in self._tree():
                status = _read(f"/proc/{pid}/status")
                hwm = next(
                    (
                        int(line.split()[1])
                        for line in status.splitlines()
                        if line.startswith("VmHWM")
                    ),
                    0,
                )
                proc = self.procs.get(pid)
                if proc is None:
                    proc = self.procs[pid] = Proc(pid, _name(pid), now, now)
                elif proc.name not in PARTS:  # seen between fork and exec: look again
                    proc.name = _name(pid)
                proc.last, proc.hwm_kib = now, max(proc.hwm_kib, hwm)
                proc.cpu = max(proc.cpu, _cpu_seconds(pid))
            time.sleep(SAMPLE_SECONDS)

    def _tree(self) -> list[int]:
        """`root` and its descendants. Only processes started after `root` can be its
        descendants (pids rise), so only those are read: a scan of every process on the
        machine each sample would cost the pipeline a good part of a core."""
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) > self.root:
                stat = _read(f"/proc/{entry}/stat")
                if stat:
                    ppid = int(stat.rsplit(")", 1)[1].split()[1])
                    children.setdefault(ppid, []).append(int(entry))
        tree, todo = [], [self.root]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo += children.get(pid, [])
        return tree


TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    fields = _read(f"/proc/{pid}/stat").rsplit(")", 1)[-1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS if len(fields) > 12 else 0.0


def _read(path: str) -> str:
    try:
        with open(path) as file:
            return file.read()
    except OSError:
        return ""


def _name(pid: int) -> str:
    argv = _read(f"/proc/{pid}/cmdline").split("\0")
    words = [Path(word).name for word in argv if word]
    if any(word == "--discover" for word in words):
        return "tap --discover"
    for word in words:
        if word.startswith("tap-vero-webhook"):
            return "tap"
        if word.startswith("target-"):
            return "target"
        if word == "meltano":
            return "meltano"
    return " ".join(words[:2])


@dataclass
class Run:
    seconds: float
    procs: list[Proc]

    def part(self, name: str) -> list[Proc]:
        return [proc for proc in self.procs if proc.name == name]

    def seconds_of(self, name: str) -> float:
        return sum(proc.last - proc.first for proc in self.part(name))

    def cpu_of(self, name: str) -> float:
        return sum(proc.cpu for proc in self.part(name))

    def peak_mib(self, name: str) -> float:
        return max((proc.hwm_kib for proc in self.part(name)), default=0) / 1024


def watched(argv: list[str], env: dict, cwd: Path, stdin=None, log: Path | None = None) -> Run:
    with open(log or os.devnull, "ab") as out:
        started = time.perf_counter()
        process = subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=stdin, stdout=subprocess.DEVNULL, stderr=out
        )
        watch = Watch(process.pid)
        sampler = threading.Thread(target=watch.run, daemon=True)
        sampler.start()
        status = process.wait()
        seconds = time.perf_counter() - started
        watch.stop.set()
        sampler.join()
    if status != 0:
        tail = log.read_text()[-3000:] if log else ""
        raise SystemExit(f"{' '.join(argv)} exited {status}\n{tail}")
    return Run(seconds, list(watch.procs.values()))


# --- the Meltano project, one scratch copy per variant ----------------------------------


class Projects:
    def __init__(self, work: Path, data_dir: Path, dsn: str) -> None:
        self.work = work
        self.dsn = dsn
        connection = {
            f"TARGET_POSTGRES_{name.upper()}": str(value)
            for name, value in postgres_connection(dsn).items()
        }
        self.env = {
            **{k: v for k, v in closed_hub_env().items() if k not in UNREALISTIC_ENV},
            "TAP_VERO_WEBHOOK_DATA_DIR": str(data_dir),
            **connection,
        }
        self.shipped = yaml.safe_load((ROOT / "meltano.yml").read_text())
        self.dirs: dict[str, Path] = {}

    def project(self, variant: str) -> Path:
        """A copy of meltano.yml with this variant's loader, and its own system dir
        (state, run files) sharing the installed plugins."""
        if variant in self.dirs:
            return self.dirs[variant]
        executable, overrides, _ = VARIANTS[variant]
        spec = json.loads(json.dumps(self.shipped))
        loader = next(p for p in spec["plugins"]["loaders"] if p["name"] == "target-postgres")
        if executable:
            loader["executable"] = executable
        loader["config"] = {**loader.get("config", {}), **overrides}
        project = self.work / f"project-{len(self.dirs)}"
        (project / ".meltano").mkdir(parents=True)
        for kind in ("extractors", "loaders"):
            (project / ".meltano" / kind).symlink_to(PLUGINS / kind)
        (project / "meltano.yml").write_text(yaml.safe_dump(spec, sort_keys=False))
        self.dirs[variant] = project
        return project

    def run(self, variant: str, schema: str, *, state_suffix: str, fresh: bool = True) -> Run:
        """`meltano run` of `variant` into `schema`; `fresh`: with the state its earlier
        runs would have left (none, or the target's ask for record pipes)."""
        env = {**self.env, "TARGET_POSTGRES_DEFAULT_TARGET_SCHEMA": schema}
        project = self.project(variant)
        earlier_state = VARIANTS[variant][2]
        if fresh and earlier_state is not None:
            state_id = f"prod:tap-vero-webhook-to-target-postgres:{state_suffix}"
            state = json.dumps({"singer_state": earlier_state})
            subprocess.run(
                [str(BIN / "meltano"), "state", "set", "--force", state_id, state],
                env=env,
                cwd=project,
                check=True,
                capture_output=True,
            )
        argv = [str(BIN / "meltano"), "run", "--state-id-suffix", state_suffix]
        argv += ["tap-vero-webhook", "target-postgres"]
        return watched(argv, env, project, log=self.work / "meltano.log")


# --- PostgreSQL --------------------------------------------------------------------------


class Warehouse:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.schemas: list[str] = []

    def new_schema(self) -> str:
        schema = f"bench_load_{uuid.uuid4().hex[:10]}"
        self.schemas.append(schema)
        return schema

    def count(self, schema: str) -> int:
        return self.conn.execute(f"SELECT count(*) FROM {schema}.data").fetchone()[0]

    def drop(self, schema: str) -> None:
        self.conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")

    def drop_all(self) -> None:
        for schema in self.schemas:
            self.drop(schema)


def psql(dsn: str, command: str) -> float:
    """Seconds of `psql -c command`, watched like the pipelines (the sampler costs both)."""
    argv = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", dsn, "-c", command]
    return watched(argv, dict(os.environ), Path.cwd()).seconds


# --- the bench ------------------------------------------------------------------------


def target_config(work: Path, dsn: str, schema: str) -> Path:
    path = work / f"target-{schema}.json"
    shipped = yaml.safe_load((ROOT / "meltano.yml").read_text())
    loader = next(p for p in shipped["plugins"]["loaders"] if p["name"] == "target-postgres")
    config = {
        **loader.get("config", {}),
        **postgres_connection(dsn),
        "default_target_schema": schema,
    }
    path.write_text(json.dumps(config))
    return path


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rss-events", type=int, default=1_000_000, help="0 to skip")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still drop schemas, remove files
    dsn = os.environ.get("TEST_PG_DSN", PG_DSN)
    warehouse = Warehouse(dsn)
    print(
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
        f"{os.cpu_count()} cores, load average {load_average()}"
    )
    results: dict = {"events": args.events, "load_before": load_average()}
    with tempfile.TemporaryDirectory(dir=ROOT / "bench", prefix="tmp-load-") as tmp:
        work = Path(tmp)
        data_dir = work / "data"
        posted = post_backlog(data_dir, args.events)
        print(f"backlog: {args.events} events posted through the listener in {posted:.1f} s")
        projects = Projects(work, data_dir, dsn)
        saved = work / "tap-output.jsonl"
        with open(saved, "wb") as out:
            subprocess.run(
                [str(TAP), "--config", "ENV"],
                env=projects.env,
                stdout=out,
                stderr=subprocess.DEVNULL,
                check=True,
            )
        try:
            results.update(bench(args, projects, warehouse, work, saved))
            if args.rss_events:
                results["rss_1m"] = rss_run(args.rss_events, work, dsn, warehouse)
        finally:
            warehouse.drop_all()
    results["load_after"] = load_average()
    print(f"load average at the end: {results['load_after']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def bench(args, projects: Projects, warehouse: Warehouse, work: Path, saved: Path) -> dict:
    runs: dict[str, list[Run]] = {name: [] for name in args.variants}
    alone: dict[str, list[float]] = {"target-postgres": [], "target-vero-postgres": []}
    copies: list[float] = []
    rows_file = work / "rows.tsv"
    reference = reference_suffix = None
    for round_number in range(args.rounds):
        for name in args.variants:
            schema = warehouse.new_schema()
            run_suffix = f"bench{uuid.uuid4().hex[:8]}"
            run = projects.run(name, schema, state_suffix=run_suffix)
            assert warehouse.count(schema) == args.events, name
            runs[name].append(run)
            if reference is None and name == SHIPPED:
                reference = schema
                reference_suffix = run_suffix
                psql(warehouse.dsn, f"\\copy {schema}.data TO '{rows_file}'")
            else:
                warehouse.drop(schema)
            print(f"  round {round_number + 1}: {name}: {run.seconds:.2f} s", flush=True)
        if reference is not None:
            copy_table = f"{reference}.copy_{round_number}"
            psql(warehouse.dsn, f"CREATE TABLE {copy_table} (LIKE {reference}.data INCLUDING ALL)")
            copies.append(psql(warehouse.dsn, f"\\copy {copy_table} FROM '{rows_file}'"))
            assert (
                warehouse.conn.execute(f"SELECT count(*) FROM {copy_table}").fetchone()[0]
                == args.events
            )
            warehouse.conn.execute(f"DROP TABLE {copy_table}")
            print(f"  round {round_number + 1}: psql \\copy: {copies[-1]:.2f} s", flush=True)
        for executable in alone:
            schema = warehouse.new_schema()
            config = target_config(work, projects.dsn, schema)
            with open(saved, "rb") as stdin:
                run = watched(
                    [str(LOADER_BIN / executable), "--config", str(config)],
                    projects.env,
                    work,
                    stdin=stdin,
                )
            assert warehouse.count(schema) == args.events, executable
            warehouse.drop(schema)
            alone[executable].append(run.seconds)
            print(
                f"  round {round_number + 1}: {executable} alone: {run.seconds:.2f} s", flush=True
            )

    floor = statistics.median(copies)
    events = args.events
    print(f"\n{events} events, medians of {args.rounds} rounds; ratio: psql \\copy time / time")
    print(
        f"{'':48} {'s':>7} {'rows/s':>8} {'ratio':>6}  peak RSS MiB / CPU s (meltano, tap, target)"
    )
    label = "psql \\copy (same rows, same table)"
    print(f"{label:48} {floor:7.2f} {events / floor:8,.0f} {1:6.2f}")
    table = {"psql_copy": {"seconds": floor, "runs": copies}}
    for executable, seconds in alone.items():
        median = statistics.median(seconds)
        label = f"{executable} alone on the tap's output"
        print(f"{label:48} {median:7.2f} {events / median:8,.0f} {floor / median:6.2f}")
        table[label] = {"seconds": median, "runs": seconds}
    for name, variant_runs in runs.items():
        median = statistics.median(run.seconds for run in variant_runs)
        parts = ("meltano", "tap", "target")
        peaks = [max(run.peak_mib(part) for run in variant_runs) for part in parts]
        cpu = [statistics.median(run.cpu_of(part) for run in variant_runs) for part in parts]
        print(
            f"{'meltano run, ' + name:48} {median:7.2f} {events / median:8,.0f} "
            f"{floor / median:6.2f}  {peaks[0]:.0f}/{peaks[1]:.0f}/{peaks[2]:.0f} MiB, "
            f"{cpu[0]:.1f}/{cpu[1]:.1f}/{cpu[2]:.1f} s"
        )
        table[name] = {
            "seconds": median,
            "runs": [run.seconds for run in variant_runs],
            "peak_rss_mib": dict(zip(parts, peaks, strict=True)),
            "cpu_seconds": dict(zip(parts, cpu, strict=True)),
        }

    # an idle run of the shipped pipeline: the reference schema is loaded, its state kept
    idle = [idle_run(projects, reference, reference_suffix) for _ in range(args.rounds)]
    parts = {
        part: statistics.median(run.seconds_of(part) for run in idle)
        for part in ("tap --discover", "tap", "target")
    }
    total = statistics.median(run.seconds for run in idle)
    print(
        f"\nidle run (nothing new), shipped pipeline: {total:.2f} s "
        f"(runs: {', '.join(f'{run.seconds:.2f}' for run in idle)})"
    )
    print(
        f"  tap --discover {parts['tap --discover']:.2f} s, tap {parts['tap']:.2f} s, "
        f"target {parts['target']:.2f} s (these two overlap), meltano's own: the rest"
    )
    table["idle"] = {"seconds": total, "parts": parts}
    return {"table": table}


def idle_run(projects: Projects, schema: str, state_suffix: str) -> Run:
    """The shipped pipeline again on the reference schema, with its state: nothing new."""
    return projects.run(SHIPPED, schema, state_suffix=state_suffix, fresh=False)


def rss_run(count: int, work: Path, dsn: str, warehouse: Warehouse) -> dict:
    data_dir = work / "data-rss"
    build_spool(data_dir, count)
    projects = Projects(work / "rss", data_dir, dsn)
    schema = warehouse.new_schema()
    run = projects.run(SHIPPED, schema, state_suffix=f"rss{uuid.uuid4().hex[:8]}")
    assert warehouse.count(schema) == count
    warehouse.drop(schema)
    peaks = {part: run.peak_mib(part) for part in ("meltano", "tap", "target")}
    print(
        f"\n{count} events (spool written with SpoolWriter), shipped pipeline: {run.seconds:.1f} s "
        f"({count / run.seconds:,.0f} rows/s); peak RSS MiB meltano {peaks['meltano']:.0f}, "
        f"tap {peaks['tap']:.0f}, target {peaks['target']:.0f}"
    )
    return {"seconds": run.seconds, "peak_rss_mib": peaks}


if __name__ == "__main__":
    main()
