"""Signed webhooks delivered to a real receiver: signatures, retries, secret rolls and webhook faults."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import stripe

from penny.services import free_port
from tests.conftest import RunningEmulator


@dataclass
class Receiver:
    url: str
    received: list[tuple[str, bytes]] = field(default_factory=list)
    # Status codes to answer, in order; 200 once exhausted.
    answers: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bodies(self) -> list[dict[str, object]]:
        with self.lock:
            return [json.loads(body) for _, body in self.received]

    def wait_for(self, count: int, timeout_seconds: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.received) >= count:
                    return
            time.sleep(0.02)
        raise AssertionError(f"expected {count} deliveries, got {len(self.received)}")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    port = free_port()
    state = Receiver(url=f"http://127.0.0.1:{port}/webhooks")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with state.lock:
                state.received.append((self.headers["Stripe-Signature"], body))
                status = state.answers.pop(0) if state.answers else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def endpoint(stripe_client: stripe.StripeClient, receiver: Receiver) -> Iterator[stripe.WebhookEndpoint]:
    created = stripe_client.v1.webhook_endpoints.create(
        params={"url": receiver.url, "enabled_events": ["payment_intent.succeeded", "charge.refunded"]}
    )
    yield created
    stripe_client.v1.webhook_endpoints.delete(created.id)


def _pay(client: stripe.StripeClient) -> stripe.PaymentIntent:
    return client.v1.payment_intents.create(
        params={
            "amount": 1_000,
            "currency": "usd",
            "payment_method": "pm_card_visa",
            "confirm": True,
            "metadata": {"order_id": uuid.uuid4().hex},
        }
    )


def _events_for(receiver: Receiver, intent_id: str) -> list[dict[str, object]]:
    return [body for body in receiver.bodies() if body["data"]["object"]["id"] == intent_id]  # type: ignore[index]


def test_signature_verifies_with_construct_event(
    emulator: RunningEmulator, stripe_client: stripe.StripeClient, receiver: Receiver, endpoint: stripe.WebhookEndpoint
) -> None:
    intent = _pay(stripe_client)
    receiver.wait_for(1)
    header, body = receiver.received[0]
    event = stripe.Webhook.construct_event(body.decode(), header, str(endpoint.secret))
    assert event.type == "payment_intent.succeeded" and event.data.object["id"] == intent.id
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body.decode(), header, "whsec_wrong")
    assert emulator.control.wait_for_webhooks()
    deliveries = emulator.control.webhook_deliveries(event_id=event.id)
    assert deliveries[0]["status"] == "succeeded" and deliveries[0]["attempts"][0]["status_code"] == 200


def test_failed_deliveries_are_retried_with_backoff(
    emulator: RunningEmulator, stripe_client: stripe.StripeClient, receiver: Receiver, endpoint: stripe.WebhookEndpoint
) -> None:
    receiver.answers.extend([500, 503])
    intent = _pay(stripe_client)
    receiver.wait_for(3)
    assert emulator.control.wait_for_webhooks()
    delivery = [
        item
        for item in emulator.control.webhook_deliveries(endpoint_id=endpoint.id)
        if item["event_type"] == "payment_intent.succeeded"
    ][-1]
    assert [attempt["status_code"] for attempt in delivery["attempts"]] == [500, 503, 200]
    assert delivery["status"] == "succeeded"
    gaps = [b["at"] - a["at"] for a, b in zip(delivery["attempts"], delivery["attempts"][1:], strict=False)]
    assert gaps[1] > gaps[0] * 1.3  # exponential: 0.2 s then 0.4 s
    assert len(_events_for(receiver, intent.id)) == 3


def test_secret_roll_signs_with_both_secrets(
    emulator: RunningEmulator, stripe_client: stripe.StripeClient, receiver: Receiver, endpoint: stripe.WebhookEndpoint
) -> None:
    new_secret = emulator.control.roll_webhook_secret(endpoint.id, expires_in_seconds=3_600)
    _pay(stripe_client)
    receiver.wait_for(1)
    header, body = receiver.received[0]
    assert header.count("v1=") == 2
    stripe.Webhook.construct_event(body.decode(), header, new_secret)
    stripe.Webhook.construct_event(body.decode(), header, str(endpoint.secret))


def test_duplicate_drop_delay_and_bad_signature_faults(
    emulator: RunningEmulator, stripe_client: stripe.StripeClient, receiver: Receiver, endpoint: stripe.WebhookEndpoint
) -> None:
    emulator.control.add_webhook_fault("duplicate", count=1)
    emulator.control.add_webhook_fault("bad_signature_extra", count=1)
    first = _pay(stripe_client)
    receiver.wait_for(3)
    copies = _events_for(receiver, first.id)
    assert len(copies) == 3 and len({copy["id"] for copy in copies}) == 1  # type: ignore[misc]
    valid = 0
    for header, body in receiver.received:
        try:
            stripe.Webhook.construct_event(body.decode(), header, str(endpoint.secret))
            valid += 1
        except stripe.SignatureVerificationError:
            pass
    assert valid == 2
    emulator.control.clear_webhook_faults()
    receiver.received.clear()

    emulator.control.add_webhook_fault("drop", count=1)
    dropped = _pay(stripe_client)
    assert emulator.control.wait_for_webhooks()
    delivery = [
        item
        for item in emulator.control.webhook_deliveries(endpoint_id=endpoint.id)
        if item["event_type"] == "payment_intent.succeeded"
    ][-1]
    assert delivery["attempts"][0]["fault"] == "drop" and delivery["status"] == "succeeded"
    assert len(_events_for(receiver, dropped.id)) == 1  # redelivered by the retry schedule
    emulator.control.clear_webhook_faults()

    emulator.control.add_webhook_fault("delay", delay_seconds=0.5, count=1)
    started = time.monotonic()
    delayed = _pay(stripe_client)
    deadline = time.monotonic() + 5
    while not _events_for(receiver, delayed.id) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert time.monotonic() - started >= 0.5


def test_reorder_fault_delivers_a_window_in_reverse(
    emulator: RunningEmulator, stripe_client: stripe.StripeClient, receiver: Receiver, endpoint: stripe.WebhookEndpoint
) -> None:
    emulator.control.add_webhook_fault("reorder", window=3, count=3)
    intents = [_pay(stripe_client) for _ in range(3)]
    receiver.wait_for(3)
    order = [body["data"]["object"]["id"] for body in receiver.bodies()]  # type: ignore[index]
    assert order == [intent.id for intent in reversed(intents)]


def test_events_for_refund_state_changes(
    emulator: RunningEmulator, stripe_client: stripe.StripeClient, receiver: Receiver, endpoint: stripe.WebhookEndpoint
) -> None:
    intent = _pay(stripe_client)
    stripe_client.v1.refunds.create(params={"payment_intent": intent.id, "amount": 100})
    receiver.wait_for(2)
    types = [body["type"] for body in receiver.bodies()]
    assert types.count("charge.refunded") == 1 and types.count("payment_intent.succeeded") == 1
