"""`vero-webhook`: the operator's command. Serve the listener, manage webhook URLs, report.

Every option can also be set through the environment variable shown in `--help`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from tap_vero_webhook.listener.payloads import DEFAULT_MAX_BODY_BYTES
from tap_vero_webhook.listener.rejects import (
    DEFAULT_BODY_CAP,
    DEFAULT_MAX_BYTES_PER_DAY,
    DEFAULT_RETENTION_DAYS,
)
from tap_vero_webhook.listener.tokens import TokenError, TokenStore
from tap_vero_webhook.spool import DEFAULT_SEGMENT_MAX_BYTES, SpoolError

ENV = "VERO_WEBHOOK_"


def data_dir_option(func):
    return click.option(
        "--data-dir",
        envvar=f"{ENV}DATA_DIR",
        show_envvar=True,
        required=True,
        type=click.Path(file_okay=False, path_type=Path),
        help="Directory holding the spool and the token store (created 0700 if missing).",
    )(func)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def main() -> None:
    """Receive Vero webhooks durably; tap-vero-webhook loads them into your warehouse."""


@main.command()
@data_dir_option
@click.option(
    "--host",
    envvar=f"{ENV}HOST",
    show_envvar=True,
    default="127.0.0.1",
    show_default=True,
    help="Address to bind. Keep 127.0.0.1 behind a TLS proxy; 0.0.0.0 exposes it.",
)
@click.option(
    "--port",
    envvar=f"{ENV}PORT",
    show_envvar=True,
    default=8080,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="TCP port to listen on (0 picks a free one).",
)
@click.option(
    "--threads",
    envvar=f"{ENV}THREADS",
    show_envvar=True,
    default=16,
    show_default=True,
    type=click.IntRange(1, 1024),
    help="Worker threads; concurrent requests share one fsync (group commit).",
)
@click.option(
    "--max-body-bytes",
    envvar=f"{ENV}MAX_BODY_BYTES",
    show_envvar=True,
    default=DEFAULT_MAX_BODY_BYTES,
    show_default=True,
    type=click.IntRange(1),
    help="Largest request body accepted; bigger ones get 413 unread.",
)
@click.option(
    "--segment-max-bytes",
    envvar=f"{ENV}SEGMENT_MAX_BYTES",
    show_envvar=True,
    default=DEFAULT_SEGMENT_MAX_BYTES,
    show_default=True,
    type=click.IntRange(1),
    help="Start a new spool segment once the current one is this large.",
)
@click.option(
    "--connection-limit",
    envvar=f"{ENV}CONNECTION_LIMIT",
    show_envvar=True,
    default=500,
    show_default=True,
    type=click.IntRange(1),
    help="Open connections at most; more wait in the listen backlog (keep it under the "
    "process's open-file limit, `ulimit -n`).",
)
@click.option(
    "--channel-timeout",
    envvar=f"{ENV}CHANNEL_TIMEOUT",
    show_envvar=True,
    default=60,
    show_default=True,
    type=click.IntRange(1),
    help="Seconds an idle or trickling connection is kept before it is closed.",
)
@click.option(
    "--log-format",
    envvar=f"{ENV}LOG_FORMAT",
    show_envvar=True,
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Log lines as plain text or as JSON objects, one per line.",
)
@click.option(
    "--log-level",
    envvar=f"{ENV}LOG_LEVEL",
    show_envvar=True,
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]),
    help="Least severe log level written.",
)
@click.option(
    "--rejects-retention-days",
    envvar=f"{ENV}REJECTS_RETENTION_DAYS",
    show_envvar=True,
    default=DEFAULT_RETENTION_DAYS,
    show_default=True,
    type=click.IntRange(0),
    help="Days refused requests are kept in DATA_DIR/rejects/ (one file per UTC day).",
)
@click.option(
    "--rejects-body-cap",
    envvar=f"{ENV}REJECTS_BODY_CAP",
    show_envvar=True,
    default=DEFAULT_BODY_CAP,
    show_default=True,
    type=click.IntRange(0),
    help="Bytes of each refused body kept in the rejects folder (0 keeps none).",
)
@click.option(
    "--rejects-max-bytes-per-day",
    envvar=f"{ENV}REJECTS_MAX_BYTES_PER_DAY",
    show_envvar=True,
    default=DEFAULT_MAX_BYTES_PER_DAY,
    show_default=True,
    type=click.IntRange(0),
    help="Past this size a day's rejects file stops growing; later refusals are only counted.",
)
@click.option(
    "--metrics/--no-metrics",
    envvar=f"{ENV}METRICS",
    show_envvar=True,
    default=True,
    show_default=True,
    help="Serve Prometheus metrics on GET /metrics (no token; same address as the hooks).",
)
def serve(
    data_dir: Path,
    host: str,
    port: int,
    threads: int,
    max_body_bytes: int,
    segment_max_bytes: int,
    connection_limit: int,
    channel_timeout: int,
    log_format: str,
    log_level: str,
    rejects_retention_days: int,
    rejects_body_cap: int,
    rejects_max_bytes_per_day: int,
    metrics: bool,
) -> None:
    """Run the webhook listener (waitress) until SIGTERM or Ctrl-C."""
    from tap_vero_webhook.listener.server import configure_logging
    from tap_vero_webhook.listener.server import serve as run_server

    configure_logging(log_format, log_level)
    from tap_vero_webhook.listener.app import ListenerSettings  # Flask: only `serve` needs it

    settings = ListenerSettings(
        data_dir,
        max_body_bytes,
        segment_max_bytes,
        rejects_retention_days=rejects_retention_days,
        rejects_body_cap=rejects_body_cap,
        rejects_max_bytes_per_day=rejects_max_bytes_per_day,
        metrics=metrics,
    )
    try:
        run_server(
            settings,
            host,
            port,
            threads,
            connection_limit=connection_limit,
            channel_timeout=channel_timeout,
        )
    except SpoolError as exc:
        raise click.ClickException(str(exc)) from None


@main.group()
def token() -> None:
    """Create, list and revoke webhook URLs (at most 2 active, as in Stitch)."""


@token.command("create")
@data_dir_option
@click.option(
    "--base-url",
    envvar=f"{ENV}BASE_URL",
    show_envvar=True,
    required=True,
    help="Public address Vero posts to, e.g. https://hooks.example.com",
)
def token_create(data_dir: Path, base_url: str) -> None:
    """Make a webhook URL. It is shown this once only: paste it into Vero now."""
    try:
        record, secret = TokenStore(data_dir).create()
    except TokenError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Created webhook URL {record.id} at {record.created_at}.", err=True)
    click.echo("It is shown this once only. Paste it into Vero's Notification URL field:", err=True)
    click.echo(f"{base_url.rstrip('/')}/hooks/{secret}")


@token.command("list")
@data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of objects.")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked URLs.")
def token_list(data_dir: Path, as_json: bool, include_revoked: bool) -> None:
    """Show ids, creation and last-use times; never a secret."""
    tokens = TokenStore(data_dir).list(include_revoked=include_revoked)
    if as_json:
        click.echo(json.dumps(tokens, indent=2))
        return
    if not tokens:
        click.echo("no webhook URLs; make one with: vero-webhook token create", err=True)
        return
    click.echo(f"{'ID':<10} {'CREATED':<28} {'LAST USED':<28} REVOKED")
    for item in tokens:
        click.echo(
            f"{item['id']:<10} {item['created_at']:<28} "
            f"{item['last_used_at'] or '-':<28} {item['revoked_at'] or '-'}"
        )


@token.command("revoke")
@click.argument("token_id")
@data_dir_option
def token_revoke(token_id: str, data_dir: Path) -> None:
    """Revoke a webhook URL; the listener refuses it from the next request on."""
    try:
        record = TokenStore(data_dir).revoke(token_id)
    except TokenError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"revoked {record.id} at {record.revoked_at}")


@main.command()
@data_dir_option
@click.option(
    "--state-file",
    envvar=f"{ENV}STATE_FILE",
    show_envvar=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Singer state the loader confirmed (JSON; or target output, last line used).",
)
@click.option(
    "--meltano-project",
    envvar=f"{ENV}MELTANO_PROJECT",
    show_envvar=True,
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Meltano project whose saved state says what was loaded (runs `meltano state get`).",
)
@click.option(
    "--state-id",
    envvar=f"{ENV}STATE_ID",
    show_envvar=True,
    help="Meltano state id, e.g. prod:tap-vero-webhook-to-target-postgres "
    "(default: the only one naming tap-vero-webhook).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def report(
    data_dir: Path,
    state_file: Path | None,
    meltano_project: Path | None,
    state_id: str | None,
    as_json: bool,
) -> None:
    """Accepted events per day and type, refusals by reason, and the backlog not yet loaded.

    Reads the spool and rejects/ on disk (the listener may be running). The backlog
    counts events after the last sequence the loader confirmed, taken from
    --state-file or from Meltano's state; with neither, every event counts as waiting.
    """
    from tap_vero_webhook.report import (
        ReportError,
        build_report,
        format_report,
        loaded_through,
        meltano_state,
        read_state_file,
    )

    if state_file and meltano_project:
        raise click.UsageError("give --state-file or --meltano-project, not both")
    if not data_dir.is_dir():
        raise click.ClickException(f"{data_dir} does not exist; is it the listener's --data-dir?")
    try:
        source = None
        state: dict = {}
        if state_file:
            state, source = read_state_file(state_file), f"state file {state_file}"
        elif meltano_project:
            found_id, state = meltano_state(meltano_project, state_id)
            source = f"Meltano state {found_id}" if found_id else "Meltano holds no state yet"
        result = build_report(data_dir, loaded_through(state), source)
    except (ReportError, SpoolError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(result, indent=2) if as_json else format_report(result))


if __name__ == "__main__":
    sys.exit(main())
