"""PaymentIntents, Charges, PaymentMethods and Customers, with Stripe's test cards.

Refunds live in `_refunds`, disputes in `_disputes`; the test cards here say which charges
those modules fail (pm_card_refundFail) or dispute (pm_card_createDispute, ..Inquiry).

Status machine (as Stripe): requires_payment_method → requires_confirmation → (confirm)
→ requires_action (3DS) → requires_capture (manual) or succeeded; a decline returns the
intent to requires_payment_method with `last_payment_error`; cancel is allowed from every
non-terminal status. Each state change emits the event Stripe emits.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import Any

from stripe_emulator import _forms as forms
from stripe_emulator._errors import StripeError, invalid_request, resource_missing, unexpected_state
from stripe_emulator._money import (
    add_balance_transaction,
    ensure_account,
    mark_destination_charge_transfer,
    new_transfer,
    stripe_fee_minor,
)
from stripe_emulator._router import Call, route
from stripe_emulator._state import LIST_LIMIT_MAX, State, copy_json, list_limit

AMOUNT_MINIMUM_MINOR = 50
AMOUNT_MAXIMUM_MINOR = 99_999_999
CAPTURE_METHODS = ("automatic", "automatic_async", "manual")
CANCELLATION_REASONS = ("duplicate", "fraudulent", "requested_by_customer", "abandoned")
CANCELABLE = ("requires_payment_method", "requires_capture", "requires_confirmation", "requires_action", "processing")
CONFIRMABLE = ("requires_payment_method", "requires_confirmation", "requires_action")
AUTHENTICATION_FAILED_MESSAGE = (
    "The provided PaymentMethod has failed authentication. You can provide payment_method_data or a new "
    "PaymentMethod to attempt to fulfill this PaymentIntent again."
)


@dataclass(frozen=True)
class TestCard:
    brand: str
    last4: str
    # succeed | decline | authenticate | dispute (a chargeback) | inquiry (a dispute that withdraws
    # nothing yet) | refund_fail (the charge succeeds; its refunds fail later)
    outcome: str = "succeed"
    code: str | None = None
    decline_code: str | None = None
    message: str | None = None
    funding: str = "credit"


# Test cards whose charge is disputed `dispute_delay_seconds` after it succeeds.
DISPUTE_OUTCOMES = ("dispute", "inquiry")
_DECLINED = "Your card was declined."
TEST_CARDS: dict[str, TestCard] = {
    "pm_card_visa": TestCard("visa", "4242"),
    "pm_card_visa_debit": TestCard("visa", "5556", funding="debit"),
    "pm_card_mastercard": TestCard("mastercard", "4444"),
    "pm_card_amex": TestCard("amex", "8431"),
    "pm_card_createDispute": TestCard("visa", "0259", outcome="dispute"),
    "pm_card_createDisputeInquiry": TestCard("visa", "1976", outcome="inquiry"),
    "pm_card_refundFail": TestCard("visa", "5126", outcome="refund_fail"),
    "pm_card_authenticationRequired": TestCard("visa", "3184", outcome="authenticate"),
    "pm_card_threeDSecure2Required": TestCard("visa", "3220", outcome="authenticate"),
    "pm_card_chargeDeclined": TestCard("visa", "0002", "decline", "card_declined", "generic_decline", _DECLINED),
    "pm_card_chargeDeclinedInsufficientFunds": TestCard(
        "visa", "9995", "decline", "card_declined", "insufficient_funds", "Your card has insufficient funds."
    ),
    "pm_card_chargeDeclinedFraudulent": TestCard("visa", "0019", "decline", "card_declined", "fraudulent", _DECLINED),
    "pm_card_chargeDeclinedLostCard": TestCard("visa", "9987", "decline", "card_declined", "lost_card", _DECLINED),
    "pm_card_chargeDeclinedStolenCard": TestCard("visa", "9979", "decline", "card_declined", "stolen_card", _DECLINED),
    "pm_card_chargeDeclinedExpiredCard": TestCard(
        "visa", "0069", "decline", "expired_card", "expired_card", "Your card has expired."
    ),
    "pm_card_chargeDeclinedIncorrectCvc": TestCard(
        "visa", "0127", "decline", "incorrect_cvc", "incorrect_cvc", "Your card's security code is incorrect."
    ),
    "pm_card_chargeDeclinedProcessingError": TestCard(
        "visa",
        "0119",
        "decline",
        "processing_error",
        "processing_error",
        "An error occurred while processing your card. Try again in a little bit.",
    ),
}


# --------------------------------------------------------------------------- payment methods


def _card_details(card: TestCard) -> dict[str, Any]:
    return {
        "brand": card.brand,
        "checks": {"address_line1_check": None, "address_postal_code_check": None, "cvc_check": "pass"},
        "country": "US",
        "display_brand": card.brand,
        "exp_month": 12,
        "exp_year": 2034,
        "fingerprint": f"emu{card.brand}{card.last4}",
        "funding": card.funding,
        "last4": card.last4,
        "networks": {"available": [card.brand], "preferred": None},
        "wallet": None,
    }


def resolve_payment_method(state: State, value: str, customer: str | None) -> dict[str, Any]:
    """A test token (pm_card_visa) becomes a new PaymentMethod, as Stripe does; an existing pm_ is reused."""
    card = TEST_CARDS.get(value)
    if card is None:
        existing = state.find(value)
        if existing is not None and existing["object"] == "payment_method":
            return existing
        raise resource_missing("PaymentMethod", value, param="payment_method")
    method: dict[str, Any] = {
        "id": state.new_id("pm"),
        "object": "payment_method",
        "allow_redisplay": "unspecified",
        "billing_details": {"address": None, "email": None, "name": None, "phone": None},
        "card": _card_details(card),
        "created": state.now(),
        "customer": customer,
        "livemode": False,
        "metadata": {},
        "type": "card",
    }
    state.add(method)
    state.private_of(method["id"])["test_card"] = value
    return method


def card_of(state: State, payment_method_id: str) -> TestCard:
    return TEST_CARDS[state.private_of(payment_method_id)["test_card"]]


@route("GET", "/v1/payment_methods/{method}")
def retrieve_payment_method(call: Call) -> dict[str, Any]:
    method_id = call.path["method"]
    if method_id in TEST_CARDS:
        return {**resolve_payment_method(call.state, method_id, None), "id": method_id}
    return call.state.get("payment_method", method_id, "payment_method")


# --------------------------------------------------------------------------- customers


def ensure_customer(state: State, customer_id: str) -> None:
    """Customers are created on first use (any cus_ id), so tests need no setup."""
    existing = state.find(customer_id)
    if existing is not None:
        if existing["object"] != "customer":
            raise resource_missing("customer", customer_id, param="customer")
        return
    if not customer_id.startswith("cus_"):
        raise resource_missing("customer", customer_id, param="customer")
    state.add(_customer(state, customer_id, {}))


def _customer(state: State, customer_id: str, params: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": customer_id,
        "object": "customer",
        "address": None,
        "balance": 0,
        "created": state.now(),
        "currency": None,
        "default_source": None,
        "description": params.get("description"),
        "email": params.get("email"),
        "invoice_settings": {
            "custom_fields": None,
            "default_payment_method": None,
            "footer": None,
            "rendering_options": None,
        },
        "livemode": False,
        "metadata": forms.metadata(params),
        "name": params.get("name"),
        "phone": params.get("phone"),
        "shipping": None,
    }


@route("POST", "/v1/customers", ("email", "name", "description", "metadata", "phone", "address", "payment_method"))
def create_customer(call: Call) -> dict[str, Any]:
    customer = call.state.add(_customer(call.state, call.state.new_id("cus", 14), call.params))
    call.state.emit("customer.created", customer, call.request)
    return customer


@route("GET", "/v1/customers/{customer}")
def retrieve_customer(call: Call) -> dict[str, Any]:
    return call.state.get("customer", call.path["customer"], "customer")


@route("GET", "/v1/customers", ("email", "created", "limit", "starting_after", "ending_before"))
def list_customers(call: Call) -> dict[str, Any]:
    email = call.params.get("email")
    predicate = (lambda customer: customer["email"] == email) if email else None
    return call.state.list_object("customer", call.params, "/v1/customers", predicate)


# --------------------------------------------------------------------------- payment intents

PAYMENT_INTENT_CREATE_PARAMS = (
    "amount", "currency", "confirm", "payment_method", "capture_method", "customer", "metadata",
    "application_fee_amount", "transfer_data", "transfer_group", "description", "payment_method_types",
    "automatic_payment_methods", "receipt_email", "statement_descriptor", "statement_descriptor_suffix",
    "on_behalf_of", "off_session", "error_on_requires_action", "return_url", "setup_future_usage",
    "payment_method_options", "confirmation_method", "use_stripe_sdk", "shipping", "payment_method_data",
    "mandate_data", "radar_options", "source", "card",
)  # fmt: skip
CONFIRM_PARAMS = (
    "payment_method", "capture_method", "return_url", "off_session", "payment_method_options", "receipt_email",
    "setup_future_usage", "shipping", "error_on_requires_action", "mandate_data", "use_stripe_sdk",
    "payment_method_types", "radar_options", "payment_method_data", "source", "card",
)  # fmt: skip
UPDATE_PARAMS = (
    "amount", "currency", "metadata", "description", "customer", "payment_method", "capture_method",
    "application_fee_amount", "transfer_group", "receipt_email", "statement_descriptor", "shipping",
    "setup_future_usage", "payment_method_types", "transfer_data", "statement_descriptor_suffix",
    "payment_method_options", "payment_method_data",
)  # fmt: skip


def _amount(params: dict[str, Any], name: str = "amount", required: bool = True) -> int | None:
    amount = forms.integer(params, name, required=required, minimum=1, maximum=AMOUNT_MAXIMUM_MINOR)
    if amount is not None and amount < AMOUNT_MINIMUM_MINOR and name == "amount":
        currency = str(params.get("currency", "usd")).lower()
        raise invalid_request(
            f"Amount must be at least {AMOUNT_MINIMUM_MINOR} cents"
            if currency != "usd"
            else "Amount must be at least $0.50 usd",
            param=name,
            code="amount_too_small",
        )
    return amount


def _transfer_data(state: State, params: dict[str, Any], amount: int) -> dict[str, Any] | None:
    value = params.get("transfer_data")
    if value is None or value == "":
        return None
    if not isinstance(value, dict):
        raise invalid_request("Invalid object", param="transfer_data")
    for name in value:
        if name not in ("destination", "amount"):
            raise forms.unknown_parameter(f"transfer_data[{name}]")
    destination = value.get("destination")
    if not destination:
        raise forms.missing_param("transfer_data[destination]")
    transfer_amount = forms.integer(value, "amount", minimum=1)
    if transfer_amount is not None and transfer_amount > amount:
        raise invalid_request(
            "The transfer amount must be less than or equal to the PaymentIntent amount.", param="transfer_data[amount]"
        )
    ensure_account(state, destination, "transfer_data[destination]")
    result: dict[str, Any] = {"destination": destination}
    if transfer_amount is not None:
        result["amount"] = transfer_amount
    return result


def _application_fee(params: dict[str, Any], amount: int, transfer_data: dict[str, Any] | None) -> int | None:
    fee = forms.integer(params, "application_fee_amount", minimum=0)
    if fee is None:
        return None
    if transfer_data is None and not params.get("on_behalf_of"):
        raise invalid_request(
            "Can only apply an application_fee_amount when the PaymentIntent is attempting a direct payment "
            "(using an OAuth key or Stripe-Account header) or destination payment "
            "(using `transfer_data[destination]`).",
            param="application_fee_amount",
        )
    if transfer_data is not None and "amount" in transfer_data:
        raise invalid_request(
            "You cannot specify both `application_fee_amount` and `transfer_data[amount]`.",
            param="application_fee_amount",
        )
    if fee > amount:
        raise invalid_request(
            "The application fee amount must be less than or equal to the PaymentIntent amount.",
            param="application_fee_amount",
        )
    return fee


def _client_secret(state: State, intent_id: str) -> str:
    return f"{intent_id}_secret_{state.new_id('s', 25)[2:]}"


@route("POST", "/v1/payment_intents", PAYMENT_INTENT_CREATE_PARAMS)
def create_payment_intent(call: Call) -> dict[str, Any]:
    state, params = call.state, call.params
    forms.refuse_raw_card_data(params)
    amount = _amount(params)
    currency = forms.currency(params)
    assert amount is not None and currency is not None
    confirm = forms.boolean(params, "confirm")
    capture_method = forms.choice(params, "capture_method", CAPTURE_METHODS, default="automatic_async")
    customer = forms.string(params, "customer", max_length=255)
    metadata = forms.metadata(params)
    description = forms.string(params, "description", max_length=1000)
    transfer_group = forms.string(params, "transfer_group", max_length=255)
    transfer_data = _transfer_data(state, params, amount)
    application_fee_amount = _application_fee(params, amount, transfer_data)
    payment_method_value = forms.string(params, "payment_method", max_length=255)
    if params.get("payment_method_data") is not None:
        raise invalid_request(
            "payment_method_data is not supported by the emulator; use a test PaymentMethod such as pm_card_visa.",
            param="payment_method_data",
        )
    if confirm and not payment_method_value:
        raise invalid_request(
            "You cannot confirm this PaymentIntent because it's missing a payment method. You can either update the "
            "PaymentIntent with a payment method and then confirm it again, or confirm it again directly with a "
            "payment method.",
            param="payment_method",
            code="payment_intent_unexpected_state",
        )
    if customer:
        ensure_customer(state, customer)
    payment_method = resolve_payment_method(state, payment_method_value, customer) if payment_method_value else None
    intent_id = state.new_id("pi")
    intent: dict[str, Any] = {
        "id": intent_id,
        "object": "payment_intent",
        "amount": amount,
        "amount_capturable": 0,
        "amount_details": {"tip": {}},
        "amount_received": 0,
        "application": None,
        "application_fee_amount": application_fee_amount,
        "automatic_payment_methods": None,
        "canceled_at": None,
        "cancellation_reason": None,
        "capture_method": capture_method,
        "client_secret": _client_secret(state, intent_id),
        "confirmation_method": "automatic",
        "created": state.now(),
        "currency": currency,
        "customer": customer,
        "description": description,
        "last_payment_error": None,
        "latest_charge": None,
        "livemode": False,
        "metadata": metadata,
        "next_action": None,
        "on_behalf_of": params.get("on_behalf_of"),
        "payment_method": payment_method["id"] if payment_method else None,
        "payment_method_configuration_details": None,
        "payment_method_options": {
            "card": {
                "installments": None,
                "mandate_options": None,
                "network": None,
                "request_three_d_secure": "automatic",
            }
        },
        "payment_method_types": ["card"],
        "processing": None,
        "receipt_email": params.get("receipt_email"),
        "review": None,
        "setup_future_usage": params.get("setup_future_usage"),
        "shipping": None,
        "source": None,
        "statement_descriptor": params.get("statement_descriptor"),
        "statement_descriptor_suffix": params.get("statement_descriptor_suffix"),
        "status": "requires_confirmation" if payment_method else "requires_payment_method",
        "transfer_data": transfer_data,
        "transfer_group": transfer_group,
    }
    state.add(intent)
    state.emit("payment_intent.created", intent, call.request)
    if confirm:
        _confirm(call, intent)
    return intent


def _intent(call: Call) -> dict[str, Any]:
    return call.state.get("payment_intent", call.path["intent"], "intent")


@route("POST", "/v1/payment_intents/{intent}/confirm", CONFIRM_PARAMS)
def confirm_payment_intent(call: Call) -> dict[str, Any]:
    state, params = call.state, call.params
    forms.refuse_raw_card_data(params)
    intent = _intent(call)
    if intent["status"] not in CONFIRMABLE:
        raise _state_error("confirm", intent, CONFIRMABLE)
    payment_method_value = forms.string(params, "payment_method", max_length=255)
    capture_method = forms.choice(params, "capture_method", CAPTURE_METHODS)
    if not payment_method_value and not intent["payment_method"]:
        raise invalid_request(
            "You cannot confirm this PaymentIntent because it's missing a payment method. You can either update the "
            "PaymentIntent with a payment method and then confirm it again, or confirm it again directly with a "
            "payment method.",
            param="payment_method",
            code="payment_intent_unexpected_state",
        )
    if payment_method_value:
        intent["payment_method"] = resolve_payment_method(state, payment_method_value, intent["customer"])["id"]
        state.private_of(intent["id"]).pop("authenticated", None)
    if capture_method:
        intent["capture_method"] = capture_method
    _confirm(call, intent)
    return intent


_VERBS = {
    "confirm": "confirmed",
    "capture": "captured",
    "cancel": "canceled",
    "update": "updated",
    "authenticate": "authenticated",
}


def _state_error(action: str, intent: dict[str, Any], allowed: tuple[str, ...]) -> StripeError:
    error = unexpected_state(
        f"You cannot {action} this PaymentIntent because it has a status of {intent['status']}. Only a "
        f"PaymentIntent with one of the following statuses may be {_VERBS[action]}: {', '.join(allowed)}."
    )
    error.extra = {"payment_intent": copy_json(intent)}
    return error


def _confirm(call: Call, intent: dict[str, Any]) -> None:
    state = call.state
    assert intent["payment_method"], intent["id"]
    card = card_of(state, intent["payment_method"])
    intent["last_payment_error"] = None
    if card.outcome == "authenticate" and not state.private_of(intent["id"]).get("authenticated"):
        intent["status"] = "requires_action"
        intent["next_action"] = {
            "type": "use_stripe_sdk",
            "use_stripe_sdk": {
                "type": "three_d_secure_redirect",
                "stripe_js": "https://hooks.stripe.com/3d_secure_2/hosted",
                "source": state.new_id("src"),
            },
        }
        state.dirty = True
        state.emit("payment_intent.requires_action", intent, call.request)
        return
    intent["next_action"] = None
    if card.outcome == "decline":
        _decline(call, intent, card)
    _authorize(call, intent, card)


def _new_charge(state: State, intent: dict[str, Any], card: TestCard, succeeded: bool) -> dict[str, Any]:
    charge_id = state.new_id("ch")
    outcome = (
        {"network_status": "approved_by_network", "reason": None, "risk_level": "normal", "risk_score": 20,
         "seller_message": "Payment complete.", "type": "authorized"}
        if succeeded
        else {"network_status": "declined_by_network", "reason": card.decline_code, "risk_level": "normal",
              "risk_score": 20, "seller_message": "The bank did not return any further details with this decline.",
              "type": "issuer_declined"}
    )  # fmt: skip
    charge = {
        "id": charge_id,
        "object": "charge",
        "amount": intent["amount"],
        "amount_captured": 0,
        "amount_refunded": 0,
        "application": None,
        "application_fee": None,
        "application_fee_amount": intent["application_fee_amount"],
        "balance_transaction": None,
        "billing_details": {"address": None, "email": None, "name": None, "phone": None},
        "calculated_statement_descriptor": "PENNY",
        "captured": False,
        "created": state.now(),
        "currency": intent["currency"],
        "customer": intent["customer"],
        "description": intent["description"],
        "disputed": False,
        "failure_balance_transaction": None,
        "failure_code": None if succeeded else card.code,
        "failure_message": None if succeeded else card.message,
        "fraud_details": {},
        "livemode": False,
        "metadata": dict(intent["metadata"]),
        "on_behalf_of": intent["on_behalf_of"],
        "outcome": outcome,
        "paid": succeeded,
        "payment_intent": intent["id"],
        "payment_method": intent["payment_method"],
        "payment_method_details": {"card": _card_details(card), "type": "card"},
        "receipt_email": intent["receipt_email"],
        "receipt_number": None,
        "receipt_url": None,
        "refunded": False,
        "review": None,
        "shipping": copy_json(intent["shipping"]),
        "source": None,
        "source_transfer": None,
        "statement_descriptor": intent["statement_descriptor"],
        "statement_descriptor_suffix": intent["statement_descriptor_suffix"],
        "status": "succeeded" if succeeded else "failed",
        # No `transfer` key: Stripe sends it only on a charge that made a transfer (a destination charge).
        "transfer_data": copy_json(intent["transfer_data"]),
        "transfer_group": intent["transfer_group"],
    }
    state.add(charge)
    intent["latest_charge"] = charge_id
    return charge


def _decline(call: Call, intent: dict[str, Any], card: TestCard) -> None:
    """The charge fails: the intent goes back to requires_payment_method and the caller gets a 402 (saved)."""
    state = call.state
    charge = _new_charge(state, intent, card, succeeded=False)
    payment_method = state.objects[intent["payment_method"]]
    intent["status"] = "requires_payment_method"
    intent["payment_method"] = None
    intent["last_payment_error"] = {
        "charge": charge["id"],
        "code": card.code,
        "decline_code": card.decline_code,
        "doc_url": f"https://stripe.com/docs/error-codes/{str(card.code).replace('_', '-')}",
        "message": card.message,
        "payment_method": copy_json(payment_method),
        "type": "card_error",
    }
    state.emit("charge.failed", charge, call.request)
    state.emit("payment_intent.payment_failed", intent, call.request)
    raise StripeError(
        402,
        "card_error",
        str(card.message),
        code=card.code,
        param=None,
        saved=True,
        extra={
            "charge": charge["id"],
            "decline_code": card.decline_code,
            "payment_intent": copy_json(intent),
            "payment_method": copy_json(payment_method),
        },
    )


def _authorize(call: Call, intent: dict[str, Any], card: TestCard) -> None:
    state = call.state
    charge = _new_charge(state, intent, card, succeeded=True)
    if intent["capture_method"] == "manual":
        intent["status"] = "requires_capture"
        intent["amount_capturable"] = intent["amount"]
        state.emit("charge.succeeded", charge, call.request)
        state.emit("payment_intent.amount_capturable_updated", intent, call.request)
        return
    _capture_charge(call, intent, charge, intent["amount"], emit_captured=False)
    if card.outcome in DISPUTE_OUTCOMES:
        state.schedule(state.now_float() + state.config.dispute_delay_seconds, "dispute_create", charge["id"])


def _capture_charge(
    call: Call, intent: dict[str, Any], charge: dict[str, Any], amount: int, emit_captured: bool
) -> None:
    """Money moves: the captured amount becomes a pending balance transaction; destination charges transfer."""
    state = call.state
    assert 0 < amount <= intent["amount"], (amount, intent["amount"])
    fee = stripe_fee_minor(amount)
    transaction = add_balance_transaction(
        state,
        amount=amount,
        currency=intent["currency"],
        transaction_type="charge",
        source=charge["id"],
        fee=fee,
        pending=True,
    )
    charge.update(captured=True, amount_captured=amount, balance_transaction=transaction["id"])
    intent.update(status="succeeded", amount_received=amount, amount_capturable=0)
    if intent["transfer_data"] is not None:
        _destination_transfer(call, intent, charge, amount)
    if emit_captured:
        state.emit(
            "charge.captured", charge, call.request, previous_attributes={"captured": False, "amount_captured": 0}
        )
    else:
        state.emit("charge.succeeded", charge, call.request)
    state.emit("payment_intent.succeeded", intent, call.request)
    card = card_of(state, charge["payment_method"])
    if emit_captured and card.outcome in DISPUTE_OUTCOMES:
        state.schedule(state.now_float() + state.config.dispute_delay_seconds, "dispute_create", charge["id"])


def _destination_transfer(call: Call, intent: dict[str, Any], charge: dict[str, Any], captured: int) -> None:
    state = call.state
    transfer_data = intent["transfer_data"]
    transfer_amount = min(transfer_data.get("amount", captured), captured)
    transfer = new_transfer(
        state,
        amount=transfer_amount,
        currency=intent["currency"],
        destination=transfer_data["destination"],
        source_transaction=charge["id"],
        transfer_group=intent["transfer_group"] or f"group_{intent['id']}",
        metadata={},
        description=None,
        request=call.request,
    )
    charge["transfer"] = transfer["id"]
    mark_destination_charge_transfer(state, transfer["id"], charge["id"])
    fee_amount = charge["application_fee_amount"]
    if fee_amount:
        fee_id = state.new_id("fee")
        transaction = add_balance_transaction(
            state, amount=fee_amount, currency=intent["currency"], transaction_type="application_fee", source=fee_id
        )
        application_fee = {
            "id": fee_id,
            "object": "application_fee",
            "account": transfer_data["destination"],
            "amount": fee_amount,
            "amount_refunded": 0,
            "balance_transaction": transaction["id"],
            "charge": charge["id"],
            "created": state.now(),
            "currency": intent["currency"],
            "livemode": False,
            "originating_transaction": charge["id"],
            "refunded": False,
        }
        state.add(application_fee)
        charge["application_fee"] = fee_id


@route(
    "POST",
    "/v1/payment_intents/{intent}/capture",
    (
        "amount_to_capture",
        "application_fee_amount",
        "metadata",
        "statement_descriptor",
        "statement_descriptor_suffix",
        "final_capture",
        "transfer_data",
    ),
)
def capture_payment_intent(call: Call) -> dict[str, Any]:
    params = call.params
    intent = _intent(call)
    amount_to_capture = forms.integer(params, "amount_to_capture", minimum=1)
    fee = forms.integer(params, "application_fee_amount", minimum=0)
    metadata = forms.metadata(params, intent["metadata"])
    if intent["status"] != "requires_capture":
        raise _state_error("capture", intent, ("requires_capture",))
    amount = intent["amount_capturable"] if amount_to_capture is None else amount_to_capture
    if amount > intent["amount_capturable"]:
        raise invalid_request(
            f"The amount_to_capture ({amount}) must be less than or equal to the amount_capturable "
            f"({intent['amount_capturable']}).",
            param="amount_to_capture",
            code="amount_too_large",
        )
    if fee is not None:
        if intent["transfer_data"] is None:
            raise invalid_request(
                "Can only apply an application_fee_amount when the PaymentIntent is attempting a destination payment.",
                param="application_fee_amount",
            )
        if fee > amount:
            raise invalid_request(
                "The application fee amount must be less than or equal to the captured amount.",
                param="application_fee_amount",
            )
        intent["application_fee_amount"] = fee
    intent["metadata"] = metadata
    charge = call.state.objects[intent["latest_charge"]]
    charge["application_fee_amount"] = intent["application_fee_amount"]
    _capture_charge(call, intent, charge, amount, emit_captured=True)
    return intent


@route("POST", "/v1/payment_intents/{intent}/cancel", ("cancellation_reason",))
def cancel_payment_intent(call: Call) -> dict[str, Any]:
    state = call.state
    intent = _intent(call)
    reason = forms.choice(call.params, "cancellation_reason", CANCELLATION_REASONS)
    if intent["status"] not in CANCELABLE:
        raise _state_error("cancel", intent, CANCELABLE)
    if intent["status"] == "requires_capture":
        # Releasing an authorisation: Stripe shows the uncaptured charge as refunded, with no Refund object.
        charge = state.objects[intent["latest_charge"]]
        charge.update(refunded=True, amount_refunded=charge["amount"])
    intent.update(
        status="canceled", canceled_at=state.now(), cancellation_reason=reason, amount_capturable=0, next_action=None
    )
    state.dirty = True
    state.emit("payment_intent.canceled", intent, call.request)
    return intent


@route("POST", "/v1/payment_intents/{intent}", UPDATE_PARAMS)
def update_payment_intent(call: Call) -> dict[str, Any]:
    state, params = call.state, call.params
    forms.refuse_raw_card_data(params)
    intent = _intent(call)
    metadata = forms.metadata(params, intent["metadata"])
    changes_money = any(
        name in params
        for name in (
            "amount",
            "currency",
            "payment_method",
            "capture_method",
            "customer",
            "transfer_data",
            "application_fee_amount",
        )
    )
    if changes_money and intent["status"] not in (
        "requires_payment_method",
        "requires_confirmation",
        "requires_action",
    ):
        raise _state_error("update", intent, ("requires_payment_method", "requires_confirmation", "requires_action"))
    amount = _amount(params, required=False)
    currency = forms.currency(params, required=False)
    capture_method = forms.choice(params, "capture_method", CAPTURE_METHODS)
    payment_method_value = forms.string(params, "payment_method", max_length=255)
    if amount is not None:
        intent["amount"] = amount
    if currency is not None:
        intent["currency"] = currency
    if capture_method is not None:
        intent["capture_method"] = capture_method
    for name in ("description", "transfer_group", "receipt_email", "statement_descriptor"):
        if name in params:
            intent[name] = params[name] or None
    if payment_method_value:
        intent["payment_method"] = resolve_payment_method(state, payment_method_value, intent["customer"])["id"]
        intent["status"] = "requires_confirmation"
    intent["metadata"] = metadata
    state.dirty = True
    return intent


@route("GET", "/v1/payment_intents/search", ("query", "limit", "page"))
def search_payment_intents(call: Call) -> dict[str, Any]:
    return search(call, "payment_intent", "/v1/payment_intents/search")


@route("GET", "/v1/payment_intents/{intent}", ("client_secret",))
def retrieve_payment_intent(call: Call) -> dict[str, Any]:
    return _intent(call)


@route("GET", "/v1/payment_intents", ("customer", "created", "limit", "starting_after", "ending_before"))
def list_payment_intents(call: Call) -> dict[str, Any]:
    customer = call.params.get("customer")
    predicate = (lambda intent: intent["customer"] == customer) if customer else None
    return call.state.list_object("payment_intent", call.params, "/v1/payment_intents", predicate)


def complete_action(state: State, intent_id: str, outcome: str) -> dict[str, Any]:
    """Test hook: the customer passes (or fails) 3-D Secure for a requires_action intent."""
    intent = state.get("payment_intent", intent_id, "intent")
    if intent["status"] != "requires_action":
        raise _state_error("authenticate", intent, ("requires_action",))
    if outcome not in ("succeed", "fail"):
        raise invalid_request("outcome must be 'succeed' or 'fail'", param="outcome")
    call = Call(state=state, params={}, path={})
    intent["next_action"] = None
    if outcome == "fail":
        payment_method = state.objects[intent["payment_method"]]
        intent.update(status="requires_payment_method", payment_method=None)
        intent["last_payment_error"] = {
            "code": "payment_intent_authentication_failure",
            "doc_url": "https://stripe.com/docs/error-codes/payment-intent-authentication-failure",
            "message": AUTHENTICATION_FAILED_MESSAGE,
            "payment_method": copy_json(payment_method),
            "type": "invalid_request_error",
        }
        state.dirty = True
        state.emit("payment_intent.payment_failed", intent)
        return intent
    state.private_of(intent["id"])["authenticated"] = True
    _confirm(call, intent)
    return intent


STATUS_OVERRIDE_LENGTH_MAX = 50


def override_status(state: State, intent_id: str, status: str) -> dict[str, Any]:
    """Test hook: the PaymentIntent reports `status` from now on, whatever it is.

    Simulates Stripe answering with a status the client does not know (a newer API version's
    status) or an inconsistent one. Only the reported status changes: no money moves and no
    event is sent. `reset` restores the real status (the one before the first override).
    """
    intent = state.get("payment_intent", intent_id, "intent")
    if not isinstance(status, str) or not 1 <= len(status) <= STATUS_OVERRIDE_LENGTH_MAX:
        raise invalid_request(
            f"status must be a string of 1 to {STATUS_OVERRIDE_LENGTH_MAX} characters", param="status"
        )
    private = state.private_of(intent["id"])
    private.setdefault("status_before_override", intent["status"])
    intent["status"] = private["status_before_override"] if status == "reset" else status
    state.dirty = True
    return intent


# --------------------------------------------------------------------------- search

_CLAUSE = re.compile(
    r"""\s*(?P<negate>-)?(?P<field>metadata\[(?P<quote>['"])(?P<key>[^'"]+)(?P=quote)\]|[a-z_]+)\s*
        (?P<op>:|>=|<=|>|<)\s*(?:'(?P<single>[^']*)'|"(?P<double>[^"]*)"|(?P<bare>[^\s'"]+))\s*""",
    re.VERBOSE,
)
SEARCH_FIELDS = {"payment_intent": ("amount", "created", "currency", "customer", "status", "metadata")}
SEARCH_QUERY_LENGTH_MAX = 1_000


def _parse_query(query: str, object_type: str) -> tuple[list[tuple[bool, str, str | None, str, str]], str]:
    clauses: list[tuple[bool, str, str | None, str, str]] = []
    joiners: set[str] = set()
    position = 0
    while True:
        found = _CLAUSE.match(query, position)
        if found is None:
            raise invalid_request(f"Invalid search query: could not parse {query[position:]!r}.", param="query")
        field = found["field"].split("[", 1)[0]
        if field not in SEARCH_FIELDS[object_type]:
            raise invalid_request(f"Field '{field}' is an unsupported search field for this resource.", param="query")
        value = next(part for part in (found["single"], found["double"], found["bare"]) if part is not None)
        clauses.append((bool(found["negate"]), field, found["key"], found["op"], value))
        position = found.end()
        if position >= len(query):
            break
        joiner = re.match(r"(AND|OR)\s+", query[position:])
        if joiner is None:
            raise invalid_request(f"Invalid search query: expected AND or OR at {query[position:]!r}.", param="query")
        joiners.add(joiner.group(1))
        position += joiner.end()
    if len(joiners) > 1:
        raise invalid_request("Search queries cannot mix AND and OR.", param="query")
    return clauses, joiners.pop() if joiners else "AND"


def _clause_matches(obj: dict[str, Any], negate: bool, field: str, key: str | None, op: str, value: str) -> bool:
    actual = obj["metadata"].get(key or "") if field == "metadata" else obj.get(field)
    if op == ":":
        result = actual is not None and str(actual).lower() == value.lower() if field != "metadata" else actual == value
    else:
        try:
            number, bound = int(actual), int(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False
        result = {">": number > bound, "<": number < bound, ">=": number >= bound, "<=": number <= bound}[op]
    return result != negate


def search(call: Call, object_type: str, url: str) -> dict[str, Any]:
    state, params = call.state, call.params
    query = forms.string(params, "query", required=True, max_length=SEARCH_QUERY_LENGTH_MAX)
    assert query is not None
    limit = min(list_limit(params), LIST_LIMIT_MAX)
    clauses, joiner = _parse_query(query, object_type)
    combine = all if joiner == "AND" else any
    matches = state.list_ids(object_type, lambda obj: combine(_clause_matches(obj, *clause) for clause in clauses))
    offset = 0
    page = params.get("page")
    if page:
        try:
            offset = int(base64.urlsafe_b64decode(page.encode()).decode().removeprefix("offset:"))
        except ValueError:
            raise invalid_request("Invalid page token.", param="page") from None
    selected = matches[offset : offset + limit]
    has_more = len(matches) > offset + limit
    next_page = base64.urlsafe_b64encode(f"offset:{offset + limit}".encode()).decode() if has_more else None
    return {
        "object": "search_result",
        "data": [state.objects[object_id] for object_id in selected],
        "has_more": has_more,
        "next_page": next_page,
        "total_count": len(matches),
        "url": url,
    }


# --------------------------------------------------------------------------- charges


@route("GET", "/v1/charges/{charge}")
def retrieve_charge(call: Call) -> dict[str, Any]:
    return call.state.get("charge", call.path["charge"], "charge")


@route(
    "GET",
    "/v1/charges",
    ("customer", "payment_intent", "transfer_group", "created", "limit", "starting_after", "ending_before"),
)
def list_charges(call: Call) -> dict[str, Any]:
    filters = {
        name: call.params[name] for name in ("customer", "payment_intent", "transfer_group") if call.params.get(name)
    }
    predicate = (lambda charge: all(charge[name] == value for name, value in filters.items())) if filters else None
    return call.state.list_object("charge", call.params, "/v1/charges", predicate)


@route("POST", "/v1/charges", None)
def create_charge(call: Call) -> dict[str, Any]:
    forms.refuse_raw_card_data(call.params)
    raise invalid_request(
        "The emulator supports PaymentIntents only; create a PaymentIntent with a test PaymentMethod "
        "instead of a Charge."
    )
