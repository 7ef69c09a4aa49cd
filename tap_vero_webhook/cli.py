"""`vero-webhook`: the operator's command. Serve the listener, manage webhook URLs, report.

Every option can also be set through the environment variable shown in `--help`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import click

from tap_vero_webhook.listener.settings import ListenerSettings, LogSettings, ServerSettings
from tap_vero_webhook.listener.tokens import TokenError, TokenStore
from tap_vero_webhook.location import Location
from tap_vero_webhook.settings import Setting, SettingError, build, settings_of
from tap_vero_webhook.spool import SpoolError

ENV_PREFIX = "VERO_WEBHOOK_"


def _option_type(declared: Setting) -> click.ParamType:
    if declared.choices:
        return click.Choice(declared.choices)
    if declared.type is int:
        return click.IntRange(declared.minimum, declared.maximum)
    if declared.type is Path:
        return click.Path(file_okay=False, path_type=Path)
    return click.STRING


def setting_option(declared: Setting) -> Callable:
    """The click option of one setting: `--its-name`, `VERO_WEBHOOK_ITS_NAME`, its default
    and help, all from the settings class (the one place they are written)."""
    flag = "--" + declared.name.replace("_", "-")
    common = {"envvar": ENV_PREFIX + declared.name.upper(), "show_envvar": True}
    common["help"] = declared.help
    if declared.type is bool:
        return click.option(
            f"{flag}/--no-{flag[2:]}", default=declared.default, show_default=True, **common
        )
    if declared.required:
        return click.option(flag, required=True, type=_option_type(declared), **common)
    return click.option(
        flag, default=declared.default, show_default=True, type=_option_type(declared), **common
    )


def settings_options(*classes: type) -> Callable:
    """One option per field of each settings class, in declaration order."""

    def decorate(func: Callable) -> Callable:
        for cls in reversed(classes):
            for declared in reversed(settings_of(cls)):
                func = setting_option(declared)(func)
        return func

    return decorate


def _serve_setting(name: str) -> Setting:
    return next(declared for declared in settings_of(ListenerSettings) if declared.name == name)


data_dir_option = setting_option(_serve_setting("data_dir"))
"""The --data-dir of `report`: the one `serve` takes."""


def token_store_options(func: Callable) -> Callable:
    """Where the tokens are, as `serve` is told: --data-dir, or --spool-url and
    --spool-stream (then the tokens are in the JetStream cluster, shared by every listener)."""
    data_dir = replace(_serve_setting("data_dir"), default=None)
    for declared in (data_dir, _serve_setting("spool_url"), _serve_setting("spool_stream")):
        func = setting_option(declared)(func)
    return func


@contextmanager
def token_store(data_dir: Path | None, spool_url: str, spool_stream: str) -> Iterator[TokenStore]:
    """The token store the options name; a TokenError becomes the command's error message."""
    if not (data_dir or spool_url):
        raise click.UsageError("give --data-dir (the local spool's) or --spool-url")
    location = Location(data_dir=data_dir, url=spool_url or None, stream=spool_stream)
    try:
        store = TokenStore(location)
    except TokenError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        yield store
    except TokenError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="tap-vero-webhook", message="%(prog)s %(version)s")
def main() -> None:
    """Receive Vero webhooks durably; tap-vero-webhook loads them into your warehouse."""


@main.command()
@settings_options(ListenerSettings, ServerSettings, LogSettings)
def serve(**options: object) -> None:
    """Run the webhook listener (waitress) until SIGTERM or Ctrl-C, then drain.

    The listening socket is the one systemd passes by socket activation (LISTEN_FDS and
    LISTEN_PID, deploy/vero-webhook.socket) when there is one; --host and --port are
    bound otherwise. On SIGTERM or Ctrl-C the listener stops accepting, finishes and
    answers every request it has started, and exits within --shutdown-timeout.
    """
    from tap_vero_webhook.listener.activation import ActivationError
    from tap_vero_webhook.listener.logs import configure_logging  # Flask: only `serve`
    from tap_vero_webhook.listener.server import serve as run_server

    configure_logging(build(LogSettings, options))
    try:
        run_server(build(ListenerSettings, options), build(ServerSettings, options))
    except (SpoolError, ActivationError, SettingError, TokenError) as exc:
        raise click.ClickException(str(exc)) from None


@main.group()
def token() -> None:
    """Create, list and revoke webhook URLs (at most 2 active, as in Stitch)."""


@token.command("create")
@token_store_options
@click.option(
    "--base-url",
    envvar=f"{ENV_PREFIX}BASE_URL",
    show_envvar=True,
    required=True,
    help="Public address Vero posts to, e.g. https://hooks.example.com",
)
def token_create(data_dir: Path | None, spool_url: str, spool_stream: str, base_url: str) -> None:
    """Make a webhook URL. It is shown this once only: paste it into Vero now."""
    with token_store(data_dir, spool_url, spool_stream) as store:
        record, secret = store.create()
    click.echo(f"Created webhook URL {record.id} at {record.created_at}.", err=True)
    click.echo("It is shown this once only. Paste it into Vero's Notification URL field:", err=True)
    click.echo(f"{base_url.rstrip('/')}/hooks/{secret}")


@token.command("list")
@token_store_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of objects.")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked URLs.")
def token_list(
    data_dir: Path | None, spool_url: str, spool_stream: str, as_json: bool, include_revoked: bool
) -> None:
    """Show ids, creation and last-use times; never a secret."""
    with token_store(data_dir, spool_url, spool_stream) as store:
        tokens = store.list(include_revoked=include_revoked)
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
@token_store_options
def token_revoke(token_id: str, data_dir: Path | None, spool_url: str, spool_stream: str) -> None:
    """Revoke a webhook URL; every listener refuses it from its next request on (with
    --spool-url: within a second)."""
    with token_store(data_dir, spool_url, spool_stream) as store:
        record = store.revoke(token_id)
    click.echo(f"revoked {record.id} at {record.revoked_at}")


@main.command()
@data_dir_option
@click.option(
    "--state-file",
    envvar=f"{ENV_PREFIX}STATE_FILE",
    show_envvar=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Singer state the loader confirmed (JSON; or target output, last line used).",
)
@click.option(
    "--meltano-project",
    envvar=f"{ENV_PREFIX}MELTANO_PROJECT",
    show_envvar=True,
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Meltano project whose saved state says what was loaded (runs `meltano state get`).",
)
@click.option(
    "--state-id",
    envvar=f"{ENV_PREFIX}STATE_ID",
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
