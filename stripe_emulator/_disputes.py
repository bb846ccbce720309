"""Disputes: chargebacks (pm_card_createDispute) and inquiries (pm_card_createDisputeInquiry).

Life cycles, as Stripe documents them:
- chargeback: needs_response → (evidence submitted) under_review → won | lost. The disputed
  amount and the dispute fee are withdrawn when it opens (`charge.dispute.funds_withdrawn`);
  a won dispute gives the amount back (`charge.dispute.funds_reinstated`).
- inquiry: warning_needs_response → (evidence submitted) warning_under_review → warning_closed.
  "Unlike a formal dispute, no funds have been withdrawn and the payment it relates to can
  still be refunded" (stripe.com/docs/disputes, "Inquiries and retrievals"): no balance
  transaction, no funds events, `is_charge_refundable` true.

Every closing sends `charge.dispute.closed` ("when the dispute status changes to lost,
warning_closed, or won", Stripe's event reference). An inquiry escalating to a chargeback is
not modelled: Stripe's documentation says it can happen but not how the Dispute object shows it.
"""

from __future__ import annotations

from typing import Any

from stripe_emulator import _forms as forms
from stripe_emulator._errors import invalid_request, unexpected_state
from stripe_emulator._money import add_balance_transaction
from stripe_emulator._payments import card_of
from stripe_emulator._router import Call, route
from stripe_emulator._state import State, copy_json

CHARGEBACK_OPEN_STATUSES = ("needs_response", "under_review")
INQUIRY_OPEN_STATUSES = ("warning_needs_response", "warning_under_review")
CLOSED_STATUSES = ("won", "lost", "warning_closed")
# What the control hook accepts: a chargeback is won or lost, an inquiry closes as warning_closed.
CLOSE_OUTCOMES = ("won", "lost", "warning_closed")
RESPONSE_WINDOW_SECONDS = 7 * 86_400
# Visa's reason code for card-absent fraud, which is what the dispute test cards report.
VISA_FRAUD_REASON_CODE = "10.4"
EVIDENCE_TEXT_FIELDS = (
    "access_activity_log", "billing_address", "cancellation_policy", "cancellation_policy_disclosure",
    "cancellation_rebuttal", "customer_communication", "customer_email_address", "customer_name",
    "customer_purchase_ip", "customer_signature", "duplicate_charge_documentation", "duplicate_charge_explanation",
    "duplicate_charge_id", "product_description", "receipt", "refund_policy", "refund_policy_disclosure",
    "refund_refusal_explanation", "service_date", "service_documentation", "shipping_address", "shipping_carrier",
    "shipping_date", "shipping_documentation", "shipping_tracking_number", "uncategorized_file",
    "uncategorized_text",
)  # fmt: skip


def dispute_of_charge(state: State, charge_id: str) -> dict[str, Any] | None:
    dispute_id = state.private.get(charge_id, {}).get("dispute")
    return None if dispute_id is None else state.objects[dispute_id]


def is_inquiry(dispute: dict[str, Any]) -> bool:
    return bool(dispute["payment_method_details"]["card"]["case_type"] == "inquiry")


def update_refundable(state: State, charge: dict[str, Any]) -> None:
    """An inquiry leaves its charge refundable while some of it is unrefunded; a chargeback never does."""
    dispute = dispute_of_charge(state, charge["id"])
    if dispute is None or not is_inquiry(dispute):
        return
    dispute["is_charge_refundable"] = charge["amount_captured"] > charge["amount_refunded"]
    state.dirty = True


def _empty_evidence() -> dict[str, Any]:
    evidence: dict[str, Any] = dict.fromkeys(EVIDENCE_TEXT_FIELDS)
    evidence["enhanced_evidence"] = {}
    return dict(sorted(evidence.items()))


def create_dispute(state: State, charge_id: str) -> None:
    """Due work for the dispute test cards: the cardholder's bank opens a chargeback or an inquiry."""
    charge = state.find(charge_id)
    if charge is None or charge["disputed"]:
        return
    amount = charge["amount_captured"] - charge["amount_refunded"]
    if amount <= 0:
        return
    card = card_of(state, charge["payment_method"])
    inquiry = card.outcome == "inquiry"
    dispute_id = state.new_id("dp")
    balance_transactions: list[dict[str, Any]] = []
    if not inquiry:
        transaction = add_balance_transaction(
            state, amount=-amount, currency=charge["currency"], transaction_type="adjustment", source=dispute_id,
            fee=state.config.dispute_fee_minor, fee_description="Dispute fee",
            description=f"Chargeback withdrawal for {charge_id}", reporting_category="dispute",
        )  # fmt: skip
        balance_transactions.append(copy_json(transaction))
    now = state.now()
    dispute = {
        "id": dispute_id,
        "object": "dispute",
        "amount": amount,
        "balance_transactions": balance_transactions,
        "charge": charge_id,
        "created": now,
        "currency": charge["currency"],
        "enhanced_eligibility_types": [],
        "evidence": _empty_evidence(),
        "evidence_details": {
            "due_by": now + RESPONSE_WINDOW_SECONDS,
            "enhanced_eligibility": {},
            "has_evidence": False,
            "past_due": False,
            "submission_count": 0,
        },
        "is_charge_refundable": inquiry,
        "livemode": False,
        "metadata": {},
        "payment_intent": charge["payment_intent"],
        "payment_method_details": {
            "card": {
                "brand": card.brand,
                "case_type": "inquiry" if inquiry else "chargeback",
                "network": card.brand,
                "network_reason_code": VISA_FRAUD_REASON_CODE if card.brand == "visa" and not inquiry else None,
            },
            "type": "card",
        },
        "reason": "fraudulent",
        "status": "warning_needs_response" if inquiry else "needs_response",
    }
    state.add(dispute)
    charge["disputed"] = True
    state.private_of(charge_id)["dispute"] = dispute_id
    state.emit("charge.dispute.created", dispute)
    if not inquiry:
        state.emit("charge.dispute.funds_withdrawn", dispute)


def _check_outcome(dispute: dict[str, Any], outcome: str) -> None:
    status = dispute["status"]
    if outcome not in CLOSE_OUTCOMES:
        raise invalid_request(f"outcome must be one of {', '.join(CLOSE_OUTCOMES)}", param="outcome")
    if status in CLOSED_STATUSES:
        raise unexpected_state(f"Dispute {dispute['id']} is already closed ({status}).", code=None)
    assert status in CHARGEBACK_OPEN_STATUSES or status in INQUIRY_OPEN_STATUSES, (dispute["id"], status)
    if status in INQUIRY_OPEN_STATUSES and outcome != "warning_closed":
        raise invalid_request(
            f"Dispute {dispute['id']} is an inquiry ({status}): it withdrew no funds, so it cannot be {outcome}. "
            "Close it as warning_closed.",
            param="outcome",
        )
    if status in CHARGEBACK_OPEN_STATUSES and outcome == "warning_closed":
        raise invalid_request(
            f"Dispute {dispute['id']} is a chargeback ({status}): warning_closed closes inquiries only. "
            "Close it as won or lost.",
            param="outcome",
        )


def close_dispute(state: State, dispute_id: str, outcome: str) -> dict[str, Any]:
    """Test hook: the card network decides a chargeback (won, lost) or closes an inquiry (warning_closed).

    Money, as Stripe moves it for a US account:
    - won: the disputed amount comes back (an `adjustment`, reporting category
      `dispute_reversal`, with `charge.dispute.funds_reinstated`). The dispute fee withdrawn
      with the chargeback is NOT returned. Stripe's dispute pages say "If the dispute is found
      in your favor, the disputed amount and the dispute countered fee is returned to you": the
      dispute received fee is kept (https://support.stripe.com/topics/disputes). Stripe's older
      documentation returned the fee too; Penny's ledger (`dispute_won`) books the current rule.
      The separate countered fee, charged when evidence is submitted and returned on a win, is
      not modelled: a won dispute nets the same either way, a lost one after evidence costs
      that fee less here than at Stripe.
    - lost: nothing more moves; the amount and the fee stay withdrawn.
    - warning_closed: the inquiry ends without a chargeback. It never moved money; nothing moves.
    """
    dispute = state.get("dispute", dispute_id, "dispute")
    _check_outcome(dispute, outcome)
    previous = {"status": dispute["status"]}
    dispute["status"] = outcome
    if outcome == "won":
        transaction = add_balance_transaction(
            state, amount=dispute["amount"], currency=dispute["currency"], transaction_type="adjustment",
            source=dispute_id, description=f"Chargeback reversal for {dispute['charge']}",
            reporting_category="dispute_reversal",
        )  # fmt: skip
        dispute["balance_transactions"].append(copy_json(transaction))
        state.emit("charge.dispute.funds_reinstated", dispute)
    assert outcome != "warning_closed" or dispute["balance_transactions"] == [], dispute_id
    state.dirty = True
    state.emit("charge.dispute.closed", dispute, previous_attributes=previous)
    return dispute


@route("GET", "/v1/disputes/{dispute}")
def retrieve_dispute(call: Call) -> dict[str, Any]:
    return call.state.get("dispute", call.path["dispute"], "dispute")


def _evidence(call: Call) -> dict[str, Any]:
    evidence = call.params.get("evidence")
    if evidence is None or evidence == "":
        return {}
    if not isinstance(evidence, dict):
        raise invalid_request("Invalid hash", param="evidence")
    for name, value in evidence.items():
        if name == "enhanced_evidence":
            continue
        if name not in EVIDENCE_TEXT_FIELDS and call.strict:
            raise forms.unknown_parameter(f"evidence[{name}]")
        if not isinstance(value, str):
            raise invalid_request(f"Invalid string: {value!r}", param=f"evidence[{name}]")
    return evidence


@route("POST", "/v1/disputes/{dispute}", ("metadata", "evidence", "submit"))
def update_dispute(call: Call) -> dict[str, Any]:
    """Stage or submit evidence: a submitted chargeback is under_review, a submitted inquiry warning_under_review."""
    dispute = call.state.get("dispute", call.path["dispute"], "dispute")
    metadata = forms.metadata(call.params, dispute["metadata"])
    evidence = _evidence(call)
    submit = forms.boolean(call.params, "submit", default=True)
    status = dispute["status"]
    awaiting = status in ("needs_response", "warning_needs_response")
    if evidence and not awaiting:
        raise unexpected_state(
            f"Dispute {dispute['id']} is {status}: evidence can only be changed while it needs a response.", code=None
        )
    previous: dict[str, Any] = {}
    if metadata != dispute["metadata"]:
        previous["metadata"] = forms.metadata_previous(dispute["metadata"], metadata)
        dispute["metadata"] = metadata
    if evidence:
        changed = {name: copy_json(dispute["evidence"].get(name)) for name in sorted(evidence)}
        previous["evidence"] = {name: value for name, value in changed.items() if value != evidence[name]}
        dispute["evidence"].update(evidence)
        dispute["evidence_details"]["has_evidence"] = True
    # Evidence staged earlier (submit=false) goes to the bank only when a request asks for it.
    submitting = submit and (bool(evidence) or "submit" in call.params)
    if submitting and awaiting and dispute["evidence_details"]["has_evidence"]:
        previous["status"] = status
        dispute["status"] = "warning_under_review" if status == "warning_needs_response" else "under_review"
        dispute["evidence_details"]["submission_count"] += 1
    call.state.dirty = True
    call.state.emit("charge.dispute.updated", dispute, call.request, previous_attributes=previous)
    return dispute


@route("POST", "/v1/disputes/{dispute}/close", ())
def accept_dispute(call: Call) -> dict[str, Any]:
    """Stripe's "close" accepts the dispute: a chargeback is lost.

    Stripe documents the close only for chargebacks (needs_response → lost). Accepting an
    inquiry closes it as warning_closed here: it withdrew nothing, so it cannot be "lost".
    """
    dispute = call.state.get("dispute", call.path["dispute"], "dispute")
    outcome = "warning_closed" if dispute["status"] in INQUIRY_OPEN_STATUSES else "lost"
    return close_dispute(call.state, dispute["id"], outcome)


@route("GET", "/v1/disputes", ("charge", "payment_intent", "created", "limit", "starting_after", "ending_before"))
def list_disputes(call: Call) -> dict[str, Any]:
    filters = {name: call.params[name] for name in ("charge", "payment_intent") if call.params.get(name)}
    predicate = (lambda dispute: all(dispute[name] == value for name, value in filters.items())) if filters else None
    return call.state.list_object("dispute", call.params, "/v1/disputes", predicate)
