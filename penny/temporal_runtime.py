"""The worker's Temporal runtime: the SDK's own metrics (task slots, poll and schedule-to-start
latencies, workflow and activity task failures, sticky cache) for Prometheus, on their own port
(PENNY_WORKER_TEMPORAL_METRICS_PORT), beside Penny's gauges on PENNY_WORKER_METRICS_PORT."""

from __future__ import annotations

from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from penny.settings import Settings


def worker_runtime(settings: Settings) -> Runtime | None:
    """A runtime exporting the SDK's metrics, or None (the SDK's default runtime) when the port is 0."""
    port = settings.worker_temporal_metrics_port
    if not port:
        return None
    return Runtime(
        telemetry=TelemetryConfig(
            metrics=PrometheusConfig(
                bind_address=f"{settings.host}:{port}",
                # Prometheus conventions: counters end in _total, durations are seconds and say so.
                counters_total_suffix=True,
                unit_suffix=True,
                durations_as_seconds=True,
            ),
        )
    )
