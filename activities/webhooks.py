"""The webhook inbox: store, route and deliver verified Stripe events; the relay activity.

Used by both paths that deliver an event:
- the API (`api/webhooks.py`) stores a verified event and delivers it at once;
- the relay (`relay_webhook_events`, run by `WebhookRelayWorkflow`) delivers events that were
  stored but not delivered (Temporal was unreachable, the API crashed mid-way), with backoff.

One event, from the inbox's point of view:

    (verified) ──insert──▶ received ──signal ok──────────────▶ delivered
                              │  ├──no payment found (yet)───▶ received  (attempts+1, routed again by the
                              │  │                                        relay until webhook_unrouted_attempts_max)
                              │  ├──still no payment found───▶ unrouted  (+ review item)
                              │  ├──not a payment event /
                              │  │  every payment closed─────▶ ignored   (reason kept)
                              │  └──Temporal/Stripe down─────▶ received  (attempts+1, next_attempt_at
                              │                                          = now + backoff; API answers 503)
                              └──relay attempts exhausted────▶ failed    (+ review item)

Each database step is one short transaction; the calls to Temporal and Stripe happen between
transactions, never inside one. Delivering an event twice is harmless: the payment workflow
dedupes by event id and applies only forward transitions.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import stripe
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from temporalio import activity
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from activities.webhook_types import (
    RELAY_ACTIVITY_NAME,
    STATUS_DELIVERED,
    STATUS_FAILED,
    STATUS_IGNORED,
    STATUS_RECEIVED,
    STATUS_UNROUTED,
    RelayBatchInput,
    RelayBatchResult,
)
from penny import webhook_metrics as metrics
from penny.settings import Settings
from workflows.payment_core import intent_created_claims_nothing, transfer_not_made_by_penny
from workflows.payment_models import SIGNAL_STRIPE_EVENT, StripeEventSignal, payment_workflow_acts_on

logger = logging.getLogger("penny.webhooks")

EVENT_ID_LENGTH_MAX = 255
EVENT_TYPE_LENGTH_MAX = 100
OBJECT_ID_LENGTH_MAX = 255
SIGNAL_TEXT_LENGTH_MAX = 200
LAST_ERROR_LENGTH_MAX = 1000
# Review kinds this module opens; a re-queue (`penny webhooks redeliver`) answers the first two.
REVIEW_KIND_WEBHOOK_UNROUTED = "webhook_unrouted"
REVIEW_KIND_WEBHOOK_DEAD_LETTER = "webhook_dead_letter"
REQUEUE_REVIEW_KINDS = (REVIEW_KIND_WEBHOOK_UNROUTED, REVIEW_KIND_WEBHOOK_DEAD_LETTER)
REQUEUE_NOTE = "re-queued for delivery (penny webhooks redeliver)"
# Settlement events fan out to many payments: bounded. Payments past the cap still settle
# through their own settlement poll (PaymentTimings.settlement_poll_interval_seconds).
SETTLEMENT_FANOUT_MAX = 1000
SIGNAL_CONCURRENCY_MAX = 16
PAYOUT_PAGE_SIZE = 100
PAYOUT_PAGES_MAX = 50
STRIPE_HTTP_TIMEOUT_SECONDS = 10.0
# A claimed event is hidden from other relay rounds for this long (crash recovery: it reappears).
RELAY_LEASE_SECONDS = 120.0
RELAY_BACKLOG_SLEEP_SECONDS = 0.05

SETTLEMENT_EVENT_TYPES = frozenset({"balance.available", "payout.paid", "payout.reconciliation_completed"})
PAYMENT_OBJECT_TYPES = frozenset({"payment_intent", "charge", "refund", "dispute", "transfer"})
# Object fields copied into the signal's `data` (strings only).
SIGNAL_DATA_FIELDS = (
    "payment_intent",
    "charge",
    "latest_charge",
    "balance_transaction",
    "transfer_group",
    "source_transaction",
    "currency",
    "reason",
    "failure_code",
    "cancellation_reason",
)
# Events saying money moved: for a payment Penny closed as FAILED/CANCELED that is a contradiction.
MONEY_MOVED_EVENT_TYPES = frozenset(
    {"payment_intent.succeeded", "payment_intent.amount_capturable_updated", "charge.succeeded", "charge.captured"}
)
CLOSED_WITHOUT_MONEY = frozenset({"FAILED", "CANCELED"})


# =============================================================================== parsing


class PayloadInvalid(Exception):
    """A verified body that is not a Stripe event we can keep (no id, no type, not JSON)."""


@dataclass(frozen=True)
class ParsedEvent:
    event_id: str
    type: str
    created: int
    livemode: bool
    object: dict[str, Any]
    object_id: str | None
    object_type: str | None


def _string(value: Any, length_max: int) -> str | None:
    return value[:length_max] if isinstance(value, str) and value else None


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def event_from_payload(payload: Any) -> ParsedEvent:
    if not isinstance(payload, dict):
        raise PayloadInvalid("the event is not a JSON object")
    event_id, event_type = payload.get("id"), payload.get("type")
    if not isinstance(event_id, str) or not 1 <= len(event_id) <= EVENT_ID_LENGTH_MAX:
        raise PayloadInvalid("the event has no valid id")
    if not isinstance(event_type, str) or not 1 <= len(event_type) <= EVENT_TYPE_LENGTH_MAX:
        raise PayloadInvalid("the event has no valid type")
    created = _integer(payload.get("created"))
    data = payload.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    obj = obj if isinstance(obj, dict) else {}
    return ParsedEvent(
        event_id=event_id,
        type=event_type,
        created=created if created is not None and 0 <= created < 2**40 else 0,
        livemode=payload.get("livemode") is True,
        object=obj,
        object_id=_string(obj.get("id"), OBJECT_ID_LENGTH_MAX),
        object_type=_string(obj.get("object"), EVENT_TYPE_LENGTH_MAX),
    )


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def parse_event(body: bytes) -> tuple[ParsedEvent, str]:
    """The event and the text to store. Refuses what Postgres jsonb cannot hold: \\u0000, and the
    NaN / Infinity Python's parser would otherwise accept (found by the webhook fuzz test: such an
    event was verified, then failed to store, and Stripe would have retried it for days)."""
    try:
        body_text = body.decode("utf-8")
        payload = json.loads(body_text, parse_constant=_not_json)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise PayloadInvalid("the body is not UTF-8 JSON") from error
    if "\\u0000" in body_text:
        raise PayloadInvalid("the event contains a NUL character")
    return event_from_payload(payload), body_text


def build_signal(event: ParsedEvent, extra: dict[str, str] | None = None) -> StripeEventSignal:
    obj = event.object
    data = {
        name: value[:SIGNAL_TEXT_LENGTH_MAX] for name in SIGNAL_DATA_FIELDS if (value := _string(obj.get(name), 999))
    }
    data.update(extra or {})
    return StripeEventSignal(
        event_id=event.event_id,
        type=event.type,
        created=event.created,
        object_id=event.object_id or "",
        object_type=event.object_type or "",
        status=_string(obj.get("status"), SIGNAL_TEXT_LENGTH_MAX),
        amount=_integer(obj.get("amount")),
        amount_received=_integer(obj.get("amount_received")),
        amount_capturable=_integer(obj.get("amount_capturable")),
        amount_refunded=_integer(obj.get("amount_refunded")),
        data=data,
    )


# =============================================================================== inbox


@dataclass
class InboxRow:
    id: int
    event_id: str
    status: str
    attempts: int
    payload: Any
    received_at: datetime | None = None


async def store_event(
    engine: AsyncEngine, event: ParsedEvent, payload_text: str, grace_seconds: float
) -> tuple[bool, InboxRow]:
    """Insert the verified event (one transaction). (False, existing row) when it was already there."""
    async with engine.begin() as connection:
        inserted = (
            await connection.execute(
                text(
                    """
                    INSERT INTO webhook_events (event_id, type, object_id, object_type, livemode, event_created_at,
                                                payload, next_attempt_at)
                    VALUES (:event_id, :type, :object_id, :object_type, :livemode, to_timestamp(:created),
                            CAST(:payload AS jsonb), now() + make_interval(secs => :grace))
                    ON CONFLICT (event_id) DO NOTHING
                    RETURNING id, status, attempts, received_at
                    """
                ),
                {
                    "event_id": event.event_id,
                    "type": event.type,
                    "object_id": event.object_id,
                    "object_type": event.object_type,
                    "livemode": event.livemode,
                    "created": event.created,
                    "payload": payload_text,
                    "grace": grace_seconds,
                },
            )
        ).first()
        if inserted is not None:
            row = InboxRow(inserted.id, event.event_id, inserted.status, inserted.attempts, None, inserted.received_at)
            return True, row
        existing = (
            await connection.execute(
                text("SELECT id, status, attempts, received_at FROM webhook_events WHERE event_id = :event_id"),
                {"event_id": event.event_id},
            )
        ).one()
    return False, InboxRow(existing.id, event.event_id, existing.status, existing.attempts, None, existing.received_at)


async def claim_due_events(engine: AsyncEngine, batch_size: int) -> list[InboxRow]:
    """Take up to `batch_size` stored, undelivered events whose next attempt is due (oldest event first)."""
    assert batch_size > 0, batch_size
    async with engine.begin() as connection:
        rows = (
            await connection.execute(
                text(
                    """
                    UPDATE webhook_events SET next_attempt_at = now() + make_interval(secs => :lease),
                                              updated_at = now()
                    WHERE id IN (
                        SELECT id FROM webhook_events
                        WHERE status = 'received' AND next_attempt_at <= now()
                        ORDER BY next_attempt_at, id
                        LIMIT :batch_size
                        FOR UPDATE SKIP LOCKED
                    )
                    RETURNING id, event_id, status, attempts, payload, event_created_at, received_at
                    """
                ),
                {"lease": RELAY_LEASE_SECONDS, "batch_size": batch_size},
            )
        ).all()
    # Deliver in Stripe's order where we know it; the workflow copes with any order anyway.
    ordered = sorted(rows, key=lambda row: (row.event_created_at, row.id))
    return [InboxRow(row.id, row.event_id, row.status, row.attempts, row.payload, row.received_at) for row in ordered]


async def requeue_event(engine: AsyncEngine, event_id: str, operator: str) -> str | None:
    """Put a stored Stripe event the relay gave up on (`failed`, `unrouted`) back in its queue.

    Attempts start again from zero and the next relay round takes it; who asked and what the
    event had been is kept in `last_error`. Returns None when it was re-queued, else why not.
    """
    async with engine.begin() as connection:
        requeued = (
            await connection.execute(
                text(
                    """
                    UPDATE webhook_events
                       SET status = 'received', attempts = 0, next_attempt_at = now(), updated_at = now(),
                           last_error = left('re-queued by ' || :operator || ' (was ' || status || ': '
                                             || coalesce(last_error, '') || ')', :length_max)
                     WHERE event_id = :event_id AND status IN ('failed', 'unrouted')
                    RETURNING id
                    """
                ),
                {"event_id": event_id, "operator": operator, "length_max": LAST_ERROR_LENGTH_MAX},
            )
        ).first()
        if requeued is not None:
            await _close_requeued_items(connection, event_id, operator)
            return None
        status = (
            await connection.execute(
                text("SELECT status FROM webhook_events WHERE event_id = :event_id"), {"event_id": event_id}
            )
        ).scalar_one_or_none()
    if status is None:
        return f"no stored Stripe event {event_id}"
    return f"event {event_id} is {status}: only failed or unrouted events are re-queued"


async def _close_requeued_items(connection: AsyncConnection, event_id: str, operator: str) -> None:
    """The event's open `webhook_unrouted` / `webhook_dead_letter` items are answered by the
    re-queue: resolved (`acknowledged`) with one audit row each, in the re-queue's transaction. If
    it fails again, a new item opens (see `_open_review`)."""
    closed = (
        await connection.execute(
            text(
                """
                UPDATE review_items
                   SET status = 'resolved', resolved_at = now(), resolution = 'acknowledged',
                       resolved_by = :operator, resolution_note = :note
                 WHERE status = 'open' AND kind = ANY(:kinds) AND details->>'event_id' = :event_id
                RETURNING id, payment_id
                """
            ),
            {
                "operator": operator[:200],
                "note": REQUEUE_NOTE,
                "kinds": list(REQUEUE_REVIEW_KINDS),
                "event_id": event_id,
            },
        )
    ).all()
    request_key = f"requeue:{event_id}:{secrets.token_hex(8)}"[:200]
    for item in closed:
        await connection.execute(
            text(
                """
                INSERT INTO review_actions (review_id, request_key, action, note, actor, via, payment_id, effect)
                VALUES (:review_id, :request_key, 'acknowledged', :note, :actor, 'cli', :payment_id, :effect)
                """
            ),
            {
                "review_id": item.id,
                "request_key": request_key,
                "note": REQUEUE_NOTE,
                "actor": operator[:200],
                "payment_id": item.payment_id,
                "effect": f"re-queued Stripe event {event_id} for the webhook relay; the item is resolved",
            },
        )


async def backlog_size(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        count = (
            await connection.execute(text("SELECT count(*) FROM webhook_events WHERE status = 'received'"))
        ).scalar_one()
    metrics.RELAY_BACKLOG.set(count)
    return int(count)


# =============================================================================== routing


@dataclass(frozen=True)
class Target:
    payment_id: str
    order_id: str
    workflow_id: str
    status: str


@dataclass
class Route:
    outcome: str  # route | unrouted | ignored
    reason: str
    targets: list[Target] = field(default_factory=list)
    signal_extra: dict[str, str] = field(default_factory=dict)


class DependencyUnavailable(Exception):
    """Temporal or Stripe could not be reached: the event stays stored and is retried."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class PayoutLookup(Protocol):
    async def charges_in_payout(self, payout_id: str) -> list[str] | None:
        """Charge ids in an automatic payout; None when Stripe has no member list (manual payout)."""


class StripePayoutLookup:
    """Lists a payout's balance transactions (`payout` filter) through the stripe SDK."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: stripe.StripeClient | None = None

    def _stripe(self) -> stripe.StripeClient:
        if self._client is None:
            self._client = stripe.StripeClient(
                self._settings.stripe_api_key,
                base_addresses={"api": self._settings.effective_stripe_api_base},
                http_client=stripe.HTTPXClient(timeout=STRIPE_HTTP_TIMEOUT_SECONDS),
                max_network_retries=0,
            )
        return self._client

    async def charges_in_payout(self, payout_id: str) -> list[str] | None:
        charges: list[str] = []
        params: dict[str, Any] = {"payout": payout_id, "limit": PAYOUT_PAGE_SIZE}
        try:
            for _ in range(PAYOUT_PAGES_MAX):
                page = await self._stripe().v1.balance_transactions.list_async(params)  # type: ignore[arg-type]
                # SDK objects are not dicts (v15+): convert before reading optional fields.
                transactions = [transaction.to_dict() for transaction in page.data]
                for transaction in transactions:
                    source = transaction.get("source")
                    if isinstance(source, str) and source.startswith(("ch_", "py_")):
                        charges.append(source)
                if not page.has_more or not transactions:
                    return charges
                params["starting_after"] = transactions[-1]["id"]
        except stripe.InvalidRequestError:
            return None  # a manual payout: Stripe keeps no member list for it
        except stripe.StripeError as error:
            raise DependencyUnavailable("stripe_unavailable", f"Stripe balance transactions: {error}") from error
        logger.warning("payout %s has more than %d pages of transactions; the rest poll", payout_id, PAYOUT_PAGES_MAX)
        return charges


_PAYMENT_COLUMNS = "SELECT id, order_id, workflow_id, status FROM payments"


def _targets(rows: Any) -> list[Target]:
    return [Target(row.id, row.order_id, row.workflow_id, row.status) for row in rows]


async def _find_payment(connection: AsyncConnection, column: str, value: str | None) -> Target | None:
    assert column in ("order_id", "id", "stripe_payment_intent_id", "stripe_charge_id"), column
    if not value:
        return None
    rows = (
        await connection.execute(text(f"{_PAYMENT_COLUMNS} WHERE {column} = :value LIMIT 1"), {"value": value})
    ).all()
    targets = _targets(rows)
    return targets[0] if targets else None


def _id_of(value: Any) -> str | None:
    """A Stripe reference is an id string, or an expanded object with an id."""
    if isinstance(value, dict):
        value = value.get("id")
    return _string(value, OBJECT_ID_LENGTH_MAX)


async def route_payment_object(connection: AsyncConnection, event: ParsedEvent) -> Route:
    """Our metadata first (order id, payment id), then the Stripe ids we stored on the payment."""
    obj, kind = event.object, event.object_type
    raw_metadata = obj.get("metadata")
    metadata: dict[str, Any] = raw_metadata if isinstance(raw_metadata, dict) else {}
    intent_id = event.object_id if kind == "payment_intent" else _id_of(obj.get("payment_intent"))
    charge_id = event.object_id if kind == "charge" else _id_of(obj.get("charge") or obj.get("latest_charge"))
    if kind == "transfer":
        charge_id = _id_of(obj.get("source_transaction"))
    lookups = [
        ("order_id", _string(metadata.get("order_id"), 200), "metadata order_id"),
        ("id", _string(metadata.get("payment_id"), 64), "metadata payment_id"),
        ("order_id", _string(obj.get("transfer_group"), 200) if kind == "transfer" else None, "transfer_group"),
        ("stripe_payment_intent_id", intent_id, "PaymentIntent id"),
        ("stripe_charge_id", charge_id, "Charge id"),
    ]
    for column, value, how in lookups:
        target = await _find_payment(connection, column, value)
        if target is not None:
            return Route("route", f"by {how}", [target])
    tried = ", ".join(f"{how}={value}" for _, value, how in lookups if value) or "no reference to a payment"
    return Route("unrouted", f"no payment matches the {kind} ({tried})"[:LAST_ERROR_LENGTH_MAX])


async def route_settlement(engine: AsyncEngine, event: ParsedEvent, payouts: PayoutLookup) -> Route:
    if event.type == "balance.available":
        # The balance object names no payout: every payment waiting for its funds re-checks them.
        async with engine.connect() as connection:
            rows = (
                await connection.execute(
                    text(f"{_PAYMENT_COLUMNS} WHERE status = 'CAPTURED' ORDER BY updated_at, id LIMIT :limit"),
                    {"limit": SETTLEMENT_FANOUT_MAX},
                )
            ).all()
        targets = _targets(rows)
        if not targets:
            return Route("ignored", "balance available: no payment is waiting for settlement")
        return Route("route", f"balance available: {len(targets)} payments waiting for settlement", targets)
    payout_id = event.object_id
    if not payout_id:
        return Route("unrouted", f"{event.type} without a payout id")
    charges = await payouts.charges_in_payout(payout_id)  # outside any transaction
    if charges is None:
        return Route("ignored", f"payout {payout_id} is manual: Stripe lists no transactions for it")
    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                text(f"{_PAYMENT_COLUMNS} WHERE stripe_charge_id = ANY(:charges) ORDER BY id LIMIT :limit"),
                {"charges": charges, "limit": SETTLEMENT_FANOUT_MAX},
            )
        ).all()
    targets = _targets(rows)
    if not targets:
        return Route("ignored", f"payout {payout_id}: none of its {len(charges)} charges is a Penny payment")
    return Route("route", f"payout {payout_id}: {len(targets)} payments", targets, {"payout": payout_id})


async def route_event(engine: AsyncEngine, event: ParsedEvent, payouts: PayoutLookup) -> Route:
    if event.type in SETTLEMENT_EVENT_TYPES:
        return await route_settlement(engine, event, payouts)
    if event.object_type not in PAYMENT_OBJECT_TYPES:
        return Route("ignored", f"{event.type} ({event.object_type or 'no object'}) is not about a payment")
    async with engine.connect() as connection:
        route = await route_payment_object(connection, event)
    if route.outcome == "route" and not payment_workflow_acts_on(event.type, event.object_type):
        # The workflow would only record it as ignored: say so here, without waking it.
        reason = f"{event.type} needs no action from the payment workflow ({route.reason})"
        return Route("ignored", reason, route.targets)
    metadata = event.object.get("metadata")
    payment_id = _string(metadata.get("payment_id"), OBJECT_ID_LENGTH_MAX) if isinstance(metadata, dict) else None
    if route.outcome == "route" and transfer_not_made_by_penny(event.type, event.object_type, payment_id):
        reason = (
            f"{event.type}: transfer {event.object_id} carries no Penny payment_id (a destination charge's,"
            f" or made outside Penny) ({route.reason})"
        )
        return Route("ignored", reason, route.targets)
    status = _string(event.object.get("status"), SIGNAL_TEXT_LENGTH_MAX)
    if route.outcome == "route" and intent_created_claims_nothing(event.type, status):
        # Nothing the workflow could learn from it: it would record it as ignored, or look the
        # intent up only to find what the intent's next event says.
        reason = f"{event.type} claims no status the payment acts on ({status}) ({route.reason})"
        return Route("ignored", reason, route.targets)
    return route


# =============================================================================== delivery


TemporalProvider = Callable[[], Awaitable[Client | None]]


async def signal_payment(client: Client, target: Target, signal: StripeEventSignal, timeout_seconds: float) -> bool:
    """True when the workflow took the signal, False when it has closed. Raises DependencyUnavailable."""
    handle = client.get_workflow_handle(target.workflow_id)
    try:
        async with asyncio.timeout(timeout_seconds):
            await handle.signal(SIGNAL_STRIPE_EVENT, signal, rpc_timeout=timedelta(seconds=timeout_seconds))
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            return False  # completed (or never started): nothing left to tell it
        raise DependencyUnavailable("temporal_unavailable", f"Temporal: {error.status.name}: {error}") from error
    except TimeoutError as error:
        raise DependencyUnavailable("temporal_timeout", "Temporal did not accept the signal in time") from error
    except Exception as error:  # connection failures surface as RuntimeError from the core client
        raise DependencyUnavailable("temporal_unavailable", f"Temporal: {type(error).__name__}: {error}") from error
    return True


@dataclass
class ProcessOutcome:
    status: str
    retry: bool = False
    reason: str = ""


def _truncate(message: str) -> str:
    return message[:LAST_ERROR_LENGTH_MAX]


def _seconds_since(created: int) -> float:
    return max(0.0, time.time() - created) if created else 0.0


class WebhookProcessor:
    """Routes and delivers one stored event and records the outcome in the inbox."""

    def __init__(
        self,
        engine: AsyncEngine,
        settings: Settings,
        temporal: TemporalProvider,
        payouts: PayoutLookup,
        path: str,
    ) -> None:
        assert path in ("api", "relay"), path
        self._engine = engine
        self._settings = settings
        self._temporal = temporal
        self._payouts = payouts
        self._path = path

    async def process(self, row: InboxRow, event: ParsedEvent) -> ProcessOutcome:
        try:
            route = await route_event(self._engine, event, self._payouts)
            if (
                route.outcome == "unrouted"
                and event.type not in SETTLEMENT_EVENT_TYPES
                and row.attempts + 1 < self._settings.webhook_unrouted_attempts_max
            ):
                # The payment may not know this object yet (its PaymentIntent id arrives with a
                # lookup after an ambiguous create): kept as received, the relay routes it again.
                reason = f"no payment matches yet; routing again later ({route.reason})"
                await self.record_failure(row, "not_routable_yet", reason)
                return ProcessOutcome(STATUS_RECEIVED, reason=reason)
            if route.outcome == "unrouted":
                await self._finish(row, event, STATUS_UNROUTED, route.reason, [], [])
                metrics.UNROUTED.labels(metrics.type_label(event.type)).inc()
                return ProcessOutcome(STATUS_UNROUTED, reason=route.reason)
            if route.outcome == "ignored":
                await self._finish(row, event, STATUS_IGNORED, route.reason, [], [], about=route.targets)
                metrics.IGNORED.labels(metrics.type_label(event.type)).inc()
                return ProcessOutcome(STATUS_IGNORED, reason=route.reason)
            delivered, closed = await self._signal_all(event, route)
        except DependencyUnavailable as error:
            await self.record_failure(row, error.reason, str(error))
            return ProcessOutcome(STATUS_RECEIVED, retry=True, reason=str(error))
        status = STATUS_DELIVERED if delivered else STATUS_IGNORED
        reason = route.reason if delivered else f"every payment it concerns has closed ({route.reason})"
        await self._finish(row, event, status, reason, delivered, closed)
        label = metrics.type_label(event.type)
        if delivered:
            metrics.DELIVERED.labels(label, self._path).inc()
            metrics.DELAY_SECONDS.labels("delivered").observe(_seconds_since(event.created))
        else:
            metrics.IGNORED.labels(label).inc()
        return ProcessOutcome(status, reason=reason)

    async def _signal_all(self, event: ParsedEvent, route: Route) -> tuple[list[Target], list[Target]]:
        client = await self._temporal()
        if client is None:
            raise DependencyUnavailable("temporal_unavailable", "no connection to Temporal")
        signal = build_signal(event, route.signal_extra)
        timeout = self._settings.webhook_signal_timeout_seconds
        if len(route.targets) == 1:
            [target] = route.targets
            taken = await signal_payment(client, target, signal, timeout)
            return ([target], []) if taken else ([], [target])
        semaphore = asyncio.Semaphore(SIGNAL_CONCURRENCY_MAX)

        async def one(target: Target) -> bool:
            async with semaphore:
                return await signal_payment(client, target, signal, timeout)

        results = await asyncio.gather(*(one(target) for target in route.targets), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                # Some payments may have been signalled: a retry signals all again (they dedupe).
                raise result
        delivered = [target for target, taken in zip(route.targets, results, strict=True) if taken]
        closed = [target for target, taken in zip(route.targets, results, strict=True) if not taken]
        return delivered, closed

    async def _finish(
        self,
        row: InboxRow,
        event: ParsedEvent,
        status: str,
        reason: str,
        delivered: list[Target],
        closed: list[Target],
        about: list[Target] | None = None,
    ) -> None:
        """One transaction: the inbox row's outcome, the audit of closed payments, the review items.
        `about`: the payments an ignored event concerns (recorded on its row)."""
        payment_ids = [target.payment_id for target in (*delivered, *closed, *(about or []))]
        async with self._engine.begin() as connection:
            await connection.execute(
                text(
                    """
                    UPDATE webhook_events SET
                        status = :status,
                        delivered_at = CASE WHEN :status = 'delivered' THEN now() END,
                        last_error = :reason,
                        attempts = attempts + 1,
                        payment_id = :payment_id,
                        payment_ids = :payment_ids,
                        updated_at = now()
                    WHERE id = :id AND status = 'received'
                    """
                ),
                {
                    "status": status,
                    "reason": _truncate(reason) if status != STATUS_DELIVERED else None,
                    "payment_id": payment_ids[0] if len(payment_ids) == 1 else None,
                    "payment_ids": payment_ids,
                    "id": row.id,
                },
            )
            if status == STATUS_UNROUTED:
                await _open_review(
                    connection,
                    None,
                    f"webhook:{event.event_id}",
                    REVIEW_KIND_WEBHOOK_UNROUTED,
                    f"Stripe event {event.type} matches no payment: {reason}",
                    {"event_id": event.event_id, "type": event.type, "object_id": event.object_id or ""},
                )
            for target in closed:
                await _record_closed(connection, target, event)

    async def record_failure(self, row: InboxRow, reason: str, message: str) -> None:
        metrics.DELIVERY_FAILURES.labels(self._path, reason).inc()
        settings = self._settings
        attempts = row.attempts + 1
        backoff = min(
            settings.webhook_relay_backoff_initial_seconds * 2 ** min(attempts - 1, 30),
            settings.webhook_relay_backoff_max_seconds,
        )
        # Only the relay gives up: the API's failures (Temporal down) must never exhaust an
        # event before the relay, which runs once Temporal is back, has tried it.
        give_up = self._path == "relay" and attempts >= settings.webhook_relay_attempts_max
        async with self._engine.begin() as connection:
            updated = (
                await connection.execute(
                    text(
                        """
                        UPDATE webhook_events SET
                            attempts = attempts + 1,
                            last_error = :error,
                            status = :status,
                            next_attempt_at = now() + make_interval(secs => :backoff),
                            updated_at = now()
                        WHERE id = :id AND status = 'received'
                        RETURNING attempts, event_id, type
                        """
                    ),
                    {
                        "error": _truncate(message),
                        "status": STATUS_FAILED if give_up else STATUS_RECEIVED,
                        "backoff": backoff,
                        "id": row.id,
                    },
                )
            ).first()
            if updated is not None and give_up:
                metrics.DEAD_LETTERS.inc()
                await _open_review(
                    connection,
                    None,
                    f"webhook:{updated.event_id}:undeliverable",
                    REVIEW_KIND_WEBHOOK_DEAD_LETTER,
                    f"Stripe event {updated.type} could not be delivered after {updated.attempts} attempts",
                    {"event_id": updated.event_id, "last_error": _truncate(message)},
                )


async def _open_review(
    connection: AsyncConnection,
    payment_id: str | None,
    dedupe_key: str,
    kind: str,
    reason: str,
    details: dict[str, str],
) -> None:
    """Open a review item once per `dedupe_key`. An event re-queued by an operator
    (`requeue_event` resolves its item) that fails again gets a new item: the key then carries how
    many of its items were resolved before."""
    resolved_before = (
        await connection.execute(
            text(
                "SELECT count(*) FROM review_items WHERE status = 'resolved' "
                "AND (dedupe_key = :key OR starts_with(dedupe_key, :key || ':requeued:'))"
            ),
            {"key": dedupe_key},
        )
    ).scalar_one()
    if resolved_before:
        dedupe_key = f"{dedupe_key}:requeued:{resolved_before}"
    await connection.execute(
        text(
            """
            INSERT INTO review_items (payment_id, dedupe_key, kind, reason, details)
            VALUES (:payment_id, :dedupe_key, :kind, :reason, CAST(:details AS jsonb))
            ON CONFLICT (dedupe_key) DO NOTHING
            """
        ),
        {
            "payment_id": payment_id,
            "dedupe_key": dedupe_key,
            "kind": kind,
            "reason": reason[:LAST_ERROR_LENGTH_MAX],
            "details": json.dumps(details),
        },
    )


async def _record_closed(connection: AsyncConnection, target: Target, event: ParsedEvent) -> None:
    """An event for a payment whose workflow has ended: audited as ignored, reviewed if it contradicts."""
    status = (
        await connection.execute(text("SELECT status FROM payments WHERE id = :id"), {"id": target.payment_id})
    ).scalar_one()
    contradiction = status in CLOSED_WITHOUT_MONEY and event.type in MONEY_MOVED_EVENT_TYPES
    late_dispute = event.type.startswith("charge.dispute.")
    reason = f"payment workflow has closed ({status})"
    if contradiction:
        reason = f"Stripe reports {event.type} for a payment Penny closed as {status}"
    elif late_dispute:
        reason = f"{event.type} after the payment's workflow closed ({status})"
    # The same record id the workflow uses for an ignored event: whoever writes first wins.
    await connection.execute(
        text(
            """
            INSERT INTO payment_events (payment_id, transition_id, from_status, to_status, event, actor, reason,
                                        stripe_event_id, details)
            VALUES (:payment_id, :transition_id, :status, :status, :event, 'stripe-webhook', :reason,
                    :stripe_event_id, CAST(:details AS jsonb))
            ON CONFLICT (transition_id) DO NOTHING
            """
        ),
        {
            "payment_id": target.payment_id,
            "transition_id": f"{target.payment_id}:ignored:{event.event_id}",
            "status": status,
            "event": f"ignored:{event.type}",
            "reason": reason,
            "stripe_event_id": event.event_id,
            "details": json.dumps({"object_id": event.object_id or "", "closed": True}),
        },
    )
    if contradiction or late_dispute:
        await _open_review(
            connection,
            target.payment_id,
            f"webhook:{event.event_id}:{target.payment_id}",
            "webhook_contradiction" if contradiction else "webhook_after_close",
            reason,
            {
                "penny_status": status,
                "stripe_event": event.type,
                "stripe_status": _string(event.object.get("status"), 100) or "",
                "event_id": event.event_id,
                "object_id": event.object_id or "",
            },
        )


# =============================================================================== relay activity


class WebhookRelayActivities:
    def __init__(self, engine: AsyncEngine, settings: Settings, client: Client | None = None) -> None:
        self._engine = engine
        self._settings = settings
        self._client = client
        self._processor = WebhookProcessor(engine, settings, self._temporal, StripePayoutLookup(settings), "relay")

    async def _temporal(self) -> Client | None:
        if self._client is None:
            try:
                self._client = await Client.connect(
                    self._settings.effective_temporal_address, namespace=self._settings.temporal_namespace
                )
            except Exception as error:
                logger.warning("relay cannot reach Temporal: %s", error)
                return None
        return self._client

    @activity.defn(name=RELAY_ACTIVITY_NAME)
    async def relay_webhook_events(self, request: RelayBatchInput) -> RelayBatchResult:
        """Deliver stored, undelivered events whose next attempt is due; one bounded batch."""
        settings = self._settings
        activity.heartbeat()
        rows = await claim_due_events(self._engine, settings.webhook_relay_batch_size)
        result = RelayBatchResult(claimed=len(rows))
        for row in rows:
            activity.heartbeat(row.event_id)
            try:
                event = event_from_payload(row.payload)
            except PayloadInvalid as error:  # stored only after the same check: should never happen
                logger.error("stored webhook %s is not an event: %s", row.event_id, error)
                await self._processor.record_failure(row, "payload_invalid", str(error))
                result.failed_attempts += 1
                continue
            outcome = await self._processor.process(row, event)
            if outcome.retry:
                result.failed_attempts += 1
                if row.attempts + 1 >= settings.webhook_relay_attempts_max:
                    result.dead_lettered += 1
            elif outcome.status == STATUS_DELIVERED:
                result.delivered += 1
            elif outcome.status == STATUS_UNROUTED:
                result.unrouted += 1
            else:
                result.ignored += 1
        result.backlog = await backlog_size(self._engine)
        full = result.claimed >= settings.webhook_relay_batch_size and result.failed_attempts == 0
        result.sleep_seconds = RELAY_BACKLOG_SLEEP_SECONDS if full else settings.webhook_relay_interval_seconds
        if result.claimed:
            logger.info(
                "relay round %d: %d claimed, %d delivered, %d failed, backlog %d",
                request.round_number,
                result.claimed,
                result.delivered,
                result.failed_attempts,
                result.backlog,
            )
        return result
