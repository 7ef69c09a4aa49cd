"""tap-vero-webhook: Vero's webhooks into your warehouse, without Stitch.

Two halves that share only the spool on disk: the listener (`listener/`, run by
`vero-webhook serve`) accepts Vero's POSTs and makes them durable in the spool
(`spool/`); the Singer tap (`tap.py`, `streams.py`, `schema.py`) reads the spool
and emits the `data` stream. `cli.py` and `report.py` are the operator's face.
"""

from importlib.metadata import version

__version__ = version("tap-vero-webhook")
