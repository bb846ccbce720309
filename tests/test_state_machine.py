"""The payment state machine: every (state, event) pair has a defined outcome."""

from __future__ import annotations

import itertools

import pytest

from workflows.state_machine import (
    RANK,
    TERMINAL_STATES,
    TRANSITIONS,
    PaymentEvent,
    PaymentStatus,
    can_transition,
    decide,
)

S = PaymentStatus
E = PaymentEvent


@pytest.mark.parametrize(("state", "event"), list(itertools.product(PaymentStatus, PaymentEvent)))
def test_every_pair_has_a_defined_outcome(state: PaymentStatus, event: PaymentEvent) -> None:
    decision = decide(state, event)
    assert decision.reason
    if decision.allowed:
        assert decision.to_status == TRANSITIONS[(state, event)]
    else:
        assert decision.to_status is None
        assert (state, event) not in TRANSITIONS


def test_failed_never_becomes_captured() -> None:
    assert not can_transition(S.FAILED, S.CAPTURED)
    refused = decide(S.FAILED, E.CAPTURED)
    assert not refused.allowed and "terminal" in refused.reason


def test_refunded_never_becomes_authorized() -> None:
    assert not can_transition(S.REFUNDED, S.AUTHORIZED)
    assert not decide(S.REFUNDED, E.AUTHORIZED).allowed


@pytest.mark.parametrize("terminal", sorted(TERMINAL_STATES))
def test_terminal_states_only_go_to_review(terminal: PaymentStatus) -> None:
    allowed = {event for event in PaymentEvent if decide(terminal, event).allowed}
    assert allowed == {E.REVIEW}


def test_processor_events_only_move_forward() -> None:
    # A late "processing" after the payment was captured is stale, not a step back.
    stale = decide(S.CAPTURED, E.PROCESSING, from_processor=True)
    assert not stale.allowed and "stale" in stale.reason
    # The same event from a pre-capture state moves forward.
    assert decide(S.REQUIRES_ACTION, E.PROCESSING, from_processor=True).allowed
    # Processor events move a payment only along a row of the table, never in place, and only up
    # in rank, except the rows FORWARD_BY_EVENT names.
    backwards_by_rank = set()
    for (state, event), target in TRANSITIONS.items():
        decision = decide(state, event, from_processor=True)
        if decision.allowed and state is not S.NEEDS_REVIEW:
            assert target is not state, (state, event)
            if RANK[target] <= RANK[state]:
                backwards_by_rank.add((state, event))
    assert backwards_by_rank == {
        (S.DISPUTED, E.DISPUTE_WON),  # a won dispute returns the payment to SETTLED
    }
    # Events with no row in the current state are refused, and the late ones say "stale".
    for state in PaymentStatus:
        for event in PaymentEvent:
            if (state, event) not in TRANSITIONS:
                assert not decide(state, event, from_processor=True).allowed, (state, event)


def test_repeated_processor_event_is_stale() -> None:
    assert not decide(S.PROCESSING, E.PROCESSING, from_processor=True).allowed


def test_any_live_state_can_go_to_review_and_an_operator_resolves_it() -> None:
    for state in PaymentStatus:
        if state is not S.NEEDS_REVIEW:
            assert decide(state, E.REVIEW).to_status is S.NEEDS_REVIEW
    assert decide(S.NEEDS_REVIEW, E.RESOLVE_FAILED).to_status is S.FAILED
    assert decide(S.NEEDS_REVIEW, E.RESOLVE_CAPTURED).to_status is S.CAPTURED


def test_capture_and_cancel_from_authorized() -> None:
    assert decide(S.AUTHORIZED, E.CAPTURED).to_status is S.CAPTURED
    assert decide(S.AUTHORIZED, E.CANCELED).to_status is S.CANCELED
    assert not decide(S.CAPTURED, E.CANCELED).allowed


def test_dispute_lifecycle() -> None:
    # Dispute events come from Stripe: decided as the workflow decides them (from_processor=True).
    assert decide(S.SETTLED, E.DISPUTE_OPENED, from_processor=True).to_status is S.DISPUTED
    assert decide(S.DISPUTED, E.DISPUTE_WON, from_processor=True).to_status is S.SETTLED
    assert decide(S.DISPUTED, E.DISPUTE_LOST, from_processor=True).to_status is S.REVERSED
    assert not decide(S.SETTLED, E.DISPUTE_WON, from_processor=True).allowed
    assert not decide(S.AUTHORIZED, E.DISPUTE_OPENED).allowed
