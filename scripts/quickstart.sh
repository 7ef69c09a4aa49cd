#!/usr/bin/env bash
# `make run`: the webhook listener, plus a load into a local DuckDB file every few
# seconds that also rebuilds the models in it
# (`meltano run tap-vero-webhook target-duckdb dbt-duckdb:build`). Ctrl-C stops both.
#
# Settings (environment):
#   VERO_WEBHOOK_DATA_DIR   spool and tokens                         (default: data)
#   VERO_WEBHOOK_HOST/PORT  where the listener binds                 (default: 127.0.0.1:8080)
#   TARGET_DUCKDB_PATH      the DuckDB file loaded into              (default: output/vero.duckdb)
#   LOAD_EVERY_SECONDS      pause between loads                      (default: 15)
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=.venv/bin
DUCKDB_STATE_ID=prod:tap-vero-webhook-to-target-duckdb
export VERO_WEBHOOK_DATA_DIR=${VERO_WEBHOOK_DATA_DIR:-data}
export VERO_WEBHOOK_HOST=${VERO_WEBHOOK_HOST:-127.0.0.1}
export VERO_WEBHOOK_PORT=${VERO_WEBHOOK_PORT:-8080}
export TARGET_DUCKDB_PATH=${TARGET_DUCKDB_PATH:-output/vero.duckdb}
LOAD_EVERY_SECONDS=${LOAD_EVERY_SECONDS:-15}

TARGET_DUCKDB_PATH=$(realpath -m "$TARGET_DUCKDB_PATH")
export TAP_VERO_WEBHOOK_DATA_DIR
TAP_VERO_WEBHOOK_DATA_DIR=$(realpath -m "$VERO_WEBHOOK_DATA_DIR")
LOAD_LOG=$(dirname "$TARGET_DUCKDB_PATH")/last-load.log
BASE_URL="http://$VERO_WEBHOOK_HOST:$VERO_WEBHOOK_PORT"

if [[ -t 2 ]]; then
    say() { printf '\033[1m%s\033[0m\n' "$*" >&2; }
else
    say() { printf '%s\n' "$*" >&2; }
fi

count_rows() {
    QUERY_WAIT_SECONDS=5 scripts/query.sh "SELECT count(*) FROM stitch_vero.data" --scalar \
        2>/dev/null || echo "?"
}

# DuckDB does not create the folder of its file.
mkdir -p "$(dirname "$TARGET_DUCKDB_PATH")"

# A deleted DuckDB file means "start over": forget what was loaded into it
# (in the background, while the listener starts; the first load waits for it).
forget_pid=
if [[ ! -e $TARGET_DUCKDB_PATH ]]; then
    $BIN/meltano state clear --force "$DUCKDB_STATE_ID" >/dev/null 2>&1 &
    forget_pid=$!
fi

url=
if [[ $($BIN/vero-webhook token list --json) == "[]" ]]; then
    url=$($BIN/vero-webhook token create --base-url "$BASE_URL" 2>/dev/null)
fi

listener_pid=
loader_pid=
stop() {
    local status=${1:-$?}
    trap - INT TERM EXIT
    say "stopping…"
    for pid in $loader_pid $listener_pid; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    say "stopped. Events received but not yet loaded stay in the spool; the next run loads them."
    exit "$status"
}
trap 'stop 0' INT TERM
trap stop EXIT

$BIN/vero-webhook serve &
listener_pid=$!
for _ in $(seq 100); do
    if curl -fsS "$BASE_URL/healthz" >/dev/null 2>&1; then break; fi
    if ! kill -0 "$listener_pid" 2>/dev/null; then
        say "the listener did not start (is port $VERO_WEBHOOK_PORT taken? set VERO_WEBHOOK_PORT)"
        exit 1
    fi
    sleep 0.2
done

say ""
if [[ -n $url ]]; then
    say "Your webhook URL (shown this once only):"
    say "  $url"
    say "(For a real Vero account the listener needs a public HTTPS address: docs/meltano.md.)"
else
    url="$BASE_URL/hooks/<secret>"
    say "A webhook URL exists already; it was shown only when it was created. Lost it? Make another"
    say "(at most 2 are active; see vero-webhook token list / token revoke):"
    say "  $BIN/vero-webhook token create --data-dir $VERO_WEBHOOK_DATA_DIR --base-url $BASE_URL"
fi
cat >&2 <<EOF

Post a test event:
  curl -sS -H 'Content-Type: application/json' -d '{"type":"sent","sent_at":1735000000,"user":{"id":1,"email":"ada@example.com"},"campaign":{"id":7,"name":"Welcome"}}' '$url'

Every $LOAD_EVERY_SECONDS s the events are loaded into $TARGET_DUCKDB_PATH, table stitch_vero.data. Query it:
  scripts/query.sh "SELECT type, \"user\"->>'email' AS email, _sdc_webhook_received_at FROM stitch_vero.data ORDER BY _sdc_webhook_sequence DESC LIMIT 10"
After each load the models (docs/models.md) are rebuilt beside it, e.g. campaign performance:
  scripts/query.sh "SELECT campaign_id, campaign_name, sends, deliveries, unique_opens, open_rate FROM stitch_vero.vero__campaigns ORDER BY sends DESC LIMIT 10"
(A session that keeps the DuckDB file open blocks the next load; scripts/query.sh opens it only briefly.)

Ctrl-C stops the listener and the loads.

EOF

if [[ -n $forget_pid ]]; then
    wait "$forget_pid" || true
fi
while true; do
    before=$(count_rows)
    $BIN/meltano run --force tap-vero-webhook target-duckdb dbt-duckdb:build >"$LOAD_LOG" 2>&1 &
    loader_pid=$!
    if wait "$loader_pid"; then
        after=$(count_rows)
        if [[ $before =~ ^[0-9]+$ && $after =~ ^[0-9]+$ ]]; then
            say "$(date +%H:%M:%S) load done: $((after - before)) new, $after rows in stitch_vero.data"
        else
            say "$(date +%H:%M:%S) load done: $after rows in stitch_vero.data"
        fi
    else
        say "$(date +%H:%M:%S) load failed; retrying in $LOAD_EVERY_SECONDS s. Full log: $LOAD_LOG"
        grep -E 'Exception|Error:|already running' "$LOAD_LOG" | tail -1 | cut -c1-300 >&2 || true
    fi
    loader_pid=
    sleep "$LOAD_EVERY_SECONDS" &
    wait $! || true
done
