"""The listener's Prometheus metrics, served on GET /metrics.

Each app owns its `CollectorRegistry` (built by `create_app`), so two listeners in
one process never share or clash over a counter. The request path only bumps
counters; group commits are observed by the writer that made them durable; spool
and rejects sizes are read when scraped (the spool says which it has:
`SpoolWriter.usage`), not kept up to date.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from tap_vero_webhook.listener.rejects import RejectLog
from tap_vero_webhook.spool import SpoolWriter

COMMIT_EVENT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
COMMIT_SECONDS_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip


class ListenerMetrics:
    """Counters and histograms of one listener, and the registry that exports them."""

    def __init__(self, rejects: RejectLog | None = None) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.events_accepted = Counter(
            "vero_webhook_events_accepted",
            "Events durably written to the spool and acknowledged with 2xx.",
            registry=registry,
        )
        self.requests_accepted = Counter(
            "vero_webhook_requests_accepted",
            "Webhook requests answered 2xx (one request may carry several events).",
            registry=registry,
        )
        self.requests_rejected = Counter(
            "vero_webhook_requests_rejected",
            "Webhook requests refused, by the error code they were answered with.",
            ["reason"],
            registry=registry,
        )
        self.commit_events = Histogram(
            "vero_webhook_spool_commit_events",
            "Events made durable by one group commit (one fdatasync).",
            buckets=COMMIT_EVENT_BUCKETS,
            registry=registry,
        )
        self.commit_seconds = Histogram(
            "vero_webhook_spool_commit_seconds",
            "Time to write and fdatasync one group commit.",
            buckets=COMMIT_SECONDS_BUCKETS,
            registry=registry,
        )
        self._sizes = _Sizes(rejects)
        registry.register(self._sizes)

    def watch_spool(self, spool: SpoolWriter) -> None:
        """Export the spool's own gauges (`SpoolWriter.usage`) when scraped."""
        self._sizes.spool = spool

    def observe_commit(self, events: int, seconds: float) -> None:
        self.commit_events.observe(events)
        self.commit_seconds.observe(seconds)

    def accepted(self, events: int) -> None:
        self.requests_accepted.inc()
        self.events_accepted.inc(events)

    def rejected(self, reason: str) -> None:
        self.requests_rejected.labels(reason=reason).inc()

    def exposition(self) -> tuple[bytes, str]:
        """The metrics in Prometheus text format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _Sizes:
    """Sizes read when scraped: nothing on the request path keeps them."""

    def __init__(self, rejects: RejectLog | None) -> None:
        self.rejects = rejects
        self.spool: SpoolWriter | None = None

    def collect(self):
        if self.spool is not None:
            for name, (help_text, value) in self.spool.usage().items():
                gauge = GaugeMetricFamily(f"vero_webhook_spool_{name}", help_text)
                gauge.add_metric([], value)
                yield gauge
        if self.rejects is not None:
            recorded = CounterMetricFamily(
                "vero_webhook_rejects_recorded",
                "Refused requests written to the rejects folder.",
            )
            recorded.add_metric([], self.rejects.recorded)
            yield recorded
            unrecorded = CounterMetricFamily(
                "vero_webhook_rejects_unrecorded",
                "Refused requests that could not be written to the rejects folder "
                "(disk full, or the day's cap reached).",
            )
            unrecorded.add_metric([], self.rejects.unrecorded)
            yield unrecorded
