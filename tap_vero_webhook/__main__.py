"""`python -m tap_vero_webhook`: the Singer tap, as `tap-vero-webhook` runs it."""

from tap_vero_webhook.catalog import main

main()
