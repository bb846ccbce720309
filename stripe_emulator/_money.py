"""Money movements: balance transactions, Balance, settlement, payouts, Connect accounts, transfers.

Fee rule (documented): Stripe-like 2.9% + 30 minor units per successful captured charge,
`fee = (amount * 29 + 500) // 1000 + 30`, i.e. the percentage rounded half up to a whole
minor unit. Destination charges follow Stripe's flow of funds: the full amount (or
`transfer_data[amount]`) is transferred to the connected account and the application fee
comes back to the platform as an `application_fee` balance transaction.
"""

from __future__ import annotations

from typing import Any

from stripe_emulator import _forms as forms
from stripe_emulator._errors import StripeError, invalid_request, resource_missing, unexpected_state
from stripe_emulator._router import Call, route
from stripe_emulator._state import State, copy_json

FEE_RATE_PER_THOUSAND = 29
FEE_FIXED_MINOR = 30

REPORTING_CATEGORIES = {
    "charge": "charge",
    "refund": "refund",
    "refund_failure": "refund_failure",
    "transfer": "transfer",
    "transfer_refund": "transfer_reversal",
    "payout": "payout",
    "adjustment": "dispute",
    "application_fee": "platform_earning",
    "application_fee_refund": "platform_earning_refund",
}


def stripe_fee_minor(amount_minor: int) -> int:
    assert amount_minor >= 0, amount_minor
    return (amount_minor * FEE_RATE_PER_THOUSAND + 500) // 1000 + FEE_FIXED_MINOR


def add_balance_transaction(
    state: State,
    *,
    amount: int,
    currency: str,
    transaction_type: str,
    source: str | None,
    fee: int = 0,
    fee_description: str = "Stripe processing fees",
    pending: bool = False,
    description: str | None = None,
    reporting_category: str | None = None,
) -> dict[str, Any]:
    now = state.now()
    available_on = now + state.config.settlement_delay_seconds if pending else now
    transaction: dict[str, Any] = {
        "id": state.new_id("txn"),
        "object": "balance_transaction",
        "amount": amount,
        "available_on": available_on,
        "created": now,
        "currency": currency,
        "description": description,
        "exchange_rate": None,
        "fee": fee,
        "fee_details": (
            [
                {
                    "amount": fee,
                    "application": None,
                    "currency": currency,
                    "description": fee_description,
                    "type": "stripe_fee",
                }
            ]
            if fee
            else []
        ),
        "net": amount - fee,
        "reporting_category": reporting_category or REPORTING_CATEGORIES.get(transaction_type, transaction_type),
        "source": source,
        "status": "pending" if pending else "available",
        "type": transaction_type,
    }
    assert transaction["net"] == transaction["amount"] - transaction["fee"]
    state.add(transaction)
    if pending:
        state.schedule(available_on, "settle", transaction["id"])
    return transaction


def settle(state: State, transaction_id: str) -> bool:
    transaction = state.find(transaction_id)
    if transaction is None or transaction["status"] != "pending":
        return False
    transaction["status"] = "available"
    return True


def balance_object(state: State) -> dict[str, Any]:
    available: dict[str, int] = {}
    pending: dict[str, int] = {}
    objects = state.objects
    for transaction_id in state.collections["balance_transaction"]:
        transaction = objects[transaction_id]
        bucket = available if transaction["status"] == "available" else pending
        bucket[transaction["currency"]] = bucket.get(transaction["currency"], 0) + transaction["net"]
    currencies = sorted(set(available) | set(pending)) or ["usd"]
    return {
        "object": "balance",
        "available": [
            {"amount": available.get(code, 0), "currency": code, "source_types": {"card": available.get(code, 0)}}
            for code in currencies
        ],
        "connect_reserved": [{"amount": 0, "currency": code} for code in currencies],
        "livemode": False,
        "pending": [
            {"amount": pending.get(code, 0), "currency": code, "source_types": {"card": pending.get(code, 0)}}
            for code in currencies
        ],
    }


def available_minor(state: State, currency: str) -> int:
    for entry in balance_object(state)["available"]:
        if entry["currency"] == currency:
            return int(entry["amount"])
    return 0


# --------------------------------------------------------------------------- payouts


def _new_payout(
    state: State, amount: int, currency: str, automatic: bool, request: dict[str, Any] | None
) -> dict[str, Any]:
    now = state.now()
    payout_id = state.new_id("po")
    transaction = add_balance_transaction(
        state,
        amount=-amount,
        currency=currency,
        transaction_type="payout",
        source=payout_id,
        description="STRIPE PAYOUT",
    )
    payout = {
        "id": payout_id,
        "object": "payout",
        "amount": amount,
        "application_fee": None,
        "application_fee_amount": None,
        "arrival_date": now + state.config.payout_arrival_delay_seconds,
        "automatic": automatic,
        "balance_transaction": transaction["id"],
        "created": now,
        "currency": currency,
        "description": "STRIPE PAYOUT",
        "destination": "ba_emulator_bank_account",
        "failure_balance_transaction": None,
        "failure_code": None,
        "failure_message": None,
        "livemode": False,
        "metadata": {},
        "method": "standard",
        "original_payout": None,
        "payout_method": None,
        "reconciliation_status": "in_progress" if automatic else "not_applicable",
        "reversed_by": None,
        "source_type": "card",
        "statement_descriptor": None,
        "status": "pending",
        # Stripe reports the trace id as pending while the payout is in flight.
        "trace_id": {"status": "pending", "value": None},
        "type": "bank_account",
    }
    state.add(payout)
    state.schedule(payout["arrival_date"], "payout_paid", payout_id)
    state.emit("payout.created", payout, request)
    return payout


def run_automatic_payouts(state: State) -> None:
    """Pay out the whole available balance per currency; the payout groups the transactions it covers."""
    objects = state.objects
    covered = {member for members in state.payout_members.values() for member in members}
    by_currency: dict[str, list[str]] = {}
    totals: dict[str, int] = {}
    for transaction_id in state.collections["balance_transaction"]:
        transaction = objects[transaction_id]
        if transaction["status"] != "available" or transaction_id in covered or transaction["type"] == "payout":
            continue
        by_currency.setdefault(transaction["currency"], []).append(transaction_id)
        totals[transaction["currency"]] = totals.get(transaction["currency"], 0) + transaction["net"]
    for currency, members in by_currency.items():
        amount = available_minor(state, currency)
        if amount <= 0:
            continue
        payout = _new_payout(state, amount, currency, automatic=True, request=None)
        state.payout_members[payout["id"]] = [*members, payout["balance_transaction"]]


def mark_payout_paid(state: State, payout_id: str) -> None:
    payout = state.find(payout_id)
    if payout is None or payout["status"] != "pending":
        return
    previous = {"status": payout["status"], "trace_id": copy_json(payout["trace_id"])}
    payout["status"] = "paid"
    # No bank returns a trace id to the emulator: Stripe reports such payouts as unsupported.
    payout["trace_id"] = {"status": "unsupported", "value": None}
    if payout["automatic"]:
        payout["reconciliation_status"] = "completed"
    state.emit("payout.paid", payout, previous_attributes=previous)


@route("POST", "/v1/payouts", ("amount", "currency", "description", "metadata", "method", "statement_descriptor"))
def create_payout(call: Call) -> dict[str, Any]:
    state, params = call.state, call.params
    amount = forms.integer(params, "amount", required=True, minimum=1)
    currency = forms.currency(params)
    assert amount is not None and currency is not None
    metadata = forms.metadata(params)
    if available_minor(state, currency) < amount:
        raise StripeError(
            400,
            "invalid_request_error",
            "You have insufficient funds in your Stripe account for this transfer. Your card balance is too low. "
            "You can use the /v1/balance endpoint to view your Stripe balance "
            "(for more details, see stripe.com/docs/api#balance).",
            code="balance_insufficient",
        )
    payout = _new_payout(state, amount, currency, automatic=False, request=call.request)
    payout["metadata"] = metadata
    payout["description"] = forms.string(params, "description") or payout["description"]
    return payout


@route("GET", "/v1/payouts/{payout}")
def retrieve_payout(call: Call) -> dict[str, Any]:
    return call.state.get("payout", call.path["payout"], "payout")


@route(
    "GET",
    "/v1/payouts",
    ("status", "created", "arrival_date", "limit", "starting_after", "ending_before", "destination"),
)
def list_payouts(call: Call) -> dict[str, Any]:
    status = call.params.get("status")
    predicate = (lambda payout: payout["status"] == status) if status else None
    return call.state.list_object("payout", call.params, "/v1/payouts", predicate)


# --------------------------------------------------------------------------- balance


@route("GET", "/v1/balance")
def retrieve_balance(call: Call) -> dict[str, Any]:
    return balance_object(call.state)


@route("GET", "/v1/balance_transactions/{transaction}")
def retrieve_balance_transaction(call: Call) -> dict[str, Any]:
    return call.state.get("balance_transaction", call.path["transaction"], "id")


@route(
    "GET",
    "/v1/balance_transactions",
    ("payout", "type", "source", "currency", "created", "limit", "starting_after", "ending_before"),
)
def list_balance_transactions(call: Call) -> dict[str, Any]:
    state, params = call.state, call.params
    filters = {name: params[name] for name in ("type", "source", "currency") if params.get(name)}
    predicate = None
    if filters:

        def predicate(transaction: dict[str, Any]) -> bool:
            return all(transaction[name] == value for name, value in filters.items())

    ids = None
    payout_id = params.get("payout")
    if payout_id:
        state.get("payout", payout_id, "payout")
        members = state.payout_members.get(payout_id)
        if members is None:
            raise invalid_request(
                "Balance transaction history can only be filtered on automatic transfers, not manual.", param="payout"
            )
        ids = sorted(members, key=lambda member: state.sequence.get(member, 0), reverse=True)
    return state.list_object("balance_transaction", params, "/v1/balance_transactions", predicate, ids=ids)


# --------------------------------------------------------------------------- accounts


ACCOUNT_PARAMS = (
    "type", "country", "email", "metadata", "capabilities", "business_type", "business_profile", "controller",
    "default_currency", "tos_acceptance", "individual", "company", "settings", "external_account",
)  # fmt: skip


def ensure_account(state: State, account_id: str, param: str) -> dict[str, Any]:
    """Connected accounts are created on first use, so marketplace tests need no onboarding."""
    existing = state.find(account_id)
    if existing is not None and existing["object"] == "account":
        return existing
    if not account_id.startswith("acct_") or len(account_id) > 255:
        raise invalid_request(f"No such destination: '{account_id}'", param=param, code="resource_missing")
    return state.add(_account(state, account_id, {}))


def _account(state: State, account_id: str, params: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": account_id,
        "object": "account",
        "business_type": params.get("business_type"),
        "capabilities": {"card_payments": "active", "transfers": "active"},
        "charges_enabled": True,
        "country": params.get("country") or "US",
        "created": state.now(),
        "default_currency": params.get("default_currency") or "usd",
        "details_submitted": True,
        "email": params.get("email"),
        "metadata": forms.metadata(params),
        "payouts_enabled": True,
        "type": params.get("type") or "custom",
    }


@route("POST", "/v1/accounts", ACCOUNT_PARAMS)
def create_account(call: Call) -> dict[str, Any]:
    forms.choice(call.params, "type", ("custom", "express", "standard"))
    account = _account(call.state, call.state.new_id("acct", 16), call.params)
    call.state.add(account)
    call.state.emit("account.updated", account, call.request)
    return account


@route("GET", "/v1/accounts/{account}")
def retrieve_account(call: Call) -> dict[str, Any]:
    return call.state.get("account", call.path["account"], "account")


@route("POST", "/v1/accounts/{account}", ("metadata", "email", "business_profile", "settings", "capabilities"))
def update_account(call: Call) -> dict[str, Any]:
    account = call.state.get("account", call.path["account"], "account")
    account["metadata"] = forms.metadata(call.params, account["metadata"])
    if call.params.get("email") is not None:
        account["email"] = call.params["email"] or None
    call.state.dirty = True
    return account


@route("GET", "/v1/accounts", ("created", "limit", "starting_after", "ending_before"))
def list_accounts(call: Call) -> dict[str, Any]:
    return call.state.list_object("account", call.params, "/v1/accounts")


@route("GET", "/v1/account")
def retrieve_platform_account(call: Call) -> dict[str, Any]:
    return {
        "id": "acct_emulatorplatform",
        "object": "account",
        "business_type": "company",
        "charges_enabled": True,
        "country": "US",
        "default_currency": "usd",
        "details_submitted": True,
        "email": None,
        "metadata": {},
        "payouts_enabled": True,
        "settings": {"payouts": {"schedule": {"delay_days": 2, "interval": "daily"}}},
        "type": "standard",
    }


# --------------------------------------------------------------------------- transfers


def new_transfer(
    state: State,
    *,
    amount: int,
    currency: str,
    destination: str,
    source_transaction: str | None,
    transfer_group: str | None,
    metadata: dict[str, str],
    description: str | None,
    request: dict[str, Any] | None,
) -> dict[str, Any]:
    transfer_id = state.new_id("tr")
    transaction = add_balance_transaction(
        state, amount=-amount, currency=currency, transaction_type="transfer", source=transfer_id
    )
    transfer = {
        "id": transfer_id,
        "object": "transfer",
        "amount": amount,
        "amount_reversed": 0,
        "balance_transaction": transaction["id"],
        "created": state.now(),
        "currency": currency,
        "description": description,
        "destination": destination,
        "destination_payment": state.new_id("py"),
        "livemode": False,
        "metadata": metadata,
        "reversals": {
            "object": "list",
            "data": [],
            "has_more": False,
            "total_count": 0,
            "url": f"/v1/transfers/{transfer_id}/reversals",
        },
        "reversed": False,
        "source_transaction": source_transaction,
        "source_type": "card",
        "transfer_group": transfer_group,
    }
    state.add(transfer)
    state.emit("transfer.created", transfer, request)
    return transfer


TRANSFER_PARAMS = (
    "amount",
    "currency",
    "destination",
    "description",
    "metadata",
    "source_transaction",
    "transfer_group",
    "source_type",
)


@route("POST", "/v1/transfers", TRANSFER_PARAMS)
def create_transfer(call: Call) -> dict[str, Any]:
    state, params = call.state, call.params
    amount = forms.integer(params, "amount", required=True, minimum=1)
    currency = forms.currency(params)
    destination = forms.string(params, "destination", required=True, max_length=255)
    metadata = forms.metadata(params)
    transfer_group = forms.string(params, "transfer_group", max_length=255)
    description = forms.string(params, "description")
    source_transaction = forms.string(params, "source_transaction", max_length=255)
    assert amount is not None and currency is not None and destination is not None
    if source_transaction is not None:
        charge = state.get("charge", source_transaction, "source_transaction")
        if charge["currency"] != currency:
            raise invalid_request(
                "The currency of source_transaction's balance transaction must match the transfer currency.",
                param="currency",
            )
        transferred = sum(
            state.objects[transfer_id]["amount"]
            for transfer_id in state.private_of(charge["id"]).get("source_transfers", [])
        )
        if transferred + amount > charge["amount_captured"] - charge["amount_refunded"]:
            raise invalid_request(
                "Insufficient funds in source_transaction: transfers from a charge cannot exceed its "
                "captured, unrefunded amount.",
                param="amount",
                code="insufficient_funds",
            )
    elif state.config.enforce_transfer_balance and available_minor(state, currency) < amount:
        raise StripeError(
            400,
            "invalid_request_error",
            "You have insufficient available funds in your Stripe account. Try adding funds directly to your available "
            "balance by creating Charges using the test card that makes funds available at once (ending 0077).",
            code="balance_insufficient",
        )
    ensure_account(state, destination, "destination")
    transfer = new_transfer(
        state,
        amount=amount,
        currency=currency,
        destination=destination,
        source_transaction=source_transaction,
        transfer_group=transfer_group,
        metadata=metadata,
        description=description,
        request=call.request,
    )
    if source_transaction is not None:
        state.private_of(source_transaction).setdefault("source_transfers", []).append(transfer["id"])
    return transfer


@route("GET", "/v1/transfers/{transfer}")
def retrieve_transfer(call: Call) -> dict[str, Any]:
    return call.state.get("transfer", call.path["transfer"], "transfer")


@route("POST", "/v1/transfers/{transfer}", ("metadata", "description"))
def update_transfer(call: Call) -> dict[str, Any]:
    """Stripe sends `transfer.updated` when a transfer's description or metadata changes (and only then)."""
    transfer = call.state.get("transfer", call.path["transfer"], "transfer")
    metadata = forms.metadata(call.params, transfer["metadata"])
    description = (call.params["description"] or None) if "description" in call.params else transfer["description"]
    previous: dict[str, Any] = {}
    if metadata != transfer["metadata"]:
        previous["metadata"] = forms.metadata_previous(transfer["metadata"], metadata)
    if description != transfer["description"]:
        previous["description"] = transfer["description"]
    transfer.update(metadata=metadata, description=description)
    call.state.dirty = True
    if previous:
        call.state.emit("transfer.updated", transfer, call.request, previous_attributes=previous)
    return transfer


@route("GET", "/v1/transfers", ("destination", "transfer_group", "created", "limit", "starting_after", "ending_before"))
def list_transfers(call: Call) -> dict[str, Any]:
    filters = {name: call.params[name] for name in ("destination", "transfer_group") if call.params.get(name)}
    predicate = (lambda transfer: all(transfer[name] == value for name, value in filters.items())) if filters else None
    return call.state.list_object("transfer", call.params, "/v1/transfers", predicate)


def _check_reversal_amount(transfer: dict[str, Any], amount: int) -> None:
    remaining = transfer["amount"] - transfer["amount_reversed"]
    assert remaining >= 0, (transfer["id"], remaining)
    if amount > remaining:
        raise unexpected_state(
            f"You have requested a reversal of {amount} but this transfer only has {remaining} remaining.",
            code=None,
            param="amount",
        )


def reverse_transfer(
    state: State,
    transfer: dict[str, Any],
    amount: int,
    metadata: dict[str, str],
    source_refund: str | None,
    request: dict[str, Any] | None,
) -> dict[str, Any]:
    """Take `amount` back from the connected account; Stripe sends `transfer.reversed` (not `transfer.updated`)."""
    _check_reversal_amount(transfer, amount)
    reversal_id = state.new_id("trr")
    transaction = add_balance_transaction(
        state, amount=amount, currency=transfer["currency"], transaction_type="transfer_refund", source=reversal_id
    )
    reversal = {
        "id": reversal_id,
        "object": "transfer_reversal",
        "amount": amount,
        "balance_transaction": transaction["id"],
        "created": state.now(),
        "currency": transfer["currency"],
        "destination_payment_refund": state.new_id("pyr"),
        "metadata": metadata,
        "source_refund": source_refund,
        "transfer": transfer["id"],
    }
    state.add(reversal)
    previous = {"amount_reversed": transfer["amount_reversed"], "reversed": transfer["reversed"]}
    transfer["amount_reversed"] += amount
    transfer["reversed"] = transfer["amount_reversed"] == transfer["amount"]
    assert transfer["amount_reversed"] <= transfer["amount"], transfer["id"]
    reversals = transfer["reversals"]
    reversals["data"].insert(0, reversal)
    reversals["total_count"] += 1
    state.emit("transfer.reversed", transfer, request, previous_attributes=previous)
    return reversal


# --------------------------------------------------------------------------- connected balances (test hook)

REVERSALS_REFUSED_KEY = "reversals_balance_insufficient"


def set_reversals_refused(state: State, account_id: str, refused: bool) -> dict[str, Any]:
    """Test hook: the connected account's balance cannot (or can again) cover reversals of its transfers.

    The emulator keeps no balance for connected accounts (they never pay out, so a real balance
    would always cover a reversal); this switch stands for "the account has paid its balance
    out". It is state, not a fault rule: it belongs to the account and answers every reversal of
    every transfer to it, whatever the transfer id, until it is switched off.
    """
    account = ensure_account(state, account_id, "account")
    state.private_of(account["id"])[REVERSALS_REFUSED_KEY] = refused
    state.dirty = True
    return {"account": account["id"], "reversals_fail": refused}


def mark_destination_charge_transfer(state: State, transfer_id: str, charge_id: str) -> None:
    state.private_of(transfer_id)["destination_charge"] = charge_id


def _refuse_if_balance_insufficient(state: State, transfer: dict[str, Any], amount: int) -> None:
    """Stripe reverses a transfer_group transfer only if the destination account's balance covers it.

    A transfer made for a destination charge is reversible up to the charge whatever the
    connected account holds (Stripe's TransferReversal reference), so those are never refused.
    The refusal is Stripe's `balance_insufficient` invalid_request_error (400, no `param`).
    """
    if state.private.get(transfer["id"], {}).get("destination_charge"):
        return
    destination = transfer["destination"]
    if not state.private.get(destination, {}).get(REVERSALS_REFUSED_KEY):
        return
    raise StripeError(
        400,
        "invalid_request_error",
        f"Insufficient funds in the destination account ({destination}) to reverse this transfer: its available "
        f"balance does not cover the reversal of {amount} {transfer['currency']}. A transfer can only be reversed "
        "while the destination account's balance covers the reversal.",
        code="balance_insufficient",
    )


@route("POST", "/v1/transfers/{transfer}/reversals", ("amount", "metadata", "description", "refund_application_fee"))
def create_transfer_reversal(call: Call) -> dict[str, Any]:
    state, params = call.state, call.params
    transfer = state.get("transfer", call.path["transfer"], "id")
    amount = forms.integer(params, "amount", minimum=1)
    metadata = forms.metadata(params)
    if transfer["reversed"]:
        raise unexpected_state(f"Transfer {transfer['id']} has already been fully reversed.", code=None)
    amount = transfer["amount"] - transfer["amount_reversed"] if amount is None else amount
    _check_reversal_amount(transfer, amount)
    _refuse_if_balance_insufficient(state, transfer, amount)
    return reverse_transfer(state, transfer, amount, metadata, None, call.request)


@route("GET", "/v1/transfers/{transfer}/reversals", ("limit", "starting_after", "ending_before"))
def list_transfer_reversals(call: Call) -> dict[str, Any]:
    transfer = call.state.get("transfer", call.path["transfer"], "id")
    ids = [reversal["id"] for reversal in transfer["reversals"]["data"]]
    return call.state.list_object(
        "transfer_reversal", call.params, f"/v1/transfers/{transfer['id']}/reversals", ids=ids
    )


@route("GET", "/v1/transfers/{transfer}/reversals/{reversal}")
def retrieve_transfer_reversal(call: Call) -> dict[str, Any]:
    transfer = call.state.get("transfer", call.path["transfer"], "id")
    reversal = call.state.get("transfer_reversal", call.path["reversal"], "id")
    if reversal["transfer"] != transfer["id"]:
        raise resource_missing("transfer_reversal", reversal["id"])
    return reversal
