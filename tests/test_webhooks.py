"""Stripe webhooks end to end: the emulator signs and delivers (with faults) to the Penny API
running under uvicorn, which stores, dedupes and signals the real payment workflows on the
real Temporal dev server; the relay delivers what the API could not.

Payments here use timings whose polls never fire during a test, so only webhooks move them.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from activities.webhooks import WebhookRelayActivities, claim_due_events, event_from_payload
from api.app import create_app
from api.webhook_signature import sign
from api.webhooks import WEBHOOK_PATH, router
from penny.services import HTTP_KEEP_ALIVE_SECONDS, free_port
from penny.settings import Settings
from stripe_emulator.control import AsyncEmulatorControl
from tests.payment_fixtures import FAST_TIMINGS, PaymentStack
from tests.test_api_support import run_cli
from tests.test_payment_workflow import new_order, start, wait_for_status
from workflows.payment_models import PaymentState
from workflows.webhook_relay import WebhookRelayWorkflow, start_webhook_relay

API_START_TIMEOUT_SECONDS = 10.0
# Polls slower than any test: a payment here moves only when a webhook tells it to.
WEBHOOK_ONLY_TIMINGS = replace(
    FAST_TIMINGS,
    processing_poll_interval_seconds=3600,
    requires_action_timeout_seconds=3600,
    settlement_poll_interval_seconds=3600,
    dispute_window_seconds=300,
)
ROTATION_SECRET = "whsec_penny_test_rotation_" + "a" * 16


def fast_webhook_settings(base: Settings, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "webhook_signal_timeout_seconds": 1.0,
        "webhook_relay_interval_seconds": 0.2,
        "webhook_relay_grace_seconds": 0.5,
        "webhook_relay_backoff_initial_seconds": 0.2,
        "webhook_relay_backoff_max_seconds": 1.0,
        # Unrouted at once unless a test asks for routing again (no relay runs beside most tests).
        "webhook_unrouted_attempts_max": 1,
        **overrides,
    }
    return base.model_copy(update=values)


def build_api(settings: Settings) -> FastAPI:
    app = create_app(settings)
    if not any(getattr(route, "path", None) == WEBHOOK_PATH for route in app.routes):
        app.include_router(router)
    return app


@dataclass
class RunningApi:
    base_url: str
    settings: Settings
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def webhook_url(self) -> str:
        return self.base_url + WEBHOOK_PATH

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def start_api(settings: Settings, port: int) -> RunningApi:
    """The API in its own thread and event loop (its own engine and Temporal client), as in production."""
    server = uvicorn.Server(
        uvicorn.Config(
            build_api(settings),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="on",
            timeout_keep_alive=HTTP_KEEP_ALIVE_SECONDS,  # as `penny api` runs it
        )
    )
    thread = threading.Thread(target=server.run, name=f"penny-api-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + API_START_TIMEOUT_SECONDS
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the Penny API did not start")
        time.sleep(0.01)
    return RunningApi(f"http://127.0.0.1:{port}", settings, server, thread)


@dataclass
class WebhookSetup:
    api: RunningApi
    endpoint_id: str
    secret: str
    emulator: Any
    control: AsyncEmulatorControl

    def post(self, body: bytes, header: str | bytes | None, **extra_headers: str) -> httpx.Response:
        # All as bytes, so a fuzzed signature header goes out exactly as given; text is encoded
        # as ASCII, as httpx itself would.
        headers = {b"Content-Type": b"application/json"}
        headers.update((name.encode("ascii"), value.encode("ascii")) for name, value in extra_headers.items())
        if header is not None:
            headers[b"Stripe-Signature"] = header if isinstance(header, bytes) else header.encode("ascii")
        return httpx.post(self.api.webhook_url, content=body, headers=headers, timeout=10)


@pytest.fixture(scope="module")
def webhooks(database_url: str, temporal_client: Client, stripe_emulator: Any) -> Iterator[WebhookSetup]:
    """One API per module, registered at the shared emulator (deleted afterwards)."""
    port = free_port()
    http = httpx.Client(base_url=stripe_emulator.base_url, headers={"Authorization": "Bearer sk_test_penny_webhooks"})
    created = http.post(
        "/v1/webhook_endpoints", data={"url": f"http://127.0.0.1:{port}{WEBHOOK_PATH}", "enabled_events[]": "*"}
    )
    assert created.status_code == 200, created.text
    endpoint = created.json()
    settings = fast_webhook_settings(
        Settings(
            env="test",
            database_url=database_url,
            temporal_address=temporal_client.service_client.config.target_host,
            temporal_namespace=temporal_client.namespace,
            stripe_api_base=stripe_emulator.base_url,
            stripe_webhook_secrets=f"{endpoint['secret']},{ROTATION_SECRET}",
        )
    )
    api = start_api(settings, port)
    control = AsyncEmulatorControl(stripe_emulator.base_url)
    try:
        yield WebhookSetup(api, endpoint["id"], endpoint["secret"], stripe_emulator, control)
    finally:
        http.delete(f"/v1/webhook_endpoints/{endpoint['id']}")
        http.close()
        stripe_emulator.control.clear_webhook_faults()
        api.stop()


# ------------------------------------------------------------------------------------------ helpers


def signed_event(event_type: str, obj: dict[str, Any], *, event_id: str | None = None) -> dict[str, Any]:
    return {
        "id": event_id or f"evt_test_{uuid.uuid4().hex[:20]}",
        "object": "event",
        "api_version": "2024-06-20",
        "created": int(time.time()),
        "data": {"object": obj},
        "livemode": False,
        "pending_webhooks": 1,
        "type": event_type,
    }


def encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


async def inbox_rows(engine: AsyncEngine, where: str, params: dict[str, Any]) -> list[Any]:
    async with engine.connect() as connection:
        return list((await connection.execute(text(f"SELECT * FROM webhook_events WHERE {where}"), params)).all())


async def events_for_payment(engine: AsyncEngine, payment_id: str) -> list[Any]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT event, stripe_event_id, to_status FROM payment_events WHERE payment_id = :id ORDER BY id"),
            {"id": payment_id},
        )
        return list(rows.all())


async def inbox_for_intents(engine: AsyncEngine, intent_ids: list[str]) -> list[Any]:
    return await inbox_rows(
        engine,
        "object_id = ANY(:ids) OR payload #>> '{data,object,payment_intent}' = ANY(:ids)",
        {"ids": intent_ids},
    )


async def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def start_requires_action(stack: PaymentStack) -> tuple[PaymentState, WorkflowHandle[Any, Any]]:
    payment = new_order(payment_method="pm_card_authenticationRequired", timings=WEBHOOK_ONLY_TIMINGS)
    state, handle = await start(stack, payment)
    assert state.status == "REQUIRES_ACTION", state.history
    return state, handle


def assert_each_event_applied_once(trail: list[Any]) -> None:
    """No Stripe event id produced two audit rows (applied twice, or applied and also ignored)."""
    event_ids = [row.stripe_event_id for row in trail if row.stripe_event_id]
    assert len(event_ids) == len(set(event_ids)), trail


# ------------------------------------------------------------------------------------------ tests


async def test_duplicates_and_reordering_apply_each_event_once(
    webhooks: WebhookSetup, payment_stack: PaymentStack
) -> None:
    control = webhooks.control
    await control.add_webhook_fault("duplicate", probability=0.5)
    await control.add_webhook_fault("reorder", probability=1.0, window=5, delay_seconds=0.5)
    succeed = [await start_requires_action(payment_stack) for _ in range(3)]
    fail_state, fail_handle = await start_requires_action(payment_stack)
    dispute_state, dispute_handle = await start(
        payment_stack, new_order(payment_method="pm_card_createDispute", timings=WEBHOOK_ONLY_TIMINGS)
    )
    assert dispute_state.status == "CAPTURED"
    for state, _ in succeed:
        await control.complete_action(state.stripe_payment_intent_id or "", "succeed")
    await control.complete_action(fail_state.stripe_payment_intent_id or "", "fail")

    for _, handle in succeed:
        await wait_for_status(handle, "CAPTURED", timeout=30)
    await wait_for_status(fail_handle, "FAILED", timeout=30)
    await wait_for_status(dispute_handle, "DISPUTED", timeout=30)
    assert await control.wait_for_webhooks(timeout_seconds=20)
    await control.clear_webhook_faults()

    engine = payment_stack.engine
    states = [state for state, _ in succeed] + [fail_state, dispute_state]
    intents = [state.stripe_payment_intent_id or "" for state in states]
    rows = await inbox_for_intents(engine, intents)
    assert len(rows) == len({row.event_id for row in rows}), "each event is stored once"
    assert {row.status for row in rows} <= {"delivered", "ignored"}, [(r.type, r.status, r.last_error) for r in rows]
    deliveries = [
        delivery
        for row in rows
        for delivery in await control.webhook_deliveries(event_id=row.event_id)
        if delivery["endpoint_id"] == webhooks.endpoint_id
    ]
    duplicated = [d for d in deliveries if any(a["fault"] == "duplicate" for a in d["attempts"])]
    assert duplicated, "the 50% duplicate fault fired at least once"
    assert all(a["status_code"] == 200 for d in duplicated for a in d["attempts"])
    for state in states:
        trail = await events_for_payment(engine, state.payment_id)
        assert_each_event_applied_once(trail)
    for state, _ in succeed:
        trail = await events_for_payment(engine, state.payment_id)
        applied = [row for row in trail if row.event == "captured"]
        assert len(applied) == 1 and applied[0].stripe_event_id, trail
    dispute_trail = await events_for_payment(engine, dispute_state.payment_id)
    assert [row.event for row in dispute_trail if row.event == "dispute_opened"] == ["dispute_opened"]


async def test_delayed_webhook_is_applied_when_it_arrives(webhooks: WebhookSetup, payment_stack: PaymentStack) -> None:
    """Every delivery held 5 s (the issue says 30 s; 5 s shows the same within the time budget)."""
    control = webhooks.control
    await control.add_webhook_fault("delay", probability=1.0, delay_seconds=5)
    state, handle = await start_requires_action(payment_stack)
    completed_at = time.monotonic()
    await control.complete_action(state.stripe_payment_intent_id or "", "succeed")
    await asyncio.sleep(2.5)
    waiting = await handle.query("state", result_type=PaymentState)
    assert waiting.status == "REQUIRES_ACTION", "nothing may move it before the webhook arrives"
    captured = await wait_for_status(handle, "CAPTURED", timeout=20)
    assert time.monotonic() - completed_at >= 4.5
    assert captured.amount_captured == state.amount
    await control.clear_webhook_faults()


async def test_dropped_webhook_is_applied_when_redelivered(webhooks: WebhookSetup, payment_stack: PaymentStack) -> None:
    control = webhooks.control
    await control.add_webhook_fault("drop", probability=1.0)
    state, handle = await start_requires_action(payment_stack)
    await control.complete_action(state.stripe_payment_intent_id or "", "succeed")
    await wait_for_status(handle, "CAPTURED", timeout=20)
    await control.clear_webhook_faults()
    where = ("type = 'payment_intent.succeeded' AND object_id = :id", {"id": state.stripe_payment_intent_id})

    async def marked_delivered() -> bool:
        # The workflow may apply the signal before the API marks the stored event delivered.
        rows = await inbox_rows(payment_stack.engine, *where)
        return bool(rows) and rows[0].status == "delivered"

    await wait_until(marked_delivered, 10, "the redelivered event marked delivered")
    [row] = await inbox_rows(payment_stack.engine, *where)
    [delivery] = [
        d for d in await control.webhook_deliveries(event_id=row.event_id) if d["endpoint_id"] == webhooks.endpoint_id
    ]
    assert delivery["attempts"][0]["fault"] == "drop" and delivery["attempts"][-1]["status_code"] == 200
    assert row.status == "delivered" and row.payment_id == state.payment_id


async def test_bad_signatures_are_refused_and_nothing_is_stored(
    webhooks: WebhookSetup, payment_stack: PaymentStack
) -> None:
    now = int(time.time())
    event = signed_event("payment_intent.succeeded", {"id": "pi_nobody", "object": "payment_intent"})
    body = encode(event)
    good = webhooks.secret
    cases = {
        "missing": None,
        "malformed": "v1=abc",
        "forged": f"t={now},v1={secrets.token_hex(32)}",
        "wrong secret": sign(body, ["whsec_not_ours_" + "b" * 16], now),
        "replayed old timestamp": sign(body, [good], now - 600),
        "future timestamp": sign(body, [good], now + 600),
    }
    for name, header in cases.items():
        response = webhooks.post(body, header)
        assert response.status_code == 400, (name, response.text)
        error = response.json()["error"]
        assert set(error) == {"type", "code", "message", "param", "doc_url"}
        assert error["code"] == "webhook_signature_invalid"
    tampered = encode({**event, "data": {"object": {"id": "pi_other", "object": "payment_intent"}}})
    assert webhooks.post(tampered, sign(body, [good], now)).status_code == 400
    assert await inbox_rows(payment_stack.engine, "event_id = :id", {"id": event["id"]}) == []

    too_large = b"{" + b" " * (70 * 1024) + b"}"
    assert webhooks.post(too_large, sign(too_large, [good], now)).status_code == 413

    # Rotation: a signature by the second configured secret is genuine; so is one good v1 among bad ones.
    rotated = signed_event("customer.created", {"id": "cus_rotation", "object": "customer"})
    accepted = webhooks.post(encode(rotated), sign(encode(rotated), [ROTATION_SECRET], now))
    assert accepted.status_code == 200, accepted.text
    several = signed_event("customer.created", {"id": "cus_several", "object": "customer"})
    header = f"t={now},v1={secrets.token_hex(32)}," + sign(encode(several), [good], now).split(",", 1)[1]
    assert webhooks.post(encode(several), header).status_code == 200
    [stored] = await inbox_rows(payment_stack.engine, "event_id = :id", {"id": rotated["id"]})
    assert stored.status == "ignored"  # a customer event is not about a payment
    again = webhooks.post(encode(rotated), sign(encode(rotated), [good], now))
    assert again.status_code == 200 and again.json()["duplicate"] is True


async def test_unrouted_and_contradicting_events_are_kept_and_reviewed(
    webhooks: WebhookSetup, payment_stack: PaymentStack
) -> None:
    engine = payment_stack.engine
    stray = signed_event(
        "charge.refunded", {"id": "ch_unknown_1", "object": "charge", "payment_intent": "pi_unknown_1"}
    )
    response = webhooks.post(encode(stray), sign(encode(stray), [webhooks.secret], int(time.time())))
    assert response.status_code == 200 and response.json()["status"] == "unrouted"
    [row] = await inbox_rows(engine, "event_id = :id", {"id": stray["id"]})
    assert row.status == "unrouted" and "no payment matches" in row.last_error
    async with engine.connect() as connection:
        item = (
            await connection.execute(
                text("SELECT kind, status FROM review_items WHERE dedupe_key = :key"), {"key": f"webhook:{stray['id']}"}
            )
        ).one()
    assert (item.kind, item.status) == ("webhook_unrouted", "open")

    # An operator re-queues it (`penny webhooks redeliver`): attempts start again, the relay takes it.
    assert await run_cli(payment_stack.settings, "webhooks", "redeliver", stray["id"], "--operator", "olga") == 0
    [row] = await inbox_rows(engine, "event_id = :id", {"id": stray["id"]})
    assert (row.status, row.attempts) == ("received", 0)
    assert row.last_error.startswith("re-queued by operator:olga (cli) (was unrouted: no payment matches")
    assert await run_cli(payment_stack.settings, "webhooks", "redeliver", stray["id"]) == 1  # queued already
    assert await run_cli(payment_stack.settings, "webhooks", "redeliver", "evt_never_stored") == 1
    # The re-queue answered the item: resolved by the operator, with its audit row.
    async with engine.connect() as connection:
        item = (
            await connection.execute(
                text("SELECT id, status, resolution, resolved_by FROM review_items WHERE dedupe_key = :key"),
                {"key": f"webhook:{stray['id']}"},
            )
        ).one()
        actions = (
            await connection.execute(
                text("SELECT action, actor, via, effect FROM review_actions WHERE review_id = :id"), {"id": item.id}
            )
        ).all()
    assert (item.status, item.resolution, item.resolved_by) == ("resolved", "acknowledged", "operator:olga (cli)")
    assert [tuple(action) for action in actions] == [
        (
            "acknowledged",
            "operator:olga (cli)",
            "cli",
            f"re-queued Stripe event {stray['id']} for the webhook relay; the item is resolved",
        )
    ]
    claimed = await claim_due_events(engine, 1000)
    [again] = [claimed_row for claimed_row in claimed if claimed_row.event_id == stray["id"]]
    # Still no payment matches it: unrouted again, and a NEW open item says so (the first stays resolved).
    relay = WebhookRelayActivities(engine, webhooks.api.settings, payment_stack.client)
    outcome = await relay._processor.process(again, event_from_payload(again.payload))
    assert outcome.status == "unrouted"
    async with engine.connect() as connection:
        items = (
            await connection.execute(
                text("SELECT dedupe_key, kind, status FROM review_items WHERE details->>'event_id' = :id ORDER BY id"),
                {"id": stray["id"]},
            )
        ).all()
    assert [tuple(row) for row in items] == [
        (f"webhook:{stray['id']}", "webhook_unrouted", "resolved"),
        (f"webhook:{stray['id']}:requeued:1", "webhook_unrouted", "open"),
    ]

    # Stripe says "succeeded" for a payment Penny closed as FAILED: never applied, always reviewed.
    payment = new_order(payment_method="pm_card_chargeDeclinedInsufficientFunds", timings=WEBHOOK_ONLY_TIMINGS)
    state, handle = await start(payment_stack, payment)
    assert state.status == "FAILED"
    await asyncio.wait_for(handle.result(), 30)
    contradiction = signed_event(
        "payment_intent.succeeded",
        {
            "id": state.stripe_payment_intent_id,
            "object": "payment_intent",
            "status": "succeeded",
            "metadata": {"order_id": payment.order_id},
        },
    )
    body = encode(contradiction)
    assert webhooks.post(body, sign(body, [webhooks.secret], int(time.time()))).status_code == 200
    async with engine.connect() as connection:
        review = (
            await connection.execute(
                text(
                    "SELECT kind, details FROM review_items WHERE payment_id = :id AND kind = 'webhook_contradiction'"
                ),
                {"id": state.payment_id},
            )
        ).one()
        status = (
            await connection.execute(text("SELECT status FROM payments WHERE id = :id"), {"id": state.payment_id})
        ).scalar_one()
    assert review.details["penny_status"] == "FAILED" and review.details["stripe_event"] == "payment_intent.succeeded"
    assert status == "FAILED"


async def test_settlement_events_reach_every_payment_waiting_for_funds(
    webhooks: WebhookSetup, payment_stack: PaymentStack
) -> None:
    first, first_handle = await start(payment_stack, new_order(timings=WEBHOOK_ONLY_TIMINGS))
    second, second_handle = await start(payment_stack, new_order(timings=WEBHOOK_ONLY_TIMINGS))
    assert first.status == second.status == "CAPTURED"
    # The emulator pays out only a positive balance, and the session's emulator is shared (disputes
    # withdraw funds): a large plain charge, not Penny's, keeps the automatic payout positive.
    async with httpx.AsyncClient(base_url=webhooks.emulator.base_url) as stripe_http:
        topped = await stripe_http.post(
            "/v1/payment_intents",
            data={"amount": "50000000", "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true"},
            headers={"Authorization": "Bearer sk_test_penny_webhooks"},
        )
    assert topped.status_code == 200, topped.text
    # Funds become available (balance.available) and a payout is paid (payout.paid) on the emulator clock.
    await webhooks.control.advance_clock(4 * 24 * 3600)
    await wait_for_status(first_handle, "SETTLED", timeout=30)
    await wait_for_status(second_handle, "SETTLED", timeout=30)
    engine = payment_stack.engine
    # The automatic payout that covers these funds was created at the new clock time; it is paid a day later.
    await webhooks.control.advance_clock(2 * 24 * 3600)

    async def payout_routed() -> bool:
        rows = await inbox_rows(engine, "type = 'payout.paid' AND :id = ANY(payment_ids)", {"id": first.payment_id})
        return bool(rows) and rows[0].status == "delivered"

    try:
        await wait_until(payout_routed, 20, "payout.paid routed to the payments it paid out")
    except AssertionError:
        payouts = await inbox_rows(engine, "type LIKE 'payout.%'", {})
        raise AssertionError([(row.type, row.status, row.last_error, row.payment_ids) for row in payouts]) from None
    # The second payment's funds were announced to it by balance.available, or, when a payout left
    # over from an earlier test's clock swept them first (the emulator is the session's), by its
    # payout.paid.
    settled_by = await inbox_rows(
        engine,
        "type IN ('balance.available', 'payout.paid') AND :id = ANY(payment_ids) AND status = 'delivered'",
        {"id": second.payment_id},
    )
    assert settled_by, "no settlement event reached the second payment"


async def test_temporal_unreachable_then_relay_delivers_every_event(
    webhooks: WebhookSetup, payment_stack: PaymentStack, temporal_client: Client
) -> None:
    """The API's Temporal points at a closed port: 503s, events stored; the relay delivers them all."""
    engine = payment_stack.engine
    broken = start_api(
        replace_temporal(webhooks.api.settings, f"127.0.0.1:{free_port()}"),
        free_port(),
    )
    http = httpx.AsyncClient(
        base_url=webhooks.emulator.base_url, headers={"Authorization": "Bearer sk_test_penny_webhooks"}
    )
    relay_queue = f"relay-{uuid.uuid4()}"
    relay_settings = webhooks.api.settings
    relay_worker = Worker(
        temporal_client,
        task_queue=relay_queue,
        workflows=[WebhookRelayWorkflow],
        activities=[WebhookRelayActivities(engine, relay_settings, temporal_client).relay_webhook_events],
    )
    try:
        payments = [await start_requires_action(payment_stack) for _ in range(3)]
        # Let the creation events land first: a workflow handling one of them re-retrieves the
        # PaymentIntent and would (rightly) find it succeeded, which is not what this test is about.
        assert await webhooks.control.wait_for_webhooks(timeout_seconds=20)
        await asyncio.sleep(1.0)
        moved = await http.post(f"/v1/webhook_endpoints/{webhooks.endpoint_id}", data={"url": broken.webhook_url})
        assert moved.status_code == 200, moved.text
        for state, _ in payments:
            await webhooks.control.complete_action(state.stripe_payment_intent_id or "", "succeed")
        assert await webhooks.control.wait_for_webhooks(timeout_seconds=20)
        intents = [state.stripe_payment_intent_id or "" for state, _ in payments]
        succeeded = await inbox_rows(
            engine, "type = 'payment_intent.succeeded' AND object_id = ANY(:ids)", {"ids": intents}
        )
        assert len(succeeded) == 3 and {row.status for row in succeeded} == {"received"}
        assert all(row.attempts >= 1 and row.last_error for row in succeeded)
        codes = {
            attempt["status_code"]
            for row in succeeded
            for delivery in await webhooks.control.webhook_deliveries(event_id=row.event_id)
            for attempt in delivery["attempts"]
        }
        assert codes == {503}
        for _, handle in payments:
            assert (await handle.query("state", result_type=PaymentState)).status == "REQUIRES_ACTION"

        # Temporal is reachable again (for the worker's relay): every stored event is delivered.
        async with relay_worker:
            relay = await start_webhook_relay(temporal_client, relay_queue)
            try:
                for _, handle in payments:
                    await wait_for_status(handle, "CAPTURED", timeout=30)

                async def all_done() -> bool:
                    rows = await inbox_for_intents(engine, intents)
                    return all(row.status in ("delivered", "ignored") for row in rows)

                await wait_until(all_done, 20, "the relay to deliver every stored event")
            finally:
                await relay.terminate("test over")
    finally:
        await http.post(f"/v1/webhook_endpoints/{webhooks.endpoint_id}", data={"url": webhooks.api.webhook_url})
        await http.aclose()
        broken.stop()


def replace_temporal(settings: Settings, address: str) -> Settings:
    return settings.model_copy(update={"temporal_address": address})


# ------------------------------------------------------------------------------------------ fuzz

FUZZ_EXAMPLES = 100


def run_fuzz(webhooks: WebhookSetup) -> set[str]:
    """Hypothesis against the live endpoint: never a 5xx. Returns the event ids of the bodies it signed."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    secret = webhooks.secret
    signed_event_ids: set[str] = set()
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
        lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
        max_leaves=12,
    )
    event_like = st.fixed_dictionaries(
        {
            "id": st.text(max_size=30).map(lambda suffix: f"evt_fuzz_{suffix}") | st.integers() | st.none(),
            "type": st.sampled_from(["payment_intent.succeeded", "charge.dispute.created", "x"]) | st.text(max_size=5),
            "created": st.integers(min_value=-(2**40), max_value=2**40) | st.text(max_size=5),
            "data": st.fixed_dictionaries({"object": json_values}) | json_values,
        }
    )
    bodies = st.one_of(
        st.binary(max_size=512),
        st.text(max_size=256).map(str.encode),
        json_values.map(lambda value: json.dumps(value).encode()),
        event_like.map(lambda value: json.dumps(value).encode()),
    )
    timestamps = st.integers(min_value=0, max_value=2**34) | st.just(int(time.time()))
    headers = st.one_of(
        st.none(),
        st.text(max_size=120),
        st.builds(lambda t, sig: f"t={t},v1={sig}", timestamps, st.text("0123456789abcdef", max_size=64)),
        st.builds(lambda t, n: ",".join([f"t={t}"] + ["v1=" + "0" * 64] * n), timestamps, st.integers(0, 20)),
    )

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(body=bodies, header=headers, sign_it=st.booleans(), content_type=st.sampled_from(["application/json", "x"]))
    def fuzz(body: bytes, header: str | None, sign_it: bool, content_type: str) -> None:
        if sign_it:
            header = sign(body, [secret], int(time.time()))
            try:
                document = json.loads(body)
            except ValueError:
                document = None
            if isinstance(document, dict) and isinstance(document.get("id"), str):
                signed_event_ids.add(document["id"])
        # Any bytes a client can put in a header value: HTTP forbids control characters but tab,
        # and leading or trailing whitespace.
        forbidden = bytes(code for code in range(32) if code != 9) + b"\x7f"
        safe_header = (
            None if header is None else header.encode("utf-8", "replace").translate(None, forbidden).strip(b" \t")
        )
        response = webhooks.post(body, safe_header, **{"Content-Type": content_type})
        assert response.status_code < 500, (response.status_code, response.text)
        if response.status_code >= 400:
            assert set(response.json()["error"]) == {"type", "code", "message", "param", "doc_url"}

    fuzz()
    return signed_event_ids


async def test_fuzzed_requests_never_5xx_and_never_store_unverified_events(
    webhooks: WebhookSetup, payment_stack: PaymentStack
) -> None:
    engine = payment_stack.engine
    before = {row.event_id for row in await inbox_rows(engine, "event_id LIKE 'evt_fuzz%'", {})}
    assert before == set()
    signed = await asyncio.to_thread(run_fuzz, webhooks)
    stored = await inbox_rows(engine, "event_id LIKE 'evt_fuzz%'", {})
    # Only bodies the fuzzer signed with our secret may be stored; unsigned ones never are.
    assert {row.event_id for row in stored} <= signed
    for row in stored:
        assert row.status in ("ignored", "unrouted", "delivered"), row


async def test_an_event_for_a_payment_not_known_yet_is_routed_again_by_the_relay(
    webhooks: WebhookSetup, payment_stack: PaymentStack, temporal_client: Client
) -> None:
    """Penny learns a PaymentIntent's id only after the create's lookup: an event about it that comes
    first matches no payment yet. It is kept as received and routed again, not dropped as unrouted."""
    engine = payment_stack.engine
    settings = webhooks.api.settings.model_copy(update={"webhook_unrouted_attempts_max": 6})
    api = start_api(settings, free_port())
    state, _handle = await start(payment_stack, new_order(timings=WEBHOOK_ONLY_TIMINGS))
    assert state.stripe_payment_intent_id and state.stripe_charge_id
    async with engine.begin() as connection:  # as if the lookup had not answered yet
        await connection.execute(
            text("UPDATE payments SET stripe_payment_intent_id = NULL, stripe_charge_id = NULL WHERE id = :id"),
            {"id": state.payment_id},
        )
    early = signed_event(
        "charge.updated",
        {"id": state.stripe_charge_id, "object": "charge", "payment_intent": state.stripe_payment_intent_id},
    )
    relay_queue = f"relay-{uuid.uuid4()}"
    relay_worker = Worker(
        temporal_client,
        task_queue=relay_queue,
        workflows=[WebhookRelayWorkflow],
        activities=[WebhookRelayActivities(engine, settings, temporal_client).relay_webhook_events],
    )
    try:
        signature = sign(encode(early), [webhooks.secret], int(time.time()))
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.post(
                api.webhook_url,
                content=encode(early),
                headers={"Content-Type": "application/json", "Stripe-Signature": signature},
            )
        assert response.status_code == 200 and response.json()["status"] == "received", response.text
        [row] = await inbox_rows(engine, "event_id = :id", {"id": early["id"]})
        assert (row.status, row.attempts) == ("received", 1) and "no payment matches yet" in row.last_error
        async with engine.begin() as connection:  # the lookup answers: Penny knows the ids
            await connection.execute(
                text("UPDATE payments SET stripe_payment_intent_id = :pi, stripe_charge_id = :ch WHERE id = :id"),
                {"pi": state.stripe_payment_intent_id, "ch": state.stripe_charge_id, "id": state.payment_id},
            )
        async with relay_worker:
            relay = await start_webhook_relay(temporal_client, relay_queue)
            try:

                async def routed() -> bool:
                    [row] = await inbox_rows(engine, "event_id = :id", {"id": early["id"]})
                    return bool(row.status != "received")

                await wait_until(routed, 20, "the relay to route the event once the payment is known")
            finally:
                await relay.terminate("test over")
        [row] = await inbox_rows(engine, "event_id = :id", {"id": early["id"]})
        # Routed to its payment; a charge.updated needs nothing from the workflow, so the router
        # marks it ignored (for the payment) rather than waking the workflow.
        assert (row.status, row.payment_id) == ("ignored", state.payment_id)
        assert row.last_error == "charge.updated needs no action from the payment workflow (by PaymentIntent id)"
        async with engine.connect() as connection:
            reviews = (
                await connection.execute(
                    text("SELECT count(*) FROM review_items WHERE dedupe_key = :key"), {"key": f"webhook:{early['id']}"}
                )
            ).scalar_one()
        assert reviews == 0
    finally:
        api.stop()


async def test_events_the_workflow_never_acts_on_are_ignored_without_waking_it(
    webhooks: WebhookSetup, payment_stack: PaymentStack
) -> None:
    """charge.succeeded is routed to its payment and marked ignored by the router itself (the
    workflow would only have recorded it as ignored), and so are payment_intent.created, whose
    intent as created claims no status (requires_confirmation), and the destination charge's
    transfer.created (no Penny payment_id on the transfer); payment_intent.succeeded still
    reaches the workflow."""
    state, handle = await start_requires_action(payment_stack)
    await webhooks.control.complete_action(state.stripe_payment_intent_id or "", "succeed")
    await wait_for_status(handle, "CAPTURED", timeout=20)
    assert await webhooks.control.wait_for_webhooks(timeout_seconds=20)
    engine = payment_stack.engine

    async def both_processed() -> bool:
        rows = await inbox_for_intents(engine, [state.stripe_payment_intent_id or ""])
        kinds = {row.type: row.status for row in rows}
        return (
            kinds.get("charge.succeeded") == "ignored"
            and kinds.get("payment_intent.created") == "ignored"
            and kinds.get("payment_intent.succeeded") == "delivered"
        )

    await wait_until(both_processed, 10, "charge.succeeded and payment_intent.created ignored, succeeded delivered")
    rows = {row.type: row for row in await inbox_for_intents(engine, [state.stripe_payment_intent_id or ""])}
    charge = rows["charge.succeeded"]
    assert charge.payment_id == state.payment_id
    assert charge.last_error.startswith("charge.succeeded needs no action from the payment workflow (by ")
    created = rows["payment_intent.created"]
    assert created.payment_id == state.payment_id
    assert created.last_error.startswith(
        "payment_intent.created claims no status the payment acts on (requires_confirmation) (by "
    )
    trail = await events_for_payment(engine, state.payment_id)
    assert charge.event_id not in {row.stripe_event_id for row in trail}
    assert created.event_id not in {row.stripe_event_id for row in trail}
    assert rows["payment_intent.succeeded"].event_id in {row.stripe_event_id for row in trail}
    transfers = await inbox_rows(engine, "type = 'transfer.created' AND payment_id = :id", {"id": state.payment_id})
    assert len(transfers) == 1 and transfers[0].status == "ignored"
    assert "carries no Penny payment_id (a destination charge's, or made outside Penny)" in transfers[0].last_error
    assert transfers[0].event_id not in {row.stripe_event_id for row in trail}
    signalled = [
        json.loads(event.workflow_execution_signaled_event_attributes.input.payloads[0].data)["event_id"]
        for event in (await handle.fetch_history()).events
        if event.HasField("workflow_execution_signaled_event_attributes")
    ]
    assert rows["payment_intent.succeeded"].event_id in signalled
    assert charge.event_id not in signalled and created.event_id not in signalled
    assert transfers[0].event_id not in signalled
