"""Refunds, and the asynchronous refund failure of Stripe's pm_card_refundFail.

A card refund is `succeeded` when it is created: its amount leaves the balance (a `refund`
balance transaction) and counts in the charge's `amount_refunded`; Stripe sends
`refund.created` and `charge.refunded`. A refund of a pm_card_refundFail charge then fails
`refund_failure_delay_seconds` later on the emulator clock, as Stripe's test card does ("the
refund will appear to be successful at first and will only have the failed status on
subsequent fetches"): status `failed`, `failure_reason` expired_or_canceled_card, and a
`failure_balance_transaction` (type `refund_failure`) giving the amount back. The charge's
`amount_refunded` goes back down. Stripe sends `refund.updated`, `refund.failed` and
`charge.refund.updated` (its event reference lists all three; its test card page names
`charge.refund.updated`). The control hook `POST /_emulator/refunds/{refund}/fail` fails any
succeeded refund the same way (and answers a refund that already failed for the same reason
with the refund, unchanged).

Key presence follows Stripe's Refund schema: `failure_reason` and `failure_balance_transaction`
appear only on a failed refund; `description`, `instructions_email`, `next_action`,
`pending_reason` and `presentment_details` never appear on a card refund.
"""

from __future__ import annotations

from typing import Any

from stripe_emulator import _forms as forms
from stripe_emulator._disputes import dispute_of_charge, update_refundable
from stripe_emulator._errors import invalid_request, unexpected_state
from stripe_emulator._money import add_balance_transaction, reverse_transfer
from stripe_emulator._payments import card_of
from stripe_emulator._router import Call, route
from stripe_emulator._state import State

REFUND_REASONS = ("duplicate", "fraudulent", "requested_by_customer")
# Stripe's Refund.failure_reason values.
REFUND_FAILURE_REASONS = (
    "lost_or_stolen_card",
    "expired_or_canceled_card",
    "charge_for_pending_refund_disputed",
    "insufficient_funds",
    "declined",
    "merchant_request",
    "unknown",
)
REFUND_FAIL_CARD_REASON = "expired_or_canceled_card"
FAILABLE_STATUSES = ("succeeded", "pending")
REFUND_CREATE_PARAMS = (
    "payment_intent",
    "charge",
    "amount",
    "reason",
    "metadata",
    "reverse_transfer",
    "refund_application_fee",
    "instructions_email",
    "origin",
)


def _charge_to_refund(state: State, params: dict[str, Any]) -> dict[str, Any]:
    intent_id, charge_id = params.get("payment_intent"), params.get("charge")
    if not intent_id and not charge_id:
        raise invalid_request(
            "One of the following params should be provided for this request: payment_intent or charge."
        )
    if intent_id:
        intent = state.get("payment_intent", intent_id, "payment_intent")
        if intent["status"] != "succeeded":
            raise unexpected_state(
                f"This PaymentIntent ({intent['id']}) does not have a successful charge to refund.",
                param="payment_intent",
            )
        charge = state.objects[intent["latest_charge"]]
        if charge_id and charge_id != charge["id"]:
            raise invalid_request("The charge does not belong to this PaymentIntent.", param="charge")
        return charge
    charge = state.get("charge", charge_id, "charge")
    if not charge["captured"] or charge["status"] != "succeeded":
        raise unexpected_state(
            f"Charge {charge['id']} is not captured and cannot be refunded.", code=None, param="charge"
        )
    return charge


@route("POST", "/v1/refunds", REFUND_CREATE_PARAMS)
def create_refund(call: Call) -> dict[str, Any]:
    state, params = call.state, call.params
    amount = forms.integer(params, "amount", minimum=1)
    reason = forms.choice(params, "reason", REFUND_REASONS)
    metadata = forms.metadata(params)
    reverse = forms.boolean(params, "reverse_transfer")
    refund_fee = forms.boolean(params, "refund_application_fee")
    charge = _charge_to_refund(state, params)
    remaining = charge["amount_captured"] - charge["amount_refunded"]
    dispute = dispute_of_charge(state, charge["id"])
    # A chargeback took the money already; an inquiry leaves the charge refundable (Stripe's
    # `is_charge_refundable`).
    if dispute is not None and not dispute["is_charge_refundable"]:
        raise unexpected_state(
            f"Charge {charge['id']} has been charged back; cannot issue a refund.", code="charge_disputed"
        )
    if remaining <= 0:
        raise unexpected_state(f"Charge {charge['id']} has already been refunded.", code="charge_already_refunded")
    amount = remaining if amount is None else amount
    if amount > remaining:
        raise unexpected_state(
            f"Refund amount ({amount}) is greater than unrefunded amount on charge ({remaining})",
            code="amount_too_large",
            param="amount",
        )
    if reverse and charge.get("transfer") is None:
        raise invalid_request(
            "You cannot reverse a transfer on a charge that has no transfer.", param="reverse_transfer"
        )
    return _refund(call, charge, amount, reason, metadata, reverse, refund_fee)


def _refund(
    call: Call,
    charge: dict[str, Any],
    amount: int,
    reason: str | None,
    metadata: dict[str, str],
    reverse: bool,
    refund_fee: bool,
) -> dict[str, Any]:
    state = call.state
    refund_id = state.new_id("re")
    transaction = add_balance_transaction(
        state, amount=-amount, currency=charge["currency"], transaction_type="refund", source=refund_id
    )
    refund = {
        "id": refund_id,
        "object": "refund",
        "amount": amount,
        "balance_transaction": transaction["id"],
        "charge": charge["id"],
        "created": state.now(),
        "currency": charge["currency"],
        "customer": charge["customer"],
        "customer_account": None,
        "destination_details": {
            "card": {"reference_status": "pending", "reference_type": "acquirer_reference_number", "type": "refund"},
            "type": "card",
        },
        "metadata": metadata,
        "payment_intent": charge["payment_intent"],
        "payment_method": charge["payment_method"],
        "reason": reason,
        "receipt_number": None,
        "source_transfer_reversal": None,
        "status": "succeeded",
        "transfer_reversal": None,
    }
    state.add(refund)
    if reverse:
        transfer = state.objects[charge["transfer"]]
        # Proportional to the share of the charge refunded, floored so reversals never exceed the transfer.
        reversal_amount = min(
            transfer["amount"] * amount // charge["amount_captured"], transfer["amount"] - transfer["amount_reversed"]
        )
        if reversal_amount > 0:
            reversal = reverse_transfer(state, transfer, reversal_amount, {}, refund_id, call.request)
            refund["transfer_reversal"] = reversal["id"]
    if refund_fee and charge["application_fee"]:
        _refund_application_fee(state, charge, amount)
    previous = {"amount_refunded": charge["amount_refunded"], "refunded": charge["refunded"]}
    charge["amount_refunded"] += amount
    charge["refunded"] = charge["amount_refunded"] == charge["amount_captured"]
    assert charge["amount_refunded"] <= charge["amount_captured"]
    update_refundable(state, charge)
    state.emit("refund.created", refund, call.request)
    state.emit("charge.refunded", charge, call.request, previous_attributes=previous)
    if card_of(state, charge["payment_method"]).outcome == "refund_fail":
        state.schedule(state.now_float() + state.config.refund_failure_delay_seconds, "refund_fail", refund_id)
    return refund


def _refund_application_fee(state: State, charge: dict[str, Any], refunded: int) -> None:
    fee = state.objects[charge["application_fee"]]
    share = min(fee["amount"] * refunded // charge["amount_captured"], fee["amount"] - fee["amount_refunded"])
    if share <= 0:
        return
    fee_refund_id = state.new_id("fr")
    transaction = add_balance_transaction(
        state, amount=-share, currency=fee["currency"], transaction_type="application_fee_refund", source=fee_refund_id
    )
    state.add({
        "id": fee_refund_id, "object": "fee_refund", "amount": share, "balance_transaction": transaction["id"],
        "created": state.now(), "currency": fee["currency"], "fee": fee["id"], "metadata": {},
    })  # fmt: skip
    fee["amount_refunded"] += share
    fee["refunded"] = fee["amount_refunded"] == fee["amount"]


# --------------------------------------------------------------------------- refund failures


def fail_refund(state: State, refund_id: str, failure_reason: str) -> dict[str, Any]:
    """The card network returns a refund: the amount comes back to the balance and off the charge.

    What the refund moved elsewhere stays moved: a transfer reversal or an application fee
    refund made with it is not undone (Stripe documents no such unwinding), so after a failed
    refund of a destination charge the platform holds both the refund amount and the reversal.
    """
    refund = state.get("refund", refund_id, "refund")
    if failure_reason not in REFUND_FAILURE_REASONS:
        raise invalid_request(
            f"failure_reason must be one of {', '.join(REFUND_FAILURE_REASONS)}", param="failure_reason"
        )
    if refund["status"] == "failed":
        # Failing a failed refund the same way again changes nothing: a test that fails a
        # pm_card_refundFail refund by hand may find that the clock got there first.
        if refund["failure_reason"] == failure_reason:
            return refund
        raise unexpected_state(
            f"Refund {refund_id} already failed ({refund['failure_reason']}); it cannot fail again as "
            f"{failure_reason}.",
            code=None,
        )
    if refund["status"] not in FAILABLE_STATUSES:
        raise unexpected_state(
            f"Refund {refund_id} has status {refund['status']}; only a succeeded or pending refund can fail.",
            code=None,
        )
    charge = state.objects[refund["charge"]]
    transaction = add_balance_transaction(
        state, amount=refund["amount"], currency=refund["currency"], transaction_type="refund_failure",
        source=refund_id, description=f"Refund failure for {refund_id}",
    )  # fmt: skip
    previous = {"status": refund["status"]}
    refund.update(status="failed", failure_balance_transaction=transaction["id"], failure_reason=failure_reason)
    charge["amount_refunded"] -= refund["amount"]
    charge["refunded"] = charge["amount_refunded"] == charge["amount_captured"]
    assert 0 <= charge["amount_refunded"] < charge["amount_captured"], (charge["id"], charge["amount_refunded"])
    update_refundable(state, charge)
    state.dirty = True
    state.emit("refund.updated", refund, previous_attributes=previous)
    state.emit("refund.failed", refund)
    state.emit("charge.refund.updated", refund, previous_attributes=previous)
    return refund


def fail_refund_when_due(state: State, refund_id: str) -> None:
    """Due work for pm_card_refundFail: the refund fails unless it already did (the control hook)."""
    refund = state.find(refund_id)
    if refund is None or refund["status"] not in FAILABLE_STATUSES:
        return
    fail_refund(state, refund_id, REFUND_FAIL_CARD_REASON)


# --------------------------------------------------------------------------- retrieve, update, list


@route("GET", "/v1/refunds/{refund}")
def retrieve_refund(call: Call) -> dict[str, Any]:
    return call.state.get("refund", call.path["refund"], "refund")


@route("POST", "/v1/refunds/{refund}", ("metadata",))
def update_refund(call: Call) -> dict[str, Any]:
    refund = call.state.get("refund", call.path["refund"], "refund")
    metadata = forms.metadata(call.params, refund["metadata"])
    if metadata != refund["metadata"]:
        previous = {"metadata": forms.metadata_previous(refund["metadata"], metadata)}
        refund["metadata"] = metadata
        call.state.emit("refund.updated", refund, call.request, previous_attributes=previous)
    call.state.dirty = True
    return refund


@route("GET", "/v1/refunds", ("charge", "payment_intent", "created", "limit", "starting_after", "ending_before"))
def list_refunds(call: Call) -> dict[str, Any]:
    filters = {name: call.params[name] for name in ("charge", "payment_intent") if call.params.get(name)}
    predicate = (lambda refund: all(refund[name] == value for name, value in filters.items())) if filters else None
    return call.state.list_object("refund", call.params, "/v1/refunds", predicate)
