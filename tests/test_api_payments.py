"""The Payments API end to end: the real app in-process (httpx over ASGI) on the real stack —
the Penny worker and PaymentWorkflow on the Temporal dev server, Postgres, and the Stripe
emulator over HTTP. Assertions are on what a client, the processor and the books see."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import text

from api.edge import API_VERSION
from penny.services import EmbeddedPostgres, postgres_bin_dir
from tests.payment_fixtures import FAST_TIMINGS, PaymentStack
from tests.test_api_support import PAN_FORMS, PAN_VISA, api_client, auth, error_of, new_key, payment_body

CONCURRENT_REQUESTS = 20


@pytest_asyncio.fixture(loop_scope="session")
async def http(payment_stack: PaymentStack) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(payment_stack.settings, payment_stack.client, FAST_TIMINGS) as client:
        yield client


@pytest_asyncio.fixture(loop_scope="session")
async def merchant(payment_stack: PaymentStack) -> str:
    return await new_key(payment_stack.engine, payment_stack.settings, "merchant")


@pytest_asyncio.fixture(loop_scope="session")
async def ops(payment_stack: PaymentStack) -> str:
    return await new_key(payment_stack.engine, payment_stack.settings, "ops")


def intents_for(stack: PaymentStack, order_id: str) -> list[dict[str, Any]]:
    return [
        intent
        for intent in stack.emulator.control.payment_intents()
        if (intent.get("metadata") or {}).get("order_id") == order_id
    ]


async def payments_for(stack: PaymentStack, order_id: str) -> int:
    async with stack.engine.connect() as connection:
        count = await connection.execute(text("SELECT count(*) FROM payments WHERE order_id = :o"), {"o": order_id})
        return int(count.scalar_one())


async def create(
    http: httpx.AsyncClient, key: str, body: dict[str, Any], idempotency_key: str | None = None
) -> httpx.Response:
    return await http.post("/v1/payments", json=body, headers=auth(key, idempotency_key or str(uuid.uuid4())))


# ----------------------------------------------------------------------------- create and idempotency


async def test_create_answers_at_the_first_milestone(
    http: httpx.AsyncClient, merchant: str, payment_stack: PaymentStack
) -> None:
    body = payment_body(amount=9999)
    response = await create(http, merchant, body)
    assert response.status_code == 200, response.text
    payment = response.json()
    assert payment["id"].startswith("pay_") and payment["object"] == "payment"
    assert payment["status"] == "captured"
    assert (payment["amount"], payment["currency"], payment["order_id"]) == (9999, "USD", body["order_id"])
    assert payment["amount_captured"] == 9999
    assert payment["metadata"] == {"cart": "c_1"}
    split = payment["split"]
    assert (split["amount"], split["application_fee_amount"], split["tax_amount"]) == (9999, 1000, 0)
    assert split["recipients"][0]["amount"] == 8999
    assert response.headers["Idempotent-Replayed"] == "false"
    assert response.headers["Request-Id"].startswith("req_")
    fetched = await http.get(f"/v1/payments/{payment['id']}", headers=auth(merchant))
    assert fetched.status_code == 200
    assert (fetched.json()["id"], fetched.json()["status"]) == (payment["id"], "captured")
    assert [intent["amount"] for intent in intents_for(payment_stack, body["order_id"])] == [9999]


async def test_retry_with_the_same_key_replays_the_stored_response(
    http: httpx.AsyncClient, merchant: str, payment_stack: PaymentStack
) -> None:
    body = payment_body()
    first = await create(http, merchant, body, "retry-key-1")
    again = await create(http, merchant, body, "retry-key-1")
    assert first.status_code == again.status_code == 200
    assert again.text == first.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(intents_for(payment_stack, body["order_id"])) == 1
    assert await payments_for(payment_stack, body["order_id"]) == 1


async def test_same_key_with_a_different_amount_is_422(
    http: httpx.AsyncClient, merchant: str, payment_stack: PaymentStack
) -> None:
    """The seed's case: $100, then the same key with $200."""
    body = payment_body(amount=10000)
    assert (await create(http, merchant, body, "hundred-then-two-hundred")).status_code == 200
    refused = await create(http, merchant, {**body, "amount": 20000}, "hundred-then-two-hundred")
    assert refused.status_code == 422
    error = error_of(refused)
    assert (error["type"], error["param"]) == ("idempotency_error", "amount")
    assert "amount" in error["message"]
    assert [intent["amount"] for intent in intents_for(payment_stack, body["order_id"])] == [10000]


async def test_twenty_concurrent_identical_requests_make_one_payment(
    http: httpx.AsyncClient, merchant: str, payment_stack: PaymentStack
) -> None:
    body = payment_body()
    responses = await asyncio.gather(
        *(create(http, merchant, body, "twenty-at-once") for _ in range(CONCURRENT_REQUESTS))
    )
    executed = [r for r in responses if r.status_code == 200 and r.headers["Idempotent-Replayed"] == "false"]
    replayed = [r for r in responses if r.status_code == 200 and r.headers["Idempotent-Replayed"] == "true"]
    in_flight = [r for r in responses if r.status_code == 409]
    assert len(executed) == 1
    assert len(replayed) + len(in_flight) == CONCURRENT_REQUESTS - 1
    assert all(error_of(r)["code"] == "idempotency_key_in_use" and r.headers["Retry-After"] for r in in_flight)
    assert all(r.json()["id"] == executed[0].json()["id"] for r in replayed)
    assert len(intents_for(payment_stack, body["order_id"])) == 1
    assert await payments_for(payment_stack, body["order_id"]) == 1
    # Once the first has answered, every retry is a replay.
    assert (await create(http, merchant, body, "twenty-at-once")).headers["Idempotent-Replayed"] == "true"


async def test_concurrent_requests_with_different_keys_for_one_order_make_one_payment(
    http: httpx.AsyncClient, merchant: str, payment_stack: PaymentStack
) -> None:
    body = payment_body()
    responses = await asyncio.gather(*(create(http, merchant, body) for _ in range(5)))
    assert {r.status_code for r in responses} == {200}
    assert len({r.json()["id"] for r in responses}) == 1
    assert len(intents_for(payment_stack, body["order_id"])) == 1


async def test_another_key_for_the_same_order_and_body_returns_the_existing_payment(
    http: httpx.AsyncClient, merchant: str, payment_stack: PaymentStack
) -> None:
    body = payment_body()
    first = await create(http, merchant, body)
    second = await create(http, merchant, body)
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    assert len(intents_for(payment_stack, body["order_id"])) == 1


async def test_another_key_for_the_same_order_with_another_body_is_409(
    http: httpx.AsyncClient, merchant: str, payment_stack: PaymentStack
) -> None:
    body = payment_body()
    assert (await create(http, merchant, body)).status_code == 200
    conflict = await create(http, merchant, {**body, "amount": body["amount"] + 1}, "other-key")
    assert conflict.status_code == 409
    assert (error_of(conflict)["code"], error_of(conflict)["param"]) == ("order_conflict", "order_id")
    # The refusal was an executed outcome: the same key replays it.
    replay = await create(http, merchant, {**body, "amount": body["amount"] + 1}, "other-key")
    assert replay.status_code == 409 and replay.headers["Idempotent-Replayed"] == "true"
    assert [intent["amount"] for intent in intents_for(payment_stack, body["order_id"])] == [body["amount"]]


async def test_a_crash_between_start_and_stored_response_is_recovered_by_the_retry(
    http: httpx.AsyncClient, merchant: str, payment_stack: PaymentStack
) -> None:
    """The workflow started but the response was never stored (the API process died)."""
    body = payment_body()
    first = await create(http, merchant, body, "crash-key")
    rewind = text(
        """
        UPDATE idempotency_keys
        SET status = 'in_flight', response_code = NULL, response_body = NULL, lock_token = 'dead-process',
            locked_at = now() - make_interval(secs => :age_seconds)
        WHERE key = 'crash-key'
        """
    )
    async with payment_stack.engine.begin() as connection:
        await connection.execute(rewind, {"age_seconds": 1})
    # While the (dead) holder's lock is fresh, a retry is told to wait.
    waiting = await create(http, merchant, body, "crash-key")
    assert waiting.status_code == 409 and waiting.headers["Retry-After"] == "1"
    async with payment_stack.engine.begin() as connection:
        await connection.execute(rewind, {"age_seconds": payment_stack.settings.idempotency_lock_timeout_seconds + 1})
    recovered = await create(http, merchant, body, "crash-key")
    assert recovered.status_code == 200
    assert recovered.headers["Idempotent-Replayed"] == "false"
    assert recovered.json()["id"] == first.json()["id"]
    assert (await create(http, merchant, body, "crash-key")).headers["Idempotent-Replayed"] == "true"
    assert len(intents_for(payment_stack, body["order_id"])) == 1


async def test_a_decline_is_a_failed_payment(http: httpx.AsyncClient, merchant: str) -> None:
    response = await create(http, merchant, payment_body(payment_method="pm_card_chargeDeclined"))
    assert response.status_code == 200
    assert response.json()["status"] == "failed"
    assert response.json()["failure_code"]


# ----------------------------------------------------------------------------- capture and cancel


async def test_manual_capture_then_illegal_second_capture(http: httpx.AsyncClient, merchant: str) -> None:
    payment = (await create(http, merchant, payment_body(capture_method="manual", amount=5000))).json()
    assert (payment["status"], payment["amount_capturable"]) == ("authorized", 5000)
    path = f"/v1/payments/{payment['id']}/capture"
    too_much = await http.post(path, json={"amount": 6000}, headers=auth(merchant, str(uuid.uuid4())))
    assert too_much.status_code == 400 and error_of(too_much)["code"] == "amount_too_large"
    captured = await http.post(path, json={"amount": 4000}, headers=auth(merchant, "capture-1"))
    assert captured.status_code == 200, captured.text
    assert (captured.json()["status"], captured.json()["amount_captured"]) == ("captured", 4000)
    replay = await http.post(path, json={"amount": 4000}, headers=auth(merchant, "capture-1"))
    assert replay.headers["Idempotent-Replayed"] == "true" and replay.text == captured.text
    again = await http.post(path, headers=auth(merchant, "capture-2"))
    assert again.status_code == 409 and error_of(again)["code"] == "payment_state_conflict"
    cancel = await http.post(f"/v1/payments/{payment['id']}/cancel", headers=auth(merchant, "cancel-1"))
    assert cancel.status_code == 409 and error_of(cancel)["code"] == "payment_state_conflict"


async def test_cancel_an_authorization(http: httpx.AsyncClient, merchant: str, payment_stack: PaymentStack) -> None:
    body = payment_body(capture_method="manual")
    payment = (await create(http, merchant, body)).json()
    canceled = await http.post(
        f"/v1/payments/{payment['id']}/cancel", json={"reason": "abandoned"}, headers=auth(merchant, "c-1")
    )
    assert canceled.status_code == 200, canceled.text
    assert canceled.json()["status"] == "canceled"
    assert [intent["status"] for intent in intents_for(payment_stack, body["order_id"])] == ["canceled"]


# ----------------------------------------------------------------------------- reads


async def test_list_filters_and_cursor_pagination(http: httpx.AsyncClient, merchant: str, ops: str) -> None:
    customer = f"cus_{uuid.uuid4().hex[:8]}"
    created = [(await create(http, merchant, payment_body(customer=customer))).json()["id"] for _ in range(3)]
    seen: list[str] = []
    cursor: str | None = None
    while True:
        query = f"/v1/payments?customer={customer}&limit=2" + (f"&starting_after={cursor}" if cursor else "")
        page = (await http.get(query, headers=auth(ops))).json()
        assert page["object"] == "list" and len(page["data"]) <= 2
        seen += [payment["id"] for payment in page["data"]]
        if not page["has_more"]:
            break
        cursor = page["data"][-1]["id"]
    assert sorted(seen) == sorted(created) and len(seen) == len(set(seen))
    captured = (await http.get(f"/v1/payments?customer={customer}&status=captured", headers=auth(ops))).json()
    assert len(captured["data"]) == 3
    failed = (await http.get(f"/v1/payments?customer={customer}&status=failed", headers=auth(ops))).json()
    assert failed["data"] == []
    future = (await http.get(f"/v1/payments?customer={customer}&created[gte]=4102444800", headers=auth(ops))).json()
    assert future["data"] == []


async def test_audit_trail_and_ledger_of_a_payment(http: httpx.AsyncClient, merchant: str, ops: str) -> None:
    payment = (await create(http, merchant, payment_body(amount=9999))).json()
    events = (await http.get(f"/v1/payments/{payment['id']}/events", headers=auth(merchant))).json()
    assert events["data"][0]["to_status"] == "CREATED"
    assert events["data"][-1]["to_status"] == "CAPTURED"
    first_page = (await http.get(f"/v1/payments/{payment['id']}/events?limit=1", headers=auth(merchant))).json()
    assert first_page["has_more"] and len(first_page["data"]) == 1
    ledger = (await http.get(f"/v1/payments/{payment['id']}/ledger", headers=auth(merchant))).json()
    assert ledger["data"]
    for entry in ledger["data"]:
        by_currency: dict[str, int] = {}
        for posting in entry["postings"]:
            by_currency[posting["currency"]] = by_currency.get(posting["currency"], 0) + posting["amount"]
        assert set(by_currency.values()) <= {0}, entry
    fees = await http.get("/v1/ledger/accounts/platform:fees:usd", headers=auth(ops))
    assert fees.status_code == 200 and fees.json()["posted"] >= 1000
    accounts = (await http.get("/v1/ledger/accounts?limit=2", headers=auth(ops))).json()
    assert len(accounts["data"]) == 2 and accounts["has_more"]
    following = (
        await http.get(f"/v1/ledger/accounts?limit=2&starting_after={accounts['data'][-1]['code']}", headers=auth(ops))
    ).json()
    assert following["data"][0]["code"] > accounts["data"][-1]["code"]


# ----------------------------------------------------------------------------- card data end to end


async def test_a_card_number_reaches_no_log_and_no_database_row(
    http: httpx.AsyncClient,
    merchant: str,
    payment_stack: PaymentStack,
    postgres_server: EmbeddedPostgres,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the test client logs its own URLs
    order = payment_body()
    for pan in PAN_FORMS:
        for body in (
            {**order, "metadata": {"note": pan}},
            {**order, "customer": pan},
            {**order, "card": {"number": pan, "exp_month": 12, "cvc": "123"}},
        ):
            refused = await create(http, merchant, body, f"pan-{uuid.uuid4()}")
            assert refused.status_code == 400 and error_of(refused)["code"] == "card_data_not_allowed"
            assert pan not in refused.text
    # A clean payment in the same run, so the dump has real rows to search.
    assert (await create(http, merchant, order)).status_code == 200
    database = payment_stack.settings.effective_database_url.rsplit("/", 1)[-1]
    completed = await asyncio.to_thread(
        subprocess.run,
        [
            str(postgres_bin_dir() / "pg_dump"),
            "-h",
            postgres_server.host,
            "-p",
            str(postgres_server.port),
            "-U",
            "postgres",
            "--data-only",
            database,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    dump = completed.stdout
    assert order["order_id"] in dump
    logged = "\n".join(record.getMessage() for record in caplog.records)
    for pan in [*PAN_FORMS, *(form.replace(" ", "").replace("-", "") for form in PAN_FORMS)]:
        assert pan not in dump
        assert pan not in logged
    assert PAN_VISA not in dump


# ----------------------------------------------------------------------------- unit-named fields


async def test_fee_tax_and_every_recipient_round_trip_exactly_to_the_ledger(
    http: httpx.AsyncClient, merchant: str
) -> None:
    """request (application_fee_bps, tax_amount, recipients' amount / share_bps) → response
    (split.application_fee_amount, tax_amount, recipients' amount, all minor units) → ledger."""
    run = uuid.uuid4().hex[:8]
    driver, seller_a, seller_b = f"acct_driver_{run}", f"acct_a_{run}", f"acct_b_{run}"
    body = payment_body(
        amount=10000,
        application_fee_bps=1250,
        tax_amount=800,
        recipients=[
            {"account_id": driver, "amount": 1500, "role": "driver"},
            {"account_id": seller_a, "share_bps": 6000},
            {"account_id": seller_b, "share_bps": 4000},
        ],
    )
    response = await create(http, merchant, body)
    assert response.status_code == 200, response.text
    # Net of tax 9200; fee 12.5 % of it = 1150; 8050 left: 1500 fixed, then 6550 as 60/40.
    expected_split = {
        "amount": 10000,
        "currency": "USD",
        "application_fee_amount": 1150,
        "tax_amount": 800,
        "recipients": [
            {"account_id": driver, "amount": 1500, "role": "driver"},
            {"account_id": seller_a, "amount": 3930, "role": "seller"},
            {"account_id": seller_b, "amount": 2620, "role": "seller"},
        ],
    }
    payment = response.json()
    assert payment["split"] == expected_split
    fetched = await http.get(f"/v1/payments/{payment['id']}?expand[]=ledger_lines", headers=auth(merchant))
    assert fetched.json()["split"] == expected_split
    [capture] = [
        entry
        for entry in fetched.json()["ledger_lines"]["data"]
        if any(posting["account"] == "platform:fees:usd" for posting in entry["postings"])
    ]
    assert {posting["account"]: posting["amount"] for posting in capture["postings"]} == {
        "stripe:pending:usd": 10000,
        "platform:fees:usd": -1150,
        "tax:payable:usd": -800,
        f"seller:{driver}:payable:usd": -1500,
        f"seller:{seller_a}:payable:usd": -3930,
        f"seller:{seller_b}:payable:usd": -2620,
    }


async def test_expand_events_refunds_and_ledger_lines(http: httpx.AsyncClient, merchant: str) -> None:
    payment = (await create(http, merchant, payment_body(amount=9999))).json()
    plain = (await http.get(f"/v1/payments/{payment['id']}", headers=auth(merchant))).json()
    assert not {"events", "refunds", "ledger_lines"} & set(plain)
    query = "expand[]=events&expand[]=refunds&expand[]=ledger_lines"
    expanded = (await http.get(f"/v1/payments/{payment['id']}?{query}", headers=auth(merchant))).json()
    assert (
        expanded["events"]["object"] == "list" and expanded["events"]["url"] == f"/v1/payments/{payment['id']}/events"
    )
    assert [event["to_status"] for event in expanded["events"]["data"]][-1] == "CAPTURED"
    assert expanded["refunds"] == {
        "object": "list",
        "url": f"/v1/payments/{payment['id']}/refunds",
        "has_more": False,
        "data": [],
    }
    assert all(entry["object"] == "ledger_entry" and entry["created"] > 0 for entry in expanded["ledger_lines"]["data"])
    wrong = await http.get(f"/v1/payments/{payment['id']}?expand[]=customer", headers=auth(merchant))
    assert wrong.status_code == 400
    assert (error_of(wrong)["code"], error_of(wrong)["param"]) == ("parameter_invalid", "expand[0]")


async def test_ending_before_pages_back_and_cursors_are_exclusive(http: httpx.AsyncClient, merchant: str) -> None:
    customer = f"cus_{uuid.uuid4().hex[:8]}"
    created = [(await create(http, merchant, payment_body(customer=customer))).json()["id"] for _ in range(3)]
    newest_first = list(reversed(created))
    last_page = (
        await http.get(
            f"/v1/payments?customer={customer}&limit=1&starting_after={newest_first[1]}", headers=auth(merchant)
        )
    ).json()
    assert [p["id"] for p in last_page["data"]] == [newest_first[2]] and not last_page["has_more"]
    back = (
        await http.get(
            f"/v1/payments?customer={customer}&limit=2&ending_before={newest_first[2]}", headers=auth(merchant)
        )
    ).json()
    assert [p["id"] for p in back["data"]] == newest_first[:2] and not back["has_more"]
    back_one = (
        await http.get(
            f"/v1/payments?customer={customer}&limit=1&ending_before={newest_first[2]}", headers=auth(merchant)
        )
    ).json()
    assert [p["id"] for p in back_one["data"]] == [newest_first[1]] and back_one["has_more"]
    both = await http.get(
        f"/v1/payments?starting_after={created[0]}&ending_before={created[1]}", headers=auth(merchant)
    )
    assert both.status_code == 400 and error_of(both)["code"] == "parameters_exclusive"
    events = (await http.get(f"/v1/payments/{created[0]}/events", headers=auth(merchant))).json()["data"]
    before_last = (
        await http.get(
            f"/v1/payments/{created[0]}/events?limit=1&ending_before={events[-1]['id']}", headers=auth(merchant)
        )
    ).json()
    assert [event["id"] for event in before_last["data"]] == [events[-2]["id"]] and before_last["has_more"]


async def test_penny_version_is_echoed_and_recorded_with_the_request_id(
    http: httpx.AsyncClient, merchant: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="penny.api")
    default = await http.get("/v1/payments?limit=1", headers=auth(merchant))
    assert default.headers["Penny-Version"] == API_VERSION
    pinned = await http.get("/v1/payments?limit=1", headers={**auth(merchant), "Penny-Version": API_VERSION})
    assert pinned.status_code == 200 and pinned.headers["Penny-Version"] == API_VERSION
    request_id = pinned.headers["Request-Id"]
    [line] = [record.getMessage() for record in caplog.records if request_id in record.getMessage()]
    assert line.startswith(f"{request_id} GET /v1/payments 200 ") and line.endswith(f"penny_version={API_VERSION}")
    unknown = await http.get("/v1/payments", headers={**auth(merchant), "Penny-Version": "2019-01-01"})
    assert unknown.status_code == 400
    assert (error_of(unknown)["code"], error_of(unknown)["param"]) == ("api_version_invalid", "Penny-Version")
    assert unknown.headers["Request-Id"].startswith("req_")
