"""The outbox relay: publishes committed outbox events to subscribers as signed HTTP POSTs.

Every payment status change writes one `outbox` row in the transaction that changes the
status (activities/payments.py `_append_outbox`). This module, run by `OutboxRelayWorkflow`
(workflows/outbox_relay.py) as one bounded activity per round, takes it from there:

1. **fan-out** (`fan_out`): the oldest unpublished outbox rows (FOR UPDATE SKIP LOCKED, at
   most PENNY_OUTBOX_RELAY_BATCH_SIZE) become one `outbox_deliveries` row per enabled endpoint
   that subscribes to the event's type and existed when the event occurred; `published_at` is
   set in the same transaction. An event no endpoint wants is published with no delivery.
2. **delivery** (`claim_due_deliveries`, `send_delivery`, `record_attempt`): due deliveries are
   claimed under a lease (several relays and workers are safe: a claimed row is hidden from the
   others until its lease ends), POSTed with a `Penny-Signature` (Stripe's scheme) and a
   `Penny-Event-Id`, and recorded: 2xx → `delivered`; anything else → attempts + 1 and an
   exponential backoff, and past PENNY_OUTBOX_DELIVERY_ATTEMPTS_MAX → `dead` plus a
   `delivery_dead_letter` review item, in one transaction.

    fan-out ──▶ pending ──2xx──────────────────────────▶ delivered ──redeliver──▶ pending
                  │  ▲                                   (API, ops)
                  │  └─ non-2xx, timeout, refused: attempts+1, next_attempt_at = now + backoff
                  ├──── attempts exhausted ─────────────▶ dead (+ review item) ──redeliver──▶ pending
                  └──── endpoint deleted (API) ─────────▶ canceled

At least once: a relay that dies between the POST and its record leaves the row pending; when
the lease ends another round sends it again, with the same `Penny-Event-Id` (consumers dedupe).

In order per payment per endpoint: a delivery is claimed only when no earlier delivery of the
same payment to the same endpoint is pending (delivered, dead and canceled ones do not hold it
back) and no earlier outbox row of that payment is still unpublished (another relay may be
fanning it out right now). So at most one event of a payment is in flight to an endpoint.
Across payments there is no order.

Isolation: the relay runs beside the payment workflows, never inside them, so a subscriber
can neither slow nor block a payment. Within a round a slow subscriber holds at most
OUTBOX_DELIVERY_CONCURRENCY_PER_ENDPOINT of the PENNY_OUTBOX_DELIVERY_CONCURRENCY slots, each
for at most the connect + read timeout; the other endpoints' deliveries keep flowing.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client import Counter, Gauge
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from temporalio import activity

from activities.outbox_types import (
    DELIVERY_DEAD,
    DELIVERY_DELIVERED,
    DELIVERY_PENDING,
    OUTBOX_RELAY_ACTIVITY_NAME,
    REVIEW_KIND_DEAD_LETTER,
    WEBHOOK_ENDPOINTS_MAX,
    OutboxRelayRoundInput,
    OutboxRelayRoundResult,
    delivery_id_for,
    event_type_enabled,
    url_problem,
)
from penny.logs import scrub_card_numbers
from penny.settings import Settings

logger = logging.getLogger("penny.outbox")

SIGNATURE_HEADER = "Penny-Signature"
EVENT_ID_HEADER = "Penny-Event-Id"
EVENT_TYPE_HEADER = "Penny-Event-Type"
DELIVERY_ID_HEADER = "Penny-Delivery-Id"
DELIVERY_ATTEMPT_HEADER = "Penny-Delivery-Attempt"
USER_AGENT = "Penny-Outbox/1"
SIGNATURE_SCHEME = "v1"

# A subscriber's answer is read (and thrown away) up to this much, then the connection closes:
# a subscriber cannot make the relay buffer an unbounded body.
RESPONSE_BODY_READ_MAX_BYTES = 64 * 1024
# A claimed delivery is hidden from other relays for this long (crash recovery: it reappears and
# is sent again). Longer than the longest request the settings allow (connect 30 s + read 60 s).
DELIVERY_LEASE_SECONDS = 120.0
# One subscriber holds at most this many of a round's concurrent slots, so a slow one cannot
# take them all.
OUTBOX_DELIVERY_CONCURRENCY_PER_ENDPOINT = 4
# A round stops claiming after this long (what is in flight finishes), so the activity is short
# and the workflow's history grows by one activity per round.
ROUND_CLAIMING_SECONDS_MAX = 30.0
# While deliveries are in flight the round wakes this often to heartbeat and claim more.
ROUND_POLL_SECONDS = 0.5
# A round that hit a limit is followed by the next one after this pause, not the interval.
BACKLOG_SLEEP_SECONDS = 0.05
LAST_ERROR_LENGTH_MAX = 1000

# Metrics (the worker serves them on PENNY_WORKER_METRICS_PORT). Labels are fixed sets.
RELAY_LAG_SECONDS = Gauge(
    "penny_outbox_relay_lag_seconds",
    "Age of the oldest outbox work, by stage: unpublished (oldest outbox row not fanned out yet) and "
    "undelivered (oldest due, pending delivery to an enabled endpoint, since it was created or redelivered).",
    ["stage"],
)
DELIVERIES = Counter(
    "penny_outbox_deliveries_total",
    "Outbox delivery attempts, by outcome: delivered (2xx), failed (retried after a backoff), dead (attempts "
    "exhausted).",
    ["outcome"],
)
DEAD_LETTERS = Counter(
    "penny_outbox_dead_letters_total", "Outbox deliveries dead-lettered (a delivery_dead_letter review item each)."
)
PUBLISHED = Counter(
    "penny_outbox_events_published_total", "Outbox events fanned out to subscribers (published_at set)."
)


# =============================================================================== signing


def event_body(payload: dict[str, Any]) -> bytes:
    """The bytes POSTed (and signed): the outbox payload as compact JSON with sorted keys, so every
    attempt of an event sends the same body."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def signature_header(body: bytes, signing_secrets: Sequence[str], timestamp: int) -> str:
    """`t=<unix>,v1=<hex>[,v1=<hex>...]`: HMAC-SHA256 of `"<t>.<body>"` with each active secret
    (two during a roll), as Stripe signs its webhooks."""
    assert signing_secrets, "an endpoint always has an active secret"
    signed = str(timestamp).encode() + b"." + body
    signatures = [hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest() for secret in signing_secrets]
    return ",".join([f"t={timestamp}", *(f"{SIGNATURE_SCHEME}={signature}" for signature in signatures)])


# =============================================================================== fan-out


@dataclass(frozen=True)
class FanOut:
    published: int
    deliveries: int


async def fan_out(engine: AsyncEngine, batch_size: int) -> FanOut:
    """Publish up to `batch_size` of the oldest unpublished outbox rows: one transaction."""
    assert batch_size > 0, batch_size
    async with engine.begin() as connection:
        events = (
            await connection.execute(
                text(
                    """
                    SELECT id, topic, aggregate_id, dedupe_key, created_at FROM outbox
                    WHERE published_at IS NULL
                    ORDER BY id
                    LIMIT :batch_size
                    FOR UPDATE SKIP LOCKED
                    """
                ),
                {"batch_size": batch_size},
            )
        ).all()
        if not events:
            return FanOut(0, 0)
        # FOR SHARE: an endpoint deleted meanwhile waits for this transaction, then cancels the
        # deliveries made here too (none is left pending for a deleted endpoint).
        endpoints = (
            await connection.execute(
                text(
                    """
                    SELECT id, enabled_events, created_at FROM webhook_endpoints
                    WHERE status = 'enabled' AND deleted_at IS NULL
                    ORDER BY created_at, id
                    LIMIT :endpoints_max
                    FOR SHARE
                    """
                ),
                {"endpoints_max": WEBHOOK_ENDPOINTS_MAX},
            )
        ).all()
        deliveries = [
            {
                "id": delivery_id_for(event.dedupe_key, endpoint.id),
                "outbox_id": event.id,
                "endpoint_id": endpoint.id,
                "payment_id": event.aggregate_id,
                "event_id": event.dedupe_key,
                "event_type": event.topic,
            }
            for event in events
            for endpoint in endpoints
            # An endpoint receives the events that occur after it was created, however late the
            # relay publishes them.
            if endpoint.created_at <= event.created_at
            and event_type_enabled(list(endpoint.enabled_events), event.topic)
        ]
        if deliveries:
            await connection.execute(
                text(
                    """
                    INSERT INTO outbox_deliveries (id, outbox_id, endpoint_id, payment_id, event_id, event_type)
                    VALUES (:id, :outbox_id, :endpoint_id, :payment_id, :event_id, :event_type)
                    ON CONFLICT (outbox_id, endpoint_id) DO NOTHING
                    """
                ),
                deliveries,
            )
        await connection.execute(
            text("UPDATE outbox SET published_at = now() WHERE id = ANY(:ids) AND published_at IS NULL"),
            {"ids": [event.id for event in events]},
        )
    PUBLISHED.inc(len(events))
    return FanOut(len(events), len(deliveries))


# =============================================================================== claiming


@dataclass(frozen=True)
class ClaimedDelivery:
    id: str
    endpoint_id: str
    url: str
    payment_id: str
    event_id: str
    event_type: str
    attempts: int  # before this attempt
    redeliveries: int
    payload: dict[str, Any]
    claim_token: str


_CLAIM = text(
    """
    WITH picked AS (
        SELECT due.id
        FROM (
            -- Endpoints in a random order: when the round has fewer free slots than due work,
            -- no endpoint is always served last.
            SELECT id FROM webhook_endpoints
            WHERE status = 'enabled' AND deleted_at IS NULL AND NOT (id = ANY(CAST(:busy AS text[])))
            ORDER BY random()
        ) endpoint
        CROSS JOIN LATERAL (
            SELECT delivery.id FROM outbox_deliveries delivery
            WHERE delivery.endpoint_id = endpoint.id
              AND delivery.status = 'pending'
              AND delivery.next_attempt_at <= now()
              -- In order per payment per endpoint: the earliest pending one goes first ...
              AND NOT EXISTS (
                  SELECT 1 FROM outbox_deliveries earlier
                  WHERE earlier.endpoint_id = delivery.endpoint_id
                    AND earlier.payment_id = delivery.payment_id
                    AND earlier.status = 'pending'
                    AND earlier.outbox_id < delivery.outbox_id)
              -- ... and an earlier event still being fanned out (by another relay) holds it back.
              AND NOT EXISTS (
                  SELECT 1 FROM outbox unpublished
                  WHERE unpublished.aggregate_id = delivery.payment_id
                    AND unpublished.published_at IS NULL
                    AND unpublished.id < delivery.outbox_id)
            ORDER BY delivery.next_attempt_at, delivery.outbox_id
            LIMIT :per_endpoint
            FOR UPDATE SKIP LOCKED
        ) due
        LIMIT :limit
    )
    UPDATE outbox_deliveries delivery
    SET next_attempt_at = now() + make_interval(secs => :lease), claim_token = :token, updated_at = now()
    FROM picked, outbox event, webhook_endpoints endpoint
    WHERE delivery.id = picked.id AND event.id = delivery.outbox_id AND endpoint.id = delivery.endpoint_id
    RETURNING delivery.id, delivery.endpoint_id, endpoint.url, delivery.payment_id, delivery.event_id,
              delivery.event_type, delivery.attempts, delivery.redeliveries, event.payload
    """
)


async def claim_due_deliveries(
    engine: AsyncEngine, limit: int, busy_endpoint_ids: Sequence[str] = ()
) -> list[ClaimedDelivery]:
    """Lease up to `limit` due deliveries (at most OUTBOX_DELIVERY_CONCURRENCY_PER_ENDPOINT per
    endpoint, none to `busy_endpoint_ids`), each the next one of its payment for its endpoint."""
    assert limit > 0, limit
    token = secrets.token_hex(16)
    async with engine.begin() as connection:
        rows = (
            await connection.execute(
                _CLAIM,
                {
                    "busy": list(busy_endpoint_ids),
                    "per_endpoint": OUTBOX_DELIVERY_CONCURRENCY_PER_ENDPOINT,
                    "limit": limit,
                    "lease": DELIVERY_LEASE_SECONDS,
                    "token": token,
                },
            )
        ).all()
    claimed = [
        ClaimedDelivery(
            id=row.id,
            endpoint_id=row.endpoint_id,
            url=row.url,
            payment_id=row.payment_id,
            event_id=row.event_id,
            event_type=row.event_type,
            attempts=row.attempts,
            redeliveries=row.redeliveries,
            payload=row.payload,
            claim_token=token,
        )
        for row in rows
    ]
    chains = [(delivery.endpoint_id, delivery.payment_id) for delivery in claimed]
    assert len(chains) == len(set(chains)), "two events of one payment in flight to one endpoint"
    return claimed


async def active_secrets(engine: AsyncEngine, endpoint_ids: Sequence[str]) -> dict[str, list[str]]:
    """Each endpoint's secrets that sign now, newest first."""
    if not endpoint_ids:
        return {}
    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                text(
                    """
                    SELECT endpoint_id, secret FROM webhook_endpoint_secrets
                    WHERE endpoint_id = ANY(:ids) AND (expires_at IS NULL OR expires_at > now())
                    ORDER BY endpoint_id, id DESC
                    """
                ),
                {"ids": list(endpoint_ids)},
            )
        ).all()
    found: dict[str, list[str]] = {}
    for row in rows:
        found.setdefault(row.endpoint_id, []).append(row.secret)
    return found


# =============================================================================== sending


@dataclass(frozen=True)
class Attempt:
    delivered: bool
    status_code: int | None
    error: str | None


def _short(message: str) -> str:
    return scrub_card_numbers(message)[:LAST_ERROR_LENGTH_MAX]


async def _read_capped(response: httpx.Response) -> int:
    read = 0
    async for chunk in response.aiter_raw():
        read += len(chunk)
        if read >= RESPONSE_BODY_READ_MAX_BYTES:
            break
    return read


async def send_delivery(
    http: httpx.AsyncClient,
    delivery: ClaimedDelivery,
    signing_secrets: Sequence[str],
    settings: Settings,
    *,
    now: int | None = None,
) -> Attempt:
    """One POST of the event to the endpoint. Every failure is an `Attempt` (never raised): the
    caller records it and the backoff decides when the next one goes."""
    problem = url_problem(delivery.url, allow_loopback=settings.webhook_loopback_allowed)
    if problem is not None:
        return Attempt(False, None, _short(f"endpoint URL refused: {problem}"))
    if not signing_secrets:
        return Attempt(False, None, "the endpoint has no active signing secret")
    body = event_body(delivery.payload)
    timestamp = int(time.time()) if now is None else now
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        SIGNATURE_HEADER: signature_header(body, signing_secrets, timestamp),
        EVENT_ID_HEADER: delivery.event_id,
        EVENT_TYPE_HEADER: delivery.event_type,
        DELIVERY_ID_HEADER: delivery.id,
        DELIVERY_ATTEMPT_HEADER: str(delivery.attempts + 1),
    }
    total_seconds = settings.outbox_delivery_connect_timeout_seconds + settings.outbox_delivery_read_timeout_seconds
    try:
        # httpx's read timeout is per read: the whole exchange is bounded too, so a subscriber
        # trickling bytes cannot hold a slot longer than connect + read timeout.
        async with asyncio.timeout(total_seconds):
            async with http.stream("POST", delivery.url, content=body, headers=headers) as response:
                await _read_capped(response)
    except TimeoutError:
        return Attempt(False, None, f"timed out after {total_seconds:g} s")
    except (httpx.HTTPError, httpx.InvalidURL, OSError) as error:
        return Attempt(False, None, _short(f"{type(error).__name__}: {error}"))
    status = response.status_code
    if 200 <= status < 300:
        return Attempt(True, status, None)
    if 300 <= status < 400:
        return Attempt(False, status, f"HTTP {status}: redirects are not followed; point the endpoint at the target")
    return Attempt(False, status, f"HTTP {status}")


# =============================================================================== recording


def backoff_seconds(settings: Settings, attempts: int) -> float:
    """Wait after the `attempts`-th failed attempt: initial, doubling, capped."""
    assert attempts >= 1, attempts
    return min(
        settings.outbox_delivery_backoff_initial_seconds * 2 ** min(attempts - 1, 30),
        settings.outbox_delivery_backoff_max_seconds,
    )


async def record_attempt(engine: AsyncEngine, delivery: ClaimedDelivery, attempt: Attempt, settings: Settings) -> str:
    """Record one attempt (one transaction); returns the outcome: delivered, failed, dead or stale.

    A 2xx is recorded whoever holds the lease now (the subscriber has the event: that is the
    truth). A failure only by the lease holder: once another relay has claimed the row after
    our lease ended, its attempt decides. `stale` means nothing was written.
    """
    async with engine.begin() as connection:
        if attempt.delivered:
            updated = await connection.execute(
                text(
                    """
                    UPDATE outbox_deliveries SET
                        status = 'delivered', delivered_at = now(), attempts = attempts + 1,
                        last_attempt_at = now(), last_status_code = :status_code, last_error = NULL,
                        claim_token = NULL, updated_at = now()
                    WHERE id = :id AND status = 'pending'
                    """
                ),
                {"id": delivery.id, "status_code": attempt.status_code},
            )
            return DELIVERY_DELIVERED if updated.rowcount else "stale"
        attempts = delivery.attempts + 1
        give_up = attempts >= settings.outbox_delivery_attempts_max
        row = (
            await connection.execute(
                text(
                    """
                    UPDATE outbox_deliveries SET
                        status = :status, attempts = attempts + 1, last_attempt_at = now(),
                        last_status_code = :status_code, last_error = :error,
                        next_attempt_at = now() + make_interval(secs => :backoff),
                        claim_token = NULL, updated_at = now()
                    WHERE id = :id AND status = 'pending' AND claim_token = :token
                    RETURNING attempts, redeliveries
                    """
                ),
                {
                    "id": delivery.id,
                    "token": delivery.claim_token,
                    "status": DELIVERY_DEAD if give_up else DELIVERY_PENDING,
                    "status_code": attempt.status_code,
                    "error": attempt.error,
                    "backoff": backoff_seconds(settings, attempts),
                },
            )
        ).first()
        if row is None:
            return "stale"
        if give_up:
            await _open_dead_letter(connection, delivery, row.attempts, row.redeliveries, attempt)
            return DELIVERY_DEAD
    return "failed"


async def _open_dead_letter(
    connection: AsyncConnection, delivery: ClaimedDelivery, attempts: int, redeliveries: int, attempt: Attempt
) -> None:
    # payment_id stays NULL on purpose: a payment leaving NEEDS_REVIEW resolves every open item
    # of that payment (activities/payments.py), and a dead letter is not settled by that. The
    # payment is named in the details.
    details = {
        "delivery_id": delivery.id,
        "endpoint_id": delivery.endpoint_id,
        "event_id": delivery.event_id,
        "event_type": delivery.event_type,
        "payment_id": delivery.payment_id,
        "attempts": str(attempts),
        "last_status_code": str(attempt.status_code) if attempt.status_code is not None else "",
        "last_error": attempt.error or "",
        "redeliver": f"POST /v1/webhook_deliveries/{delivery.id}/redeliver (ops key, Idempotency-Key) once the "
        "subscriber is fixed; GET /v1/webhook_endpoints/{endpoint}/deliveries shows every attempt's outcome",
    }
    await connection.execute(
        text(
            """
            INSERT INTO review_items (payment_id, dedupe_key, kind, reason, details)
            VALUES (NULL, :dedupe_key, :kind, :reason, CAST(:details AS jsonb))
            ON CONFLICT (dedupe_key) DO NOTHING
            """
        ),
        {
            # One item per death: a redelivered delivery that dies again opens a new one.
            "dedupe_key": f"outbox_delivery:{delivery.id}:dead:{redeliveries}",
            "kind": REVIEW_KIND_DEAD_LETTER,
            "reason": _short(
                f"{delivery.event_type} {delivery.event_id} could not be delivered to endpoint "
                f"{delivery.endpoint_id} after {attempts} attempts ({attempt.error or 'no answer'})"
            ),
            "details": json.dumps(details),
        },
    )


async def measure_lag(engine: AsyncEngine) -> tuple[float, float]:
    """(unpublished, undelivered) lag in seconds, also set on the gauge."""
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                text(
                    """
                    SELECT
                        (SELECT EXTRACT(EPOCH FROM now() - min(created_at)) FROM outbox
                          WHERE published_at IS NULL) AS unpublished,
                        (SELECT EXTRACT(EPOCH FROM now() - min(coalesce(delivery.redelivered_at, delivery.created_at)))
                           FROM outbox_deliveries delivery
                           JOIN webhook_endpoints endpoint ON endpoint.id = delivery.endpoint_id
                          WHERE delivery.status = 'pending' AND delivery.next_attempt_at <= now()
                            AND endpoint.status = 'enabled' AND endpoint.deleted_at IS NULL) AS undelivered
                    """
                )
            )
        ).one()
    unpublished = max(0.0, float(row.unpublished or 0))
    undelivered = max(0.0, float(row.undelivered or 0))
    RELAY_LAG_SECONDS.labels("unpublished").set(unpublished)
    RELAY_LAG_SECONDS.labels("undelivered").set(undelivered)
    return unpublished, undelivered


# =============================================================================== the round


class _Round:
    """One relay round: fan out, then keep up to the concurrency limit of deliveries in flight,
    claiming more as slots free up, until nothing is due, the batch is spent or time is up."""

    def __init__(self, engine: AsyncEngine, settings: Settings, http: httpx.AsyncClient) -> None:
        self._engine = engine
        self._settings = settings
        self._http = http
        self._in_flight: dict[asyncio.Task[str], ClaimedDelivery] = {}
        self.result = OutboxRelayRoundResult()

    async def run(self) -> OutboxRelayRoundResult:
        settings = self._settings
        claiming_until = time.monotonic() + ROUND_CLAIMING_SECONDS_MAX
        batch_size = settings.outbox_relay_batch_size
        next_fan_out = 0.0
        try:
            while True:
                activity.heartbeat(self.result.attempted)
                claiming = time.monotonic() < claiming_until and self.result.attempted < batch_size
                # Stopped by a limit rather than by running out of work: the next round starts at once.
                self.result.limited = not claiming
                fanned = FanOut(0, 0)
                if claiming and time.monotonic() >= next_fan_out:
                    fanned = await fan_out(self._engine, batch_size)
                    self.result.published += fanned.published
                    self.result.deliveries_created += fanned.deliveries
                    # Again at once while there is a backlog; otherwise once per poll.
                    next_fan_out = 0.0 if fanned.published else time.monotonic() + ROUND_POLL_SECONDS
                started = await self._start_due() if claiming else 0
                if not self._in_flight:
                    if claiming and (started or fanned.published):
                        continue
                    break
                done, _ = await asyncio.wait(
                    self._in_flight, timeout=ROUND_POLL_SECONDS, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    self._in_flight.pop(task)
                    self._count(task.result())
        finally:
            # Only on an error (the database went away): whatever is in flight is abandoned; its
            # lease ends and another round sends it again (at least once).
            for task in self._in_flight:
                task.cancel()
        return self.result

    async def _start_due(self) -> int:
        settings = self._settings
        free = min(
            settings.outbox_delivery_concurrency - len(self._in_flight),
            settings.outbox_relay_batch_size - self.result.attempted,
        )
        if free <= 0:
            return 0
        busy = sorted({delivery.endpoint_id for delivery in self._in_flight.values()})
        claimed = await claim_due_deliveries(self._engine, free, busy)
        if not claimed:
            return 0
        signing = await active_secrets(self._engine, sorted({delivery.endpoint_id for delivery in claimed}))
        for delivery in claimed:
            task = asyncio.create_task(self._deliver(delivery, signing.get(delivery.endpoint_id, [])))
            self._in_flight[task] = delivery
        self.result.attempted += len(claimed)
        return len(claimed)

    async def _deliver(self, delivery: ClaimedDelivery, signing_secrets: list[str]) -> str:
        attempt = await send_delivery(self._http, delivery, signing_secrets, self._settings)
        outcome = await record_attempt(self._engine, delivery, attempt, self._settings)
        if outcome != "stale":
            DELIVERIES.labels(outcome).inc()
        if outcome == DELIVERY_DEAD:
            DEAD_LETTERS.inc()
            logger.warning("outbox delivery %s (%s) is dead: %s", delivery.id, delivery.event_id, attempt.error)
        return outcome

    def _count(self, outcome: str) -> None:
        if outcome == DELIVERY_DELIVERED:
            self.result.delivered += 1
        elif outcome == DELIVERY_DEAD:
            self.result.dead_lettered += 1
        elif outcome == "failed":
            self.result.failed_attempts += 1


def http_client(settings: Settings) -> httpx.AsyncClient:
    """No redirects followed, bounded connect/read timeouts, no environment proxies or netrc."""
    timeout = httpx.Timeout(
        connect=settings.outbox_delivery_connect_timeout_seconds,
        read=settings.outbox_delivery_read_timeout_seconds,
        write=settings.outbox_delivery_read_timeout_seconds,
        pool=settings.outbox_delivery_connect_timeout_seconds,
    )
    limits = httpx.Limits(max_connections=settings.outbox_delivery_concurrency)
    return httpx.AsyncClient(timeout=timeout, limits=limits, follow_redirects=False, trust_env=False)


class OutboxRelayActivities:
    def __init__(self, engine: AsyncEngine, settings: Settings) -> None:
        assert (
            settings.outbox_delivery_connect_timeout_seconds + settings.outbox_delivery_read_timeout_seconds
            < DELIVERY_LEASE_SECONDS
        ), "a delivery's lease must outlast its request"
        self._engine = engine
        self._settings = settings
        # One HTTP client for the worker process's life (its pool keeps connections to
        # subscribers open between rounds), made on first use (inside the event loop): a
        # new client per round built a TLS context each time, loading the CA bundle again,
        # 6 % of the worker's CPU under the API benchmark's load (py-spy, #16).
        self._http: httpx.AsyncClient | None = None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None or self._http.is_closed:
            self._http = http_client(self._settings)
        return self._http

    @activity.defn(name=OUTBOX_RELAY_ACTIVITY_NAME)
    async def relay_outbox(self, request: OutboxRelayRoundInput) -> OutboxRelayRoundResult:
        """Publish unpublished outbox rows and deliver due deliveries; one bounded round."""
        settings = self._settings
        activity.heartbeat()
        result = await _Round(self._engine, settings, self._client()).run()
        await measure_lag(self._engine)
        result.sleep_seconds = BACKLOG_SLEEP_SECONDS if result.limited else settings.outbox_relay_interval_seconds
        if result.published or result.attempted:
            logger.info(
                "outbox relay round %d: %d published, %d attempted, %d delivered, %d failed, %d dead",
                request.round_number,
                result.published,
                result.attempted,
                result.delivered,
                result.failed_attempts,
                result.dead_lettered,
            )
        return result
