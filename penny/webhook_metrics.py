"""Prometheus metrics of the Stripe webhook intake and relay.

Labels are bounded: `type` is a Stripe event type only once the signature is verified (and
normalised by `type_label`), `reason` comes from fixed sets. The API serves them on /metrics;
the relay's figures live in the worker process (see README: the worker's metrics).

A neutral module: the API's intake (`api/webhooks.py`) and the worker's relay activity
(`activities/webhooks.py`) both count here, and nothing under `activities/` may import `api/`.
"""

from __future__ import annotations

import re

from prometheus_client import Counter, Gauge, Histogram

EVENT_TYPE_LABEL_PATTERN = re.compile(r"^[a-z_]{1,40}(\.[a-z_]{1,40}){0,3}$")

RECEIVED = Counter("penny_webhook_received_total", "POSTs to /webhooks/stripe, before any check.")
VERIFIED = Counter("penny_webhook_verified_total", "Webhook events whose signature verified, by type.", ["type"])
REJECTED = Counter(
    "penny_webhook_rejected_total",
    "Webhook requests refused and not stored, by reason: missing, malformed, mismatch, stale, future, "
    "no_secret, too_large, payload_invalid.",
    ["reason"],
)
DUPLICATES = Counter(
    "penny_webhook_duplicates_total", "Verified webhook events already in the inbox (repeated deliveries).", ["type"]
)
STORED = Counter("penny_webhook_stored_total", "Webhook events inserted into the inbox, by type.", ["type"])
DELIVERED = Counter(
    "penny_webhook_delivered_total",
    "Webhook events signalled to their payment workflows, by type and path (api, relay).",
    ["type", "path"],
)
UNROUTED = Counter(
    "penny_webhook_unrouted_total", "Webhook events no payment could be found for (kept, reviewed).", ["type"]
)
IGNORED = Counter(
    "penny_webhook_ignored_total", "Webhook events that concern no open payment (kept with the reason).", ["type"]
)
DELIVERY_FAILURES = Counter(
    "penny_webhook_delivery_failures_total",
    "Failed delivery attempts (the event stays stored for the relay), by path and reason.",
    ["path", "reason"],
)
DEAD_LETTERS = Counter(
    "penny_webhook_dead_letters_total", "Webhook events the relay gave up on after its attempt limit (reviewed)."
)
DELAY_SECONDS = Histogram(
    "penny_webhook_delay_seconds",
    "Seconds from the event's creation at Stripe to a stage: received (stored) and delivered (signalled).",
    ["stage"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0, 86400.0),
)
RELAY_BACKLOG = Gauge("penny_webhook_relay_backlog", "Stored webhook events not yet delivered (status received).")


def type_label(event_type: str) -> str:
    return event_type if EVENT_TYPE_LABEL_PATTERN.match(event_type) else "invalid"
