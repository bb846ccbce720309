"""`penny.client` against the real stack: the API under uvicorn on a real port (so timeouts are
real socket timeouts), the Penny worker on the Temporal dev server, Postgres and the Stripe
emulator over HTTP. The sync client runs in a thread (the server shares this test's loop).

The retry rules' arithmetic (Retry-After, backoff, which answers are retried) is unit-tested
at the end on real httpx responses, one function at a time."""

from __future__ import annotations

import asyncio
import random
import string
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import text

from api.edge import API_VERSION as SERVER_API_VERSION
from penny import client as penny_client
from penny.client import (
    API_VERSION,
    AsyncPennyClient,
    AuthenticationError,
    CardDataNotAllowedError,
    ConflictError,
    PennyClient,
    Recipient,
    ResourceMissingError,
    RetryEvent,
    RetryPolicy,
)
from tests.payment_fixtures import FAST_TIMINGS, PaymentStack
from tests.test_api_support import new_key, served_api_url

PAGINATED_PAYMENTS = 250
# Payments sharing one created_at: a page boundary inside such a group must neither skip nor repeat.
CREATED_AT_GROUP_SIZE = 9


@pytest_asyncio.fixture(loop_scope="session")
async def served_api(payment_stack: PaymentStack) -> AsyncIterator[str]:
    async with served_api_url(payment_stack.settings, payment_stack.client, FAST_TIMINGS) as url:
        yield url


@pytest_asyncio.fixture(loop_scope="session")
async def merchant(payment_stack: PaymentStack) -> str:
    return await new_key(payment_stack.engine, payment_stack.settings, "merchant")


@pytest_asyncio.fixture(loop_scope="session")
async def ops(payment_stack: PaymentStack) -> str:
    return await new_key(payment_stack.engine, payment_stack.settings, "ops")


def _letters(count: int) -> str:
    return "".join(random.choice(string.ascii_lowercase) for _ in range(count))


def _order(**overrides: Any) -> dict[str, Any]:
    recipients: list[Recipient] = [{"account_id": f"acct_{_letters(10)}", "share_bps": 10000}]
    order: dict[str, Any] = {
        "order_id": f"order_{_letters(12)}",
        "amount": 4999,
        "currency": "usd",
        "customer": f"cus_{_letters(10)}",
        "payment_method": "pm_card_visa",
        "recipients": recipients,
        "application_fee_bps": 998,
        "tax_amount": 0,
    }
    order.update(overrides)
    return order


def test_the_client_speaks_the_servers_version() -> None:
    assert API_VERSION == SERVER_API_VERSION


# ----------------------------------------------------------------------------- retries on the real stack


async def test_a_retry_after_a_forced_timeout_makes_one_payment(
    served_api: str, merchant: str, payment_stack: PaymentStack
) -> None:
    """The emulator holds the PaymentIntent create for 3 s; the client gives up reading after
    1 s, so its first attempt times out while the API is still making the payment. Its retries
    carry the same Idempotency-Key: 409 `idempotency_key_in_use` (Retry-After honoured) until the
    first request has stored its answer, which the last retry replays."""
    payment_stack.emulator.control.add_fault("POST", "/v1/payment_intents", "latency", count=1, latency_seconds=3)
    retries: list[RetryEvent] = []
    policy = RetryPolicy(retries_max=12, backoff_initial_seconds=0.2, backoff_max_seconds=1.0)
    order = _order()
    async with AsyncPennyClient(
        merchant,
        served_api,
        timeout_seconds=httpx.Timeout(1.0, connect=5.0),
        retry_policy=policy,
        on_retry=retries.append,
    ) as penny:
        payment = await penny.create_payment(**order)
        assert (payment["status"], payment["amount_captured"], payment["order_id"]) == (
            "captured",
            4999,
            order["order_id"],
        )
        # 9.98 % of 4999 = 498.9: the fee in minor units is 499, the request's rate is kept as given.
        assert payment["split"] is not None and payment["split"]["application_fee_amount"] == 499
        listed = [each async for each in (await penny.list_payments(customer=order["customer"])).auto_paging_iter()]
    assert retries[0].reason == "timeout", retries
    assert len({event.idempotency_key for event in retries}) == 1 and retries[0].idempotency_key
    assert [each["id"] for each in listed] == [payment["id"]]
    intents = [
        intent
        for intent in payment_stack.emulator.control.payment_intents()
        if (intent.get("metadata") or {}).get("order_id") == order["order_id"]
    ]
    assert [(intent["amount"], intent["status"]) for intent in intents] == [(4999, "succeeded")]
    async with payment_stack.engine.connect() as connection:
        stored = await connection.execute(
            text("SELECT count(*) FROM payments WHERE order_id = :order"), {"order": order["order_id"]}
        )
        assert stored.scalar_one() == 1


async def test_final_answers_are_typed_errors_and_never_retried(
    served_api: str, merchant: str, payment_stack: PaymentStack
) -> None:
    retries: list[RetryEvent] = []
    async with AsyncPennyClient(merchant, served_api, on_retry=retries.append) as penny:
        order = _order()
        await penny.create_payment(**order)
        with pytest.raises(ConflictError) as conflict:
            await penny.create_payment(**{**order, "amount": 5000})  # same order, new key, other amount
        assert (conflict.value.status, conflict.value.code, conflict.value.param) == (409, "order_conflict", "order_id")
        assert conflict.value.doc_url == "README.md#error-order_conflict"
        assert conflict.value.request_id is not None and conflict.value.request_id.startswith("req_")
        with pytest.raises(ResourceMissingError) as missing:
            await penny.retrieve_payment("pay_" + _letters(24))
        assert (missing.value.status, missing.value.type) == (404, "invalid_request_error")
        with pytest.raises(CardDataNotAllowedError) as card:
            await penny.create_payment(**_order(metadata={"cvc": "x"}))
        assert card.value.param == "metadata[cvc]"
    async with AsyncPennyClient("sk_penny_" + _letters(40), served_api, on_retry=retries.append) as stranger:
        with pytest.raises(AuthenticationError) as unknown:
            await stranger.list_payments()
        assert (unknown.value.status, unknown.value.code) == (401, "api_key_invalid")
    assert retries == []


# ----------------------------------------------------------------------------- pagination


async def _insert_payments(stack: PaymentStack, customer: str, count: int) -> set[str]:
    """`count` payments of one customer, written as the workflow's prepare step writes them (a
    real workflow per payment would make this test minutes long), in groups sharing a created_at."""
    ids: set[str] = set()
    began = datetime.now(UTC) - timedelta(hours=1)
    async with stack.engine.begin() as connection:
        for index in range(count):
            payment_id = "pay_" + _letters(24)
            order_id = f"order_{_letters(16)}"
            ids.add(payment_id)
            await connection.execute(
                text(
                    """
                    INSERT INTO payments (id, order_id, workflow_id, status, amount, currency, customer,
                                          capture_method, split, created_at)
                    VALUES (:id, :order_id, :workflow_id, 'CAPTURED', 1000, 'USD', :customer, 'automatic',
                            CAST(:split AS jsonb), :created_at)
                    """
                ),
                {
                    "id": payment_id,
                    "order_id": order_id,
                    "workflow_id": f"payment-{order_id}",
                    "customer": customer,
                    "split": '{"total": 1000, "currency": "USD", "platform_fee": 100, "tax": 0, '
                    '"parts": [{"account_id": "acct_seller", "amount": 900, "role": "seller"}]}',
                    "created_at": began + timedelta(seconds=index // CREATED_AT_GROUP_SIZE),
                },
            )
    return ids


async def test_pagination_over_250_payments_returns_each_exactly_once(
    served_api: str, merchant: str, payment_stack: PaymentStack
) -> None:
    customer = f"cus_{_letters(12)}"
    created = await _insert_payments(payment_stack, customer, PAGINATED_PAYMENTS)
    async with AsyncPennyClient(merchant, served_api) as penny:
        first = await penny.list_payments(customer=customer, limit=7)  # 7 does not divide the groups of 9
        walked = [each async for each in first.auto_paging_iter()]
        newest_first = [each["id"] for each in walked]
        assert len(newest_first) == PAGINATED_PAYMENTS and set(newest_first) == created
        created_order = [(each["created"], each["id"]) for each in walked]
        assert created_order == sorted(created_order, reverse=True)
        # Backwards from the oldest with ending_before: the same payments, oldest first.
        back = await penny.list_payments(customer=customer, limit=11, ending_before=newest_first[-1])
        assert [each["id"] async for each in back.auto_paging_iter()] == list(reversed(newest_first[:-1]))
        assert {each["split"]["application_fee_amount"] for each in walked if each["split"]} == {100}

    def walk_synchronously() -> list[str]:
        with PennyClient(merchant, served_api) as penny:
            return [each["id"] for each in penny.list_payments(customer=customer, limit=100).auto_paging_iter()]

    assert await asyncio.to_thread(walk_synchronously) == newest_first


# ----------------------------------------------------------------------------- every endpoint


async def test_every_endpoint_through_the_sync_client(
    served_api: str, merchant: str, ops: str, payment_stack: PaymentStack
) -> None:
    order = _order(amount=10000, capture_method="manual", tax_amount=500, application_fee_bps=1000)

    def tour() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        with PennyClient(merchant, served_api) as penny:
            authorized = penny.create_payment(**order)
            seen["authorized"] = (authorized["status"], authorized["amount_capturable"])
            captured = penny.capture_payment(authorized["id"])
            seen["captured"] = (captured["status"], captured["amount_captured"])
            refund = penny.create_refund(authorized["id"], amount=1000, reason="requested_by_customer")
            seen["refund"] = (
                refund["amount"],
                refund["parts"]["application_fee_amount"],
                refund["parts"]["tax_amount"],
            )
            seen["refunds"] = [each["id"] for each in penny.list_refunds(authorized["id"]).auto_paging_iter()]
            seen["refund_again"] = penny.retrieve_refund(refund["id"])["id"] == refund["id"]
            seen["events"] = [each["to_status"] for each in penny.list_payment_events(authorized["id"]).data]
            seen["ledger"] = len(penny.list_payment_ledger_lines(authorized["id"]).data)
            expanded = penny.retrieve_payment(authorized["id"], expand=["events", "refunds", "ledger_lines"])
            seen["expanded"] = (
                len(expanded["events"]["data"]) == len(seen["events"]),
                [each["id"] for each in expanded["refunds"]["data"]],
                len(expanded["ledger_lines"]["data"]) == seen["ledger"],
            )
            other = penny.create_payment(**_order(capture_method="manual"))
            seen["canceled"] = penny.cancel_payment(other["id"], reason="abandoned")["status"]
        with PennyClient(ops, served_api) as operator:
            seen["fees"] = operator.retrieve_ledger_account("platform:fees:usd")["posted"] > 0
            seen["accounts"] = len(operator.list_ledger_accounts(limit=2).data)
            seen["reviews"] = operator.list_reviews(status="open").data
            endpoint = operator.create_webhook_endpoint(
                url="http://127.0.0.1:9/hook", enabled_events=["payment.captured"], description="tour"
            )
            seen["secret"] = endpoint.get("secret", "").startswith("whsec_")
            seen["listed"] = endpoint["id"] in [each["id"] for each in operator.list_webhook_endpoints().data]
            seen["updated"] = operator.update_webhook_endpoint(endpoint["id"], description="renamed")["description"]
            seen["rolled"] = operator.roll_webhook_endpoint_secret(endpoint["id"], expires_in_seconds=0).get(
                "secret", ""
            ) != endpoint.get("secret")
            seen["deliveries"] = operator.list_webhook_deliveries(endpoint["id"]).data
            seen["retrieved"] = operator.retrieve_webhook_endpoint(endpoint["id"])["status"]
            seen["deleted"] = operator.delete_webhook_endpoint(endpoint["id"])["deleted"]
            with pytest.raises(ResourceMissingError):
                operator.retrieve_webhook_delivery("wd_" + _letters(24))
            seen["health"] = operator.health()["status"]
        return seen

    seen = await asyncio.to_thread(tour)
    assert seen["authorized"] == ("authorized", 10000)
    assert seen["captured"] == ("captured", 10000)
    # 1000 of 10000 back, proportionally: the fee (950 of 10000) gives 95, the tax (500) gives 50.
    assert seen["refund"] == (1000, 95, 50)
    assert len(seen["refunds"]) == 1 and seen["refund_again"]
    assert seen["events"][0] == "CREATED" and "AUTHORIZED" in seen["events"]
    assert seen["ledger"] > 0 and seen["expanded"] == (True, seen["refunds"], True)
    assert seen["canceled"] == "canceled"
    assert seen["fees"] and seen["accounts"] == 2 and isinstance(seen["reviews"], list)
    assert seen["secret"] and seen["listed"] and seen["updated"] == "renamed" and seen["rolled"]
    assert seen["deliveries"] == [] and seen["retrieved"] == "enabled" and seen["deleted"] is True
    assert seen["health"] == "ok"


# ----------------------------------------------------------------------------- the retry rules, unit by unit


def _answer(status: int, code: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"error": {"type": "api_error", "code": code, "message": "m", "param": None, "doc_url": "README.md#errors"}}
    return httpx.Response(status, json=body, headers=headers or {})


@pytest.mark.parametrize(
    ("status", "code", "retried"),
    [
        (409, "idempotency_key_in_use", True),
        (409, "refund_in_progress", True),
        (409, "payment_disbursement_pending", True),
        (409, "order_conflict", False),
        (409, "payment_state_conflict", False),
        (429, "rate_limited", True),
        (500, "internal_error", True),
        (503, "service_unavailable", True),
        (400, "parameter_invalid", False),
        (422, "idempotency_key_reused", False),
    ],
)
def test_which_answers_are_retried(status: int, code: str, retried: bool) -> None:
    assert (penny_client._retryable_answer(_answer(status, code)) is not None) == retried


def test_retry_after_is_honoured_and_capped_and_backoff_doubles() -> None:
    policy = RetryPolicy(backoff_initial_seconds=0.5, backoff_max_seconds=4.0, retry_after_max_seconds=10.0)
    assert penny_client._wait_seconds(policy, 1, _answer(503, "x", {"Retry-After": "5"})) == 5.0
    assert penny_client._wait_seconds(policy, 1, _answer(503, "x", {"Retry-After": "3600"})) == 10.0
    # Retry-After is a floor, not the whole wait: a locked key answering "1" again and again
    # still backs off.
    assert 2.0 <= penny_client._wait_seconds(policy, 4, _answer(409, "x", {"Retry-After": "1"})) <= 4.0
    for retry, ceiling in ((1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)):
        wait = penny_client._wait_seconds(policy, retry, None)
        assert ceiling / 2 <= wait <= ceiling


def test_generated_idempotency_keys_are_letters_only_and_distinct() -> None:
    keys = {penny_client.new_idempotency_key() for _ in range(1000)}
    assert len(keys) == 1000
    assert all(key.startswith("idk_") and key[4:].isalpha() for key in keys)


def test_a_logical_call_keeps_its_key_across_attempts() -> None:
    call = penny_client._post("/v1/payments", {"amount": 1}, None)
    assert call.headers() == call.headers() and call.idempotency_key is not None
    assert penny_client._post("/v1/payments", {"amount": 1}, "mine").idempotency_key == "mine"
