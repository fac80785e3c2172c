"""The API's Prometheus metrics, on a registry of its own (one per app: tests and benches build many)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self.requests = Counter("flywheel_http_requests", "Requests", ["route", "status"], registry=registry)
        self.latency = Histogram("flywheel_http_seconds", "Latency", ["route", "variant"], registry=registry)
        self.tokens = Counter("flywheel_generated_tokens", "Tokens generated", ["variant"], registry=registry)
        self.queue = Gauge("flywheel_generation_queue_depth", "Requests waiting for the model", registry=registry)
        self.outbox = Gauge(
            "flywheel_outbox_events", "Events held in the outbox: not yet stored by ingest", registry=registry
        )
        self.outbox_unsent = Gauge("flywheel_outbox_unsent", "Events not yet acknowledged by Kafka", registry=registry)
        self.outbox_rejected = Gauge(
            "flywheel_outbox_rejected", "Events Kafka refused for good, set aside in outbox_rejected", registry=registry
        )
