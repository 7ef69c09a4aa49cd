"""Baseline for bench_tap.py: a hand-written loop, stdlib json, same records as the tap.

Reads every spool line and writes a Singer RECORD line for it (typed columns plus
the whole payload, time_extracted = arrival time), then one STATE line.
"""

import json
import sys
from pathlib import Path

from tap_vero_webhook.schema import COLUMN_ACCEPTS, KEY, PAYLOAD, RECEIVED_AT, SEQUENCE


def main(spool_dir: str) -> None:
    out = sys.stdout
    last = None
    for segment in sorted(Path(spool_dir).glob("*.jsonl")):
        with open(segment, encoding="utf-8") as lines:
            for line in lines:
                envelope = json.loads(line)
                event = envelope["event"]
                record = {
                    KEY: envelope["id"],
                    RECEIVED_AT: envelope["received_at"],
                    SEQUENCE: envelope["seq"],
                }
                for name, value in event.items():
                    accepts = COLUMN_ACCEPTS.get(name)
                    if accepts is not None and accepts(value):
                        record[name] = value
                record[PAYLOAD] = event
                message = {
                    "type": "RECORD",
                    "stream": "data",
                    "record": record,
                    "time_extracted": envelope["received_at"],
                }
                out.write(json.dumps(message) + "\n")
                last = envelope["seq"]
    state = {"bookmarks": {"data": {"replication_key": SEQUENCE, "replication_key_value": last}}}
    out.write(json.dumps({"type": "STATE", "value": state}) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
