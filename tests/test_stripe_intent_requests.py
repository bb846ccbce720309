"""StripeActivities' PaymentIntent calls read Stripe's answer as JSON (not StripeObjects), against
the emulator over real HTTP: the same snapshot the SDK's typed methods give, the same errors.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import stripe
from temporalio.exceptions import ApplicationError

from activities.stripe import StripeActivities, snapshot
from activities.stripe_types import (
    CARD_DECLINED,
    STRIPE_REQUEST_REFUSED,
    STRIPE_SERVER_ERROR,
    CreateIntentInput,
    IntentActionInput,
)
from penny.settings import Settings
from tests.conftest import RunningEmulator

AMOUNT = 9_999
FEE_AMOUNT = 1_000


def settings_for(emulator: RunningEmulator) -> Settings:
    return Settings(env="test", stripe_api_base=emulator.base_url)


def activities_for(emulator: RunningEmulator) -> StripeActivities:
    return StripeActivities(settings_for(emulator))


def typed_client(emulator: RunningEmulator) -> stripe.StripeClient:
    """The SDK's typed methods, configured as StripeActivities configures its client."""
    settings = settings_for(emulator)
    return stripe.StripeClient(
        settings.stripe_api_key,
        base_addresses={"api": settings.effective_stripe_api_base},
        http_client=stripe.HTTPXClient(),
        max_network_retries=0,
    )


def create_input(capture_method: str = "automatic", **overrides: Any) -> CreateIntentInput:
    order_id = f"order_{uuid.uuid4().hex[:12]}"
    fields: dict[str, Any] = {
        "idempotency_key": f"test:{order_id}:create:1",
        "order_id": order_id,
        "payment_id": f"pay_{uuid.uuid4().hex[:12]}",
        "amount": AMOUNT,
        "currency": "USD",
        "customer": "cus_intent_requests",
        "payment_method": "pm_card_visa",
        "capture_method": capture_method,
        "description": "intent requests test",
        "metadata": {"cart": "3 items"},
        "transfer_group": f"group_{order_id}",
        "destination_account": "acct_intent_requests",
        "application_fee_amount": FEE_AMOUNT,
        "expand_fee": True,
        **overrides,
    }
    return CreateIntentInput(**fields)


async def test_create_and_retrieve_give_the_snapshot_the_typed_sdk_gives(emulator: RunningEmulator) -> None:
    activities = activities_for(emulator)
    stripe_client = typed_client(emulator)
    request = create_input()
    created = await activities.create_payment_intent(request)

    typed = await stripe_client.v1.payment_intents.retrieve_async(
        created.id,
        {"expand": ["latest_charge.balance_transaction"]},  # type: ignore[typeddict-item]
    )
    assert created == snapshot(typed)
    assert created.status == "succeeded"
    assert (created.amount, created.amount_received, created.currency) == (AMOUNT, AMOUNT, "USD")
    assert created.order_id == request.order_id
    assert created.charge_fee is not None and created.charge_fee > 0
    plain = typed.to_dict()
    assert plain["metadata"] == {"cart": "3 items", "order_id": request.order_id, "payment_id": request.payment_id}
    assert plain["transfer_data"] == {"destination": "acct_intent_requests"}
    assert plain["application_fee_amount"] == FEE_AMOUNT
    assert plain["transfer_group"] == request.transfer_group

    retrieved = await activities.retrieve_payment_intent(created.id)
    typed_plain = await stripe_client.v1.payment_intents.retrieve_async(created.id)
    assert retrieved == snapshot(typed_plain)
    assert retrieved.charge_fee is None  # not expanded on a plain retrieve
    assert retrieved.latest_charge == created.latest_charge

    # The same key replays the first answer: no second PaymentIntent for the order.
    assert await activities.create_payment_intent(request) == created
    found = await stripe_client.v1.payment_intents.search_async({"query": f"metadata['order_id']:'{request.order_id}'"})
    assert [intent.id for intent in found.data] == [created.id]


async def test_capture_and_cancel_act_on_the_intent_under_their_keys(emulator: RunningEmulator) -> None:
    activities = activities_for(emulator)
    held = await activities.create_payment_intent(create_input("manual"))
    assert (held.status, held.amount_capturable) == ("requires_capture", AMOUNT)

    capture = IntentActionInput(held.id, f"test:{held.id}:capture", amount=AMOUNT - 1, expand_fee=True)
    captured = await activities.capture_payment_intent(capture)
    assert (captured.status, captured.amount_received) == ("succeeded", AMOUNT - 1)
    assert captured.charge_fee is not None
    assert await activities.capture_payment_intent(capture) == captured  # replayed, not captured twice

    other = await activities.create_payment_intent(create_input("manual"))
    canceled = await activities.cancel_payment_intent(
        IntentActionInput(other.id, f"test:{other.id}:cancel", reason="abandoned")
    )
    assert (canceled.status, canceled.amount_received) == ("canceled", 0)


async def test_errors_are_classified_as_with_the_typed_sdk(emulator: RunningEmulator) -> None:
    activities = activities_for(emulator)

    with pytest.raises(ApplicationError) as declined:
        await activities.create_payment_intent(create_input(payment_method="pm_card_chargeDeclined"))
    assert declined.value.type == CARD_DECLINED and declined.value.non_retryable
    assert declined.value.details[0]["decline_code"] == "generic_decline"

    emulator.control.add_fault("POST", "/v1/payment_intents", "error_500_after", count=1)
    with pytest.raises(ApplicationError) as saved_500:
        await activities.create_payment_intent(create_input())
    assert saved_500.value.type == STRIPE_SERVER_ERROR and saved_500.value.non_retryable

    emulator.control.add_fault("GET", "/v1/payment_intents/*", "error_500_before", count=1)
    intent = await activities.create_payment_intent(create_input())
    with pytest.raises(RuntimeError, match="outcome unknown"):  # a GET's 5xx: retried by Temporal
        await activities.retrieve_payment_intent(intent.id)
    assert (await activities.retrieve_payment_intent(intent.id)).id == intent.id

    with pytest.raises(ApplicationError) as missing:
        await activities.retrieve_payment_intent("pi_does_not_exist")
    assert missing.value.type == STRIPE_REQUEST_REFUSED and missing.value.non_retryable
    assert missing.value.details[0]["http_status"] == 404

    with pytest.raises(ApplicationError) as mismatch:  # same key, different request
        request = create_input()
        await activities.create_payment_intent(request)
        await activities.create_payment_intent(create_input(idempotency_key=request.idempotency_key, amount=AMOUNT + 1))
    assert mismatch.value.type == STRIPE_REQUEST_REFUSED
