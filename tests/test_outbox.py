"""The outbox relay and its subscribers, on the real stack: real payments on the real Temporal dev
server and Postgres, the relay workflow run by a real worker, the API in process, and a real
HTTP subscriber (uvicorn on a free port) that records every request and answers as told.

What a subscriber would notice: the events it receives, their bodies, headers and signatures,
their order per payment, retries and redeliveries; and what an operator would: the endpoint
API, the delivery history, the review queue, the metrics.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import pytest_asyncio
import uvicorn
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Replayer

from activities.outbox import (
    DELIVERY_LEASE_SECONDS,
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    backoff_seconds,
    claim_due_deliveries,
    event_body,
    fan_out,
    http_client,
    record_attempt,
    send_delivery,
    signature_header,
)
from activities.outbox_types import (
    EVENT_TYPES,
    WEBHOOK_URL_LENGTH_MAX,
    delivery_id_for,
    endpoint_id_for_request,
    url_problem,
)
from api.webhook_signature import SignatureError, parse_header, verify
from penny.logs import contains_card_number
from penny.services import HTTP_KEEP_ALIVE_SECONDS, free_port
from penny.settings import Settings
from tests.payment_fixtures import PaymentStack
from tests.test_api_support import api_client, auth, error_of, new_key
from tests.test_payment_workflow import new_order, start, wait_for_status
from worker import build_worker, workflow_runner
from workflows.outbox_relay import OutboxRelayWorkflow, start_outbox_relay

SERVER_START_TIMEOUT_SECONDS = 10.0
WAIT_SECONDS = 30.0
# Compressed so retries, backoff and dead letters happen within a test; the logic is production's.
FAST_OUTBOX = {
    "outbox_relay_interval_seconds": 0.1,
    "outbox_delivery_backoff_initial_seconds": 0.1,
    "outbox_delivery_backoff_max_seconds": 0.4,
    "outbox_delivery_attempts_max": 4,
    "outbox_delivery_connect_timeout_seconds": 1.0,
    "outbox_delivery_read_timeout_seconds": 2.0,
}


# ----------------------------------------------------------------------------- a real subscriber


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def event_id(self) -> str:
        return self.headers[EVENT_ID_HEADER.lower()]

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)  # type: ignore[no-any-return]


@dataclass
class Subscriber:
    url: str
    received: list[Received] = field(default_factory=list)
    # Status code to answer each request with (called before it is recorded).
    answer: Callable[[dict[str, str], bytes], int] = lambda headers, body: 200
    delay_seconds: Callable[[], float] = lambda: 0.0

    def for_payment(self, payment_id: str) -> list[Received]:
        return [item for item in self.received if item.event["payment_id"] == payment_id]


@asynccontextmanager
async def running_subscriber() -> AsyncIterator[Subscriber]:
    port = free_port()
    subscriber = Subscriber(url=f"http://127.0.0.1:{port}/hooks/penny")

    async def hook(request: Request) -> Response:
        body = await request.body()
        headers = {name.lower(): value for name, value in request.headers.items()}
        status = subscriber.answer(headers, body)
        await asyncio.sleep(subscriber.delay_seconds())
        subscriber.received.append(Received(headers, body, status))
        return Response(b'{"received": true}', status_code=status, media_type="application/json")

    app = Starlette(routes=[Route("/hooks/penny", hook, methods=["POST"])])
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_keep_alive=HTTP_KEEP_ALIVE_SECONDS,  # as Penny's servers: longer than the relay's httpx
        )
    )
    serving = asyncio.create_task(server.serve())
    deadline = time.monotonic() + SERVER_START_TIMEOUT_SECONDS
    while not server.started:
        assert time.monotonic() < deadline and not serving.done(), "the subscriber did not start"
        await asyncio.sleep(0.01)
    try:
        yield subscriber
    finally:
        server.should_exit = True
        await serving


# ----------------------------------------------------------------------------- the stack


@dataclass
class OutboxStack:
    payments: PaymentStack
    api: httpx.AsyncClient
    ops_key: str

    @property
    def engine(self) -> AsyncEngine:
        return self.payments.engine

    @property
    def settings(self) -> Settings:
        return self.payments.settings

    async def create_endpoint(self, url: str, events: list[str] | None = None, **extra: Any) -> dict[str, Any]:
        response = await self.api.post(
            "/v1/webhook_endpoints",
            json={"url": url, "enabled_events": events or ["*"], **extra},
            headers=auth(self.ops_key, str(uuid.uuid4())),
        )
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    @asynccontextmanager
    async def relay(self, task_queue: str | None = None) -> AsyncIterator[WorkflowHandle[Any, None]]:
        handle = await start_outbox_relay(self.payments.client, task_queue or self.payments.task_queue)
        try:
            yield handle
        finally:
            await handle.terminate("test over")


def fast_outbox_settings(base: Settings, **overrides: Any) -> Settings:
    return base.model_copy(update={**FAST_OUTBOX, **overrides})


@pytest_asyncio.fixture(loop_scope="session")
async def outbox(
    temporal_client: Client, engine: AsyncEngine, database_url: str, stripe_emulator: Any, task_queue: str
) -> AsyncIterator[OutboxStack]:
    """A payment worker (and the outbox relay's activity) with fast outbox settings, the API, an ops key."""
    settings = fast_outbox_settings(
        Settings(
            env="test",
            database_url=database_url,
            temporal_address=temporal_client.service_client.config.target_host,
            temporal_namespace=temporal_client.namespace,
            temporal_task_queue=task_queue,
            stripe_api_base=stripe_emulator.base_url,
        )
    )
    worker = build_worker(temporal_client, engine, settings, task_queue=task_queue)
    async with worker, api_client(settings, temporal_client) as api:
        ops_key = await new_key(engine, settings, "ops")
        stack = PaymentStack(settings, temporal_client, engine, stripe_emulator, task_queue, worker)
        try:
            yield OutboxStack(stack, api, ops_key)
        finally:
            # Endpoints live in the module's database: none of this test's may receive the next test's events.
            async with engine.begin() as connection:
                await connection.execute(
                    text(
                        "UPDATE webhook_endpoints SET deleted_at = now(), deleted_by = 'test' WHERE deleted_at IS NULL"
                    )
                )
                await connection.execute(
                    text("UPDATE outbox_deliveries SET status = 'canceled' WHERE status = 'pending'")
                )
    stripe_emulator.control.clear_faults()


# ----------------------------------------------------------------------------- helpers


async def wait_until(predicate: Callable[[], Awaitable[bool]], what: str, timeout: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def captured_payment(stack: OutboxStack) -> str:
    state, handle = await start(stack.payments, new_order())
    await wait_for_status(handle, "CAPTURED", "SETTLED")
    assert state.payment_id
    return state.payment_id


async def outbox_rows(engine: AsyncEngine, payment_id: str) -> list[Any]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT * FROM outbox WHERE aggregate_id = :id ORDER BY id"), {"id": payment_id}
        )
        return list(rows.all())


async def deliveries(engine: AsyncEngine, endpoint_id: str, payment_id: str | None = None) -> list[Any]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT * FROM outbox_deliveries WHERE endpoint_id = :endpoint "
                "AND (CAST(:payment AS text) IS NULL OR payment_id = :payment) ORDER BY outbox_id"
            ),
            {"endpoint": endpoint_id, "payment": payment_id},
        )
        return list(rows.all())


async def delivery_status(engine: AsyncEngine, delivery_id: str) -> str:
    async with engine.connect() as connection:
        status = (
            await connection.execute(text("SELECT status FROM outbox_deliveries WHERE id = :id"), {"id": delivery_id})
        ).scalar_one()
    return str(status)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def v1_signatures(header: str) -> list[str]:
    return [item.split("=", 1)[1] for item in header.split(",") if item.startswith("v1=")]


# ----------------------------------------------------------------------------- pure parts


def test_signature_is_stripes_scheme_and_verifies_with_each_active_secret() -> None:
    body = event_body({"type": "payment.captured", "id": "pay_x:captured", "amount": 100})
    old, new = "whsec_" + "a" * 32, "whsec_" + "b" * 32
    header = signature_header(body, [new, old], timestamp=1_800_000_000)
    assert header.startswith("t=1800000000,v1=") and len(v1_signatures(header)) == 2
    # Penny verifies Stripe's webhooks with this very function: a subscriber can do the same.
    assert verify(body, header, [old], now=1_800_000_000) == 1_800_000_000
    assert verify(body, header, [new], now=1_800_000_000) == 1_800_000_000
    with pytest.raises(SignatureError):
        verify(body + b" ", header, [old, new], now=1_800_000_000)
    # The body is canonical: the same payload always signs the same bytes.
    assert event_body({"b": 1, "a": [1, 2]}) == b'{"a":[1,2],"b":1}'


def test_url_rules() -> None:
    allowed = ["https://hooks.example.com/penny?team=ops", "https://8.8.8.8/x", "http://127.0.0.1:9000/h"]
    for url in allowed:
        assert url_problem(url, allow_loopback=True) is None, url
    refused = [
        "http://hooks.example.com/penny",
        "ftp://hooks.example.com/",
        "https://user:pass@hooks.example.com/",
        "https://hooks.example.com/#frag",
        "https://10.1.2.3/",
        "https://169.254.169.254/latest/meta-data",
        "https://2130706433/",
        "https://" + "a" * WEBHOOK_URL_LENGTH_MAX + ".example.com/",
        "https:///no-host",
    ]
    for url in refused:
        assert url_problem(url, allow_loopback=True) is not None, url
    assert url_problem("http://localhost:9000/h", allow_loopback=False) is not None
    assert url_problem("https://[::1]/h", allow_loopback=False) is not None


def test_backoff_doubles_to_its_cap_and_ids_are_letters() -> None:
    settings = fast_outbox_settings(Settings(env="test"))
    assert [backoff_seconds(settings, n) for n in (1, 2, 3, 4, 10)] == [0.1, 0.2, 0.4, 0.4, 0.4]
    assert delivery_id_for("pay_a:captured", "we_x") == delivery_id_for("pay_a:captured", "we_x")
    assert endpoint_id_for_request("key_a", "k1") != endpoint_id_for_request("key_b", "k1")
    for identifier in (delivery_id_for("e", "w"), endpoint_id_for_request("k", "i")):
        assert identifier[3:].isalpha() and identifier[3:].islower()
    assert "payment.captured" in EVENT_TYPES and "payment.needs_review" in EVENT_TYPES


# ----------------------------------------------------------------------------- delivery


async def test_a_captured_payment_reaches_its_subscriber_signed_with_its_event_id(outbox: OutboxStack) -> None:
    delivered_before = metric("penny_outbox_deliveries_total", outcome="delivered")
    async with running_subscriber() as subscriber, outbox.relay() as relay:
        endpoint = await outbox.create_endpoint(subscriber.url, ["payment.captured"])
        payment_id = await captured_payment(outbox)

        async def received() -> bool:
            return bool(subscriber.for_payment(payment_id))

        await wait_until(received, "the captured event at the subscriber")
    # The relay workflow is deterministic: its history replays on the current code.
    await Replayer(workflows=[OutboxRelayWorkflow], workflow_runner=workflow_runner()).replay_workflow(
        await relay.fetch_history()
    )
    [captured_row] = [row for row in await outbox_rows(outbox.engine, payment_id) if row.topic == "payment.captured"]
    [item] = subscriber.for_payment(payment_id)
    # Only what it subscribed to, the outbox payload as the body, the event id for dedup.
    assert item.event == captured_row.payload
    assert item.event["type"] == "payment.captured" and item.event["version"] == 1
    assert item.event_id == captured_row.dedupe_key == item.event["id"]
    assert item.headers["content-type"] == "application/json"
    timestamp = verify(item.body, item.headers[SIGNATURE_HEADER.lower()], [endpoint["secret"]], now=int(time.time()))
    assert abs(timestamp - time.time()) < 60
    with pytest.raises(SignatureError):
        verify(item.body, item.headers[SIGNATURE_HEADER.lower()], ["whsec_" + "z" * 32], now=int(time.time()))
    assert captured_row.published_at is not None
    # The operator's view of it.
    response = await outbox.api.get(f"/v1/webhook_endpoints/{endpoint['id']}/deliveries", headers=auth(outbox.ops_key))
    assert response.status_code == 200, response.text
    [delivery] = [entry for entry in response.json()["data"] if entry["payment"] == payment_id]
    assert delivery["status"] == "delivered" and delivery["attempts"] == 1 and delivery["last_status_code"] == 200
    assert delivery["event"] == item.event_id and delivery["next_attempt"] is None
    assert metric("penny_outbox_deliveries_total", outcome="delivered") > delivered_before
    assert REGISTRY.get_sample_value("penny_outbox_relay_lag_seconds", {"stage": "unpublished"}) is not None


async def test_a_subscriber_answering_500_gets_the_event_after_backoff(outbox: OutboxStack) -> None:
    async with running_subscriber() as subscriber, outbox.relay():
        failures = {"left": 2}

        def answer(headers: dict[str, str], body: bytes) -> int:
            if failures["left"] > 0:
                failures["left"] -= 1
                return 500
            return 204

        subscriber.answer = answer
        endpoint = await outbox.create_endpoint(subscriber.url, ["payment.captured"])
        payment_id = await captured_payment(outbox)

        async def delivered() -> bool:
            rows = await deliveries(outbox.engine, endpoint["id"], payment_id)
            return bool(rows) and rows[0].status == "delivered"

        await wait_until(delivered, "the delivery to succeed after two 500s")
    received = subscriber.for_payment(payment_id)
    assert [item.status for item in received] == [500, 500, 204]
    assert len({item.event_id for item in received}) == 1
    assert [item.headers["penny-delivery-attempt"] for item in received] == ["1", "2", "3"]
    [row] = await deliveries(outbox.engine, endpoint["id"], payment_id)
    assert row.attempts == 3 and row.last_status_code == 204 and row.last_error is None


async def test_a_dead_subscriber_is_dead_lettered_then_redelivered_by_an_operator(outbox: OutboxStack) -> None:
    dead_before = metric("penny_outbox_dead_letters_total")
    async with running_subscriber() as subscriber:
        subscriber.answer = lambda headers, body: 503
        endpoint = await outbox.create_endpoint(subscriber.url, ["payment.captured"])
        async with outbox.relay():
            payment_id = await captured_payment(outbox)

            async def dead() -> bool:
                rows = await deliveries(outbox.engine, endpoint["id"], payment_id)
                return bool(rows) and rows[0].status == "dead"

            await wait_until(dead, "the delivery to be dead-lettered")
        [row] = await deliveries(outbox.engine, endpoint["id"], payment_id)
        attempts_max = outbox.settings.outbox_delivery_attempts_max
        assert row.attempts == attempts_max and row.last_status_code == 503
        assert len(subscriber.for_payment(payment_id)) == attempts_max
        assert metric("penny_outbox_dead_letters_total") == dead_before + 1
        async with outbox.engine.connect() as connection:
            [review] = (
                await connection.execute(
                    text(
                        "SELECT * FROM review_items "
                        "WHERE kind = 'delivery_dead_letter' AND details->>'delivery_id' = :id"
                    ),
                    {"id": row.id},
                )
            ).all()
        assert review.status == "open" and review.payment_id is None
        assert review.details["payment_id"] == payment_id and review.details["endpoint_id"] == endpoint["id"]
        assert review.details["event_id"] == row.event_id and review.details["attempts"] == str(attempts_max)
        assert review.details["last_status_code"] == "503"
        assert f"/v1/webhook_deliveries/{row.id}/redeliver" in review.details["redeliver"]

        # The subscriber is fixed; an operator redelivers (no relay running yet, so it stays pending).
        subscriber.answer = lambda headers, body: 200
        key = str(uuid.uuid4())
        redelivered = await outbox.api.post(
            f"/v1/webhook_deliveries/{row.id}/redeliver", headers=auth(outbox.ops_key, key)
        )
        assert redelivered.status_code == 200, redelivered.text
        body = redelivered.json()
        assert body["status"] == "pending" and body["attempts"] == 0 and body["redeliveries"] == 1
        assert body["redelivered_by"] and body["redelivered"] is not None
        replay = await outbox.api.post(f"/v1/webhook_deliveries/{row.id}/redeliver", headers=auth(outbox.ops_key, key))
        assert replay.json() == body and replay.headers["Idempotent-Replayed"] == "true"
        again = await outbox.api.post(
            f"/v1/webhook_deliveries/{row.id}/redeliver", headers=auth(outbox.ops_key, str(uuid.uuid4()))
        )
        assert again.status_code == 400 and error_of(again)["code"] == "delivery_pending"
        async with outbox.relay():

            async def delivered() -> bool:
                return await delivery_status(outbox.engine, row.id) == "delivered"

            await wait_until(delivered, "the redelivered event to arrive")
    received = subscriber.for_payment(payment_id)
    assert received[-1].status == 200 and {item.event_id for item in received} == {row.event_id}


async def test_a_relay_lost_between_sending_and_recording_sends_again_with_the_same_event_id(
    outbox: OutboxStack,
) -> None:
    """The relay's process dies after the POST and before its record: the row stays pending
    under its lease; when the lease ends the next round sends it again. The consumer sees the
    event twice with one Penny-Event-Id, and dedupes it."""
    async with running_subscriber() as subscriber:
        endpoint = await outbox.create_endpoint(subscriber.url, ["payment.captured"])
        payment_id = await captured_payment(outbox)

        async def published() -> bool:
            await fan_out(outbox.engine, outbox.settings.outbox_relay_batch_size)
            return all(row.published_at is not None for row in await outbox_rows(outbox.engine, payment_id))

        await wait_until(published, "the payment's events to be published")
        claimed = await claim_due_deliveries(outbox.engine, 100)
        [lost] = [delivery for delivery in claimed if delivery.payment_id == payment_id]
        async with http_client(outbox.settings) as http:
            attempt = await send_delivery(http, lost, await _secrets(outbox, endpoint["id"]), outbox.settings)
        assert attempt.delivered and len(subscriber.for_payment(payment_id)) == 1
        # ... and the process dies here. While its lease holds, nobody sends it again.
        assert await delivery_status(outbox.engine, lost.id) == "pending"
        assert not [item for item in await claim_due_deliveries(outbox.engine, 100) if item.id == lost.id]
        # The lease ends (it lasts DELIVERY_LEASE_SECONDS; here, now).
        assert DELIVERY_LEASE_SECONDS > 0
        async with outbox.engine.begin() as connection:
            await connection.execute(
                text("UPDATE outbox_deliveries SET next_attempt_at = now() WHERE id = ANY(:ids)"),
                {"ids": [delivery.id for delivery in claimed]},
            )
        async with outbox.relay():

            async def delivered() -> bool:
                return await delivery_status(outbox.engine, lost.id) == "delivered"

            await wait_until(delivered, "the lost delivery to be sent again")
        # The lost relay's late record changes nothing: the later attempt decided.
        assert await record_attempt(outbox.engine, lost, attempt, outbox.settings) == "stale"
    received = subscriber.for_payment(payment_id)
    assert len(received) == 2 and received[0].event_id == received[1].event_id == lost.event_id
    assert received[0].body == received[1].body
    # A consumer deduping by Penny-Event-Id applies it once.
    applied: dict[str, dict[str, Any]] = {}
    for item in received:
        applied.setdefault(item.event_id, item.event)
    assert list(applied) == [lost.event_id]


async def _secrets(stack: OutboxStack, endpoint_id: str) -> list[str]:
    async with stack.engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT secret FROM webhook_endpoint_secrets WHERE endpoint_id = :id ORDER BY id DESC"),
            {"id": endpoint_id},
        )
        return [row.secret for row in rows]


SYNTHETIC_PAYMENTS = 6
SYNTHETIC_EVENTS_PER_PAYMENT = 8
SYNTHETIC_STATUSES = ("created", "processing", "authorized", "captured", "settled", "partially_refunded", "refunded")


async def _write_events_like_transitions(engine: AsyncEngine) -> list[str]:
    """Many events of several payments, interleaved, committed as the transition activity commits
    them (one outbox row per status change, in order per payment), without running dozens of
    payments through Stripe: the relay cannot tell the difference."""
    payment_ids = [
        "pay_" + "".join(random.choices("abcdefghijklmnopqrstuvwxyz", k=24)) for _ in range(SYNTHETIC_PAYMENTS)
    ]
    async with engine.begin() as connection:
        for number in range(SYNTHETIC_EVENTS_PER_PAYMENT):
            for payment_id in payment_ids:
                status = SYNTHETIC_STATUSES[number % len(SYNTHETIC_STATUSES)]
                dedupe_key = f"{payment_id}:synthetic:{number}"
                payload = {
                    "type": f"payment.{status}",
                    "version": 1,
                    "id": dedupe_key,
                    "payment_id": payment_id,
                    "status": status.upper(),
                    "sequence": number,
                }
                await connection.execute(
                    text(
                        "INSERT INTO outbox (topic, aggregate_id, dedupe_key, payload) "
                        "VALUES (:topic, :payment_id, :dedupe_key, CAST(:payload AS jsonb))"
                    ),
                    {
                        "topic": payload["type"],
                        "payment_id": payment_id,
                        "dedupe_key": dedupe_key,
                        "payload": json.dumps(payload),
                    },
                )
    return payment_ids


async def test_two_relays_lose_no_event_and_keep_order_per_payment(outbox: OutboxStack) -> None:
    other_queue = f"outbox-{uuid.uuid4()}"
    other_worker = build_worker(outbox.payments.client, outbox.engine, outbox.settings, task_queue=other_queue)
    chance = random.Random(7)
    async with running_subscriber() as subscriber:
        # A flaky, slowish subscriber: the first attempt of about one event in three fails, so
        # retries (after a backoff) interleave with new events.
        subscriber.answer = lambda headers, body: (
            500 if headers["penny-delivery-attempt"] == "1" and chance.random() < 0.33 else 200
        )
        subscriber.delay_seconds = lambda: chance.random() * 0.02
        endpoint = await outbox.create_endpoint(subscriber.url, ["*"])
        async with other_worker, outbox.relay(), outbox.relay(other_queue):
            real = await asyncio.gather(*(captured_payment(outbox) for _ in range(2)))
            synthetic = await _write_events_like_transitions(outbox.engine)
            payment_ids = [*real, *synthetic]
            # The real payments go on emitting events (settled, ...): the check is on those written
            # when everything so far was delivered.
            events_by_payment: dict[str, list[str]] = {}

            async def all_delivered() -> bool:
                for payment_id in payment_ids:
                    events_by_payment[payment_id] = [
                        row.dedupe_key for row in await outbox_rows(outbox.engine, payment_id)
                    ]
                rows = {
                    row.event_id: row.status
                    for row in await deliveries(outbox.engine, endpoint["id"])
                    if row.payment_id in events_by_payment
                }
                expected = [event for events in events_by_payment.values() for event in events]
                return all(rows.get(event) == "delivered" for event in expected)

            await wait_until(all_delivered, "every event delivered", timeout=60)
    assert (
        sum(len(events) for events in events_by_payment.values()) >= SYNTHETIC_PAYMENTS * SYNTHETIC_EVENTS_PER_PAYMENT
    )
    for payment_id, events in events_by_payment.items():
        received = [item for item in subscriber.for_payment(payment_id) if item.event_id in events]
        assert {item.event_id for item in received if item.status == 200} == set(events), payment_id
        # In order: an event is sent only once the one before it was acknowledged (resends of
        # an acknowledged event may come later: at least once).
        acknowledged = -1
        for item in received:
            position = events.index(item.event_id)
            assert position <= acknowledged + 1, (payment_id, [entry.event_id for entry in received])
            if item.status == 200:
                acknowledged = max(acknowledged, position)
        assert acknowledged == len(events) - 1


# ----------------------------------------------------------------------------- the endpoint API


async def test_roll_signs_with_both_secrets_until_the_old_one_expires(outbox: OutboxStack) -> None:
    async with running_subscriber() as subscriber, outbox.relay():
        endpoint = await outbox.create_endpoint(subscriber.url, ["payment.captured"])
        old_secret = endpoint["secret"]
        rolled = await outbox.api.post(
            f"/v1/webhook_endpoints/{endpoint['id']}/roll_secret",
            json={"expires_in_seconds": 3600},
            headers=auth(outbox.ops_key, str(uuid.uuid4())),
        )
        assert rolled.status_code == 200, rolled.text
        new_secret = rolled.json()["secret"]
        assert new_secret != old_secret and new_secret.startswith("whsec_")
        assert rolled.json()["previous_secret_expires"] is not None
        first = await captured_payment(outbox)

        async def received_first() -> bool:
            return bool(subscriber.for_payment(first))

        await wait_until(received_first, "an event signed during the overlap")
        [item] = subscriber.for_payment(first)
        header = item.headers[SIGNATURE_HEADER.lower()]
        assert len(parse_header(header).signatures) == 2
        for secret in (old_secret, new_secret):
            verify(item.body, header, [secret], now=int(time.time()))

        # Rolled again with no overlap: only the newest secret signs.
        final = await outbox.api.post(
            f"/v1/webhook_endpoints/{endpoint['id']}/roll_secret",
            json={"expires_in_seconds": 0},
            headers=auth(outbox.ops_key, str(uuid.uuid4())),
        )
        newest = final.json()["secret"]
        second = await captured_payment(outbox)

        async def received_second() -> bool:
            return bool(subscriber.for_payment(second))

        await wait_until(received_second, "an event signed after the overlap")
        [item] = subscriber.for_payment(second)
        header = item.headers[SIGNATURE_HEADER.lower()]
        assert len(parse_header(header).signatures) == 1
        verify(item.body, header, [newest], now=int(time.time()))
        for secret in (old_secret, new_secret):
            with pytest.raises(SignatureError):
                verify(item.body, header, [secret], now=int(time.time()))


async def test_disabled_and_deleted_endpoints_get_no_new_deliveries(outbox: OutboxStack) -> None:
    async with running_subscriber() as subscriber, outbox.relay():
        endpoint = await outbox.create_endpoint(subscriber.url, ["*"])
        disabled = await outbox.api.post(
            f"/v1/webhook_endpoints/{endpoint['id']}",
            json={"disabled": True},
            headers=auth(outbox.ops_key, str(uuid.uuid4())),
        )
        assert disabled.json()["status"] == "disabled"
        while_disabled = await captured_payment(outbox)
        deleted = await outbox.api.delete(f"/v1/webhook_endpoints/{endpoint['id']}", headers=auth(outbox.ops_key))
        assert deleted.json() == {"id": endpoint["id"], "object": "webhook_endpoint", "deleted": True}
        after_delete = await captured_payment(outbox)

        async def published() -> bool:
            rows = [*await outbox_rows(outbox.engine, while_disabled), *await outbox_rows(outbox.engine, after_delete)]
            return all(row.published_at is not None for row in rows)

        await wait_until(published, "both payments' events to be published")
    assert await deliveries(outbox.engine, endpoint["id"]) == []
    assert subscriber.received == []


async def test_endpoint_api_shows_the_secret_once_validates_and_soft_deletes(outbox: OutboxStack) -> None:
    api, key = outbox.api, outbox.ops_key
    url = "https://hooks.example.com/penny"
    idempotency_key = str(uuid.uuid4())
    body = {"url": url, "enabled_events": ["payment.captured", "payment.refunded"], "description": "ledger sync"}
    created = await api.post("/v1/webhook_endpoints", json=body, headers=auth(key, idempotency_key))
    assert created.status_code == 200, created.text
    endpoint = created.json()
    assert endpoint["id"].startswith("we_") and endpoint["id"][3:].isalpha()
    assert endpoint["secret"].startswith("whsec_") and not contains_card_number(endpoint["secret"])
    assert endpoint["status"] == "enabled" and endpoint["enabled_events"] == ["payment.captured", "payment.refunded"]
    # The same request again: the same endpoint and secret (replayed), never a second endpoint.
    replay = await api.post("/v1/webhook_endpoints", json=body, headers=auth(key, idempotency_key))
    assert replay.json() == endpoint and replay.headers["Idempotent-Replayed"] == "true"
    reused = await api.post(
        "/v1/webhook_endpoints", json={**body, "url": url + "2"}, headers=auth(key, idempotency_key)
    )
    assert reused.status_code == 422
    # Reads never show the secret.
    fetched = await api.get(f"/v1/webhook_endpoints/{endpoint['id']}", headers=auth(key))
    assert fetched.status_code == 200 and "secret" not in fetched.json()
    assert fetched.json() == {name: value for name, value in endpoint.items() if name != "secret"}
    listed = await api.get("/v1/webhook_endpoints", headers=auth(key))
    assert listed.status_code == 200 and listed.json()["object"] == "list"
    assert endpoint["id"] in [item["id"] for item in listed.json()["data"]]
    assert all("secret" not in item for item in listed.json()["data"])
    assert endpoint["secret"] not in listed.text + fetched.text

    updated = await api.post(
        f"/v1/webhook_endpoints/{endpoint['id']}",
        json={"url": url + "/v2", "enabled_events": ["*"], "disabled": True},
        headers=auth(key, str(uuid.uuid4())),
    )
    assert updated.status_code == 200, updated.text
    assert updated.json()["url"] == url + "/v2" and updated.json()["enabled_events"] == ["*"]
    assert updated.json()["status"] == "disabled" and "secret" not in updated.json()

    deleted = await api.delete(f"/v1/webhook_endpoints/{endpoint['id']}", headers=auth(key))
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    again = await api.delete(f"/v1/webhook_endpoints/{endpoint['id']}", headers=auth(key))
    assert again.status_code == 200 and again.json() == deleted.json()
    kept = await api.get(f"/v1/webhook_endpoints/{endpoint['id']}", headers=auth(key))
    assert kept.json()["status"] == "deleted" and kept.json()["deleted"] is not None
    live = await api.get("/v1/webhook_endpoints", headers=auth(key))
    assert endpoint["id"] not in [item["id"] for item in live.json()["data"]]
    gone = await api.get("/v1/webhook_endpoints?status=deleted", headers=auth(key))
    assert endpoint["id"] in [item["id"] for item in gone.json()["data"]]
    history = await api.get(f"/v1/webhook_endpoints/{endpoint['id']}/deliveries", headers=auth(key))
    assert history.status_code == 200 and history.json()["data"] == []
    refused = await api.post(
        f"/v1/webhook_endpoints/{endpoint['id']}", json={"disabled": False}, headers=auth(key, str(uuid.uuid4()))
    )
    assert refused.status_code == 400 and error_of(refused)["code"] == "webhook_endpoint_deleted"
    roll = await api.post(f"/v1/webhook_endpoints/{endpoint['id']}/roll_secret", headers=auth(key, str(uuid.uuid4())))
    assert roll.status_code == 400 and error_of(roll)["code"] == "webhook_endpoint_deleted"

    missing = await api.get("/v1/webhook_endpoints/we_" + "q" * 24, headers=auth(key))
    assert missing.status_code == 404 and error_of(missing)["code"] == "resource_missing"
    no_key = await api.post("/v1/webhook_endpoints", json=body, headers=auth(key))
    assert no_key.status_code == 400 and error_of(no_key)["code"] == "idempotency_key_missing"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://hooks.example.com/penny", "https"),
        ("https://ops:hunter@hooks.example.com/penny", "user name or password"),
        ("https://hooks.example.com/" + "p" * WEBHOOK_URL_LENGTH_MAX, "2048"),
        ("ftp://hooks.example.com/", "https"),
        ("https://10.0.0.8/penny", "public"),
        ("https://169.254.169.254/latest", "public"),
        ("http://127.0.0.1:9/penny", "PENNY_WEBHOOK_ALLOW_LOOPBACK"),
    ],
)
async def test_invalid_urls_are_refused_with_a_stripe_shaped_400(
    outbox: OutboxStack, url: str, reason: str, temporal_client: Client
) -> None:
    strict = outbox.settings.model_copy(update={"webhook_allow_loopback": False})
    async with api_client(strict, temporal_client) as api:
        response = await api.post(
            "/v1/webhook_endpoints",
            json={"url": url, "enabled_events": ["*"]},
            headers=auth(outbox.ops_key, str(uuid.uuid4())),
        )
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error["type"] == "invalid_request_error" and error["param"] == "url"
    # Too long is refused by the schema (parameter_invalid), the rest by the URL rules (url_invalid).
    assert error["code"] in ("url_invalid", "parameter_invalid") and reason in error["message"], error
    assert url not in response.text


async def test_unknown_event_types_are_refused_naming_the_parameter(outbox: OutboxStack) -> None:
    response = await outbox.api.post(
        "/v1/webhook_endpoints",
        json={"url": "https://hooks.example.com/penny", "enabled_events": ["payment.captured", "charge.succeeded"]},
        headers=auth(outbox.ops_key, str(uuid.uuid4())),
    )
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "parameter_invalid" and error["param"] == "enabled_events[1]"
    empty = await outbox.api.post(
        "/v1/webhook_endpoints",
        json={"url": "https://hooks.example.com/penny", "enabled_events": []},
        headers=auth(outbox.ops_key, str(uuid.uuid4())),
    )
    assert empty.status_code == 400 and error_of(empty)["param"] == "enabled_events"


async def test_a_merchant_key_may_not_call_the_subscriber_routes(outbox: OutboxStack) -> None:
    merchant = await new_key(outbox.engine, outbox.settings, "merchant")
    endpoint = "we_" + "q" * 24
    calls = [
        ("POST", "/v1/webhook_endpoints", {"url": "https://hooks.example.com/p", "enabled_events": ["*"]}),
        ("GET", "/v1/webhook_endpoints", None),
        ("GET", f"/v1/webhook_endpoints/{endpoint}", None),
        ("POST", f"/v1/webhook_endpoints/{endpoint}", {"disabled": True}),
        ("DELETE", f"/v1/webhook_endpoints/{endpoint}", None),
        ("POST", f"/v1/webhook_endpoints/{endpoint}/roll_secret", {}),
        ("GET", f"/v1/webhook_endpoints/{endpoint}/deliveries", None),
        ("GET", "/v1/webhook_deliveries/wd_" + "q" * 24, None),
        ("POST", "/v1/webhook_deliveries/wd_" + "q" * 24 + "/redeliver", None),
    ]
    for method, path, body in calls:
        response = await outbox.api.request(method, path, json=body, headers=auth(merchant, str(uuid.uuid4())))
        assert response.status_code == 403, (method, path, response.text)
        assert error_of(response)["code"] == "insufficient_role"
