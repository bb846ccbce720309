"""The payment state machine: states, events and the legal transitions, as one table of data.

Pure and sandbox-safe: used by the workflow, the API and the tests. Every (state, event)
pair has a defined outcome: either the target state or a refusal with a reason.

Rules encoded here:
- Terminal states (FAILED, CANCELED, REFUNDED, REVERSED) accept no event except `review`.
- `review` (ambiguity past retry limits, a contradiction between Stripe and Penny) moves any
  non-review state to NEEDS_REVIEW; an operator's `resolve_*` event leaves NEEDS_REVIEW, and
  that resolution is itself an audited transition.
- Events that come from Stripe (webhooks, polling) may only move a payment forward, by the
  rank below; a stale one (e.g. `processing` after `captured`) is refused as stale, so the
  workflow records it as ignored. "Forward" is defined per event where the rank cannot say
  it: FORWARD_BY_EVENT lists those rows (a won dispute returns DISPUTED to SETTLED).
- An operator's resolution may only resume the payment where it stopped or move it forward;
  the workflow checks it against Stripe's state first (workflows/payment_core.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class PaymentStatus(StrEnum):
    CREATED = "CREATED"
    REQUIRES_PAYMENT_METHOD = "REQUIRES_PAYMENT_METHOD"
    REQUIRES_ACTION = "REQUIRES_ACTION"
    PROCESSING = "PROCESSING"
    AUTHORIZED = "AUTHORIZED"
    CAPTURED = "CAPTURED"
    SETTLED = "SETTLED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    PARTIALLY_REFUNDED = "PARTIALLY_REFUNDED"
    REFUNDED = "REFUNDED"
    DISPUTED = "DISPUTED"
    REVERSED = "REVERSED"
    NEEDS_REVIEW = "NEEDS_REVIEW"


class PaymentEvent(StrEnum):
    RISK_ALLOWED = "risk_allowed"
    RISK_BLOCKED = "risk_blocked"
    PAYMENT_METHOD_REQUIRED = "payment_method_required"
    ACTION_REQUIRED = "action_required"
    PROCESSING = "processing"
    AUTHORIZED = "authorized"
    CAPTURED = "captured"
    DECLINED = "declined"
    CANCELED = "canceled"
    SETTLED = "settled"
    PARTIALLY_REFUNDED = "partially_refunded"
    REFUNDED = "refunded"
    DISPUTE_OPENED = "dispute_opened"
    DISPUTE_WON = "dispute_won"
    DISPUTE_LOST = "dispute_lost"
    REVIEW = "review"
    RESOLVE_CAPTURED = "resolve_captured"
    RESOLVE_AUTHORIZED = "resolve_authorized"
    RESOLVE_FAILED = "resolve_failed"
    RESOLVE_CANCELED = "resolve_canceled"
    RESOLVE_RETRY = "resolve_retry"
    RESOLVE_REQUIRES_ACTION = "resolve_requires_action"
    RESOLVE_SETTLED = "resolve_settled"
    RESOLVE_PARTIALLY_REFUNDED = "resolve_partially_refunded"
    RESOLVE_DISPUTED = "resolve_disputed"
    RESOLVE_REFUNDED = "resolve_refunded"


S = PaymentStatus
E = PaymentEvent

TERMINAL_STATES: frozenset[PaymentStatus] = frozenset({S.FAILED, S.CANCELED, S.REFUNDED, S.REVERSED})

# Milestones at which the API answers a create request.
FIRST_MILESTONES: frozenset[PaymentStatus] = frozenset(
    {S.AUTHORIZED, S.CAPTURED, S.REQUIRES_ACTION, S.FAILED, S.CANCELED, S.NEEDS_REVIEW, S.SETTLED}
)

# Progress rank: a processor-driven event may only move a payment to a higher rank.
RANK: dict[PaymentStatus, int] = {
    S.CREATED: 0,
    S.REQUIRES_PAYMENT_METHOD: 1,
    S.REQUIRES_ACTION: 2,
    S.PROCESSING: 3,
    S.AUTHORIZED: 4,
    S.CAPTURED: 5,
    S.SETTLED: 6,
    S.PARTIALLY_REFUNDED: 7,
    S.DISPUTED: 8,
    S.REFUNDED: 9,
    S.REVERSED: 9,
    S.FAILED: 9,
    S.CANCELED: 9,
    S.NEEDS_REVIEW: 10,
}

_PRE_AUTHORIZATION = (S.CREATED, S.REQUIRES_PAYMENT_METHOD, S.REQUIRES_ACTION, S.PROCESSING)

# The table. Keys absent from it are refused.
TRANSITIONS: dict[tuple[PaymentStatus, PaymentEvent], PaymentStatus] = {
    (S.CREATED, E.RISK_ALLOWED): S.CREATED,
    (S.CREATED, E.RISK_BLOCKED): S.FAILED,
    **{(state, E.PAYMENT_METHOD_REQUIRED): S.REQUIRES_PAYMENT_METHOD for state in (S.CREATED, S.PROCESSING)},
    **{(state, E.ACTION_REQUIRED): S.REQUIRES_ACTION for state in (S.CREATED, S.PROCESSING)},
    **{(state, E.PROCESSING): S.PROCESSING for state in (S.CREATED, S.REQUIRES_ACTION, S.REQUIRES_PAYMENT_METHOD)},
    **{(state, E.AUTHORIZED): S.AUTHORIZED for state in _PRE_AUTHORIZATION},
    **{(state, E.CAPTURED): S.CAPTURED for state in (*_PRE_AUTHORIZATION, S.AUTHORIZED)},
    **{(state, E.DECLINED): S.FAILED for state in _PRE_AUTHORIZATION},
    **{(state, E.CANCELED): S.CANCELED for state in (*_PRE_AUTHORIZATION, S.AUTHORIZED)},
    (S.CAPTURED, E.SETTLED): S.SETTLED,
    **{(state, E.PARTIALLY_REFUNDED): S.PARTIALLY_REFUNDED for state in (S.CAPTURED, S.SETTLED, S.PARTIALLY_REFUNDED)},
    **{(state, E.REFUNDED): S.REFUNDED for state in (S.CAPTURED, S.SETTLED, S.PARTIALLY_REFUNDED)},
    **{(state, E.DISPUTE_OPENED): S.DISPUTED for state in (S.CAPTURED, S.SETTLED, S.PARTIALLY_REFUNDED)},
    (S.DISPUTED, E.DISPUTE_WON): S.SETTLED,
    (S.DISPUTED, E.DISPUTE_LOST): S.REVERSED,
    **{(state, E.REVIEW): S.NEEDS_REVIEW for state in PaymentStatus if state is not S.NEEDS_REVIEW},
    (S.NEEDS_REVIEW, E.RESOLVE_CAPTURED): S.CAPTURED,
    (S.NEEDS_REVIEW, E.RESOLVE_AUTHORIZED): S.AUTHORIZED,
    (S.NEEDS_REVIEW, E.RESOLVE_FAILED): S.FAILED,
    (S.NEEDS_REVIEW, E.RESOLVE_CANCELED): S.CANCELED,
    (S.NEEDS_REVIEW, E.RESOLVE_RETRY): S.PROCESSING,
    (S.NEEDS_REVIEW, E.RESOLVE_REQUIRES_ACTION): S.REQUIRES_ACTION,
    (S.NEEDS_REVIEW, E.RESOLVE_SETTLED): S.SETTLED,
    (S.NEEDS_REVIEW, E.RESOLVE_PARTIALLY_REFUNDED): S.PARTIALLY_REFUNDED,
    (S.NEEDS_REVIEW, E.RESOLVE_DISPUTED): S.DISPUTED,
    (S.NEEDS_REVIEW, E.RESOLVE_REFUNDED): S.REFUNDED,
    # Stripe's own truth may settle a payment under review: it is applied, never overwritten silently
    # (the workflow records both facts in the audit log).
    (S.NEEDS_REVIEW, E.CAPTURED): S.CAPTURED,
    (S.NEEDS_REVIEW, E.AUTHORIZED): S.AUTHORIZED,
}


# Rows that go down in rank yet are forward for their event, so Stripe may drive them.
FORWARD_BY_EVENT: frozenset[tuple[PaymentStatus, PaymentEvent]] = frozenset({(S.DISPUTED, E.DISPUTE_WON)})


# Where each event leads, whatever the state (for explaining refusals of late processor events).
_EVENT_TARGETS: dict[PaymentEvent, PaymentStatus] = {event: target for (_, event), target in TRANSITIONS.items()}


@dataclass(frozen=True)
class Decision:
    allowed: bool
    from_status: PaymentStatus
    event: PaymentEvent
    to_status: PaymentStatus | None
    reason: str


def decide(state: PaymentStatus | str, event: PaymentEvent | str, *, from_processor: bool = False) -> Decision:
    """Answer whether `event` may move a payment in `state`, and where to.

    `from_processor=True` marks an event reported by Stripe (webhook or poll): such an event
    is refused as stale when it would not move the payment forward.
    """
    current = PaymentStatus(state)
    happening = PaymentEvent(event)
    target = TRANSITIONS.get((current, happening))
    if target is None:
        natural = _EVENT_TARGETS.get(happening)
        if from_processor and natural is not None and RANK[natural] <= RANK[current]:
            return Decision(False, current, happening, None, f"stale: {happening} arrived after {current}")
        if current in TERMINAL_STATES:
            reason = f"{current} is terminal; {happening} is refused"
        else:
            reason = f"{happening} is not a legal event in {current}"
        return Decision(False, current, happening, None, reason)
    if (
        from_processor
        and current is not S.NEEDS_REVIEW
        and RANK[target] <= RANK[current]
        and target is not current
        and (current, happening) not in FORWARD_BY_EVENT
    ):
        return Decision(False, current, happening, None, f"stale: {happening} would move {current} backwards")
    if from_processor and target is current:
        return Decision(False, current, happening, None, f"stale: already {current}")
    return Decision(True, current, happening, target, f"{current} -> {target} on {happening}")


def can_transition(from_status: PaymentStatus | str, to_status: PaymentStatus | str) -> bool:
    """Whether any event moves `from_status` to `to_status` (e.g. FAILED -> CAPTURED is never legal)."""
    source, target = PaymentStatus(from_status), PaymentStatus(to_status)
    return any(src is source and dst is target for (src, _), dst in TRANSITIONS.items())
