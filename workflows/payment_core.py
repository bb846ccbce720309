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
from workflows.payment_models import (
    REFUND_FAILED,
    REFUND_POLICIES,
    RESOLUTIONS,
    ComputedSplit,
    PaymentState,
    RefundRecord,
    SplitPart,
)
from workflows.state_machine import RANK, PaymentEvent, PaymentStatus, decide

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
# States in which a look at Stripe could still change what Penny knows of the charge: before it,
# and where Penny's status is itself in question (FAILED/CANCELED ask, to catch contradictions).
INTENT_LOOKUP_STATES = frozenset({*PRE_CAPTURE, S.NEEDS_REVIEW, S.FAILED, S.CANCELED})
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
    S.REFUNDED: E.RESOLVE_REFUNDED,
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
    code: str = ""


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


def largest_remainder(weights: list[int], total: int) -> list[int]:
    """`total` shared in proportion to `weights`, exactly: floors, then one more to the largest remainders.

    The same rule as ledger.money.split_by_weights (kept pure here). With total <= sum(weights)
    no share exceeds its weight.
    """
    whole = sum(weights)
    if total == 0:
        return [0] * len(weights)
    if whole <= 0:
        raise ValueError(f"cannot share {total} over weights that sum to {whole}")
    exact = [weight * total for weight in weights]
    floors = [value // whole for value in exact]
    remainders = sorted(range(len(exact)), key=lambda index: (-(exact[index] % whole), index))
    for index in remainders[: total - sum(floors)]:
        floors[index] += 1
    return floors


def captured_split_parts(split: ComputedSplit, amount_captured: int) -> list[int]:
    """Fee, tax, then each recipient's amount of what was actually captured (sums to it)."""
    originals = [split.platform_fee, split.tax, *(part.amount for part in split.parts)]
    if amount_captured == split.total:
        return originals
    return largest_remainder(originals, amount_captured)


def captured_parts(split: ComputedSplit, amount_captured: int) -> list[tuple[str, int]]:
    """Recipient amounts for what was actually captured (a partial capture scales the split)."""
    amounts = captured_split_parts(split, amount_captured)[2:]
    return [(part.account_id, amount) for part, amount in zip(split.parts, amounts, strict=True)]


# ----------------------------------------------------------------------------- refunds

# A refund is accepted only in these states (DISPUTED: Stripe refuses refunds of a disputed charge).
REFUNDABLE_STATES = frozenset({S.CAPTURED, S.SETTLED, S.PARTIALLY_REFUNDED})


def _parts_of(refund: RefundRecord) -> list[int]:
    return [refund.platform_fee, refund.tax, *(part.amount for part in refund.recipients)]


def refunded_amount(state: PaymentState) -> int:
    """What the refunds that did not fail took back (pending ones included: the money has left)."""
    return sum(refund.amount for refund in state.refunds if refund.status != REFUND_FAILED)


def refundable_amount(state: PaymentState) -> int:
    return state.amount_captured - refunded_amount(state)


def remaining_parts(state: PaymentState) -> list[int]:
    """Fee, tax and each recipient's part of the capture, minus what refunds took back."""
    assert state.split is not None
    remaining = captured_split_parts(state.split, state.amount_captured)
    for refund in state.refunds:
        if refund.status != REFUND_FAILED:
            remaining = [left - taken for left, taken in zip(remaining, _parts_of(refund), strict=True)]
    return remaining


def refund_parts(state: PaymentState, amount: int, policy: str) -> list[int]:
    """What fee, tax and each recipient give back for a refund of `amount` (sums to it, exactly).

    proportional: every part in proportion to what it still holds (largest remainder).
    platform_keeps_fee: tax and recipients first, in proportion, up to what they still hold;
    the platform fee only for what they cannot cover. No part ever gives more than it holds.
    """
    if policy not in REFUND_POLICIES:
        raise ValueError(f"unknown refund policy {policy!r}")
    remaining = remaining_parts(state)
    if not 0 < amount <= sum(remaining):
        raise ValueError(f"refund {amount} outside 1..{sum(remaining)}")
    if policy == "proportional":
        return largest_remainder(remaining, amount)
    others = remaining[1:]
    first = min(amount, sum(others))
    return [amount - first, *largest_remainder(others, first)]


def refund_record(state: PaymentState, refund_id: str, amount: int, reason: str | None, policy: str) -> RefundRecord:
    assert state.split is not None
    fee, tax, *recipients = refund_parts(state, amount, policy)
    return RefundRecord(
        refund_id=refund_id,
        amount=amount,
        reason=reason,
        platform_fee=fee,
        tax=tax,
        recipients=[
            SplitPart(part.account_id, share, part.role)
            for part, share in zip(state.split.parts, recipients, strict=True)
            if share > 0
        ],
    )


def refund_refusal(state: PaymentState, amount: int | None, disbursing: bool) -> Refusal | None:
    """Why a refund of `amount` (None: all that remains) cannot be accepted now; None if it can."""
    status = S(state.status)
    if status in (S.AUTHORIZED, *PRE_CAPTURE):
        return Refusal(
            f"payment is {status}: nothing was captured to refund"
            + (" (cancel it instead: POST /v1/payments/{id}/cancel)" if status is S.AUTHORIZED else ""),
            "payment_not_captured",
        )
    if status is S.DISPUTED or state.disputes:
        return Refusal("the payment's charge was disputed; Stripe refunds no disputed charge", "charge_disputed")
    if status is S.REFUNDED:
        return Refusal("the payment is fully refunded already", "charge_already_refunded")
    if status not in REFUNDABLE_STATES:
        return Refusal(f"payment is {status} and cannot be refunded", "payment_state_conflict")
    if disbursing:
        return Refusal(
            "the payment is still paying its recipients; retry the refund shortly", "payment_disbursement_pending"
        )
    if any(refund.status == "pending" and not refund.booked for refund in state.refunds):
        return Refusal("another refund of this payment is being made; retry shortly", "refund_in_progress")
    left = refundable_amount(state)
    if left <= 0:
        return Refusal("the payment is fully refunded already", "charge_already_refunded")
    if amount is not None and amount > left:
        return Refusal(f"the refund amount is greater than the {left} left to refund", "amount_too_large")
    return None


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
        if before in MONEY_CAPTURED or before is S.REFUNDED:
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


INTENT_CREATED_EVENT = "payment_intent.created"


def intent_created_claims_nothing(event_type: str, event_status: str | None) -> bool:
    """A `payment_intent.created` event whose intent, as created, claims no status Penny acts on
    (requires_confirmation): whatever the payment's status, the workflow learns nothing from it.

    The webhook router records it as ignored without waking the workflow (#16). The intent's
    progress comes in the events that follow it (succeeded, requires_action, payment_failed,
    ...), each claiming its status, and in the workflow's own polls and lookups.
    """
    return event_type == INTENT_CREATED_EVENT and INTENT_STATUS_EVENTS.get(event_status or "") is None


TRANSFER_EVENT_PREFIX = "transfer."


def transfer_not_made_by_penny(event_type: str, object_type: str | None, metadata_payment_id: str | None) -> bool:
    """A transfer event whose transfer carries no Penny `payment_id` in its metadata.

    Stripe makes such a transfer itself for a destination charge (the payment books it from its
    PaymentIntent), or someone made it outside Penny. The workflow acts on transfer events only
    to record a transfer of its own that it could not see (found by that metadata), so the
    webhook router records these as ignored without waking the workflow (#16). Transfers
    Penny makes always carry it (`StripeActivities.create_transfer`).
    """
    return event_type.startswith(TRANSFER_EVENT_PREFIX) and object_type == "transfer" and not metadata_payment_id


def stale_intent_event(current: PaymentStatus | str, event_status: str | None, *, unclaimed_too: bool) -> str | None:
    """Why an event about the payment's own PaymentIntent cannot move the payment, so that
    Stripe need not be asked (None: look the intent up, then apply what it says).

    Past the charge, an event claiming a status the state machine refuses is stale, whatever
    Stripe says now; with `unclaimed_too` (patch unclaimed-intent-events-v1), so is one claiming
    no status Penny knows (payment_intent.created: requires_confirmation). FAILED and CANCELED
    still ask, to catch a contradiction.
    """
    status = PaymentStatus(current)
    if status in INTENT_LOOKUP_STATES:
        return None
    claimed = INTENT_STATUS_EVENTS.get(event_status or "")
    if claimed is None:
        if unclaimed_too:
            return f"claims no status Penny acts on ({event_status}): payment already {status}"
        return None
    if decide(status, claimed, from_processor=True).allowed:
        return None
    return f"stale: payment already {status} (event says {event_status})"
