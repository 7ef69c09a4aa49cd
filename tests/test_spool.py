"""SpoolWriter and SpoolReader, used for real on real files: group commit, rotation, repair."""

from __future__ import annotations

import json
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tap_vero_webhook.data_dir import DataDir
from tap_vero_webhook.spool.local import SpoolCorrupt, SpoolReader, SpoolWriter, segment_name
from tests.helpers import read_envelopes


def event(n: int) -> bytes:
    return json.dumps({"type": "sent", "n": n, "text": "Zoë ✓"}, ensure_ascii=False).encode()


def test_concurrent_appends_share_fsyncs_and_lose_or_repeat_nothing(tmp_path):
    writer = SpoolWriter(DataDir(tmp_path).spool)
    threads, calls_per_thread = 32, 40
    stamps: dict[int, list] = {}
    start = threading.Barrier(threads)

    def post(thread: int) -> None:
        start.wait()
        mine = []
        for call in range(calls_per_thread):
            size = 1 + (thread + call) % 3  # arrays of 1 to 3 events, too
            events = [event(thread * 10_000 + call * 10 + k) for k in range(size)]
            mine.append((events, writer.append(events)))
        stamps[thread] = mine

    workers = [threading.Thread(target=post, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    calls = threads * calls_per_thread
    assert writer.batches_written < calls  # group commit: fewer fsyncs than requests
    writer.close()

    by_id = {}
    for thread_calls in stamps.values():
        previous = 0
        for events, call_stamps in thread_calls:
            seqs = [stamp.seq for stamp in call_stamps]
            assert seqs == list(range(seqs[0], seqs[0] + len(events)))  # one call: consecutive
            assert seqs[0] > previous  # one thread: increasing
            previous = seqs[-1]
            for encoded, stamp in zip(events, call_stamps, strict=True):
                by_id[stamp.id] = (stamp.seq, json.loads(encoded))
    envelopes = read_envelopes(DataDir(tmp_path).spool)
    assert len(envelopes) == len(by_id) == writer.lines_written
    seqs = [envelope["seq"] for envelope in envelopes]
    assert seqs == sorted(set(seqs))  # strictly increasing, no duplicate
    assert seqs == list(range(1, len(envelopes) + 1))  # nothing lost
    for envelope in envelopes:
        assert by_id[envelope["id"]] == (envelope["seq"], envelope["event"])


def test_segments_rotate_at_the_size_limit_and_read_back_in_order(tmp_path):
    spool_dir = DataDir(tmp_path).spool
    writer = SpoolWriter(spool_dir, segment_max_bytes=1000)
    for n in range(40):
        writer.append([event(n)])
    writer.close()
    segments = sorted(spool_dir.glob("*.jsonl"))
    assert len(segments) > 3
    for segment in segments:
        lines = segment.read_bytes().splitlines()
        assert segment.name == segment_name(json.loads(lines[0])["seq"])
        # a segment only grows past the limit by the batch that crossed it
        assert len(segment.read_bytes()) - len(lines[-1]) - 1 < 1000
    envelopes = read_envelopes(spool_dir)
    assert [e["seq"] for e in envelopes] == list(range(1, 41))
    assert [e["event"]["n"] for e in envelopes] == list(range(40))
    assert [json.loads(line)["seq"] for line in SpoolReader(spool_dir).lines_after(30)] == list(
        range(31, 41)
    )
    # a reopened writer continues in the newest segment, after the last seq
    writer = SpoolWriter(spool_dir, segment_max_bytes=1000)
    assert writer.append([event(99)])[0].seq == 41
    writer.close()


def test_a_torn_tail_is_skipped_by_readers_and_cut_off_by_the_next_writer(tmp_path):
    spool_dir = DataDir(tmp_path).spool
    writer = SpoolWriter(spool_dir)
    writer.append([event(1), event(2)])
    segment = writer.segment_path
    writer.close()
    intact = segment.read_bytes()
    with open(segment, "ab") as handle:
        handle.write(b'{"seq":3,"received_at":"2026-11-30T00:00:00.000000Z","id":"x","event":{"ty')
    assert [e["seq"] for e in read_envelopes(spool_dir)] == [1, 2]

    writer = SpoolWriter(spool_dir)
    assert segment.read_bytes() == intact
    stamp = writer.append([event(3)])[0]
    writer.close()
    assert stamp.seq == 3
    assert [(e["seq"], e["event"]["n"]) for e in read_envelopes(spool_dir)] == [
        (1, 1),
        (2, 2),
        (3, 3),
    ]


def test_a_complete_garbage_line_raises_spool_corrupt(tmp_path):
    spool_dir = DataDir(tmp_path).spool
    writer = SpoolWriter(spool_dir)
    writer.append([event(1)])
    segment = writer.segment_path
    writer.close()
    with open(segment, "ab") as handle:
        handle.write(b"this is not an envelope\n")
    lines = SpoolReader(spool_dir).lines_after(None)
    assert json.loads(next(lines))["seq"] == 1
    with pytest.raises(SpoolCorrupt):
        next(lines)

    writer = SpoolWriter(spool_dir)  # a restarted listener moves the damage aside, carries on
    assert writer.append([event(2)])[0].seq == 2
    writer.close()
    assert [e["seq"] for e in read_envelopes(spool_dir)] == [1, 2]
    quarantined = list((spool_dir / "quarantine").iterdir())
    assert [path.read_bytes() for path in quarantined] == [b"this is not an envelope\n"]
    assert oct(quarantined[0].stat().st_mode & 0o777) == "0o600"


def test_a_reader_sees_only_what_was_committed(tmp_path):
    """Bytes written but not yet committed (a batch in flight) are not read."""
    spool_dir = DataDir(tmp_path).spool
    writer = SpoolWriter(spool_dir)
    writer.append([event(1)])
    snapshot = SpoolReader(spool_dir).snapshot()
    writer.append([event(2)])
    writer.close()
    assert [
        json.loads(line)["seq"] for line in SpoolReader(spool_dir).lines_after(None, snapshot)
    ] == [1]


# --- properties ---------------------------------------------------------------------------


def valid_spool(spool_dir: Path, count: int) -> tuple[Path, list[bytes]]:
    writer = SpoolWriter(spool_dir)
    for n in range(count):
        writer.append([event(n)])
    segment = writer.segment_path
    writer.close()
    return segment, segment.read_bytes().splitlines(keepends=True)


def read_until_damage(spool_dir: Path) -> tuple[list[bytes], bool]:
    """The lines a reader yields, and whether it stopped with SpoolCorrupt."""
    seen = []
    try:
        for line in SpoolReader(spool_dir).lines_after(None):
            seen.append(line)
    except SpoolCorrupt:
        return seen, True
    return seen, False


@settings(max_examples=60, deadline=None)
@given(count=st.integers(1, 8), data=st.data())
def test_a_torn_prefix_of_a_line_is_never_read_and_is_repaired(count, data):
    with tempfile.TemporaryDirectory() as tmp:
        spool_dir = DataDir(Path(tmp)).spool
        segment, lines = valid_spool(spool_dir, count)
        next_line = (
            b'{"seq":%d,"received_at":"2026-11-30T00:00:00.000000Z","id":"i","event":{}}\n'
            % (count + 1)
        )
        cut = data.draw(st.integers(1, len(next_line) - 1), label="torn at byte")
        with open(segment, "ab") as handle:
            handle.write(next_line[:cut])
        seen, corrupt = read_until_damage(spool_dir)
        assert (seen, corrupt) == (lines, False)

        writer = SpoolWriter(spool_dir)
        assert writer.append([event(100)])[0].seq == count + 1
        writer.close()
        seen, corrupt = read_until_damage(spool_dir)
        assert not corrupt
        assert seen[:count] == lines
        assert [json.loads(line)["seq"] for line in seen] == list(range(1, count + 2))


@settings(max_examples=100, deadline=None)
@given(count=st.integers(1, 8), tail=st.binary(min_size=1, max_size=200))
def test_random_tail_bytes_never_reach_a_reader(count, tail):
    """Whatever follows the valid lines: the reader yields exactly them, then either stops
    (torn tail) or raises SpoolCorrupt (a complete line that is not an envelope); a
    restarted writer keeps exactly them and appends after them."""
    assume(b'{"seq":' not in tail)  # a forged envelope is not damage
    with tempfile.TemporaryDirectory() as tmp:
        spool_dir = DataDir(Path(tmp)).spool
        segment, lines = valid_spool(spool_dir, count)
        with open(segment, "ab") as handle:
            handle.write(tail)
        seen, corrupt = read_until_damage(spool_dir)
        assert seen == lines
        assert corrupt == (b"\n" in tail)

        writer = SpoolWriter(spool_dir)  # repairs: a torn tail is cut, damage quarantined
        assert writer.append([event(100)])[0].seq == count + 1
        writer.close()
        seen, corrupt = read_until_damage(spool_dir)
        assert not corrupt
        assert seen[:count] == lines
        assert json.loads(seen[-1])["event"]["n"] == 100
