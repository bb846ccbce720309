"""Prometheus metrics of the API (served on /metrics). Labels have bounded cardinality:
`route` is the route template (`/v1/payments/{payment_id}`), never the raw path."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter(
    "penny_api_requests_total",
    "HTTP requests answered, by route template, method and status.",
    ["route", "method", "status"],
)
REQUEST_SECONDS = Histogram(
    "penny_api_request_duration_seconds",
    "Time to answer an HTTP request, by route template and method.",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
IDEMPOTENT_REPLAYS = Counter(
    "penny_api_idempotent_replays_total", "Responses replayed from a stored Idempotency-Key.", ["route"]
)
CONFLICTS = Counter(
    "penny_api_conflicts_total",
    "Requests refused as conflicts: idempotency_in_flight, idempotency_mismatch, order_conflict, "
    "payment_state_conflict.",
    ["kind"],
)
CARD_DATA_REJECTIONS = Counter(
    "penny_api_card_data_rejections_total",
    "Requests refused for carrying raw card data, by where it was.",
    ["location"],
)
IDEMPOTENCY_RECOVERIES = Counter(
    "penny_api_idempotency_recoveries_total", "In-flight Idempotency-Keys taken over by a retry (crash recovery)."
)
IDEMPOTENCY_KEYS_SWEPT = Counter("penny_api_idempotency_keys_swept_total", "Expired Idempotency-Keys deleted.")
