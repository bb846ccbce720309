"""Idempotency exactly as Stripe documents it, through the SDK and raw HTTP."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import stripe

from tests.conftest import RunningEmulator

HEADERS = {"Authorization": "Bearer sk_test_idempotency"}


def _key() -> str:
    return f"key-{uuid.uuid4()}"


def _post(base_url: str, path: str, data: dict[str, str], key: str | None, timeout: float = 10.0) -> httpx.Response:
    headers = dict(HEADERS)
    if key is not None:
        headers["Idempotency-Key"] = key
    return httpx.post(base_url + path, data=data, headers=headers, timeout=timeout)


def _order_params() -> dict[str, str]:
    return {
        "amount": "1500",
        "currency": "usd",
        "payment_method": "pm_card_visa",
        "confirm": "true",
        "metadata[order_id]": uuid.uuid4().hex,
    }


def _intents_for(emulator: RunningEmulator, order_id: str) -> list[dict[str, object]]:
    return [intent for intent in emulator.control.payment_intents() if intent["metadata"].get("order_id") == order_id]  # type: ignore[index, union-attr]


def test_replay_returns_the_saved_response_with_header(emulator: RunningEmulator) -> None:
    key, params = _key(), _order_params()
    first = _post(emulator.base_url, "/v1/payment_intents", params, key)
    second = _post(emulator.base_url, "/v1/payment_intents", params, key)
    assert first.status_code == second.status_code == 200
    assert second.json() == first.json()
    assert second.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    assert len(_intents_for(emulator, params["metadata[order_id]"])) == 1


def test_sdk_replay_is_visible_on_last_response(stripe_client: stripe.StripeClient) -> None:
    key = _key()
    params = {"amount": 1_000, "currency": "usd", "metadata": {"order_id": uuid.uuid4().hex}}
    first = stripe_client.v1.payment_intents.create(params=params, options={"idempotency_key": key})  # type: ignore[arg-type]
    second = stripe_client.v1.payment_intents.create(params=params, options={"idempotency_key": key})  # type: ignore[arg-type]
    assert first.id == second.id
    assert second.last_response is not None and second.last_response.headers["Idempotent-Replayed"] == "true"


def test_same_key_different_parameters_is_an_idempotency_error(emulator: RunningEmulator) -> None:
    key, params = _key(), _order_params()
    assert _post(emulator.base_url, "/v1/payment_intents", params, key).status_code == 200
    changed = _post(emulator.base_url, "/v1/payment_intents", {**params, "amount": "1600"}, key)
    assert changed.status_code == 400 and changed.json()["error"]["type"] == "idempotency_error"
    other_endpoint = _post(emulator.base_url, "/v1/refunds", {"payment_intent": "pi_x"}, key)
    assert other_endpoint.status_code == 400 and other_endpoint.json()["error"]["type"] == "idempotency_error"


def test_sdk_raises_idempotency_error(stripe_client: stripe.StripeClient) -> None:
    key = _key()
    stripe_client.v1.payment_intents.create(
        params={"amount": 1_000, "currency": "usd"}, options={"idempotency_key": key}
    )
    with pytest.raises(stripe.IdempotencyError):
        stripe_client.v1.payment_intents.create(
            params={"amount": 2_000, "currency": "usd"}, options={"idempotency_key": key}
        )


def test_key_longer_than_255_is_refused(emulator: RunningEmulator) -> None:
    response = _post(emulator.base_url, "/v1/payment_intents", _order_params(), "k" * 256)
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"
    assert _post(
        emulator.base_url, "/v1/payment_intents", _order_params(), "k" * 255 + uuid.uuid4().hex[:0]
    ).status_code in (200, 400)


def test_decline_is_saved_and_replayed(emulator: RunningEmulator) -> None:
    key = _key()
    params = {**_order_params(), "payment_method": "pm_card_chargeDeclined"}
    first = _post(emulator.base_url, "/v1/payment_intents", params, key)
    second = _post(emulator.base_url, "/v1/payment_intents", params, key)
    assert first.status_code == second.status_code == 402
    assert second.headers["Idempotent-Replayed"] == "true" and second.json() == first.json()
    assert len(_intents_for(emulator, params["metadata[order_id]"])) == 1


def test_validation_errors_are_not_saved(emulator: RunningEmulator) -> None:
    key = _key()
    invalid = _post(emulator.base_url, "/v1/payment_intents", {"currency": "usd"}, key)
    assert invalid.status_code == 400
    # The same key then executes as new, even with other parameters.
    assert _post(emulator.base_url, "/v1/payment_intents", _order_params(), key).status_code == 200


def test_rate_limited_requests_are_not_saved(emulator: RunningEmulator) -> None:
    emulator.control.add_fault("POST", "/v1/payment_intents", "rate_limit_429", count=1)
    key, params = _key(), _order_params()
    limited = _post(emulator.base_url, "/v1/payment_intents", params, key)
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limit"
    assert _intents_for(emulator, params["metadata[order_id]"]) == []
    retried = _post(emulator.base_url, "/v1/payment_intents", params, key)
    assert retried.status_code == 200 and "Idempotent-Replayed" not in retried.headers


def test_error_500_after_commit_is_saved_and_replayed_though_the_intent_exists(emulator: RunningEmulator) -> None:
    """Stripe saves a 500 returned once execution began and replays it; the object exists all the same."""
    emulator.control.add_fault("POST", "/v1/payment_intents", "error_500_after", count=1)
    key, params = _key(), _order_params()
    failed = _post(emulator.base_url, "/v1/payment_intents", params, key)
    assert failed.status_code == 500 and failed.json()["error"]["type"] == "api_error"
    intents = _intents_for(emulator, params["metadata[order_id]"])
    assert len(intents) == 1 and intents[0]["status"] == "succeeded"
    retried = _post(emulator.base_url, "/v1/payment_intents", params, key)
    assert retried.status_code == 500 and retried.headers["Idempotent-Replayed"] == "true"
    assert len(_intents_for(emulator, params["metadata[order_id]"])) == 1


def test_unexpected_500_once_execution_began_is_saved(emulator: RunningEmulator) -> None:
    # A handler crash: unknown internal state is simulated by confirming with a payment method
    # whose private record was lost; the emulator answers 500 and saves it, as Stripe does.
    intent = _post(
        emulator.base_url,
        "/v1/payment_intents",
        {"amount": "1000", "currency": "usd", "payment_method": "pm_card_visa"},
        None,
    ).json()
    emulator.app.state.private.pop(intent["payment_method"], None)
    key = _key()
    first = _post(emulator.base_url, f"/v1/payment_intents/{intent['id']}/confirm", {}, key)
    second = _post(emulator.base_url, f"/v1/payment_intents/{intent['id']}/confirm", {}, key)
    assert first.status_code == second.status_code == 500
    assert second.headers["Idempotent-Replayed"] == "true"


def test_concurrent_identical_requests_create_exactly_one_object(emulator: RunningEmulator) -> None:
    key, params = _key(), _order_params()
    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(lambda _: _post(emulator.base_url, "/v1/payment_intents", params, key), range(32)))
    assert {response.status_code for response in responses} <= {200, 409}
    ids = {response.json()["id"] for response in responses if response.status_code == 200}
    assert len(ids) == 1
    assert len(_intents_for(emulator, params["metadata[order_id]"])) == 1


def test_request_in_flight_gets_409(emulator: RunningEmulator) -> None:
    emulator.control.add_fault("POST", "/v1/payment_intents", "latency", count=1, latency_seconds=0.6)
    key, params = _key(), _order_params()
    with ThreadPoolExecutor(max_workers=2) as pool:
        slow = pool.submit(_post, emulator.base_url, "/v1/payment_intents", params, key)
        import time

        time.sleep(0.2)
        conflict = _post(emulator.base_url, "/v1/payment_intents", params, key)
        assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "idempotency_key_in_use"
        assert slow.result().status_code == 200
    assert len(_intents_for(emulator, params["metadata[order_id]"])) == 1
