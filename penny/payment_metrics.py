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
