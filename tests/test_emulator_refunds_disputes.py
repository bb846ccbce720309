"""Refund failures, transfer reversals, disputes and inquiries, and the objects' exact shapes, over real HTTP.

One private emulator for the module: these tests move its clock (refund failures and disputes
are due work on the emulator clock), which the shared emulator must not do. Its delays are long
enough that real time never reaches them during a test, so only `advance_clock` makes them
happen, and automatic payouts are pushed out of reach so balances move only as a test says.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import stripe

from stripe_emulator.config import EmulatorConfig
from stripe_emulator.control import EmulatorControlError
from tests.conftest import EMULATOR_TEST_API_KEY, EMULATOR_TEST_CONFIG, RunningEmulator, emulator_stripe_client

REFUND_FAILURE_DELAY_SECONDS = 600
DISPUTE_DELAY_SECONDS = 600
CONFIG = dataclasses.replace(
    EMULATOR_TEST_CONFIG,
    refund_failure_delay_seconds=REFUND_FAILURE_DELAY_SECONDS,
    dispute_delay_seconds=DISPUTE_DELAY_SECONDS,
    # The next automatic payout is decades away: no payout moves the balance under a test.
    payout_interval_seconds=100 * 365 * 86_400,
)
AMOUNT = 10_000
DISPUTE_FEE = CONFIG.dispute_fee_minor
REFUND_KEYS = {
    "id", "object", "amount", "balance_transaction", "charge", "created", "currency", "customer", "customer_account",
    "destination_details", "metadata", "payment_intent", "payment_method", "reason", "receipt_number",
    "source_transfer_reversal", "status", "transfer_reversal",
}  # fmt: skip


def _metadata(stripe_object: Any) -> dict[str, str]:
    return dict(stripe_object.to_dict()["metadata"])


@dataclasses.dataclass
class Emulator:
    running: RunningEmulator
    client: stripe.StripeClient
    http: httpx.Client

    def advance(self, seconds: float) -> None:
        self.running.control.advance_clock(seconds)

    def get(self, path: str) -> dict[str, Any]:
        response = self.http.get(path)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def balance_minor(self) -> int:
        """Available plus pending, in USD: what the account holds, settled or not."""
        balance = self.get("/v1/balance")
        return sum(
            int(entry["amount"]) for entry in [*balance["available"], *balance["pending"]] if entry["currency"] == "usd"
        )

    def event_types(self, object_id: str) -> list[str]:
        """Types of the events about `object_id`, oldest first."""
        events = self.running.control.state(["events"])["events"]
        return [event["type"] for event in events if event["data"]["object"].get("id") == object_id]

    def events(self, object_id: str, event_type: str) -> list[dict[str, Any]]:
        events = self.running.control.state(["events"])["events"]
        return [
            event for event in events if event["data"]["object"].get("id") == object_id and event["type"] == event_type
        ]

    def charge_intent(self, payment_method: str, **extra: Any) -> stripe.PaymentIntent:
        params: dict[str, Any] = {
            "amount": AMOUNT,
            "currency": "usd",
            "payment_method": payment_method,
            "confirm": True,
            "metadata": {"order_id": f"order-{uuid.uuid4().hex[:12]}"},
            **extra,
        }
        intent = self.client.v1.payment_intents.create(params=params)  # type: ignore[arg-type]
        assert intent.status == "succeeded", intent.status
        return intent

    def dispute_of(self, intent: stripe.PaymentIntent) -> dict[str, Any]:
        assert self.client.v1.disputes.list(params={"payment_intent": intent.id}).data == []
        self.advance(DISPUTE_DELAY_SECONDS)
        disputes = self.client.v1.disputes.list(params={"payment_intent": intent.id}).data
        assert len(disputes) == 1
        return self.get(f"/v1/disputes/{disputes[0].id}")


@pytest.fixture(scope="module")
def emulator(emulator_factory: Callable[[EmulatorConfig], RunningEmulator]) -> Iterator[Emulator]:
    running = emulator_factory(CONFIG)
    http = httpx.Client(base_url=running.base_url, headers={"Authorization": f"Bearer {EMULATOR_TEST_API_KEY}"})
    try:
        yield Emulator(running, emulator_stripe_client(running.base_url), http)
    finally:
        http.close()


# ------------------------------------------------------------------ refund failures


def test_refund_fail_card_refund_succeeds_then_fails_and_gives_the_money_back(emulator: Emulator) -> None:
    intent = emulator.charge_intent("pm_card_refundFail")
    charge_id = str(intent.latest_charge)
    card = emulator.get(f"/v1/charges/{charge_id}")["payment_method_details"]["card"]
    assert (card["brand"], card["last4"]) == ("visa", "5126")
    before = emulator.balance_minor()

    refund = emulator.client.v1.refunds.create(
        params={"payment_intent": intent.id, "amount": 4_000, "metadata": {"refund_id": "penny-r1"}}
    )
    assert (refund.status, refund.amount, _metadata(refund)) == ("succeeded", 4_000, {"refund_id": "penny-r1"})
    created = emulator.get(f"/v1/refunds/{refund.id}")
    assert set(created) == REFUND_KEYS
    assert emulator.get(f"/v1/charges/{charge_id}")["amount_refunded"] == 4_000
    assert emulator.balance_minor() == before - 4_000

    emulator.advance(REFUND_FAILURE_DELAY_SECONDS - 60)
    assert emulator.get(f"/v1/refunds/{refund.id}")["status"] == "succeeded"
    emulator.advance(60)

    failed = emulator.get(f"/v1/refunds/{refund.id}")
    assert set(failed) == REFUND_KEYS | {"failure_balance_transaction", "failure_reason"}
    assert (failed["status"], failed["failure_reason"]) == ("failed", "expired_or_canceled_card")
    transaction = emulator.get(f"/v1/balance_transactions/{failed['failure_balance_transaction']}")
    assert (
        transaction["type"],
        transaction["reporting_category"],
        transaction["amount"],
        transaction["fee"],
        transaction["net"],
        transaction["source"],
        transaction["status"],
    ) == ("refund_failure", "refund_failure", 4_000, 0, 4_000, refund.id, "available")
    charge = emulator.get(f"/v1/charges/{charge_id}")
    assert (charge["amount_refunded"], charge["refunded"]) == (0, False)
    assert emulator.balance_minor() == before
    assert emulator.event_types(refund.id) == [
        "refund.created",
        "refund.updated",
        "refund.failed",
        "charge.refund.updated",
    ]
    (updated,) = emulator.events(refund.id, "refund.updated")
    assert updated["data"]["previous_attributes"] == {"status": "succeeded"}
    assert updated["data"]["object"]["status"] == "failed"
    listed = emulator.client.v1.refunds.list(params={"payment_intent": intent.id}).data
    assert [(item.id, item.status, _metadata(item)) for item in listed] == [
        (refund.id, "failed", {"refund_id": "penny-r1"})
    ]


def test_control_hook_fails_a_succeeded_refund_once(emulator: Emulator) -> None:
    intent = emulator.charge_intent("pm_card_visa")
    charge_id = str(intent.latest_charge)
    refund = emulator.client.v1.refunds.create(params={"payment_intent": intent.id})
    assert emulator.get(f"/v1/charges/{charge_id}")["refunded"] is True
    before = emulator.balance_minor()

    failed = emulator.running.control.fail_refund(refund.id, "lost_or_stolen_card")
    assert (failed["id"], failed["status"], failed["failure_reason"]) == (refund.id, "failed", "lost_or_stolen_card")
    charge = emulator.get(f"/v1/charges/{charge_id}")
    assert (charge["amount_refunded"], charge["refunded"]) == (0, False)
    assert emulator.balance_minor() == before + AMOUNT
    assert emulator.event_types(refund.id)[-3:] == ["refund.updated", "refund.failed", "charge.refund.updated"]

    # Failing it the same way again changes nothing; another way is refused.
    assert emulator.running.control.fail_refund(refund.id, "lost_or_stolen_card") == failed
    assert emulator.event_types(refund.id).count("refund.failed") == 1
    assert emulator.balance_minor() == before + AMOUNT
    with pytest.raises(EmulatorControlError, match=r"already failed \(lost_or_stolen_card\); it cannot fail again"):
        emulator.running.control.fail_refund(refund.id)
    with pytest.raises(EmulatorControlError, match="failure_reason must be one of"):
        emulator.running.control.fail_refund(
            emulator.client.v1.refunds.create(params={"payment_intent": intent.id, "amount": 100}).id, "bored"
        )
    # The charge is refundable again, all but the 100 refunded just above.
    again = emulator.client.v1.refunds.create(params={"payment_intent": intent.id})
    assert (again.status, again.amount) == ("succeeded", AMOUNT - 100)


def test_refund_failed_by_the_hook_does_not_fail_again_when_due(emulator: Emulator) -> None:
    intent = emulator.charge_intent("pm_card_refundFail")
    refund = emulator.client.v1.refunds.create(params={"payment_intent": intent.id})
    emulator.running.control.fail_refund(refund.id, "declined")
    emulator.advance(REFUND_FAILURE_DELAY_SECONDS)
    assert emulator.get(f"/v1/refunds/{refund.id}")["failure_reason"] == "declined"
    failures = emulator.client.v1.balance_transactions.list(params={"type": "refund_failure", "source": refund.id})
    assert [transaction.amount for transaction in failures.data] == [AMOUNT]
    assert emulator.event_types(refund.id).count("refund.failed") == 1


# ------------------------------------------------------------------ transfer reversals


def _transfer(emulator: Emulator, destination: str, amount: int = 700) -> stripe.Transfer:
    return emulator.client.v1.transfers.create(
        params={
            "amount": amount,
            "currency": "usd",
            "destination": destination,
            "transfer_group": f"group-{uuid.uuid4().hex[:8]}",
        }
    )


def test_reversals_keep_metadata_list_newest_first_and_emit_transfer_reversed(emulator: Emulator) -> None:
    account = emulator.client.v1.accounts.create(params={"type": "express"}).id
    transfer = _transfer(emulator, account)
    first = emulator.client.v1.transfers.reversals.create(
        transfer.id, params={"amount": 200, "metadata": {"refund_id": "r-1", "recipient": account}}
    )
    assert (first.amount, first.transfer, _metadata(first)) == (
        200,
        transfer.id,
        {"refund_id": "r-1", "recipient": account},
    )
    second = emulator.client.v1.transfers.reversals.create(
        transfer.id, params={"amount": 300, "metadata": {"refund_id": "r-2"}}
    )
    listed = emulator.client.v1.transfers.reversals.list(transfer.id).data
    assert [(item.id, _metadata(item)) for item in listed] == [
        (second.id, {"refund_id": "r-2"}),
        (first.id, {"refund_id": "r-1", "recipient": account}),
    ]
    retrieved = emulator.client.v1.transfers.reversals.retrieve(transfer.id, first.id)
    assert _metadata(retrieved) == {"refund_id": "r-1", "recipient": account}
    assert set(emulator.get(f"/v1/transfers/{transfer.id}/reversals/{first.id}")) == {
        "id", "object", "amount", "balance_transaction", "created", "currency", "destination_payment_refund",
        "metadata", "source_refund", "transfer",
    }  # fmt: skip
    assert emulator.event_types(transfer.id) == ["transfer.created", "transfer.reversed", "transfer.reversed"]
    reversed_events = emulator.events(transfer.id, "transfer.reversed")
    assert [event["data"]["previous_attributes"] for event in reversed_events] == [
        {"amount_reversed": 0, "reversed": False},
        {"amount_reversed": 200, "reversed": False},
    ]

    with pytest.raises(stripe.InvalidRequestError) as too_much:
        emulator.client.v1.transfers.reversals.create(transfer.id, params={"amount": 201})
    assert (too_much.value.http_status, too_much.value.param) == (400, "amount")
    assert "only has 200 remaining" in str(too_much.value.user_message)
    emulator.client.v1.transfers.reversals.create(transfer.id)
    reversed_transfer = emulator.get(f"/v1/transfers/{transfer.id}")
    assert (reversed_transfer["amount_reversed"], reversed_transfer["reversed"]) == (700, True)
    with pytest.raises(stripe.InvalidRequestError, match="already been fully reversed"):
        emulator.client.v1.transfers.reversals.create(transfer.id, params={"amount": 1})

    emulator.client.v1.transfers.update(transfer.id, params={"metadata": {"note": "paid", "batch": "7"}})
    emulator.client.v1.transfers.update(transfer.id, params={"metadata": {"note": "settled"}})
    emulator.client.v1.transfers.update(transfer.id, params={"metadata": {"note": "settled"}})  # no change, no event
    assert [event["data"]["previous_attributes"] for event in emulator.events(transfer.id, "transfer.updated")] == [
        {"metadata": {"batch": None, "note": None}},
        {"metadata": {"note": "paid"}},
    ]


def test_reversal_refused_while_the_connected_balance_is_insufficient(emulator: Emulator) -> None:
    poor = emulator.client.v1.accounts.create(params={"type": "express"}).id
    other = emulator.client.v1.accounts.create(params={"type": "express"}).id
    transfer = _transfer(emulator, poor)
    assert emulator.running.control.fail_reversals(poor) == {"account": poor, "reversals_fail": True}
    before = emulator.balance_minor()

    with pytest.raises(stripe.InvalidRequestError) as refused:
        emulator.client.v1.transfers.reversals.create(transfer.id, params={"amount": 100, "metadata": {"k": "v"}})
    error = refused.value
    assert (error.http_status, error.code, error.param) == (400, "balance_insufficient", None)
    assert isinstance(error.json_body, dict)
    body = error.json_body["error"]
    assert set(body) == {"code", "doc_url", "message", "type"}
    assert (body["type"], body["doc_url"]) == (
        "invalid_request_error",
        "https://stripe.com/docs/error-codes/balance-insufficient",
    )
    assert body["message"].startswith(f"Insufficient funds in the destination account ({poor}) to reverse")
    assert emulator.get(f"/v1/transfers/{transfer.id}")["amount_reversed"] == 0
    assert emulator.client.v1.transfers.reversals.list(transfer.id).data == []
    assert emulator.balance_minor() == before
    # Other accounts' transfers still reverse.
    assert emulator.client.v1.transfers.reversals.create(_transfer(emulator, other).id).amount == 700

    # A destination charge's transfer is reversible whatever the account holds (Stripe's reference).
    intent = emulator.charge_intent("pm_card_visa", transfer_data={"destination": poor})
    refund = emulator.client.v1.refunds.create(
        params={"payment_intent": intent.id, "amount": 2_500, "reverse_transfer": True}
    )
    assert refund.transfer_reversal is not None

    emulator.running.control.fail_reversals(poor, fail=False)
    assert emulator.client.v1.transfers.reversals.create(transfer.id, params={"amount": 100}).amount == 100
    malformed = httpx.post(f"{emulator.running.base_url}/_emulator/accounts/{poor}/reversals", json={"fail": "yes"})
    assert (malformed.status_code, malformed.json()["error"]["param"]) == (400, "fail")


# ------------------------------------------------------------------ inquiries and chargebacks


def test_inquiry_moves_no_money_and_closes_as_warning_closed(emulator: Emulator) -> None:
    intent = emulator.charge_intent("pm_card_createDisputeInquiry")
    card = emulator.get(f"/v1/charges/{intent.latest_charge}")["payment_method_details"]["card"]
    assert (card["brand"], card["last4"]) == ("visa", "1976")
    before = emulator.balance_minor()

    dispute = emulator.dispute_of(intent)
    assert (
        dispute["status"],
        dispute["amount"],
        dispute["balance_transactions"],
        dispute["is_charge_refundable"],
        dispute["enhanced_eligibility_types"],
        dispute["payment_method_details"],
    ) == (
        "warning_needs_response",
        AMOUNT,
        [],
        True,
        [],
        {
            "card": {"brand": "visa", "case_type": "inquiry", "network": "visa", "network_reason_code": None},
            "type": "card",
        },
    )
    assert emulator.get(f"/v1/charges/{intent.latest_charge}")["disputed"] is True
    assert emulator.balance_minor() == before
    assert emulator.event_types(dispute["id"]) == ["charge.dispute.created"]

    submitted = emulator.client.v1.disputes.update(
        dispute["id"], params={"evidence": {"product_description": "A lamp", "customer_name": "Ada"}}
    )
    assert (submitted.status, submitted.evidence_details.submission_count) == ("warning_under_review", 1)
    assert submitted.evidence.product_description == "A lamp"
    for outcome in ("won", "lost"):
        with pytest.raises(EmulatorControlError, match="is an inquiry") as caught:
            emulator.running.control.close_dispute(dispute["id"], outcome)
        assert " 400 " in str(caught.value)

    closed = emulator.running.control.close_dispute(dispute["id"], "warning_closed")
    assert (closed["status"], closed["balance_transactions"]) == ("warning_closed", [])
    assert emulator.balance_minor() == before
    assert emulator.event_types(dispute["id"]) == [
        "charge.dispute.created",
        "charge.dispute.updated",
        "charge.dispute.closed",
    ]
    (closed_event,) = emulator.events(dispute["id"], "charge.dispute.closed")
    assert closed_event["data"]["previous_attributes"] == {"status": "warning_under_review"}
    with pytest.raises(EmulatorControlError, match="already closed"):
        emulator.running.control.close_dispute(dispute["id"], "warning_closed")


def test_inquiry_leaves_the_charge_refundable(emulator: Emulator) -> None:
    intent = emulator.charge_intent("pm_card_createDisputeInquiry")
    dispute = emulator.dispute_of(intent)
    partial = emulator.client.v1.refunds.create(params={"payment_intent": intent.id, "amount": 3_000})
    assert partial.status == "succeeded"
    assert emulator.get(f"/v1/disputes/{dispute['id']}")["is_charge_refundable"] is True
    emulator.client.v1.refunds.create(params={"payment_intent": intent.id})
    assert emulator.get(f"/v1/disputes/{dispute['id']}")["is_charge_refundable"] is False
    # Accepting an inquiry closes it without money: there was never a chargeback to lose.
    accepted = emulator.client.v1.disputes.close(dispute["id"])
    assert (accepted.status, accepted.balance_transactions) == ("warning_closed", [])


def test_chargeback_won_returns_the_amount_but_keeps_the_fee(emulator: Emulator) -> None:
    intent = emulator.charge_intent("pm_card_createDispute")
    before = emulator.balance_minor()
    dispute = emulator.dispute_of(intent)
    assert (dispute["status"], dispute["is_charge_refundable"], dispute["enhanced_eligibility_types"]) == (
        "needs_response",
        False,
        [],
    )
    assert dispute["payment_method_details"]["card"]["case_type"] == "chargeback"
    (withdrawal,) = dispute["balance_transactions"]
    assert (withdrawal["amount"], withdrawal["fee"], withdrawal["net"], withdrawal["reporting_category"]) == (
        -AMOUNT,
        DISPUTE_FEE,
        -AMOUNT - DISPUTE_FEE,
        "dispute",
    )
    assert withdrawal["fee_details"][0]["description"] == "Dispute fee"
    assert emulator.balance_minor() == before - AMOUNT - DISPUTE_FEE
    with pytest.raises(stripe.InvalidRequestError) as refused:
        emulator.client.v1.refunds.create(params={"payment_intent": intent.id})
    assert refused.value.code == "charge_disputed"
    with pytest.raises(EmulatorControlError, match="is a chargeback"):
        emulator.running.control.close_dispute(dispute["id"], "warning_closed")
    assert emulator.client.v1.disputes.update(dispute["id"], params={"evidence": {"receipt": "r"}}).status == (
        "under_review"
    )

    won = emulator.running.control.close_dispute(dispute["id"], "won")
    assert won["status"] == "won"
    reinstated = won["balance_transactions"][1]
    assert (reinstated["amount"], reinstated["fee"], reinstated["net"], reinstated["reporting_category"]) == (
        AMOUNT,
        0,
        AMOUNT,
        "dispute_reversal",
    )
    assert emulator.balance_minor() == before - DISPUTE_FEE
    assert emulator.event_types(dispute["id"]) == [
        "charge.dispute.created",
        "charge.dispute.funds_withdrawn",
        "charge.dispute.updated",
        "charge.dispute.funds_reinstated",
        "charge.dispute.closed",
    ]


def test_chargeback_lost_keeps_amount_and_fee_withdrawn(emulator: Emulator) -> None:
    intent = emulator.charge_intent("pm_card_createDispute")
    before = emulator.balance_minor()
    dispute = emulator.dispute_of(intent)
    lost = emulator.running.control.close_dispute(dispute["id"], "lost")
    assert (lost["status"], len(lost["balance_transactions"])) == ("lost", 1)
    assert emulator.balance_minor() == before - AMOUNT - DISPUTE_FEE
    assert emulator.event_types(dispute["id"]) == [
        "charge.dispute.created",
        "charge.dispute.funds_withdrawn",
        "charge.dispute.closed",
    ]
    with pytest.raises(EmulatorControlError, match="outcome must be one of won, lost, warning_closed"):
        emulator.running.control.close_dispute(dispute["id"], "draw")


# ------------------------------------------------------------------ object shapes


def test_charge_carries_transfer_only_when_it_made_one(emulator: Emulator) -> None:
    plain = emulator.get(f"/v1/charges/{emulator.charge_intent('pm_card_visa').latest_charge}")
    assert "transfer" not in plain
    assert "destination" not in plain and "dispute" not in plain
    assert {name: plain[name] for name in ("receipt_number", "shipping", "source", "statement_descriptor_suffix")} == {
        "receipt_number": None,
        "shipping": None,
        "source": None,
        "statement_descriptor_suffix": None,
    }
    suffixed = emulator.charge_intent("pm_card_visa", statement_descriptor_suffix="ORDER 7")
    assert emulator.get(f"/v1/charges/{suffixed.latest_charge}")["statement_descriptor_suffix"] == "ORDER 7"
    destination = emulator.client.v1.accounts.create(params={"type": "express"}).id
    marketplace = emulator.get(
        f"/v1/charges/"
        f"{emulator.charge_intent('pm_card_visa', transfer_data={'destination': destination}).latest_charge}"
    )
    assert str(marketplace["transfer"]).startswith("tr_")
    assert emulator.get(f"/v1/transfers/{marketplace['transfer']}")["destination"] == destination


def test_card_decline_error_has_exactly_stripes_keys(emulator: Emulator) -> None:
    response = emulator.http.post(
        "/v1/payment_intents",
        data={"amount": "2000", "currency": "usd", "payment_method": "pm_card_chargeDeclined", "confirm": "true"},
    )
    assert response.status_code == 402
    error = response.json()["error"]
    assert set(error) == {
        "charge", "code", "decline_code", "doc_url", "message", "payment_intent", "payment_method", "type",
    }  # fmt: skip
    assert (error["type"], error["code"], error["decline_code"], error["message"]) == (
        "card_error",
        "card_declined",
        "generic_decline",
        "Your card was declined.",
    )
    assert list(error) == sorted(error)


def test_other_errors_leave_absent_keys_out(emulator: Emulator) -> None:
    missing = emulator.http.get("/v1/refunds/re_doesnotexist")
    assert missing.status_code == 404
    assert missing.json()["error"] == {
        "code": "resource_missing",
        "doc_url": "https://stripe.com/docs/error-codes/resource-missing",
        "message": "No such refund: 're_doesnotexist'",
        "param": "refund",
        "type": "invalid_request_error",
    }
    unauthenticated = httpx.get(f"{emulator.running.base_url}/v1/refunds")
    assert unauthenticated.status_code == 401
    assert set(unauthenticated.json()["error"]) == {"message", "type"}


def test_customer_has_stripes_always_present_fields(emulator: Emulator) -> None:
    customer = emulator.client.v1.customers.create(params={"email": "ada@example.com"})
    plain = emulator.get(f"/v1/customers/{customer.id}")
    assert (plain["default_source"], plain["shipping"], plain["invoice_settings"]) == (
        None,
        None,
        {"custom_fields": None, "default_payment_method": None, "footer": None, "rendering_options": None},
    )


def test_payout_has_stripes_always_present_fields(emulator: Emulator) -> None:
    emulator.charge_intent("pm_card_visa")
    emulator.advance(CONFIG.settlement_delay_seconds + 1)
    payout = emulator.client.v1.payouts.create(params={"amount": 500, "currency": "usd"})
    plain = emulator.get(f"/v1/payouts/{payout.id}")
    assert {
        name: plain[name]
        for name in (
            "application_fee",
            "application_fee_amount",
            "original_payout",
            "payout_method",
            "reversed_by",
            "trace_id",
        )
    } == {
        "application_fee": None,
        "application_fee_amount": None,
        "original_payout": None,
        "payout_method": None,
        "reversed_by": None,
        "trace_id": {"status": "pending", "value": None},
    }
    emulator.advance(CONFIG.payout_arrival_delay_seconds)
    paid = emulator.get(f"/v1/payouts/{payout.id}")
    assert (paid["status"], paid["trace_id"]) == ("paid", {"status": "unsupported", "value": None})
