"""Payment consistency metrics the worker exposes (Prometheus; labels are bounded, never ids).

Incremented by activities (the workflow itself does no I/O), in the same step that writes
the fact to Postgres, so a metric moves exactly when the audit log does.
"""

from __future__ import annotations

from prometheus_client import Counter

# Review items opened, by kind (a short, fixed vocabulary: processor_uncertain,
# transfer_failed, duplicate_charge, step_failed, ...).
REVIEW_ITEMS_OPENED = Counter("penny_review_items_opened_total", "Review items opened for payments, by kind.", ["kind"])
# Two PaymentIntents of one order both moved money: a double charge someone must refund.
DUPLICATE_CHARGES = Counter("penny_duplicate_charges_total", "Orders found with more than one charged PaymentIntent.")
# Transitions applied, by target status (payments by outcome).
PAYMENT_TRANSITIONS = Counter(
    "penny_payment_transitions_total", "Payment status transitions applied, by target status.", ["to_status"]
)

# ------------------------------------------------------------------ outcomes, refunds, disputes

# Failure reasons are Stripe's decline codes (and Penny's own few); anything else is `other`, so
# the label stays bounded whatever Stripe sends.
FAILURE_REASONS = frozenset(
    {
        "card_declined",
        "generic_decline",
        "insufficient_funds",
        "lost_card",
        "stolen_card",
        "expired_card",
        "incorrect_cvc",
        "incorrect_number",
        "processing_error",
        "fraudulent",
        "authentication_required",
        "do_not_honor",
        "risk_blocked",
        "payment_intent_authentication_failure",
        "requires_payment_method",
    }
)
PAYMENT_FAILURES = Counter(
    "penny_payment_failures_total", "Payments that ended FAILED, by failure reason (Stripe's decline code).", ["reason"]
)
REFUNDS = Counter("penny_refunds_total", "Refunds that reached a final status, by status.", ["status"])
DISPUTES = Counter(
    "penny_disputes_total",
    "Dispute milestones: opened (payment to DISPUTED), lost (DISPUTED to REVERSED), closed_without_loss "
    "(DISPUTED back to where it was: won, inquiry or warning closed).",
    ["outcome"],
)
FINAL_REFUND_STATUSES = frozenset({"succeeded", "failed"})


def failure_reason_label(code: str | None) -> str:
    return code if code in FAILURE_REASONS else "other"


def record_transition(from_status: str, to_status: str, failure_code: str | None) -> None:
    """The outcome counters of one applied status change."""
    if to_status == "FAILED":
        PAYMENT_FAILURES.labels(reason=failure_reason_label(failure_code)).inc()
    if to_status == "DISPUTED" and from_status != "DISPUTED":
        DISPUTES.labels(outcome="opened").inc()
    elif from_status == "DISPUTED" and to_status == "REVERSED":
        DISPUTES.labels(outcome="lost").inc()
    elif from_status == "DISPUTED" and to_status not in ("DISPUTED", "NEEDS_REVIEW"):
        DISPUTES.labels(outcome="closed_without_loss").inc()


def record_refund(status: str) -> None:
    if status in FINAL_REFUND_STATUSES:
        REFUNDS.labels(status=status).inc()


# ------------------------------------------------------------------ the processor

# Stripe calls that failed, by operation (a short fixed vocabulary: the activity's own names)
# and kind: timeout (no answer), server_error (5xx), rate_limited (429), conflict (409: the
# key's first request still running), declined (a card decline), refused (any other 4xx).
STRIPE_ERRORS = Counter(
    "penny_stripe_errors_total", "Stripe calls that did not succeed, by operation and kind.", ["operation", "kind"]
)
# A POST whose outcome is unknown (timeout or 5xx after the request was sent): the workflow
# must look the object up before acting again.
STRIPE_AMBIGUOUS = Counter(
    "penny_stripe_ambiguous_outcomes_total",
    "Stripe POSTs whose outcome is unknown (timeout or 5xx): looked up before acting again.",
    ["operation"],
)
OPERATION_LABEL_LENGTH_MAX = 40


def record_stripe_error(operation: str, kind: str, *, post: bool) -> None:
    label = operation[:OPERATION_LABEL_LENGTH_MAX]
    STRIPE_ERRORS.labels(operation=label, kind=kind).inc()
    if post and kind in ("timeout", "server_error"):
        STRIPE_AMBIGUOUS.labels(operation=label).inc()
