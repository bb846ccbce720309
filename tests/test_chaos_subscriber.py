"""The chaos soak's outbox subscriber and its invariant: the findings function on hand-made
receipts (one pure function), and the subscriber itself over real HTTP."""

from __future__ import annotations

import json

import httpx

from activities.outbox import event_body, signature_header
from penny.chaos_subscriber import (
    SUBSCRIBER_FAILURES_PER_EVENT_MAX,
    OutboxEvent,
    Receipt,
    Subscriber,
    outbox_findings,
)

SECRET = "whsec_chaos_subscriber_test_" + "c" * 12
NOW = 1_790_000_000


def event(outbox_id: int, payment_id: str, status: str = "delivered") -> OutboxEvent:
    return OutboxEvent(outbox_id, payment_id, f"tr_{payment_id}_{outbox_id}", status)


def receipt(sequence: int, of: OutboxEvent, answered: int = 200, secret: str = SECRET, body_id: str = "") -> Receipt:
    body = event_body({"id": body_id or of.event_id, "type": "payment.captured", "payment_id": of.payment_id})
    return Receipt(sequence, of.event_id, signature_header(body, [secret], NOW), body, answered)


def test_every_event_once_signed_and_in_order_is_clean_even_with_refusals_and_copies() -> None:
    first, second, other = event(1, "pay_a"), event(2, "pay_a"), event(3, "pay_b")
    receipts = [
        receipt(0, first, answered=500),
        receipt(1, other),
        receipt(2, first),
        receipt(3, first),  # a relay killed before recording: sent again, deduped by the consumer
        receipt(4, second),
    ]
    assert outbox_findings([first, second, other], receipts, SECRET) == []


def test_an_event_never_accepted_is_found() -> None:
    first, second = event(1, "pay_a"), event(2, "pay_a", status="pending")
    findings = outbox_findings([first, second], [receipt(0, first), receipt(1, second, answered=500)], SECRET)
    assert findings == [
        ("pay_a", f"{second.event_id} (outbox 2) never accepted"),
        ("pay_a", f"{second.event_id}: delivery is pending, not delivered"),
    ]


def test_a_dead_letter_is_found_even_when_the_subscriber_got_it() -> None:
    dead = event(1, "pay_a", status="dead")
    assert outbox_findings([dead], [receipt(0, dead)], SECRET) == [
        ("pay_a", f"{dead.event_id}: delivery is dead, not delivered")
    ]


def test_a_wrong_signature_or_a_body_id_that_is_not_the_header_is_found() -> None:
    forged, mislabelled = event(1, "pay_a"), event(2, "pay_b")
    findings = outbox_findings(
        [forged, mislabelled],
        [receipt(0, forged, secret="whsec_someone_else"), receipt(1, mislabelled, body_id="tr_other")],
        SECRET,
    )
    assert findings == [
        ("pay_a", f"{forged.event_id}: no signature verifies with the endpoint's secret"),
        (
            "pay_b",
            f"{mislabelled.event_id}: body id 'tr_other' is not the Penny-Event-Id header '{mislabelled.event_id}'",
        ),
    ]


def test_events_of_one_payment_arriving_out_of_order_are_found() -> None:
    first, second, third = event(1, "pay_a"), event(2, "pay_a"), event(3, "pay_a")
    findings = outbox_findings(
        [first, second, third], [receipt(0, second), receipt(1, first), receipt(2, third)], SECRET
    )
    assert findings == [
        (
            "pay_a",
            f"arrived out of order: {[second.event_id, first.event_id, third.event_id]} "
            f"(written {[first.event_id, second.event_id, third.event_id]})",
        )
    ]


def test_other_payments_events_are_ignored() -> None:
    mine, stranger = event(1, "pay_a"), event(2, "pay_z")
    assert outbox_findings([mine], [receipt(0, stranger), receipt(1, mine)], SECRET) == []


def test_the_subscriber_refuses_an_event_at_most_its_limit_then_accepts_it() -> None:
    subscriber = Subscriber(seed=7)
    url = subscriber.start()
    try:
        answers: dict[str, list[int]] = {}
        with httpx.Client(timeout=5.0) as http:
            for index in range(60):
                event_id = f"tr_{index}"
                body = json.dumps({"id": event_id}).encode()
                answers[event_id] = []
                while not answers[event_id] or answers[event_id][-1] != 200:
                    response = http.post(url, content=body, headers={"Penny-Event-Id": event_id})
                    answers[event_id].append(response.status_code)
        assert all(codes.count(500) <= SUBSCRIBER_FAILURES_PER_EVENT_MAX for codes in answers.values())
        refused = sum(codes.count(500) for codes in answers.values())
        assert refused >= 1, "a 60-event run with seed 7 refuses some first attempts"
        received = subscriber.snapshot()
        assert len(received) == 60 + refused
        assert [r.sequence for r in received] == list(range(len(received)))
        assert subscriber.counts() == {
            "outbox deliveries refused by subscriber": refused,
            "outbox events redelivered": 0,
        }
    finally:
        subscriber.stop()
