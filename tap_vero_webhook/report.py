"""`vero-webhook report`: what was accepted, what was refused, what still waits to be loaded.

Everything is read from disk, so the report works with the listener running or
stopped and never talks to it:

- accepted events per day and per event type, from the spool's committed lines
  (only segments still retained: the tap removes loaded ones past its retention);
- refused requests by reason, from ``rejects/`` (as far back as its retention);
- the backlog: events and bytes with a sequence above the last one the loader
  confirmed, and how long the oldest of them has waited. "Confirmed" is the
  ``_sdc_webhook_sequence`` bookmark of the state a Singer target emitted after
  committing: a state file, or the state Meltano saved for the pipeline.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import msgspec

from tap_vero_webhook.data_dir import DataDir
from tap_vero_webhook.listener.rejects import read_rejects
from tap_vero_webhook.schema import SEQUENCE, STREAM
from tap_vero_webhook.spool.local import SpoolReader
from tap_vero_webhook.timestamps import parse_utc_timestamp, utc_timestamp

MELTANO_STATE_PATTERN = "*tap-vero-webhook-to-*"
NO_TYPE = "(no type)"


class ReportError(Exception):
    """The report cannot be made as asked (unreadable state, Meltano failed, ...)."""


class _Event(msgspec.Struct):
    type: Any = None


class _Envelope(msgspec.Struct):
    seq: int
    received_at: str
    event: _Event


# --- the loader's confirmed position -------------------------------------------------


def loaded_through(state: dict) -> int | None:
    """The highest sequence the loader confirmed in a Singer state (None if none yet).

    Accepts a bare Singer state (what a target prints once it has committed), a
    STATE message, or Meltano's wrapper ``{"singer_state": {...}}``.
    """
    if not isinstance(state, dict):
        raise ReportError("the state is not a JSON object")
    if state.get("type") == "STATE" and isinstance(state.get("value"), dict):
        state = state["value"]  # a Singer STATE message rather than its value
    state = state.get("singer_state", state)
    bookmark = (state.get("bookmarks") or {}).get(STREAM) or {}
    key = bookmark.get("replication_key")
    if key not in (None, SEQUENCE):
        raise ReportError(f"the state's `{STREAM}` bookmark is on {key!r}, not {SEQUENCE}")
    value = bookmark.get("replication_key_value")
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ReportError(f"the state's {SEQUENCE} bookmark {value!r} is not a number") from None


def read_state_file(path: Path) -> dict:
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ReportError(f"cannot read the state file {path}: {exc.strerror}") from None
    if not text:
        return {}
    # a file of target output holds one state per line: the last is the newest
    try:
        return json.loads(text.splitlines()[-1] if "\n" in text else text)
    except ValueError:
        try:
            return json.loads(text)
        except ValueError:
            raise ReportError(f"the state file {path} is not JSON") from None


def _meltano_executable() -> str:
    beside_us = Path(sys.executable).parent / "meltano"
    if beside_us.exists():
        return str(beside_us)
    found = shutil.which("meltano")
    if found is None:
        raise ReportError("meltano is not installed here; give the state with --state-file")
    return found


def _run_meltano(project_dir: Path, *args: str) -> str:
    command = [_meltano_executable(), *args]
    try:
        done = subprocess.run(
            command, cwd=project_dir, capture_output=True, text=True, timeout=300, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ReportError(f"`meltano {' '.join(args)}` failed: {exc}") from None
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise ReportError(f"`meltano {' '.join(args)}` exited with {done.returncode}:\n{tail}")
    return done.stdout


def meltano_state(project_dir: Path, state_id: str | None = None) -> tuple[str | None, dict]:
    """(state id, state) as Meltano holds it for the tap's pipeline.

    Without `state_id`, the one state id naming tap-vero-webhook is used; none means
    nothing has been loaded yet.
    """
    if state_id is None:
        listed = _run_meltano(project_dir, "state", "list", "--pattern", MELTANO_STATE_PATTERN)
        ids = [line.strip() for line in listed.splitlines() if line.strip()]
        if not ids:
            return None, {}
        if len(ids) > 1:
            raise ReportError(
                "Meltano holds several states for tap-vero-webhook; choose one with "
                f"--state-id: {', '.join(ids)}"
            )
        state_id = ids[0]
    text = _run_meltano(project_dir, "state", "get", state_id).strip()
    try:
        return state_id, json.loads(text) if text else {}
    except ValueError:
        raise ReportError(f"`meltano state get {state_id}` did not print JSON") from None


# --- the report ---------------------------------------------------------------------


def build_report(
    data_dir: Path,
    loaded_through_seq: int | None,
    state_source: str | None,
    now: float | None = None,
) -> dict:
    """The report as plain data (what --json prints)."""
    now = time.time() if now is None else now
    data_dir = Path(data_dir)
    reader = SpoolReader(DataDir(data_dir).spool)
    segments = reader.snapshot()
    decode = msgspec.json.Decoder(_Envelope).decode

    per_day: dict[str, Counter] = defaultdict(Counter)
    per_type: Counter = Counter()
    total = 0
    first_seq = last_seq = None
    waiting_events = waiting_bytes = 0
    oldest_waiting: str | None = None
    floor = 0 if loaded_through_seq is None else loaded_through_seq
    for line in reader.lines_after(None, segments):
        envelope = decode(line)
        kind = envelope.event.type if isinstance(envelope.event.type, str) else NO_TYPE
        per_day[envelope.received_at[:10]][kind] += 1
        per_type[kind] += 1
        total += 1
        first_seq = envelope.seq if first_seq is None else first_seq
        last_seq = envelope.seq
        if envelope.seq > floor:
            waiting_events += 1
            waiting_bytes += len(line)
            oldest_waiting = oldest_waiting or envelope.received_at

    rejected: dict[tuple[str, int], dict] = {}
    rejected_total = 0
    for record in read_rejects(DataDir(data_dir).rejects):
        key = (str(record.get("reason")), int(record.get("status") or 0))
        entry = rejected.setdefault(
            key, {"reason": key[0], "status": key[1], "requests": 0, "last_at": None}
        )
        entry["requests"] += 1
        entry["last_at"] = max(entry["last_at"] or "", str(record.get("time") or ""))
        rejected_total += 1

    return {
        "data_dir": str(data_dir),
        "generated_at": utc_timestamp(now),
        "spool": {
            "segments": len(segments),
            "bytes": sum(segment.size for segment in segments),
            "events": total,
            "first_seq": first_seq,
            "last_seq": last_seq,
        },
        "accepted": {
            "total": total,
            "by_day": [
                {"day": day, "events": sum(types.values()), "by_type": dict(sorted(types.items()))}
                for day, types in sorted(per_day.items())
            ],
            "by_type": dict(sorted(per_type.items())),
        },
        "rejected": {
            "total": rejected_total,
            "by_reason": sorted(
                rejected.values(), key=lambda item: (-item["requests"], item["reason"])
            ),
        },
        "backlog": {
            "state_source": state_source,
            "loaded_through_seq": loaded_through_seq,
            "events": waiting_events,
            "bytes": waiting_bytes,
            "oldest_received_at": oldest_waiting,
            "oldest_age_seconds": (
                round(now - parse_utc_timestamp(oldest_waiting).timestamp(), 3)
                if oldest_waiting
                else None
            ),
        },
    }


def _duration(seconds: float) -> str:
    """A wait as a person reads it: 42s, 5m 3s, 2h 10m, 3d 4h."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60}s"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600}h"


def format_report(report: dict) -> str:
    """The report as tables for a terminal."""
    spool, accepted = report["spool"], report["accepted"]
    rejected, backlog = report["rejected"], report["backlog"]
    out = [f"vero-webhook report for {report['data_dir']} at {report['generated_at']}", ""]

    seqs = f", seq {spool['first_seq']}..{spool['last_seq']}" if spool["events"] else ""
    out.append(
        f"ACCEPTED EVENTS ({spool['events']} in {spool['segments']} spool "
        f"segment{'' if spool['segments'] == 1 else 's'}, "
        f"{spool['bytes']} bytes{seqs})"
    )
    if accepted["by_day"]:
        out.append(f"{'DAY':<12}{'TYPE':<16}{'EVENTS':>10}")
        for day in accepted["by_day"]:
            for kind, count in day["by_type"].items():
                out.append(f"{day['day']:<12}{kind:<16}{count:>10}")
            out.append(f"{day['day']:<12}{'(all)':<16}{day['events']:>10}")
        out.append(f"{'all days':<12}{'(all)':<16}{accepted['total']:>10}")
    else:
        out.append("none in the spool")
    out.append("")

    out.append(f"REJECTED REQUESTS ({rejected['total']} in rejects/)")
    if rejected["by_reason"]:
        out.append(f"{'REASON':<28}{'STATUS':>6}{'REQUESTS':>10}  LAST")
        for item in rejected["by_reason"]:
            out.append(
                f"{item['reason']:<28}{item['status']:>6}{item['requests']:>10}  {item['last_at']}"
            )
    else:
        out.append("none")
    out.append("")

    source = backlog["state_source"] or "no state given: nothing counts as loaded"
    out.append(f"BACKLOG (not yet confirmed loaded; {source})")
    loaded = backlog["loaded_through_seq"]
    out.append(f"{'loaded through seq':<22}{'-' if loaded is None else loaded}")
    out.append(f"{'events waiting':<22}{backlog['events']}")
    out.append(f"{'bytes waiting':<22}{backlog['bytes']}")
    if backlog["oldest_received_at"]:
        age = _duration(backlog["oldest_age_seconds"])
        out.append(f"{'oldest waiting':<22}{backlog['oldest_received_at']} ({age} ago)")
    else:
        out.append(f"{'oldest waiting':<22}-")
    return "\n".join(out)
