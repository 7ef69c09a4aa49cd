#!/usr/bin/env bash
# Run one SQL statement against the quickstart's DuckDB file, read-only, and print the result.
#   scripts/query.sh "SELECT type, count(*) FROM stitch_vero.data GROUP BY type"
#   scripts/query.sh "SELECT count(*) FROM stitch_vero.data" --scalar
# It holds the file only while the query runs: a session that keeps it open blocks loads.
set -euo pipefail
cd "$(dirname "$0")/.."
sql=${1:?usage: scripts/query.sh "SQL" [--scalar]}
mode=${2:-}
exec .meltano/loaders/target-duckdb/venv/bin/python - "${TARGET_DUCKDB_PATH:-output/vero.duckdb}" "$sql" "$mode" <<'PY'
import sys

import duckdb

path, sql, mode = sys.argv[1:]
with duckdb.connect(path, read_only=True) as db:
    result = db.sql(sql)
    if mode == "--scalar":
        print(result.fetchone()[0])
    else:
        result.show(max_width=200)
PY
