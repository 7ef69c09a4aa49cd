"""The HTTP side: the webhook listener that turns Vero's POSTs into durable spool lines.

`app.create_app` builds the Flask app and `server.serve` runs it on waitress. This
package imports nothing heavy itself, so `vero-webhook token …` and `report` can
use its tokens and rejects without loading Flask.
"""
