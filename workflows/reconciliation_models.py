"""Dataclasses crossing the reconciliation workflow/activity boundary (pure: no I/O).

Activities return counts and cursors, never Stripe objects: the objects go straight from
Stripe into Postgres (COPY), so a long window never grows the workflow's history by more
than a few small payloads per page batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

RECONCILIATION_WORKFLOW_TYPE = "ReconciliationWorkflow"
RECONCILIATION_WORKFLOW_ID_PREFIX = "reconciliation-"
REVIEW_KIND = "reconciliation_mismatch"

# Stripe object types fetched for a window, in order. `payout_member` lists each staged
# payout's balance transactions (Stripe's `payout` filter), so it runs after `payout`.
OBJECT_TYPES: tuple[str, ...] = (
    "payment_intent",
    "charge",
    "refund",
    "transfer",
    "dispute",
    "balance_transaction",
    "payout",
    "payout_member",
)

# Every class an item can have; `matched` is only a count.
MATCHED = "matched"
MISMATCH_CLASSES: tuple[str, ...] = (
    "penny_missing_or_not_captured",
    "stripe_failed_or_missing",
    "amount_mismatch",
    "currency_mismatch",
    "fee_mismatch",
    "duplicate_charge",
    "refund_missing_in_penny",
    "refund_missing_at_stripe",
    "refund_amount_mismatch",
    "transfer_missing_at_stripe",
    "transfer_missing_in_penny",
    "transfer_amount_mismatch",
    "dispute_not_booked",
    "settlement_late",
    "payout_mismatch",
)
ALL_CLASSES: tuple[str, ...] = (MATCHED, *MISMATCH_CLASSES)
TRIGGERS: tuple[str, ...] = ("schedule", "api", "cli")


def reconciliation_workflow_id(run_id: str) -> str:
    return f"{RECONCILIATION_WORKFLOW_ID_PREFIX}{run_id}"


@dataclass
class ReconciliationInput:
    """A run. Without a window (the Schedule's runs) the workflow reconciles the day before the
    time it was scheduled for, in `timezone` (whole days of `window_days`)."""

    run_id: str | None = None
    window_start_unix: int | None = None
    window_end_unix: int | None = None
    trigger: str = "schedule"
    requested_by: str = ""
    window_days: int = 1
    timezone: str = "UTC"
    # Stripe pages fetched per activity call, and fetch calls per workflow run before it
    # continues as new (history stays short whatever the window's size).
    pages_per_activity: int = 20
    fetch_calls_per_run: int = 200
    # Set by the workflow itself when it continues as new (where the fetch stands).
    progress: FetchProgress | None = None


@dataclass
class FetchProgress:
    """Where a run's fetch stands: carried through continue-as-new."""

    next_type_index: int = 0
    cursor: str | None = None
    fetched: dict[str, int] = field(default_factory=dict)


@dataclass
class StartRunInput:
    run_id: str
    trigger: str
    requested_by: str
    workflow_id: str
    window_start_unix: int | None = None
    window_end_unix: int | None = None
    # For a scheduled run: the time it was scheduled for, the timezone and days of its window.
    scheduled_unix: int = 0
    timezone: str = "UTC"
    window_days: int = 1


@dataclass
class StartRunResult:
    window_start_unix: int
    window_end_unix: int


@dataclass
class FetchPagesInput:
    run_id: str
    object_type: str
    window_start_unix: int
    window_end_unix: int
    starting_after: str | None = None
    pages_max: int = 20


@dataclass
class FetchPagesResult:
    fetched: int
    next_cursor: str | None  # None: the object type is done


@dataclass
class RunInput:
    run_id: str


@dataclass
class CompareResult:
    counts: dict[str, int]
    items: int


@dataclass
class RepairResult:
    signalled: int
    skipped: int


@dataclass
class ReconciliationResult:
    run_id: str
    counts: dict[str, int]
    repaired: int
