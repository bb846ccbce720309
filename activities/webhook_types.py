"""Inputs, outputs and names of the webhook relay: pure dataclasses the workflow sandbox may import."""

from __future__ import annotations

from dataclasses import dataclass

RELAY_WORKFLOW_NAME = "WebhookRelayWorkflow"
RELAY_ACTIVITY_NAME = "relay_webhook_events"
RELAY_WORKFLOW_ID_PREFIX = "webhook-relay-"
# Rounds per workflow run before continue-as-new keeps the history short (about 8 events a round).
RELAY_ROUNDS_PER_RUN = 200

# Inbox statuses (webhook_events.status); see migration 0005_webhooks for their meaning.
STATUS_RECEIVED = "received"
STATUS_DELIVERED = "delivered"
STATUS_UNROUTED = "unrouted"
STATUS_IGNORED = "ignored"
STATUS_FAILED = "failed"


def relay_workflow_id(task_queue: str) -> str:
    """One relay per task queue (one per deployment; tests get one per task queue)."""
    return f"{RELAY_WORKFLOW_ID_PREFIX}{task_queue}"


@dataclass
class RelayInput:
    rounds_per_run: int = RELAY_ROUNDS_PER_RUN


@dataclass
class RelayBatchInput:
    """One round of the relay. Limits come from the worker's settings, not from here, so a
    settings change applies to a relay that is already running."""

    round_number: int = 0


@dataclass
class RelayBatchResult:
    claimed: int = 0
    delivered: int = 0
    unrouted: int = 0
    ignored: int = 0
    failed_attempts: int = 0
    dead_lettered: int = 0
    backlog: int = 0
    # How long the relay workflow should sleep before the next round.
    sleep_seconds: float = 5.0
