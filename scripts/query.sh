#!/usr/bin/env bash
# Run one SQL statement against the quickstart's DuckDB file, read-only, and print the result.
#   scripts/query.sh "SELECT type, count(*) FROM stitch_vero.data GROUP BY type"
#   scripts/query.sh "SELECT count(*) FROM stitch_vero.data" --scalar
# It holds the file only while the query runs (a session that keeps it open blocks loads),
# and waits up to QUERY_WAIT_SECONDS (60) while a load holds it.
set -euo pipefail
cd "$(dirname "$0")/.."
sql=${1:?usage: scripts/query.sh "SQL" [--scalar]}
mode=${2:-}
exec .meltano/loaders/target-duckdb/venv/bin/python - "${TARGET_DUCKDB_PATH:-output/vero.duckdb}" "$sql" "$mode" <<'PY'
import os
import sys
import time

import duckdb

path, sql, mode = sys.argv[1:]
deadline = time.monotonic() + float(os.environ.get("QUERY_WAIT_SECONDS", 60))
while True:
    try:
        db = duckdb.connect(path, read_only=True)
        break
    except duckdb.IOException as exc:  # a load holds the file: wait for it to finish
        if "lock" not in str(exc) or time.monotonic() > deadline:
            raise
        time.sleep(0.5)
with db:
    result = db.sql(sql)
    if mode == "--scalar":
        print(result.fetchone()[0])
    else:
        result.show(max_width=200)
PY
