"""The payment's decision core (workflows/payment_core.py): pure, so tested exhaustively here.

No Temporal, no database: every PaymentIntent status × payment state, every operator resolution ×
the status the payment had when its review opened × what Stripe says, the partial-capture split
(checked against ledger.money.scale_split) and the failure classification.

Two tests state bugs this file found in the core (see their docstrings; both fixed): a second
authorisation hold, and captured money resolved as failed/canceled.
"""

from __future__ import annotations

import copy
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from activities.payment_types import LedgerAction, PaymentRowUpdate
from activities.stripe_types import CARD_DECLINED, STRIPE_REQUEST_REFUSED, STRIPE_SERVER_ERROR, IntentSnapshot
from ledger.money import CaptureSplit, scale_split
from workflows.payment_core import (
    INTENT_LOOKUP_STATES,
    INTENT_STATUS_EVENTS,
    INTENT_STATUS_TARGETS,
    RESOLUTION_EVENTS,
    Plan,
    Refusal,
    captured_parts,
    held_before,
    intent_created_claims_nothing,
    is_ambiguous,
    key_must_change,
    plan_for_intent,
    plan_resolution,
    settlement_net,
    stale_intent_event,
    transfer_not_made_by_penny,
)
from workflows.payment_models import (
    RESOLUTIONS,
    TRANSFER_FAILED,
    TRANSFER_IN_REVIEW,
    TRANSFER_PENDING,
    TRANSFER_SUCCEEDED,
    ComputedSplit,
    PaymentState,
    SplitPart,
    TransferRecord,
)
from workflows.state_machine import RANK, TRANSITIONS, PaymentEvent, PaymentStatus, decide

S = PaymentStatus
E = PaymentEvent

# Distinct amounts, so a test notices when the core reads the wrong field.
AMOUNT = 10_000
CAPTURABLE = 7_000
RECEIVED = 6_500
INTENT_ID = "pi_core"
CHARGE_ID = "ch_core"

# Every PaymentIntent status Stripe documents, plus ones Penny does not map.
KNOWN_INTENT_STATUSES = (
    "succeeded",
    "requires_capture",
    "requires_action",
    "processing",
    "requires_payment_method",
    "canceled",
)
UNKNOWN_INTENT_STATUSES = ("requires_confirmation", "partially_funded", "SUCCEEDED", "")
STRIPE_STATUSES: tuple[str | None, ...] = (None, *KNOWN_INTENT_STATUSES, "requires_confirmation")

PRE_CAPTURE = (S.CREATED, S.REQUIRES_PAYMENT_METHOD, S.REQUIRES_ACTION, S.PROCESSING)
MONEY_CAPTURED = (S.CAPTURED, S.SETTLED, S.PARTIALLY_REFUNDED, S.DISPUTED)
SENSIBLE_BEFORES = (*PRE_CAPTURE, S.AUTHORIZED, *MONEY_CAPTURED)
ALL_BEFORES = tuple(status for status in PaymentStatus if status is not S.NEEDS_REVIEW)
UNKNOWN_RESOLUTION = "refund"
ALL_RESOLUTIONS = (*RESOLUTIONS, UNKNOWN_RESOLUTION)


def make_state(
    status: PaymentStatus = S.CREATED,
    *,
    before: PaymentStatus | None = None,
    amount_captured: int = 0,
    stripe_fee: int = 0,
    transfers: list[TransferRecord] | None = None,
) -> PaymentState:
    return PaymentState(
        payment_id="pay_core",
        order_id="order_core",
        status=status,
        amount=AMOUNT,
        currency="USD",
        customer="cus_core",
        capture_method="manual",
        amount_captured=amount_captured,
        stripe_fee=stripe_fee,
        transfers=transfers or [],
        review_status_before=before,
    )


def make_review(before: PaymentStatus | None, *, amount_captured: int = 0) -> PaymentState:
    return make_state(S.NEEDS_REVIEW, before=before, amount_captured=amount_captured)


def make_intent(
    status: str,
    *,
    amount_capturable: int = CAPTURABLE,
    amount_received: int = RECEIVED,
    latest_charge: str | None = CHARGE_ID,
    failure_code: str | None = None,
    failure_message: str | None = None,
) -> IntentSnapshot:
    return IntentSnapshot(
        id=INTENT_ID,
        status=status,
        amount=AMOUNT,
        amount_capturable=amount_capturable,
        amount_received=amount_received,
        currency="usd",
        latest_charge=latest_charge,
        failure_code=failure_code,
        failure_message=failure_message,
    )


def ids_row(**changes: int | str | None) -> PaymentRowUpdate:
    row = PaymentRowUpdate(stripe_payment_intent_id=INTENT_ID, stripe_charge_id=CHARGE_ID)
    for name, value in changes.items():
        setattr(row, name, value)
    return row


# ----------------------------------------------------------------------------- the tables


def test_intent_tables_cover_the_same_statuses() -> None:
    assert set(INTENT_STATUS_EVENTS) == set(INTENT_STATUS_TARGETS) == set(KNOWN_INTENT_STATUSES)


@pytest.mark.parametrize("status", KNOWN_INTENT_STATUSES)
def test_intent_event_leads_where_the_target_table_says(status: str) -> None:
    # From CREATED every one of Stripe's events is legal and lands on the status Stripe implies.
    assert TRANSITIONS[(S.CREATED, INTENT_STATUS_EVENTS[status])] is INTENT_STATUS_TARGETS[status]


@pytest.mark.parametrize("target", list(RESOLUTION_EVENTS))
def test_resolution_events_lead_to_their_target(target: PaymentStatus) -> None:
    assert TRANSITIONS[(S.NEEDS_REVIEW, RESOLUTION_EVENTS[target])] is target


# ----------------------------------------------------------------------------- held_before

HELD_STATES = [
    (status, before)
    for status in PaymentStatus
    for before in (None, *ALL_BEFORES)
    if status is S.AUTHORIZED or (status is S.NEEDS_REVIEW and before is S.AUTHORIZED)
]


@pytest.mark.parametrize(("status", "before"), list(itertools.product(PaymentStatus, (None, *ALL_BEFORES))))
def test_held_before(status: PaymentStatus, before: PaymentStatus | None) -> None:
    assert held_before(make_state(status, before=before)) is ((status, before) in HELD_STATES)


def test_held_before_accepts_plain_strings() -> None:
    # The state travels through Temporal's converter: its statuses arrive as plain str.
    state = make_state()
    state.status, state.review_status_before = "NEEDS_REVIEW", "AUTHORIZED"
    assert held_before(state)
    state.review_status_before = "CAPTURED"
    assert not held_before(state)


# ----------------------------------------------------------------------------- plan_for_intent

# Every status a payment can be in when Stripe's answer arrives (reviews with several befores).
INTENT_STATES: list[tuple[PaymentStatus, PaymentStatus | None]] = [
    *((status, None) for status in PaymentStatus if status is not S.NEEDS_REVIEW),
    *((S.NEEDS_REVIEW, before) for before in (None, S.PROCESSING, S.AUTHORIZED, S.CAPTURED, S.SETTLED)),
]


def _expected_intent_plan(status: str, held: bool, amount_captured: int) -> Plan:
    reason = "status from Stripe"
    if status == "succeeded":
        return Plan(
            E.CAPTURED,
            reason,
            [LedgerAction("capture", amount=RECEIVED)] if amount_captured == 0 else [],
            ids_row(amount_captured=RECEIVED, amount_capturable=0),
            amount_captured=RECEIVED,
            amount_capturable=0,
        )
    if status == "requires_capture":
        return Plan(
            E.AUTHORIZED,
            reason,
            [LedgerAction("authorization_hold", amount=CAPTURABLE)],
            ids_row(amount_capturable=CAPTURABLE),
            amount_capturable=CAPTURABLE,
        )
    if status == "requires_action":
        return Plan(E.ACTION_REQUIRED, reason, [], ids_row())
    if status == "processing":
        return Plan(E.PROCESSING, reason, [], ids_row())
    if status == "requires_payment_method":
        return Plan(
            E.DECLINED,
            "payment failed: payment_failed",
            [],
            ids_row(failure_code="payment_failed"),
            failure_code="payment_failed",
        )
    assert status == "canceled"
    return Plan(
        E.CANCELED,
        reason,
        [LedgerAction("release_hold")] if held else [],
        ids_row(amount_capturable=0),
        amount_capturable=0,
    )


# requires_capture while a hold is already held: the ledger is left to
# test_plan_for_intent_does_not_hold_twice; the rest of the plan is checked here.
INTENT_CASES = [
    (intent_status, status, before)
    for intent_status in KNOWN_INTENT_STATUSES
    for status, before in INTENT_STATES
    if not (intent_status == "requires_capture" and (status, before) in HELD_STATES)
]


@pytest.mark.parametrize("amount_captured", [0, RECEIVED])
@pytest.mark.parametrize(("intent_status", "status", "before"), INTENT_CASES)
def test_plan_for_intent_every_status_in_every_state(
    intent_status: str, status: PaymentStatus, before: PaymentStatus | None, amount_captured: int
) -> None:
    held = (status, before) in HELD_STATES
    state = make_state(status, before=before, amount_captured=amount_captured)
    plan = plan_for_intent(state, make_intent(intent_status), "status from Stripe")
    assert plan == _expected_intent_plan(intent_status, held, amount_captured)


@pytest.mark.parametrize(("status", "before"), [(S.AUTHORIZED, None), (S.NEEDS_REVIEW, S.AUTHORIZED)])
def test_plan_for_intent_requires_capture_while_held(status: PaymentStatus, before: PaymentStatus | None) -> None:
    plan = plan_for_intent(make_state(status, before=before), make_intent("requires_capture"), "poll")
    assert plan is not None
    assert (plan.event, plan.reason, plan.row) == (E.AUTHORIZED, "poll", ids_row(amount_capturable=CAPTURABLE))
    assert (plan.amount_captured, plan.amount_capturable, plan.failure_code) == (None, CAPTURABLE, None)


@pytest.mark.parametrize("intent_status", UNKNOWN_INTENT_STATUSES)
@pytest.mark.parametrize(("status", "before"), INTENT_STATES)
def test_plan_for_intent_unknown_status_is_none(
    intent_status: str, status: PaymentStatus, before: PaymentStatus | None
) -> None:
    assert plan_for_intent(make_state(status, before=before), make_intent(intent_status), "poll") is None


def test_plan_for_intent_does_not_read_the_state() -> None:
    state = make_state(S.PROCESSING)
    snapshot = copy.deepcopy(state)
    for intent_status in (*KNOWN_INTENT_STATUSES, *UNKNOWN_INTENT_STATUSES):
        plan_for_intent(state, make_intent(intent_status), "poll")
    assert state == snapshot


@pytest.mark.parametrize(
    ("failure_code", "failure_message", "code"),
    [
        (None, None, "payment_failed"),
        ("", None, "payment_failed"),
        (None, "Your card was declined.", "payment_failed"),
        ("card_declined", "Your card was declined.", "card_declined"),
        ("insufficient_funds", None, "insufficient_funds"),
    ],
)
def test_plan_for_intent_decline_failure_code(failure_code: str | None, failure_message: str | None, code: str) -> None:
    intent = make_intent("requires_payment_method", failure_code=failure_code, failure_message=failure_message)
    plan = plan_for_intent(make_state(S.PROCESSING), intent, "ignored for a decline")
    assert plan == Plan(
        E.DECLINED,
        f"payment failed: {code}",
        [],
        ids_row(failure_code=code, failure_message=failure_message),
        failure_code=code,
        failure_message=failure_message,
    )


@pytest.mark.parametrize("intent_status", KNOWN_INTENT_STATUSES)
def test_plan_for_intent_without_a_charge(intent_status: str) -> None:
    plan = plan_for_intent(make_state(S.CREATED), make_intent(intent_status, latest_charge=None), "poll")
    assert plan is not None
    assert plan.row.stripe_payment_intent_id == INTENT_ID
    assert plan.row.stripe_charge_id is None


def test_plan_for_intent_capture_books_amount_received_only_once() -> None:
    intent = make_intent("succeeded", amount_capturable=0, amount_received=4_321)
    first = plan_for_intent(make_state(S.AUTHORIZED), intent, "captured 4321")
    again = plan_for_intent(make_state(S.CAPTURED, amount_captured=4_321), intent, "captured 4321")
    assert first is not None and again is not None
    assert first.ledger == [LedgerAction("capture", amount=4_321)]
    assert again.ledger == []
    assert (first.amount_captured, first.amount_capturable) == (again.amount_captured, again.amount_capturable)
    assert (first.row.amount_captured, first.row.amount_capturable) == (4_321, 0)


def test_plan_for_intent_cancel_releases_only_a_held_authorisation() -> None:
    intent = make_intent("canceled", amount_capturable=0)
    released = {
        (status, before)
        for status, before in INTENT_STATES
        if (plan := plan_for_intent(make_state(status, before=before), intent, "canceled")) is not None
        and plan.ledger == [LedgerAction("release_hold")]
    }
    assert released == {(S.AUTHORIZED, None), (S.NEEDS_REVIEW, S.AUTHORIZED)}


def test_plan_for_intent_does_not_hold_twice() -> None:
    """A review opened in AUTHORIZED, then a poll or webhook says requires_capture.

    TRANSITIONS[(NEEDS_REVIEW, authorized)] applies it (back to AUTHORIZED), and plan_for_intent books a
    second authorization_hold for a payment that already holds one (held_before is True), whereas
    plan_resolution for the same facts (retry, before=AUTHORIZED, requires_capture) books none.
    Input: PaymentState(status=NEEDS_REVIEW, review_status_before=AUTHORIZED),
    IntentSnapshot(status="requires_capture", amount_capturable=7000).
    """
    state = make_review(S.AUTHORIZED)
    intent = make_intent("requires_capture")
    assert decide(S.NEEDS_REVIEW, E.AUTHORIZED, from_processor=True).allowed
    plan = plan_for_intent(state, intent, "status from Stripe (poll)")
    resolved = plan_resolution(state, "retry", intent)
    assert plan is not None and isinstance(resolved, Plan)
    assert resolved.ledger == []
    assert plan.ledger == [], plan.ledger


# ----------------------------------------------------------------------------- plan_resolution

# (resolution, review_status_before, Stripe's status) -> the target; every other combination of
# SENSIBLE_BEFORES × ALL_RESOLUTIONS × STRIPE_STATUSES is refused.
ALLOWED: dict[tuple[str, PaymentStatus, str | None], PaymentStatus] = {}
for _before in (*PRE_CAPTURE, S.AUTHORIZED, S.CAPTURED):
    ALLOWED[("captured", _before, "succeeded")] = S.CAPTURED
for _before in (*PRE_CAPTURE, S.AUTHORIZED):
    ALLOWED[("authorized", _before, "requires_capture")] = S.AUTHORIZED
    for _stripe in (None, "requires_payment_method", "canceled"):
        ALLOWED[("failed", _before, _stripe)] = S.FAILED
        ALLOWED[("canceled", _before, _stripe)] = S.CANCELED
    ALLOWED[("retry", _before, "succeeded")] = S.CAPTURED
    ALLOWED[("retry", _before, "requires_capture")] = S.AUTHORIZED
    ALLOWED[("retry", _before, "requires_payment_method")] = S.FAILED
    ALLOWED[("retry", _before, "canceled")] = S.CANCELED
for _before in PRE_CAPTURE:
    ALLOWED[("retry", _before, None)] = S.PROCESSING
    ALLOWED[("retry", _before, "processing")] = S.PROCESSING
for _before in PRE_CAPTURE:
    # Before capture Stripe's state decides: an uncertain create may turn out to need the customer.
    ALLOWED[("retry", _before, "requires_action")] = S.REQUIRES_ACTION
for _before in MONEY_CAPTURED:
    ALLOWED[("retry", _before, "succeeded")] = _before

# Money was captured: these must be refused (test_money_captured_is_not_failed_or_canceled_silently).
QUESTIONED = [
    (resolution, before, stripe)
    for resolution in ("failed", "canceled")
    for before in MONEY_CAPTURED
    for stripe in (None, "requires_payment_method", "canceled")
]

RESOLUTION_CASES = list(itertools.product(ALL_RESOLUTIONS, SENSIBLE_BEFORES, STRIPE_STATUSES))


def _said(stripe: str | None) -> str:
    return f"Stripe says {stripe or 'no PaymentIntent exists'}"


def _expected_resolution_plan(
    resolution: str, before: PaymentStatus, stripe: str | None, target: PaymentStatus, amount_captured: int
) -> Plan:
    events = {
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
    plan = Plan(events[target], f"{resolution}: {_said(stripe)}")
    if stripe is not None:
        plan.row = ids_row()
    if target is S.CAPTURED and amount_captured == 0:
        plan.ledger = [LedgerAction("capture", amount=RECEIVED)]
        plan.row.amount_captured, plan.row.amount_capturable = RECEIVED, 0
        plan.amount_captured, plan.amount_capturable = RECEIVED, 0
    elif target is S.AUTHORIZED and before in PRE_CAPTURE:
        plan.ledger = [LedgerAction("authorization_hold", amount=CAPTURABLE)]
        plan.row.amount_capturable = plan.amount_capturable = CAPTURABLE
    elif target in (S.FAILED, S.CANCELED) and before is S.AUTHORIZED:
        plan.ledger = [LedgerAction("release_hold")]
        plan.row.amount_capturable = plan.amount_capturable = 0
    if target is S.FAILED:
        plan.row.failure_code = plan.failure_code = "payment_failed" if stripe is not None else "failed_by_operator"
        plan.row.failure_message = plan.failure_message = plan.reason
    plan.charge_requested = target is S.PROCESSING and stripe is None
    return plan


def _resolve(
    resolution: str, before: PaymentStatus | None, stripe: str | None, *, amount_captured: int = 0
) -> Plan | Refusal:
    intent = None if stripe is None else make_intent(stripe)
    return plan_resolution(make_review(before, amount_captured=amount_captured), resolution, intent)


@pytest.mark.parametrize("amount_captured", [0, RECEIVED])
@pytest.mark.parametrize(("resolution", "before", "stripe"), RESOLUTION_CASES)
def test_plan_resolution_table(
    resolution: str, before: PaymentStatus, stripe: str | None, amount_captured: int
) -> None:
    result = _resolve(resolution, before, stripe, amount_captured=amount_captured)
    target = ALLOWED.get((resolution, before, stripe))
    if target is None:
        assert isinstance(result, Refusal), result
        assert result.reason
        return
    assert isinstance(result, Plan), result.reason
    assert TRANSITIONS[(S.NEEDS_REVIEW, result.event)] is target
    assert result == _expected_resolution_plan(resolution, before, stripe, target, amount_captured)


@pytest.mark.parametrize(("resolution", "stripe"), list(itertools.product(ALL_RESOLUTIONS, STRIPE_STATUSES)))
def test_plan_resolution_without_before_is_as_from_created(resolution: str, stripe: str | None) -> None:
    assert _resolve(resolution, None, stripe) == _resolve(resolution, S.CREATED, stripe)


@pytest.mark.parametrize(
    ("resolution", "before", "stripe"), list(itertools.product(ALL_RESOLUTIONS, ALL_BEFORES, STRIPE_STATUSES))
)
def test_plan_resolution_properties(resolution: str, before: PaymentStatus, stripe: str | None) -> None:
    """Over every combination: legal, never backwards, money states only on Stripe's `succeeded`."""
    result = _resolve(resolution, before, stripe)
    if isinstance(result, Refusal):
        assert result.reason
        return
    decision = decide(S.NEEDS_REVIEW, result.event)
    assert decision.allowed, decision.reason
    target = decision.to_status
    assert target is not None
    # Never backwards once authorised; before that, Stripe's state decides.
    assert RANK[target] >= RANK[before] or (before in PRE_CAPTURE and target in PRE_CAPTURE)
    if before in MONEY_CAPTURED:
        assert target in MONEY_CAPTURED
    if target in MONEY_CAPTURED:
        assert stripe == "succeeded"
    assert resolution in RESOLUTIONS
    assert result.charge_requested == (target is S.PROCESSING and stripe is None)
    if stripe is not None:
        assert (result.row.stripe_payment_intent_id, result.row.stripe_charge_id) == (INTENT_ID, CHARGE_ID)
    else:
        assert (result.row.stripe_payment_intent_id, result.row.stripe_charge_id) == (None, None)


@pytest.mark.parametrize(("before", "stripe"), list(itertools.product(ALL_BEFORES, STRIPE_STATUSES)))
def test_unknown_resolution_is_refused(before: PaymentStatus, stripe: str | None) -> None:
    result = _resolve(UNKNOWN_RESOLUTION, before, stripe)
    assert result == Refusal("unknown resolution 'refund'; one of captured, authorized, failed, canceled, retry")


@pytest.mark.parametrize(
    ("resolution", "before", "stripe", "reason"),
    [
        ("captured", S.PROCESSING, "processing", "cannot resolve as captured: Stripe says processing"),
        ("captured", S.PROCESSING, None, "cannot resolve as captured: Stripe says no PaymentIntent exists"),
        ("captured", S.AUTHORIZED, "requires_capture", "cannot resolve as captured: Stripe says requires_capture"),
        ("captured", S.SETTLED, "succeeded", "cannot move the payment back from SETTLED to CAPTURED"),
        ("captured", S.DISPUTED, "succeeded", "cannot move the payment back from DISPUTED to CAPTURED"),
        ("authorized", S.CAPTURED, "requires_capture", "cannot move the payment back from CAPTURED to AUTHORIZED"),
        ("authorized", S.AUTHORIZED, "succeeded", "cannot resolve as authorized: Stripe says succeeded"),
        ("failed", S.PROCESSING, "succeeded", "cannot resolve as failed: Stripe says succeeded"),
        ("canceled", S.AUTHORIZED, "requires_capture", "cannot resolve as canceled: Stripe says requires_capture"),
        ("failed", S.CREATED, "requires_confirmation", "cannot resolve as failed: Stripe says requires_confirmation"),
        (
            "retry",
            S.CAPTURED,
            None,
            "the payment was CAPTURED but Stripe says no PaymentIntent exists: resolve it explicitly",
        ),
        ("retry", S.SETTLED, "canceled", "the payment was SETTLED but Stripe says canceled: resolve it explicitly"),
        (
            "retry",
            S.PROCESSING,
            "requires_confirmation",
            "Stripe says requires_confirmation, a status Penny does not know: resolve it explicitly",
        ),
        ("retry", S.AUTHORIZED, None, "cannot move the payment back from AUTHORIZED to PROCESSING"),
        ("retry", S.AUTHORIZED, "processing", "cannot move the payment back from AUTHORIZED to PROCESSING"),
        (
            "failed",
            S.CAPTURED,
            None,
            "the payment was CAPTURED: money was captured, so it cannot end FAILED (refund it)",
        ),
        (
            "canceled",
            S.DISPUTED,
            "canceled",
            "the payment was DISPUTED: money was captured, so it cannot end CANCELED (refund it)",
        ),
    ],
)
def test_plan_resolution_refusal_reasons(
    resolution: str, before: PaymentStatus, stripe: str | None, reason: str
) -> None:
    assert _resolve(resolution, before, stripe) == Refusal(reason)


def test_resolved_capture_books_amount_received_only_when_nothing_was_captured() -> None:
    intent = make_intent("succeeded", amount_capturable=0, amount_received=3_210)
    fresh = plan_resolution(make_review(S.AUTHORIZED), "captured", intent)
    booked = plan_resolution(make_review(S.CAPTURED, amount_captured=3_210), "captured", intent)
    assert isinstance(fresh, Plan) and isinstance(booked, Plan)
    assert fresh.ledger == [LedgerAction("capture", amount=3_210)]
    assert (fresh.amount_captured, fresh.amount_capturable) == (3_210, 0)
    assert booked.ledger == [] and booked.amount_captured is None and booked.amount_capturable is None
    assert booked.event is fresh.event is E.RESOLVE_CAPTURED


@pytest.mark.parametrize("resolution", ["authorized", "retry"])
@pytest.mark.parametrize("before", [*PRE_CAPTURE, S.AUTHORIZED])
def test_resolved_authorisation_holds_only_from_pre_capture(resolution: str, before: PaymentStatus) -> None:
    plan = plan_resolution(make_review(before), resolution, make_intent("requires_capture", amount_capturable=1_234))
    assert isinstance(plan, Plan) and plan.event is E.RESOLVE_AUTHORIZED
    if before is S.AUTHORIZED:
        assert plan.ledger == [] and plan.amount_capturable is None and plan.row.amount_capturable is None
    else:
        assert plan.ledger == [LedgerAction("authorization_hold", amount=1_234)]
        assert plan.amount_capturable == plan.row.amount_capturable == 1_234


@pytest.mark.parametrize("stripe", [None, "requires_payment_method", "canceled"])
@pytest.mark.parametrize("resolution", ["failed", "canceled"])
@pytest.mark.parametrize("before", [*PRE_CAPTURE, S.AUTHORIZED])
def test_resolved_failure_or_cancel_releases_a_hold(resolution: str, before: PaymentStatus, stripe: str | None) -> None:
    plan = _resolve(resolution, before, stripe)
    assert isinstance(plan, Plan)
    if before is S.AUTHORIZED:
        assert plan.ledger == [LedgerAction("release_hold")]
        assert plan.amount_capturable == plan.row.amount_capturable == 0
    else:
        assert plan.ledger == [] and plan.amount_capturable is None


@pytest.mark.parametrize("before", [None, *PRE_CAPTURE])
def test_retry_without_a_payment_intent_charges_again(before: PaymentStatus | None) -> None:
    plan = _resolve("retry", before, None)
    assert plan == Plan(E.RESOLVE_RETRY, "retry: Stripe says no PaymentIntent exists", charge_requested=True)
    assert TRANSITIONS[(S.NEEDS_REVIEW, E.RESOLVE_RETRY)] is S.PROCESSING


def test_retry_while_stripe_processes_waits_without_charging_again() -> None:
    plan = _resolve("retry", S.PROCESSING, "processing")
    assert plan == Plan(E.RESOLVE_RETRY, "retry: Stripe says processing", row=ids_row())
    assert not plan.charge_requested


@pytest.mark.parametrize("before", MONEY_CAPTURED)
def test_retry_returns_a_captured_payment_where_it_was(before: PaymentStatus) -> None:
    plan = _resolve("retry", before, "succeeded", amount_captured=RECEIVED)
    assert isinstance(plan, Plan)
    assert TRANSITIONS[(S.NEEDS_REVIEW, plan.event)] is before
    assert plan.ledger == [] and plan.row == ids_row()


def test_money_captured_is_not_failed_or_canceled_silently() -> None:
    """A review opened with money captured (CAPTURED, SETTLED, PARTIALLY_REFUNDED, DISPUTED).

    `retry` refuses unless Stripe still says succeeded ("resolve it explicitly"), but `failed` and
    `canceled` are allowed when Stripe says no PaymentIntent / requires_payment_method / canceled:
    RANK[FAILED] == RANK[CANCELED] == 9 passes the "never backwards" check (the state machine has no
    path from CAPTURED to FAILED or CANCELED), and the plan has no ledger action, so the booked capture
    (seller payables, fee, tax) stays in the ledger of a FAILED/CANCELED payment.
    Input, e.g.: PaymentState(status=NEEDS_REVIEW, review_status_before=CAPTURED, amount_captured=6500),
    resolution "failed", intent None -> Plan(resolve_failed, ledger=[]).
    """
    silent = [
        case
        for case in QUESTIONED
        if isinstance(result := _resolve(*case, amount_captured=RECEIVED), Plan) and not result.ledger
    ]
    # Either refused, or the plan must at least do something about the money the ledger holds.
    assert silent == [], silent


amounts = st.integers(min_value=1, max_value=10**9)


@settings(max_examples=300, deadline=None)
@given(
    case=st.sampled_from(sorted(ALLOWED.items(), key=repr)),
    capturable=amounts,
    received=amounts,
    already=st.sampled_from([0, 1, 500]),
)
def test_resolution_ledger_amounts_come_from_stripe(
    case: tuple[tuple[str, PaymentStatus, str | None], PaymentStatus], capturable: int, received: int, already: int
) -> None:
    (resolution, before, stripe), target = case
    intent = None if stripe is None else make_intent(stripe, amount_capturable=capturable, amount_received=received)
    plan = plan_resolution(make_review(before, amount_captured=already), resolution, intent)
    assert isinstance(plan, Plan)
    assert TRANSITIONS[(S.NEEDS_REVIEW, plan.event)] is target
    if target is S.CAPTURED and already == 0:
        assert plan.ledger == [LedgerAction("capture", amount=received)]
        assert (plan.amount_captured, plan.row.amount_captured) == (received, received)
    elif target is S.AUTHORIZED and before in PRE_CAPTURE:
        assert plan.ledger == [LedgerAction("authorization_hold", amount=capturable)]
        assert (plan.amount_capturable, plan.row.amount_capturable) == (capturable, capturable)
    elif target in (S.FAILED, S.CANCELED) and before is S.AUTHORIZED:
        assert plan.ledger == [LedgerAction("release_hold")]
    else:
        assert plan.ledger == []


# ----------------------------------------------------------------------------- captured_parts


def make_split(platform_fee: int, tax: int, amounts: list[int]) -> ComputedSplit:
    parts = [SplitPart(f"acct_{index}", amount) for index, amount in enumerate(amounts)]
    return ComputedSplit(
        total=platform_fee + tax + sum(amounts), currency="USD", platform_fee=platform_fee, tax=tax, parts=parts
    )


def ledger_split(split: ComputedSplit) -> CaptureSplit:
    return CaptureSplit(
        total=split.total,
        currency=split.currency,
        platform_fee=split.platform_fee,
        tax=split.tax,
        recipients=tuple((part.account_id, part.amount) for part in split.parts),
    )


def test_full_capture_returns_the_split_unchanged() -> None:
    split = make_split(1_000, 800, [4_567, 3_633])
    assert captured_parts(split, split.total) == [("acct_0", 4_567), ("acct_1", 3_633)]


@pytest.mark.parametrize(
    ("platform_fee", "tax", "amounts", "captured", "expected"),
    [
        # fee 500.1, a 2250.45, b 2250.45: the missing unit goes to the larger remainder, a before b.
        (1_000, 0, [4_500, 4_500], 5_001, [2_251, 2_250]),
        # A tie between fee and recipient: the earlier part (the fee) gets the unit.
        (1, 0, [1], 1, [0]),
        # Three equal recipients, two units: the first two get them.
        (0, 0, [1, 1, 1], 2, [1, 1, 0]),
        (1_000, 800, [4_567, 3_633], 5_000, [2_284, 1_816]),
        (0, 0, [9_999], 1, [1]),
        (100, 100, [0, 800], 500, [0, 400]),
        (1_000, 0, [4_500, 4_500], 0, [0, 0]),
    ],
)
def test_partial_capture_examples(
    platform_fee: int, tax: int, amounts: list[int], captured: int, expected: list[int]
) -> None:
    split = make_split(platform_fee, tax, amounts)
    assert captured_parts(split, captured) == [(f"acct_{index}", amount) for index, amount in enumerate(expected)]
    scaled = scale_split(ledger_split(split), captured)
    assert list(scaled.recipients) == captured_parts(split, captured)
    assert scaled.platform_fee + scaled.tax + sum(expected) == captured


@st.composite
def split_and_capture(draw: st.DrawFn) -> tuple[ComputedSplit, int]:
    big = draw(st.sampled_from([100, 10**6, 10**12]))
    part = st.integers(min_value=0, max_value=big)
    platform_fee, tax = draw(part), draw(part)
    amounts = draw(st.lists(part, min_size=1, max_size=6))
    split = make_split(platform_fee, tax, amounts)
    if split.total == 0:
        split = make_split(platform_fee, tax, [*amounts[:-1], 1])
    captured = draw(st.integers(min_value=1, max_value=split.total))
    return split, captured


@settings(max_examples=500, deadline=None)
@given(split_and_capture())
def test_captured_parts_agree_with_the_ledger(case: tuple[ComputedSplit, int]) -> None:
    split, captured = case
    parts = captured_parts(split, captured)
    scaled = scale_split(ledger_split(split), captured)
    assert parts == list(scaled.recipients)
    assert scaled.platform_fee + scaled.tax + sum(amount for _, amount in parts) == captured
    assert [account for account, _ in parts] == [part.account_id for part in split.parts]
    for (_, amount), part in zip(parts, split.parts, strict=True):
        exact_floor, remainder = divmod(part.amount * captured, split.total)
        assert amount in (exact_floor, exact_floor + (remainder > 0))
        assert 0 <= amount <= part.amount
    if captured == split.total:
        assert parts == [(part.account_id, part.amount) for part in split.parts]


# ----------------------------------------------------------------------------- settlement_net


def test_settlement_net_counts_only_transfers_made() -> None:
    transfers = [
        TransferRecord("acct_a", 4_000, "tr_1", TRANSFER_SUCCEEDED, 1, "", True),
        TransferRecord("acct_b", 3_000, None, TRANSFER_PENDING),
        TransferRecord("acct_c", 500, None, TRANSFER_FAILED, 2, "boom"),
        TransferRecord("acct_d", 200, None, TRANSFER_IN_REVIEW, 8, "boom"),
        TransferRecord("acct_e", 100, "tr_2", TRANSFER_SUCCEEDED, 1),
    ]
    state = make_state(S.CAPTURED, amount_captured=10_000, stripe_fee=320, transfers=transfers)
    assert settlement_net(state) == 10_000 - 320 - 4_000 - 100


def test_settlement_net_counts_a_destination_charge() -> None:
    transfers = [TransferRecord("acct_a", 9_000, "destination_charge", TRANSFER_SUCCEEDED, 1, "", True)]
    state = make_state(S.CAPTURED, amount_captured=10_000, stripe_fee=320, transfers=transfers)
    assert settlement_net(state) == 680


@pytest.mark.parametrize(
    ("captured", "fee", "net"),
    [(10_000, 320, 9_680), (10_000, 0, 10_000), (0, 0, 0), (0, 30, -30)],
)
def test_settlement_net_without_transfers(captured: int, fee: int, net: int) -> None:
    assert settlement_net(make_state(S.CAPTURED, amount_captured=captured, stripe_fee=fee)) == net


@settings(max_examples=200, deadline=None)
@given(
    captured=st.integers(min_value=0, max_value=10**12),
    fee=st.integers(min_value=0, max_value=10**6),
    records=st.lists(
        st.tuples(st.integers(min_value=0, max_value=10**9), st.sampled_from([None, "tr_x", "destination_charge"])),
        max_size=6,
    ),
)
def test_settlement_net_property(captured: int, fee: int, records: list[tuple[int, str | None]]) -> None:
    transfers = [
        TransferRecord(f"acct_{index}", amount, transfer_id) for index, (amount, transfer_id) in enumerate(records)
    ]
    state = make_state(S.SETTLED, amount_captured=captured, stripe_fee=fee, transfers=transfers)
    made = sum(amount for amount, transfer_id in records if transfer_id is not None)
    assert settlement_net(state) == captured - fee - made


# ----------------------------------------------------------------------------- failure classification


@pytest.mark.parametrize(
    ("error_type", "ambiguous", "new_key"),
    [
        (CARD_DECLINED, False, False),
        (STRIPE_REQUEST_REFUSED, False, False),
        (STRIPE_SERVER_ERROR, True, True),
        ("RuntimeError", True, False),
        (None, True, False),
    ],
)
def test_failure_classification(error_type: str | None, ambiguous: bool, new_key: bool) -> None:
    assert is_ambiguous(error_type) is ambiguous
    assert key_must_change(error_type) is new_key


def test_error_type_names() -> None:
    assert (CARD_DECLINED, STRIPE_REQUEST_REFUSED, STRIPE_SERVER_ERROR) == (
        "CardDeclined",
        "StripeRequestRefused",
        "StripeServerError",
    )


# ------------------------------------------------------------------ stale intent events (no lookup)


@pytest.mark.parametrize("status", sorted(INTENT_LOOKUP_STATES))
@pytest.mark.parametrize("event_status", [*KNOWN_INTENT_STATUSES, "requires_confirmation", None])
def test_before_the_charge_and_in_question_an_intent_event_is_always_looked_up(
    status: S, event_status: str | None
) -> None:
    assert stale_intent_event(status, event_status, unclaimed_too=True) is None
    assert stale_intent_event(status, event_status, unclaimed_too=False) is None


def test_a_status_the_machine_refuses_is_stale_past_the_charge() -> None:
    assert stale_intent_event(S.CAPTURED, "succeeded", unclaimed_too=False) == (
        "stale: payment already CAPTURED (event says succeeded)"
    )
    assert stale_intent_event(S.SETTLED, "processing", unclaimed_too=False) == (
        "stale: payment already SETTLED (event says processing)"
    )
    # A capture of an authorised payment is a move the machine allows: ask Stripe.
    assert stale_intent_event(S.AUTHORIZED, "succeeded", unclaimed_too=False) is None


def test_an_event_claiming_no_status_is_stale_only_since_the_patch() -> None:
    assert stale_intent_event(S.CAPTURED, "requires_confirmation", unclaimed_too=False) is None
    assert stale_intent_event(S.CAPTURED, "requires_confirmation", unclaimed_too=True) == (
        "claims no status Penny acts on (requires_confirmation): payment already CAPTURED"
    )


@pytest.mark.parametrize(
    ("event_type", "event_status", "claims_nothing"),
    [
        ("payment_intent.created", "requires_confirmation", True),
        ("payment_intent.created", None, True),
        ("payment_intent.created", "some_future_status", True),
        # As created without a payment method: claims a decline, so the workflow still sees it.
        ("payment_intent.created", "requires_payment_method", False),
        ("payment_intent.created", "succeeded", False),
        ("payment_intent.created", "requires_action", False),
        # Other intent events carry progress even when their status is unclaimed.
        ("payment_intent.succeeded", "requires_confirmation", False),
        ("payment_intent.payment_failed", "requires_payment_method", False),
        ("payment_intent.canceled", None, False),
    ],
)
def test_only_an_intent_created_event_claiming_no_status_is_left_out(
    event_type: str, event_status: str | None, claims_nothing: bool
) -> None:
    assert intent_created_claims_nothing(event_type, event_status) is claims_nothing


@pytest.mark.parametrize(
    ("event_type", "object_type", "payment_id", "not_pennys"),
    [
        ("transfer.created", "transfer", None, True),  # a destination charge's transfer
        ("transfer.created", "transfer", "", True),
        ("transfer.reversed", "transfer", None, True),
        ("transfer.created", "transfer", "pay_abc", False),  # made by StripeActivities.create_transfer
        ("transfer.updated", "transfer", "pay_abc", False),
        ("transfer.created", "reversal", None, False),
        ("payment_intent.succeeded", "payment_intent", None, False),
    ],
)
def test_only_transfers_without_pennys_payment_id_are_left_out(
    event_type: str, object_type: str, payment_id: str | None, not_pennys: bool
) -> None:
    assert transfer_not_made_by_penny(event_type, object_type, payment_id) is not_pennys
