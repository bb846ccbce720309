"""Fault injection: each kind observably happens, and the operation's true state is visible afterwards."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest
import stripe
from stripe.params import PaymentIntentCreateParams

from stripe_emulator.control import EmulatorControlError
from tests.conftest import RunningEmulator, emulator_stripe_client


def _params() -> PaymentIntentCreateParams:
    return {
        "amount": 2_500,
        "currency": "usd",
        "payment_method": "pm_card_visa",
        "confirm": True,
        "metadata": {"order_id": uuid.uuid4().hex},
    }


def _by_order(emulator: RunningEmulator, order_id: object) -> list[dict[str, object]]:
    return [intent for intent in emulator.control.payment_intents() if intent["metadata"].get("order_id") == order_id]  # type: ignore[union-attr]


def test_latency_delays_the_response(emulator: RunningEmulator, stripe_client: stripe.StripeClient) -> None:
    emulator.control.add_fault("GET", "/v1/balance", "latency", count=1, latency_seconds=0.4)
    started = time.monotonic()
    stripe_client.v1.balance.retrieve()
    assert time.monotonic() - started >= 0.4
    faults = emulator.control.faults()
    assert faults[0]["fired"] == 1 and faults[0]["remaining"] == 0


def test_error_500_before_does_not_execute(emulator: RunningEmulator, stripe_client: stripe.StripeClient) -> None:
    emulator.control.add_fault("POST", "/v1/payment_intents", "error_500_before", count=1)
    params = _params()
    with pytest.raises(stripe.APIError) as caught:
        stripe_client.v1.payment_intents.create(
            params=params, options={"idempotency_key": "before-" + uuid.uuid4().hex}
        )
    assert caught.value.http_status == 500
    assert _by_order(emulator, params["metadata"]["order_id"]) == []


def test_error_500_after_executes(emulator: RunningEmulator, stripe_client: stripe.StripeClient) -> None:
    intent = stripe_client.v1.payment_intents.create(
        params={"amount": 1_000, "currency": "usd", "payment_method": "pm_card_visa"}
    )
    emulator.control.add_fault("POST", "/v1/payment_intents/*/confirm", "error_500_after", count=1)
    with pytest.raises(stripe.APIError):
        stripe_client.v1.payment_intents.confirm(intent.id)
    assert stripe_client.v1.payment_intents.retrieve(intent.id).status == "succeeded"


def test_timeout_after_commits_but_the_client_never_hears(emulator: RunningEmulator) -> None:
    emulator.control.add_fault("POST", "/v1/payment_intents", "timeout_after", count=1, latency_seconds=0.3)
    client = emulator_stripe_client(emulator.base_url, timeout_seconds=5.0)
    params = _params()
    key = "timeout-" + uuid.uuid4().hex
    with pytest.raises(stripe.APIConnectionError):
        client.v1.payment_intents.create(params=params, options={"idempotency_key": key})
    intents = _by_order(emulator, params["metadata"]["order_id"])
    assert len(intents) == 1 and intents[0]["status"] == "succeeded"
    # The retry with the same key gets the saved success, and nothing is charged twice.
    retried = client.v1.payment_intents.create(params=params, options={"idempotency_key": key})
    assert retried.id == intents[0]["id"]
    assert len(_by_order(emulator, params["metadata"]["order_id"])) == 1


def test_timeout_after_client_gives_up_first(emulator: RunningEmulator) -> None:
    emulator.control.add_fault("POST", "/v1/refunds", "timeout_after", count=1, latency_seconds=30)
    client = emulator_stripe_client(emulator.base_url)
    intent = client.v1.payment_intents.create(params=_params())
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{emulator.base_url}/v1/refunds",
            data={"payment_intent": intent.id},
            headers={"Authorization": "Bearer sk_test_x"},
            timeout=0.5,
        )
    refunds = client.v1.refunds.list(params={"payment_intent": intent.id}).data
    assert len(refunds) == 1 and refunds[0].status == "succeeded"


def test_rate_limit_429_through_the_sdk(emulator: RunningEmulator, stripe_client: stripe.StripeClient) -> None:
    emulator.control.add_fault("*", "/v1/payment_intents*", "rate_limit_429", count=1)
    with pytest.raises(stripe.RateLimitError):
        stripe_client.v1.payment_intents.list()
    stripe_client.v1.payment_intents.list()


def test_probability_and_seed_are_reproducible(emulator: RunningEmulator) -> None:
    def run() -> list[int]:
        emulator.control.clear_faults()
        emulator.control.seed(1234)
        emulator.control.add_fault("GET", "/v1/balance", "error_500_before", probability=0.5)
        return [
            httpx.get(f"{emulator.base_url}/v1/balance", headers={"Authorization": "Bearer sk_test_x"}).status_code
            for _ in range(20)
        ]

    first, second = run(), run()
    assert first == second and {200, 500} <= set(first)


def test_fault_listing_and_clearing(emulator: RunningEmulator) -> None:
    fault_id = emulator.control.add_fault("POST", "/v1/transfers", "error_500_after", count=3)
    assert [fault["id"] for fault in emulator.control.faults()] == [fault_id]
    assert emulator.control.faults()[0]["remaining"] == 3
    emulator.control.clear_faults()
    assert emulator.control.faults() == []
    with pytest.raises(Exception, match="kind"):
        emulator.control.add_fault("POST", "/v1/transfers", "explode")


async def test_async_control_client(emulator: RunningEmulator) -> None:
    from stripe_emulator.control import AsyncEmulatorControl

    async with AsyncEmulatorControl(emulator.base_url) as control:
        fault_id = await control.add_fault("GET", "/v1/balance", "error_500_before", count=1)
        assert [fault["id"] for fault in await control.faults()] == [fault_id]
        async with httpx.AsyncClient() as client:
            response = await client.get(
                f"{emulator.base_url}/v1/balance", headers={"Authorization": "Bearer sk_test_x"}
            )
        assert response.status_code == 500
        await control.clear_faults()
        assert await control.faults() == []
        assert "now" in await control.clock()
        assert isinstance(await control.payment_intents(), list)


def test_fault_matching_a_parameter_hits_only_that_account(
    emulator: RunningEmulator, stripe_client: stripe.StripeClient
) -> None:
    """One connected account whose transfers fail while the others' go through."""
    flaky, healthy = "acct_flaky" + uuid.uuid4().hex[:8], "acct_ok" + uuid.uuid4().hex[:8]
    fault = emulator.control.add_fault("POST", "/v1/transfers", "error_500_before", params={"destination": flaky})
    [rule] = [rule for rule in emulator.control.faults() if rule["id"] == fault]
    assert rule["params"] == {"destination": flaky}
    group = f"group_{uuid.uuid4().hex[:8]}"
    paid = stripe_client.v1.transfers.create(
        {"amount": 100, "currency": "usd", "destination": healthy, "transfer_group": group}
    )
    assert paid.destination == healthy
    with pytest.raises(stripe.APIError):
        stripe_client.v1.transfers.create(
            {"amount": 100, "currency": "usd", "destination": flaky, "transfer_group": group}
        )
    emulator.control.remove_fault(fault)
    recovered = stripe_client.v1.transfers.create(
        {"amount": 100, "currency": "usd", "destination": flaky, "transfer_group": group}
    )
    assert recovered.destination == flaky
    listed = stripe_client.v1.transfers.list({"transfer_group": group})
    assert sorted(str(transfer.destination) for transfer in listed.data) == sorted([healthy, flaky])


def test_fault_params_must_be_strings(emulator: RunningEmulator) -> None:
    with pytest.raises(EmulatorControlError, match="params must be an object"):
        emulator.control._call(
            "POST", "/faults", {"method": "POST", "path": "/v1/transfers", "kind": "error_500_before", "params": [1]}
        )


def test_override_status_reports_a_status_and_reset_restores_it(
    emulator: RunningEmulator, stripe_client: stripe.StripeClient
) -> None:
    intent = stripe_client.v1.payment_intents.create(_params())
    emulator.control.override_intent_status(intent.id, "requires_reauthorization")
    assert stripe_client.v1.payment_intents.retrieve(intent.id).status == "requires_reauthorization"
    emulator.control.override_intent_status(intent.id, "reset")
    assert stripe_client.v1.payment_intents.retrieve(intent.id).status == intent.status
