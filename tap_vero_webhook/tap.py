"""`tap-vero-webhook`: the Singer tap that reads the listener's spool."""

from __future__ import annotations

from singer_sdk import Tap
from singer_sdk.exceptions import ConfigValidationError

from tap_vero_webhook import record_pipes
from tap_vero_webhook.settings import SettingError
from tap_vero_webhook.singer_output import BufferedMsgspecWriter
from tap_vero_webhook.spool import SpoolError
from tap_vero_webhook.streams import DataStream
from tap_vero_webhook.tap_settings import TapSettings, config_jsonschema


class TapVeroWebhook(Tap):
    """Vero webhook events, as the listener spooled them, in one stream: `data`."""

    name = "tap-vero-webhook"
    message_writer_class = BufferedMsgspecWriter

    config_jsonschema = config_jsonschema()

    def discover_streams(self) -> list[DataStream]:
        return [DataStream(self)]

    def _validate_config(self, *, raise_errors: bool = True) -> list[str]:
        """The schema's checks, then `TapSettings`' (data_dir or spool_url, and so on),
        reported the SDK's way: the message alone, no traceback."""
        errors = super()._validate_config(raise_errors=raise_errors)
        try:
            TapSettings.from_tap_config(self.config)
        except SettingError as exc:
            if raise_errors:
                raise ConfigValidationError(
                    "Config validation failed", errors=[str(exc)], schema=self.config_jsonschema
                ) from None
            errors.append(str(exc))
        return errors

    def load_state(self, state: dict) -> None:
        """The SDK keeps the bookmarks; a target's ask for record pipes is noted here."""
        super().load_state(state)
        self.__dict__["_pipes_requested"] = record_pipes.requested(state)

    def sync_all(self) -> None:
        """A spool that cannot be read as asked (none there, another run on it, a state
        from another spool) or a target gone ends the run with its message, not a
        traceback. Records go through pipes when the state's target asked for them."""
        writer = self.message_writer
        try:
            if self.__dict__.get("_pipes_requested"):
                self._use_record_pipes(writer)
            super().sync_all()
        except (SpoolError, record_pipes.PipeError, BrokenPipeError) as exc:
            self.logger.error("%s", exc if str(exc) else "the target stopped reading")
            raise SystemExit(1) from None
        finally:
            writer.end_pipes()

    def _use_record_pipes(self, writer: BufferedMsgspecWriter) -> None:
        if not TapSettings.from_tap_config(self.config).record_pipes:
            self.logger.info("the target asked for record pipes; record_pipes is off: stdout")
            return
        writer.send_records_through_pipes()
        self.logger.info("records go through record pipes, as the target asked")


if __name__ == "__main__":
    TapVeroWebhook.cli()
