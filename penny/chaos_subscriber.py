"""The outbox subscriber `penny chaos` registers: a local HTTP endpoint that behaves like a
marketplace's consumer (verifies `Penny-Signature`, dedupes by `Penny-Event-Id`) and misbehaves
on purpose (answers 500 to some first attempts, from the seed), and `check_outbox_delivered`,
the soak's invariant over what it received.

What the invariant demands of the run's payments, for every outbox event written after the
subscriber was registered:
- it arrived with a 2xx answer at least once (at least once), its outbox delivery is
  `delivered` (never `dead`, never left `pending`);
- every copy that arrived carried a signature that verifies with the endpoint's secret over the
  exact body, and the body's `id` is the `Penny-Event-Id` header (the consumer's dedup key);
- per payment, the first accepted copies arrived in the order the events were written (outbox
  id order; `payment_version` rises), whatever was retried, killed or redelivered in between.
Copies beyond the first are reported as a count (redeliveries after a killed relay), not a
violation: consumers dedupe by event id.
"""

from __future__ import annotations

import json
import random
import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from api.webhook_signature import SignatureError, expected_signature, parse_header

SIGNATURE_HEADER = "Penny-Signature"
EVENT_ID_HEADER = "Penny-Event-Id"
# A subscriber answers 500 to this share of first attempts (per mille), and to any one event at
# most SUBSCRIBER_FAILURES_PER_EVENT_MAX times: far below PENNY_OUTBOX_DELIVERY_ATTEMPTS_MAX, so
# every event must still be delivered and none may be dead-lettered.
SUBSCRIBER_FAILURE_PER_MILLE = 100
SUBSCRIBER_FAILURES_PER_EVENT_MAX = 2
SUBSCRIBER_BODY_BYTES_MAX = 256 * 1024
OUTBOX_DELIVERED = "outbox_delivered"


@dataclass(frozen=True)
class Receipt:
    """One POST the subscriber received, in arrival order."""

    sequence: int
    event_id: str
    signature: str | None
    body: bytes
    answered: int


@dataclass
class Subscriber:
    """A threaded local HTTP server recording every delivery. `url` once started."""

    seed: int
    receipts: list[Receipt] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    def start(self) -> str:
        rng = random.Random(self.seed)
        subscriber = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(min(length, SUBSCRIBER_BODY_BYTES_MAX))
                event_id = self.headers.get(EVENT_ID_HEADER) or ""
                with subscriber.lock:
                    failed = subscriber.failures.get(event_id, 0)
                    fail = failed < SUBSCRIBER_FAILURES_PER_EVENT_MAX and rng.randrange(1000) < (
                        SUBSCRIBER_FAILURE_PER_MILLE if failed == 0 else 500
                    )
                    status = 500 if fail else 200
                    if fail:
                        subscriber.failures[event_id] = failed + 1
                    subscriber.receipts.append(
                        Receipt(len(subscriber.receipts), event_id, self.headers.get(SIGNATURE_HEADER), body, status)
                    )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="chaos-subscriber", daemon=True)
        self._thread.start()
        return self.url

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        port = self._server.server_address[1]
        return f"http://127.0.0.1:{port}/penny-events"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def snapshot(self) -> list[Receipt]:
        with self.lock:
            return list(self.receipts)

    def counts(self) -> dict[str, int]:
        receipts = self.snapshot()
        accepted = [receipt.event_id for receipt in receipts if receipt.answered < 300]
        return {
            "outbox deliveries refused by subscriber": sum(receipt.answered >= 300 for receipt in receipts),
            "outbox events redelivered": len(accepted) - len(set(accepted)),
        }


# ================================================================================== invariant


@dataclass
class OutboxSubscription:
    """The run's endpoint, its signing secret, and (after the run) what the subscriber received."""

    endpoint_id: str
    secret: str
    receipts: list[Receipt] = field(default_factory=list)


@dataclass(frozen=True)
class OutboxEvent:
    outbox_id: int
    payment_id: str
    event_id: str
    delivery_status: str | None


_RUN_EVENTS = text(
    """
    SELECT event.id, event.aggregate_id, event.dedupe_key, delivery.status
    FROM outbox event
    JOIN payments payment ON payment.id = event.aggregate_id
    LEFT JOIN outbox_deliveries delivery ON delivery.outbox_id = event.id AND delivery.endpoint_id = :endpoint_id
    WHERE payment.order_id = ANY(:order_ids)
      AND event.created_at >= (SELECT created_at FROM webhook_endpoints WHERE id = :endpoint_id)
    ORDER BY event.id
    """
)


async def run_events(connection: AsyncConnection, endpoint_id: str, order_ids: Sequence[str]) -> list[OutboxEvent]:
    rows = await connection.execute(_RUN_EVENTS, {"endpoint_id": endpoint_id, "order_ids": list(order_ids)})
    return [OutboxEvent(row[0], row[1], row[2], row[3]) for row in rows]


def _signature_problem(receipt: Receipt, secret: str) -> str | None:
    try:
        parsed = parse_header(receipt.signature)
    except SignatureError as error:
        return f"signature header: {error}"
    if expected_signature(secret, parsed.timestamp, receipt.body) not in parsed.signatures:
        return "no signature verifies with the endpoint's secret"
    try:
        body_id = json.loads(receipt.body).get("id")
    except ValueError:
        return "body is not JSON"
    if body_id != receipt.event_id:
        return f"body id {body_id!r} is not the {EVENT_ID_HEADER} header {receipt.event_id!r}"
    return None


def outbox_findings(events: Sequence[OutboxEvent], receipts: Sequence[Receipt], secret: str) -> list[tuple[str, str]]:
    """(payment id, what is wrong) for every broken promise; empty when the subscriber got all of
    the run's events, each signed, first copies in order per payment. Pure: tested alone."""
    findings: list[tuple[str, str]] = []
    wanted = {event.event_id: event for event in events}
    first_accepted: dict[str, int] = {}
    for receipt in receipts:
        event = wanted.get(receipt.event_id)
        if event is None:
            continue  # another payment's event (an external stack has other traffic)
        problem = _signature_problem(receipt, secret)
        if problem is not None:
            findings.append((event.payment_id, f"{receipt.event_id}: {problem}"))
        if receipt.answered < 300:
            first_accepted.setdefault(receipt.event_id, receipt.sequence)
    by_payment: dict[str, list[OutboxEvent]] = defaultdict(list)
    for event in events:
        by_payment[event.payment_id].append(event)
        if event.event_id not in first_accepted:
            findings.append((event.payment_id, f"{event.event_id} (outbox {event.outbox_id}) never accepted"))
        if event.delivery_status != "delivered":
            findings.append(
                (event.payment_id, f"{event.event_id}: delivery is {event.delivery_status or 'missing'}, not delivered")
            )
    for payment_id, chain in by_payment.items():
        arrived = [event.event_id for event in sorted(chain, key=lambda e: first_accepted.get(e.event_id, -1))]
        written = [event.event_id for event in chain if event.event_id in first_accepted]
        arrived = [event_id for event_id in arrived if event_id in first_accepted]
        if arrived != written:
            findings.append((payment_id, f"arrived out of order: {arrived} (written {written})"))
    return findings
