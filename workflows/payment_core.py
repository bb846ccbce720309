"""The payment's decision core: what Stripe's answer or an operator's request means for a payment.

Pure functions of (payment state, what just happened) → a Plan: the state-machine event, the
ledger actions, the payments-row changes. No Temporal, no I/O: unit-tested on its own
(tests/test_payment_core.py) and importable from the workflow sandbox. The workflow
(workflows/payment.py) is the shell that runs the activities a plan names, through one guard.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from activities.payment_types import LedgerAction, PaymentRowUpdate
from activities.stripe_types import CARD_DECLINED, STRIPE_REQUEST_REFUSED, STRIPE_SERVER_ERROR, IntentSnapshot
from workflows.payment_models import RESOLUTIONS, ComputedSplit, PaymentState
from workflows.state_machine import RANK, PaymentEvent, PaymentStatus

S = PaymentStatus
E = PaymentEvent

# What a PaymentIntent status means for the payment.
INTENT_STATUS_EVENTS: dict[str, PaymentEvent] = {
    "succeeded": E.CAPTURED,
    "requires_capture": E.AUTHORIZED,
    "requires_action": E.ACTION_REQUIRED,
    "processing": E.PROCESSING,
    "requires_payment_method": E.DECLINED,
    "canceled": E.CANCELED,
}
# Where Stripe's status puts a payment (for checking an operator's resolution against it).
INTENT_STATUS_TARGETS: dict[str, PaymentStatus] = {
    "succeeded": S.CAPTURED,
    "requires_capture": S.AUTHORIZED,
    "requires_action": S.REQUIRES_ACTION,
    "processing": S.PROCESSING,
    "requires_payment_method": S.FAILED,
    "canceled": S.CANCELED,
}
PRE_CAPTURE = frozenset({S.CREATED, S.REQUIRES_PAYMENT_METHOD, S.REQUIRES_ACTION, S.PROCESSING})
# States in which Stripe holds a succeeded charge for the payment.
MONEY_CAPTURED = frozenset({S.CAPTURED, S.SETTLED, S.PARTIALLY_REFUNDED, S.DISPUTED})
# States after a capture, in which the captured money must be disbursed.
MONEY_MOVED_STATES = frozenset({*MONEY_CAPTURED, S.REVERSED, S.REFUNDED})
RESOLUTION_EVENTS: dict[PaymentStatus, PaymentEvent] = {
    S.CAPTURED: E.RESOLVE_CAPTURED,
    S.AUTHORIZED: E.RESOLVE_AUTHORIZED,
    S.FAILED: E.RESOLVE_FAILED,
    S.CANCELED: E.RESOLVE_CANCELED,
    S.PROCESSING: E.RESOLVE_RETRY,
    S.REQUIRES_ACTION: E.RESOLVE_REQUIRES_ACTION,
    S.SETTLED: E.RESOLVE_SETTLED,
    S.PARTIALLY_REFUNDED: E.RESOLVE_PARTIALLY_REFUNDED,
    S.DISPUTED: E.RESOLVE_DISPUTED,
}
# Stripe statuses each asserted resolution needs ("captured" only if Stripe says succeeded).
RESOLUTION_REQUIRES: dict[str, tuple[PaymentStatus, frozenset[str | None]]] = {
    "captured": (S.CAPTURED, frozenset({"succeeded"})),
    "authorized": (S.AUTHORIZED, frozenset({"requires_capture"})),
    "failed": (S.FAILED, frozenset({None, "requires_payment_method", "canceled"})),
    "canceled": (S.CANCELED, frozenset({None, "requires_payment_method", "canceled"})),
}

# How an activity failure is treated once its retries are over.
FINAL_ERROR_TYPES = frozenset({CARD_DECLINED, STRIPE_REQUEST_REFUSED})


@dataclass
class Plan:
    """One transition to apply: the event, its ledger actions and row changes, and the state it sets."""

    event: PaymentEvent
    reason: str
    ledger: list[LedgerAction] = field(default_factory=list)
    row: PaymentRowUpdate = field(default_factory=PaymentRowUpdate)
    amount_captured: int | None = None
    amount_capturable: int | None = None
    failure_code: str | None = None
    failure_message: str | None = None
    charge_requested: bool = False


@dataclass
class Refusal:
    reason: str


def is_ambiguous(error_type: str | None) -> bool:
    """After its retries, did this failure leave the outcome at Stripe unknown?

    Declines and refusals are answers; a saved 5xx, a timeout, a connection error, a 429 that
    outlasted the retries are not: the object must be looked up before acting again.
    """
    return error_type not in FINAL_ERROR_TYPES


def key_must_change(error_type: str | None) -> bool:
    """Stripe saved this answer under the key, so only a new key can make a new request."""
    return error_type == STRIPE_SERVER_ERROR


def held_before(state: PaymentState) -> bool:
    """Whether the payment holds an authorisation (now, or when its review opened)."""
    status = S(state.status)
    return status is S.AUTHORIZED or (status is S.NEEDS_REVIEW and state.review_status_before == S.AUTHORIZED)


def plan_for_intent(state: PaymentState, intent: IntentSnapshot, reason: str) -> Plan | None:
    """The transition Stripe's PaymentIntent calls for (None: a status Penny does not know)."""
    event = INTENT_STATUS_EVENTS.get(intent.status)
    if event is None:
        return None
    row = PaymentRowUpdate(stripe_payment_intent_id=intent.id, stripe_charge_id=intent.latest_charge)
    if event is E.CAPTURED:
        row.amount_captured, row.amount_capturable = intent.amount_received, 0
        ledger = [LedgerAction("capture", amount=intent.amount_received)] if state.amount_captured == 0 else []
        return Plan(event, reason, ledger, row, amount_captured=intent.amount_received, amount_capturable=0)
    if event is E.AUTHORIZED:
        row.amount_capturable = intent.amount_capturable
        # One hold per payment: a payment that already holds one (e.g. back from review) books none.
        ledger = [] if held_before(state) else [LedgerAction("authorization_hold", amount=intent.amount_capturable)]
        return Plan(event, reason, ledger, row, amount_capturable=intent.amount_capturable)
    if event is E.DECLINED:
        code = intent.failure_code or "payment_failed"
        row.failure_code, row.failure_message = code, intent.failure_message
        return Plan(
            event,
            f"payment failed: {code}",
            [],
            row,
            failure_code=code,
            failure_message=intent.failure_message,
        )
    if event is E.CANCELED:
        row.amount_capturable = 0
        ledger = [LedgerAction("release_hold")] if held_before(state) else []
        return Plan(event, reason, ledger, row, amount_capturable=0)
    return Plan(event, reason, [], row)


def captured_parts(split: ComputedSplit, amount_captured: int) -> list[tuple[str, int]]:
    """Recipient amounts for what was actually captured (a partial capture scales the split).

    Largest-remainder scaling, the same rule as ledger.money.scale_split (kept pure here).
    """
    parts = [(part.account_id, part.amount) for part in split.parts]
    if amount_captured == split.total:
        return parts
    total = split.total
    originals = [split.platform_fee, split.tax, *[amount for _, amount in parts]]
    exact = [amount * amount_captured for amount in originals]
    floors = [value // total for value in exact]
    remainders = sorted(range(len(exact)), key=lambda index: (-(exact[index] % total), index))
    for index in remainders[: amount_captured - sum(floors)]:
        floors[index] += 1
    return [(account, floors[2 + index]) for index, (account, _) in enumerate(parts)]


def settlement_net(state: PaymentState) -> int:
    """What stays with the platform at Stripe: the capture minus Stripe's fee minus what was transferred."""
    transferred = sum(record.amount for record in state.transfers if record.transfer_id is not None)
    return state.amount_captured - state.stripe_fee - transferred


def plan_resolution(state: PaymentState, resolution: str, intent: IntentSnapshot | None) -> Plan | Refusal:
    """Check an operator's resolution against Stripe's state; never move a payment backwards.

    `retry` resumes where the payment stopped: a payment that had money captured returns to the
    status it had when the review opened (Stripe must still say succeeded); before capture,
    Stripe's state decides, and with no PaymentIntent at Stripe the charge is attempted again
    (looking up first). Asserted outcomes (`captured`, `authorized`, `failed`, `canceled`) are
    allowed only when Stripe's state agrees.
    """
    if resolution not in RESOLUTIONS:
        return Refusal(f"unknown resolution {resolution!r}; one of {', '.join(RESOLUTIONS)}")
    before = S(state.review_status_before or S.CREATED)
    stripe_status = intent.status if intent is not None else None
    said = f"Stripe says {stripe_status or 'no PaymentIntent exists'}"
    if resolution == "retry":
        if before in MONEY_CAPTURED:
            if stripe_status != "succeeded":
                return Refusal(f"the payment was {before} but {said}: resolve it explicitly")
            target = before
        elif stripe_status is None:
            target = S.PROCESSING
        elif stripe_status not in INTENT_STATUS_TARGETS:
            return Refusal(f"{said}, a status Penny does not know: resolve it explicitly")
        else:
            target = INTENT_STATUS_TARGETS[stripe_status]
    else:
        target, needs = RESOLUTION_REQUIRES[resolution]
        if stripe_status not in needs:
            return Refusal(f"cannot resolve as {resolution}: {said}")
    if before in MONEY_CAPTURED and target in (S.FAILED, S.CANCELED):
        return Refusal(f"the payment was {before}: money was captured, so it cannot end {target} (refund it)")
    if before not in PRE_CAPTURE and RANK[target] < RANK[before]:
        # Before capture Stripe's state decides (a create that was uncertain may turn out to need
        # the customer's action); from AUTHORIZED on, a payment never moves back.
        return Refusal(f"cannot move the payment back from {before} to {target}")
    return _resolution_plan(state, target, before, intent, f"{resolution}: {said}")


def _resolution_plan(
    state: PaymentState, target: PaymentStatus, before: PaymentStatus, intent: IntentSnapshot | None, reason: str
) -> Plan:
    plan = Plan(RESOLUTION_EVENTS[target], reason)
    if intent is not None:
        plan.row.stripe_payment_intent_id = intent.id
        plan.row.stripe_charge_id = intent.latest_charge
    if target is S.CAPTURED and intent is not None and state.amount_captured == 0:
        # Booked exactly as the normal path books a capture (a hold, if any, is posted final).
        plan.ledger = [LedgerAction("capture", amount=intent.amount_received)]
        plan.row.amount_captured, plan.row.amount_capturable = intent.amount_received, 0
        plan.amount_captured, plan.amount_capturable = intent.amount_received, 0
    elif target is S.AUTHORIZED and intent is not None and before in PRE_CAPTURE:
        plan.ledger = [LedgerAction("authorization_hold", amount=intent.amount_capturable)]
        plan.row.amount_capturable = intent.amount_capturable
        plan.amount_capturable = intent.amount_capturable
    elif target in (S.CANCELED, S.FAILED) and before is S.AUTHORIZED:
        plan.ledger = [LedgerAction("release_hold")]
        plan.row.amount_capturable = 0
        plan.amount_capturable = 0
    if target is S.FAILED:
        code = (intent.failure_code if intent is not None else None) or (
            "payment_failed" if intent is not None else "failed_by_operator"
        )
        plan.row.failure_code = plan.failure_code = code
        message = intent.failure_message if intent is not None else None
        plan.row.failure_message = plan.failure_message = message or reason
    if target is S.PROCESSING and intent is None:
        plan.charge_requested = True
    return plan
