"""`tap-vero-webhook`: the Singer tap that reads the listener's spool."""

from __future__ import annotations

from singer_sdk import Tap

from tap_vero_webhook.singer_output import BufferedMsgspecWriter
from tap_vero_webhook.streams import DataStream
from tap_vero_webhook.tap_settings import config_jsonschema


class TapVeroWebhook(Tap):
    """Vero webhook events, as the listener spooled them, in one stream: `data`."""

    name = "tap-vero-webhook"
    message_writer_class = BufferedMsgspecWriter

    config_jsonschema = config_jsonschema()

    def discover_streams(self) -> list[DataStream]:
        return [DataStream(self)]


if __name__ == "__main__":
    TapVeroWebhook.cli()
