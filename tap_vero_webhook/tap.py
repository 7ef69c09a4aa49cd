"""`tap-vero-webhook`: the Singer tap that reads the listener's spool."""

from __future__ import annotations

from singer_sdk import Tap
from singer_sdk import typing as th

from tap_vero_webhook.singer_output import BufferedMsgspecWriter
from tap_vero_webhook.streams import DataStream


class TapVeroWebhook(Tap):
    """Vero webhook events, as the listener spooled them, in one stream: `data`."""

    name = "tap-vero-webhook"
    message_writer_class = BufferedMsgspecWriter

    config_jsonschema = th.PropertiesList(
        th.Property(
            "data_dir",
            th.StringType,
            required=True,
            title="Data directory",
            description=(
                "The listener's --data-dir (the spool is its spool/ folder). "
                "The tap needs read and write access: it keeps a lock file there and "
                "removes loaded segments past the retention."
            ),
        ),
        th.Property(
            "retention_days",
            th.NumberType,
            default=7,
            title="Retention (days)",
            description=(
                "Spool segments wholly at or below the bookmark of the state this run was "
                "given (so committed by the destination), and last written longer ago than "
                "this, are removed at the end of a run. Until then a replay without state "
                "re-emits them. Nothing past the bookmark is ever removed."
            ),
        ),
    ).to_dict()

    def discover_streams(self) -> list[DataStream]:
        return [DataStream(self)]


if __name__ == "__main__":
    TapVeroWebhook.cli()
