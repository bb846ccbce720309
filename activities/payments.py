"""Payment state activities: each is ONE Postgres transaction.

`apply_transition` is the only way a payment's status changes. In one transaction it:
compare-and-sets the payments row (expected from-status → to-status), appends the audit row
to payment_events, appends the ledger entries when money moved, appends the outbox row and,
for NEEDS_REVIEW, the review item. It is idempotent by transition id: a retry after a commit
whose acknowledgement was lost finds the audit row and changes nothing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.payment_types import (
    INVALID_PAYMENT_REQUEST,
    LEDGER_REJECTED,
    TRANSITION_CONFLICT,
    LedgerAction,
    PreparePaymentInput,
    PreparePaymentResult,
    RecordIgnoredInput,
    ReviewResolution,
    RiskCheckInput,
    RiskCheckResult,
    TransitionInput,
    TransitionResult,
)
from ledger import chart
from ledger import ledger as books
from ledger.errors import LedgerError
from ledger.models import EntryDraft
from ledger.money import CaptureSplit, SplitRecipient, compute_split, scale_split
from penny import payment_metrics as metrics
from workflows.payment_models import ComputedSplit, RefundRecord, SplitPart

logger = logging.getLogger("penny.payments")

# Risk limits (named; a payment over a limit is reviewed or blocked, never silently passed).
RISK_REVIEW_AMOUNT_MINOR = 1_000_000  # above this (e.g. $10,000.00) a human looks first
RISK_BLOCK_AMOUNT_MINOR = 10_000_000  # above this the payment is refused outright
RISK_VELOCITY_WINDOW_SECONDS = 3600
RISK_VELOCITY_MAX_PAYMENTS = 20  # per customer per window, before review
# Version of the outbox event payload (README "Outbox events"); bump on an incompatible change.
OUTBOX_SCHEMA_VERSION = 1
# Splits kept per worker process (a payment's split never changes once prepared), so a
# transition's ledger entries can be drafted before its one statement is sent. Past this many
# the cache starts over; a miss costs one SELECT.
SPLITS_CACHED_MAX = 10_000
# Ledger actions whose entries follow from the split alone. A transition whose actions are all
# of these (and that forces nothing, books no refund row and resolves no review) is sent as ONE
# statement, `apply_transition` (migration 0013); the others take the general path below.
ONE_STATEMENT_LEDGER_KINDS = frozenset(
    {
        "authorization_hold",
        "capture",
        "processing_fee",
        "transfer",
        "settlement",
        "dispute_opened",
        "dispute_won",
        "dispute_lost",
        "dispute_recovery",
        "refund",
        "refund_recovery",
        "refund_failed",
    }
)
_APPLY_TRANSITION_SQL = (
    "SELECT outcome, status, ledger_entry_ids FROM apply_transition("
    "$1::text, $2::text, $3::text, $4::text, $5::jsonb, $6::text, $7::text, $8::text, $9::text, $10::text,"
    " $11::jsonb, $12::text, $13::text, $14::jsonb, $15::text, $16::integer, $17::jsonb, $18::text, "
    + ", ".join(f"${number}::{sql_type}" for number, sql_type in enumerate(books.POST_ENTRIES_SQL_TYPES, start=19))
    + ")"
)
# prepare_payment (migration 0014): the payment's row, audit row, outbox event and the risk
# screen's reads, one statement.
_PREPARE_PAYMENT_ARGUMENTS = (
    ("id", "text"),
    ("order_id", "text"),
    ("workflow_id", "text"),
    ("amount", "bigint"),
    ("currency", "text"),
    ("customer", "text"),
    ("capture_method", "text"),
    ("split", "jsonb"),
    ("metadata", "jsonb"),
    ("fingerprint", "text"),
    ("actor", "text"),
    ("request_id", "text"),
    ("details", "jsonb"),
    ("schema_version", "integer"),
    ("screen", "boolean"),
    ("payment_method", "text"),
    ("window", "integer"),
)
_PREPARE_PAYMENT_NAMES = tuple(name for name, _ in _PREPARE_PAYMENT_ARGUMENTS)
_PREPARE_PAYMENT_SQL = (
    "SELECT created, payment_id, blocked_kind, blocked_reason, recent FROM prepare_payment({})".format(
        ", ".join(f"${number}::{sql_type}" for number, (_, sql_type) in enumerate(_PREPARE_PAYMENT_ARGUMENTS, start=1))
    )
)
_PREPARE_PAYMENT_TEXT = text(
    "SELECT created, payment_id, blocked_kind, blocked_reason, recent FROM prepare_payment({})".format(
        ", ".join(f"CAST(:{name} AS {sql_type})" for name, sql_type in _PREPARE_PAYMENT_ARGUMENTS)
    )
)
# apply_transition's SQLSTATE for a row whose split is not the cached one (never expected).
SPLIT_MISMATCH_SQLSTATE = "PN001"


def _split_to_ledger(split: ComputedSplit) -> CaptureSplit:
    return CaptureSplit(
        total=split.total,
        currency=split.currency,
        platform_fee=split.platform_fee,
        tax=split.tax,
        recipients=tuple((part.account_id, part.amount) for part in split.parts),
    )


def _split_from_json(payload: dict[str, Any]) -> ComputedSplit:
    return ComputedSplit(
        total=int(payload["total"]),
        currency=str(payload["currency"]),
        platform_fee=int(payload["platform_fee"]),
        tax=int(payload["tax"]),
        parts=[SplitPart(**part) for part in payload["parts"]],
    )


class PaymentActivities:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._splits: dict[str, ComputedSplit] = {}

    def _remember_split(self, payment_id: str, split: ComputedSplit) -> None:
        if len(self._splits) >= SPLITS_CACHED_MAX:
            self._splits.clear()
        self._splits[payment_id] = split

    @activity.defn(name="prepare_payment")
    async def prepare_payment(self, request: PreparePaymentInput) -> PreparePaymentResult:
        """Compute the exact split once and create the payments row (idempotent by order id)."""
        try:
            ledger_split = compute_split(
                request.amount,
                request.currency,
                platform_fee_bps=request.platform_fee_bps,
                tax_amount=request.tax_amount,
                recipients=[
                    SplitRecipient(account_id=r.account_id, share_bps=r.share_bps, amount=r.amount)
                    for r in request.recipients
                ],
            )
        except LedgerError as error:
            raise ApplicationError(
                str(error), {"code": error.code, "param": error.param}, type=INVALID_PAYMENT_REQUEST, non_retryable=True
            ) from error
        roles = {r.account_id: r.role for r in request.recipients}
        split = ComputedSplit(
            total=ledger_split.total,
            currency=ledger_split.currency,
            platform_fee=ledger_split.platform_fee,
            tax=ledger_split.tax,
            parts=[
                SplitPart(account_id=account, amount=amount, role=roles.get(account, "seller"))
                for account, amount in ledger_split.recipients
            ],
        )
        screen = request.payment_method is not None
        arguments = (
            request.payment_id,
            request.order_id,
            request.workflow_id,
            request.amount,
            request.currency,
            request.customer,
            request.capture_method,
            json.dumps(asdict(split)),
            json.dumps(request.metadata),
            request.request_fingerprint,
            "api" if request.request_id else "workflow",
            request.request_id or None,
            json.dumps({"amount": request.amount, "currency": request.currency, "split": asdict(split)}),
            OUTBOX_SCHEMA_VERSION,
            screen,
            request.payment_method,
            RISK_VELOCITY_WINDOW_SECONDS,
        )
        # One statement (migration 0014): the row, its audit row and outbox event, the screen's reads.
        async with self._engine.connect() as connection:
            driver = await books.statement_driver(connection)
            if driver is not None:
                row = await driver.fetchrow(_PREPARE_PAYMENT_SQL, *arguments)
            else:
                async with connection.begin():
                    row = (
                        await connection.execute(
                            _PREPARE_PAYMENT_TEXT, dict(zip(_PREPARE_PAYMENT_NAMES, arguments, strict=True))
                        )
                    ).one()
        created, payment_id, blocked_kind, blocked_reason, recent = row
        if payment_id != request.payment_id:
            raise ApplicationError(
                f"order {request.order_id} already belongs to payment {payment_id}",
                type=INVALID_PAYMENT_REQUEST,
                non_retryable=True,
            )
        risk = None
        if request.payment_method is not None:
            risk = _risk_decision(
                RiskCheckInput(
                    payment_id=request.payment_id,
                    customer=request.customer,
                    amount=request.amount,
                    currency=request.currency,
                    payment_method=request.payment_method,
                ),
                blocked_kind,
                blocked_reason,
                int(recent or 0),
            )
        self._remember_split(request.payment_id, split)
        return PreparePaymentResult(split=split, created=bool(created), risk=risk)

    @activity.defn(name="risk_check")
    async def risk_check(self, request: RiskCheckInput) -> RiskCheckResult:
        async with self._engine.connect() as connection:
            return await self._screen(connection, request)

    @staticmethod
    async def _screen(connection: AsyncConnection, request: RiskCheckInput) -> RiskCheckResult:
        """The risk check's reads (blocklist, velocity), on the caller's connection, and its decision."""
        blocked = (
            await connection.execute(
                text(
                    """
                    SELECT kind, reason FROM risk_blocklist
                    WHERE (kind = 'customer' AND value = :customer)
                       OR (kind = 'payment_method' AND value = :payment_method)
                    LIMIT 1
                    """
                ),
                {"customer": request.customer, "payment_method": request.payment_method},
            )
        ).first()
        recent = (
            await connection.execute(
                text(
                    """
                    SELECT count(*) FROM payments
                    WHERE customer = :customer AND id <> :payment_id
                      AND created_at > now() - make_interval(secs => :window)
                    """
                ),
                {
                    "customer": request.customer,
                    "payment_id": request.payment_id,
                    "window": RISK_VELOCITY_WINDOW_SECONDS,
                },
            )
        ).scalar_one()
        return _risk_decision(
            request, blocked.kind if blocked else None, blocked.reason if blocked else None, int(recent)
        )

    @activity.defn(name="apply_transition")
    async def apply_transition(self, request: TransitionInput) -> TransitionResult:
        try:
            return await self._apply_transition(request)
        except LedgerError as error:
            # Deterministic: the same postings would be refused again. The transaction rolled
            # back (nothing half-written); the workflow sends the payment to review.
            raise ApplicationError(
                f"ledger refused {request.event} for {request.payment_id}: {error}",
                {"code": error.code, "param": error.param},
                type=LEDGER_REJECTED,
                non_retryable=True,
            ) from error

    async def _apply_transition(self, request: TransitionInput) -> TransitionResult:
        if (
            not request.force
            and request.refund is None
            and request.resolution is None
            and all(action.kind in ONE_STATEMENT_LEDGER_KINDS for action in request.ledger)
        ):
            result = await self._apply_in_one_statement(request)
            if result is not None:
                return result
        return await self._apply_in_steps(request)

    async def _apply_in_one_statement(self, request: TransitionInput) -> TransitionResult | None:
        """The transition as ONE statement (`apply_transition`, migration 0013): one round trip,
        its own transaction. None: this transition needs the general path (nothing was written)."""
        async with self._engine.connect() as connection:
            driver = await books.statement_driver(connection)
            if driver is None:
                return None  # not SQLAlchemy's asyncpg adapter as expected: the general path
            split_json: str | None = None
            hold_key: str | None = None
            ledger_arguments: list[Any] = [[] for _ in books.POST_ENTRIES_SQL_TYPES]
            if request.ledger:
                split = self._splits.get(request.payment_id)
                if split is None:
                    stored = await driver.fetchval("SELECT split FROM payments WHERE id = $1", request.payment_id)
                    if stored is None:
                        return None  # no such payment: the general path reports it
                    split = _split_from_json(json.loads(stored) if isinstance(stored, str | bytes) else stored)
                    self._remember_split(request.payment_id, split)
                drafts = [_draft_for(request.payment_id, split, action) for action in request.ledger]
                if len({draft.idempotency_key for draft, _ in drafts}) != len(drafts):
                    return None  # the general path posts them one by one
                if any(action.kind == "capture" for action in request.ledger):
                    hold_key = chart.authorization_hold(request.payment_id, 1, split.currency).idempotency_key
                accounts = [spec for draft, _ in drafts for spec in chart.accounts_for(draft)]
                ledger_arguments = books.post_entries_arguments(drafts, accounts)
                split_json = json.dumps(asdict(split))
            row = {name: value for name, value in asdict(request.row).items() if value is not None}
            review = request.review
            try:
                outcome, status, entry_ids = await driver.fetchrow(
                    _APPLY_TRANSITION_SQL,
                    request.transition_id,
                    request.payment_id,
                    request.expected_status,
                    request.to_status,
                    json.dumps(row),
                    request.event,
                    request.actor,
                    request.reason,
                    request.stripe_event_id,
                    request.request_id,
                    json.dumps(dict(request.details)),
                    review.kind if review is not None else None,
                    review.reason if review is not None else None,
                    json.dumps(review.details if review is not None else {}),
                    request.reason[:500],
                    OUTBOX_SCHEMA_VERSION,
                    split_json,
                    hold_key,
                    *ledger_arguments,
                )
            except asyncpg.PostgresError as error:
                if getattr(error, "sqlstate", None) == SPLIT_MISMATCH_SQLSTATE:
                    self._splits.pop(request.payment_id, None)
                    return None
                translated = books.ledger_error(error)
                if translated is None:
                    raise
                raise translated from error
        if outcome == "already":
            return TransitionResult(applied=False, status=status, ledger_entry_ids=list(entry_ids))
        if outcome == "needs_hold":
            return None  # manual capture: the hold is settled by the general path
        if outcome == "conflict":
            raise _conflict(request, status)
        self._after_commit(request, request.expected_status, None)
        return TransitionResult(applied=True, status=request.to_status, ledger_entry_ids=list(entry_ids))

    async def _apply_in_steps(self, request: TransitionInput) -> TransitionResult:
        """The general path: the same writes as `apply_transition`'s statement, one at a time,
        in one transaction (forced reviews, refund rows, resolutions, authorisation holds)."""
        async with self._engine.begin() as connection:
            already = (
                await connection.execute(
                    text("SELECT to_status, ledger_entry_ids FROM payment_events WHERE transition_id = :id"),
                    {"id": request.transition_id},
                )
            ).first()
            if already is not None:
                return TransitionResult(applied=False, status=already.to_status, ledger_entry_ids=list(already[1]))
            from_status = request.expected_status
            if request.force:
                # Only a move to review may be forced: it must land whatever the row says.
                assert request.to_status == "NEEDS_REVIEW", "only a review may be forced"
                from_status = (
                    await connection.execute(
                        text("SELECT status FROM payments WHERE id = :id FOR UPDATE"), {"id": request.payment_id}
                    )
                ).scalar_one()
            row = request.row
            updated = (
                await connection.execute(
                    text(
                        """
                        UPDATE payments SET
                            status = :to_status,
                            amount_capturable = COALESCE(:amount_capturable, amount_capturable),
                            amount_captured = COALESCE(:amount_captured, amount_captured),
                            amount_refunded = COALESCE(:amount_refunded, amount_refunded),
                            stripe_payment_intent_id = COALESCE(:intent_id, stripe_payment_intent_id),
                            stripe_charge_id = COALESCE(:charge_id, stripe_charge_id),
                            failure_code = COALESCE(:failure_code, failure_code),
                            failure_message = COALESCE(:failure_message, failure_message),
                            dispute_status = COALESCE(:dispute_status, dispute_status),
                            version = version + 1,
                            updated_at = now()
                        WHERE id = :payment_id AND status = :expected_status
                        RETURNING split, currency
                        """
                    ),
                    {
                        "to_status": request.to_status,
                        "amount_capturable": row.amount_capturable,
                        "amount_captured": row.amount_captured,
                        "amount_refunded": row.amount_refunded,
                        "intent_id": row.stripe_payment_intent_id,
                        "charge_id": row.stripe_charge_id,
                        "failure_code": row.failure_code,
                        "failure_message": row.failure_message,
                        "dispute_status": row.dispute_status,
                        "payment_id": request.payment_id,
                        "expected_status": from_status,
                    },
                )
            ).first()
            if updated is None:
                current = (
                    await connection.execute(
                        text("SELECT status FROM payments WHERE id = :id"), {"id": request.payment_id}
                    )
                ).scalar_one_or_none()
                raise _conflict(request, current)
            split = _split_from_json(updated.split)
            self._remember_split(request.payment_id, split)
            entry_ids: list[int] = []
            for action in request.ledger:
                entry_ids.extend(await self._apply_ledger_action(connection, request.payment_id, split, action))
            details = dict(request.details)
            if from_status != request.expected_status:
                details["workflow_expected_status"] = request.expected_status
            await self._append_event(
                connection,
                payment_id=request.payment_id,
                transition_id=request.transition_id,
                from_status=from_status,
                to_status=request.to_status,
                event=request.event,
                actor=request.actor,
                reason=request.reason,
                stripe_event_id=request.stripe_event_id,
                request_id=request.request_id,
                ledger_entry_ids=entry_ids,
                details=details,
            )
            refund_status_before: str | None = None
            if request.refund is not None:
                refund_status_before = await _upsert_refund(
                    connection, request.payment_id, split.currency, request.refund
                )
            if request.resolution is not None:
                await _resolve_review_items(connection, request.payment_id, request.resolution)
            if request.review is not None:
                await connection.execute(
                    text(
                        """
                        INSERT INTO review_items (payment_id, dedupe_key, kind, reason, details)
                        VALUES (:payment_id, :dedupe_key, :kind, :reason, CAST(:details AS jsonb))
                        ON CONFLICT (dedupe_key) DO NOTHING
                        """
                    ),
                    {
                        "payment_id": request.payment_id,
                        "dedupe_key": request.transition_id,
                        "kind": request.review.kind,
                        "reason": request.review.reason,
                        "details": json.dumps(request.review.details),
                    },
                )
            if request.to_status != from_status:
                # Exactly one outbox event per status change; bookings that keep the status
                # (fee, transfers) and extra review items emit nothing.
                await self._append_outbox(connection, request, from_status)
        self._after_commit(request, from_status, refund_status_before)
        return TransitionResult(applied=True, status=request.to_status, ledger_entry_ids=entry_ids)

    @staticmethod
    def _after_commit(request: TransitionInput, from_status: str, refund_status_before: str | None) -> None:
        """The log line and metrics of an applied transition (after its commit)."""
        if request.to_status != from_status:
            logger.info(
                "payment %s: %s -> %s (%s, by %s)",
                request.payment_id,
                from_status,
                request.to_status,
                request.event,
                request.actor,
                extra={"payment_id": request.payment_id},
            )
            metrics.PAYMENT_TRANSITIONS.labels(to_status=request.to_status).inc()
            metrics.record_transition(from_status, request.to_status, request.row.failure_code)
        if request.refund is not None and request.refund.status != refund_status_before:
            metrics.record_refund(request.refund.status)
        if request.review is not None:
            metrics.REVIEW_ITEMS_OPENED.labels(kind=request.review.kind).inc()
            if request.review.kind == "duplicate_charge":
                metrics.DUPLICATE_CHARGES.inc()

    @activity.defn(name="record_ignored_event")
    async def record_ignored_event(self, request: RecordIgnoredInput) -> bool:
        """Audit an event that changed nothing (stale or refused), with the reason. Idempotent."""
        async with self._engine.begin() as connection:
            inserted = (
                await connection.execute(
                    text(
                        """
                        INSERT INTO payment_events (payment_id, transition_id, from_status, to_status, event,
                                                    actor, reason, stripe_event_id, details)
                        VALUES (:payment_id, :transition_id, :status, :status, :event, :actor, :reason,
                                :stripe_event_id, CAST(:details AS jsonb))
                        ON CONFLICT (transition_id) DO NOTHING
                        RETURNING id
                        """
                    ),
                    {
                        "payment_id": request.payment_id,
                        "transition_id": request.record_id,
                        "status": request.status,
                        "event": f"ignored:{request.event}",
                        "actor": request.actor,
                        "reason": request.reason,
                        "stripe_event_id": request.stripe_event_id,
                        "details": json.dumps(request.details),
                    },
                )
            ).scalar_one_or_none()
        return inserted is not None

    async def _apply_ledger_action(
        self, connection: AsyncConnection, payment_id: str, split: ComputedSplit, action: LedgerAction
    ) -> list[int]:
        currency = split.currency
        if action.kind == "capture":
            entry_ids = []
            hold_id = await _pending_entry_id(connection, chart.authorization_hold(payment_id, 1, currency))
            if hold_id is not None:
                # Manual capture: post what was captured from the hold (the rest is released),
                # then split it out of the payment's clearing account.
                final = await books.post_pending_final(
                    connection, hold_id, action.amount, chart.authorization_capture_key(payment_id)
                )
                entry_ids.append(final.id)
            draft, _ = _draft_for(payment_id, split, action, after_hold=hold_id is not None)
            entry_ids.append((await books.post(connection, draft, accounts=chart.accounts_for(draft))).id)
            return entry_ids
        if action.kind == "release_hold":
            hold_id = await _pending_entry_id(connection, chart.authorization_hold(payment_id, 1, currency))
            if hold_id is None:
                return []
            return [(await books.void_pending(connection, hold_id, chart.authorization_void_key(payment_id))).id]
        draft, kind = _draft_for(payment_id, split, action)
        if kind == "pending":
            return [(await books.post_pending(connection, draft, accounts=chart.accounts_for(draft))).id]
        return [(await books.post(connection, draft, accounts=chart.accounts_for(draft))).id]

    @staticmethod
    async def _append_event(
        connection: AsyncConnection,
        *,
        payment_id: str,
        transition_id: str,
        from_status: str | None,
        to_status: str,
        event: str,
        actor: str,
        reason: str,
        stripe_event_id: str | None = None,
        request_id: str | None = None,
        ledger_entry_ids: list[int] | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        await connection.execute(
            text(
                """
                INSERT INTO payment_events (payment_id, transition_id, from_status, to_status, event, actor,
                                            reason, stripe_event_id, request_id, ledger_entry_ids, details)
                VALUES (:payment_id, :transition_id, :from_status, :to_status, :event, :actor, :reason,
                        :stripe_event_id, :request_id, :ledger_entry_ids, CAST(:details AS jsonb))
                """
            ),
            {
                "payment_id": payment_id,
                "transition_id": transition_id,
                "from_status": from_status,
                "to_status": to_status,
                "event": event,
                "actor": actor,
                "reason": reason,
                "stripe_event_id": stripe_event_id,
                "request_id": request_id,
                "ledger_entry_ids": ledger_entry_ids or [],
                "details": json.dumps(details or {}),
            },
        )

    @staticmethod
    async def _append_outbox(connection: AsyncConnection, request: TransitionInput, from_status: str) -> None:
        """The transition's one outbox event: typed (`payment.<status>`), versioned, self-contained."""
        await connection.execute(
            text(
                """
                INSERT INTO outbox (topic, aggregate_id, dedupe_key, payload)
                SELECT :topic, p.id, :dedupe_key,
                       jsonb_build_object('type', CAST(:topic AS text), 'version', CAST(:schema_version AS integer),
                                          'id', CAST(:dedupe_key AS text),
                                          'payment_id', p.id, 'order_id', p.order_id, 'status', p.status,
                                          'previous_status', CAST(:from_status AS text),
                                          'amount', p.amount, 'currency', p.currency,
                                          'amount_captured', p.amount_captured,
                                          'amount_refunded', p.amount_refunded,
                                          'reason', CAST(:reason AS text), 'payment_version', p.version,
                                          'occurred_at', now())
                FROM payments p WHERE p.id = :payment_id
                ON CONFLICT (dedupe_key) DO NOTHING
                """
            ),
            {
                "topic": f"payment.{request.to_status.lower()}",
                "dedupe_key": request.transition_id,
                "payment_id": request.payment_id,
                "from_status": from_status,
                "reason": request.reason[:500],
                "schema_version": OUTBOX_SCHEMA_VERSION,
            },
        )


def _risk_decision(
    request: RiskCheckInput, blocked_kind: str | None, blocked_reason: str | None, recent: int
) -> RiskCheckResult:
    """Block, review or allow, from the screen's reads: a blocklist entry (its kind and reason)
    and the customer's other payments in the last RISK_VELOCITY_WINDOW_SECONDS."""
    if blocked_kind is not None:
        return RiskCheckResult("block", f"{blocked_kind} is blocklisted: {blocked_reason or 'no reason given'}")
    if request.amount > RISK_BLOCK_AMOUNT_MINOR:
        return RiskCheckResult("block", f"amount {request.amount} above RISK_BLOCK_AMOUNT_MINOR")
    if recent >= RISK_VELOCITY_MAX_PAYMENTS:
        return RiskCheckResult("review", f"customer made {recent} payments in the last hour")
    if request.amount > RISK_REVIEW_AMOUNT_MINOR:
        return RiskCheckResult("review", f"amount {request.amount} above RISK_REVIEW_AMOUNT_MINOR")
    return RiskCheckResult("allow", "within limits")


def _conflict(request: TransitionInput, current: str | None) -> ApplicationError:
    return ApplicationError(
        f"payment {request.payment_id} is {current}, expected {request.expected_status}",
        {"current": current, "expected": request.expected_status},
        type=TRANSITION_CONFLICT,
        non_retryable=True,
    )


def _draft_for(
    payment_id: str, split: ComputedSplit, action: LedgerAction, *, after_hold: bool = False
) -> tuple[EntryDraft, str]:
    """The entry a ledger action books, and its kind (`posted`, or `pending` for a hold).

    A capture is drafted as the capture of an automatic payment unless `after_hold` (the
    caller found the payment's authorisation hold); `release_hold` needs the hold and has no
    draft here."""
    currency = split.currency
    if action.kind == "authorization_hold":
        return chart.authorization_hold(payment_id, action.amount, currency), "pending"
    if action.kind == "capture":
        captured = _split_to_ledger(split)
        if action.amount != split.total:
            captured = scale_split(captured, action.amount)
        return chart.capture(payment_id, captured, after_hold=after_hold), "posted"
    if action.kind == "processing_fee":
        draft = chart.processing_fee(payment_id, action.amount, currency)
    elif action.kind == "transfer":
        draft = chart.transfer_to_connected_account(
            payment_id, action.account_id, action.amount, currency, action.reference
        )
    elif action.kind == "settlement":
        draft = chart.settlement(payment_id, action.amount, currency)
    elif action.kind == "dispute_opened":
        draft = chart.dispute_opened(payment_id, action.reference, action.amount, currency, action.fee)
    elif action.kind == "dispute_won":
        draft = chart.dispute_won(payment_id, action.reference, action.amount, currency)
    elif action.kind == "dispute_lost":
        draft = chart.dispute_lost(payment_id, action.reference, action.amount, currency)
    elif action.kind == "dispute_recovery":
        draft = chart.dispute_recovery(
            payment_id, action.reference, action.account_id, action.amount, currency, action.reversal_id
        )
    elif action.kind == "refund":
        draft = chart.refund(payment_id, action.reference, _parts_to_ledger(action))
    elif action.kind == "refund_recovery":
        draft = chart.refund_recovery(
            payment_id, action.reference, action.account_id, action.amount, currency, action.reversal_id
        )
    elif action.kind == "refund_failed":
        draft = chart.refund_failed(payment_id, action.reference, _parts_to_ledger(action), action.recovered)
    else:
        raise ApplicationError(f"unknown ledger action {action.kind}", non_retryable=True)
    return draft, "posted"


def _parts_to_ledger(action: LedgerAction) -> CaptureSplit:
    if action.parts is None:
        raise ApplicationError(f"ledger action {action.kind} needs its parts", non_retryable=True)
    return _split_to_ledger(action.parts)


async def _upsert_refund(
    connection: AsyncConnection, payment_id: str, currency: str, refund: RefundRecord
) -> str | None:
    """The refund's row, as the workflow knows it now (one row per refund, never deleted).
    Returns the status the row had before (None: a new row)."""
    parts = {
        "platform_fee": refund.platform_fee,
        "tax": refund.tax,
        "recipients": [{"account_id": part.account_id, "amount": part.amount} for part in refund.recipients],
    }
    recoveries = [
        {"account_id": item.account_id, "amount": item.amount, "reversal_id": item.reversal_id, "booked": item.booked}
        for item in refund.recoveries
    ]
    previous = await connection.execute(
        text("SELECT status FROM refunds WHERE id = :id FOR UPDATE"), {"id": refund.refund_id}
    )
    before = previous.scalar_one_or_none()
    await connection.execute(
        text(
            """
            INSERT INTO refunds (id, payment_id, amount, currency, reason, status, parts, recoveries,
                                 stripe_refund_id, failure_reason, request_id)
            VALUES (:id, :payment_id, :amount, :currency, :reason, :status, CAST(:parts AS jsonb),
                    CAST(:recoveries AS jsonb), :stripe_refund_id, :failure_reason, :request_id)
            ON CONFLICT (id) DO UPDATE SET
                status = EXCLUDED.status,
                recoveries = EXCLUDED.recoveries,
                stripe_refund_id = COALESCE(EXCLUDED.stripe_refund_id, refunds.stripe_refund_id),
                failure_reason = COALESCE(EXCLUDED.failure_reason, refunds.failure_reason),
                updated_at = now()
            WHERE refunds.payment_id = EXCLUDED.payment_id
            """
        ),
        {
            "id": refund.refund_id,
            "payment_id": payment_id,
            "amount": refund.amount,
            "currency": currency,
            "reason": refund.reason,
            "status": refund.status,
            "parts": json.dumps(parts),
            "recoveries": json.dumps(recoveries),
            "stripe_refund_id": refund.stripe_refund_id,
            "failure_reason": (refund.failure_reason or None) and refund.failure_reason[:500],
            "request_id": refund.request_id or None,
        },
    )
    return None if before is None else str(before)


async def _resolve_review_items(connection: AsyncConnection, payment_id: str, resolution: ReviewResolution) -> None:
    """Close every open review item of the payment: who, when, how and why."""
    await connection.execute(
        text(
            """
            UPDATE review_items
            SET status = 'resolved', resolved_at = now(), resolution = :resolution,
                resolved_by = :actor, resolution_note = :note
            WHERE payment_id = :payment_id AND status = 'open'
            """
        ),
        {
            "payment_id": payment_id,
            "resolution": resolution.resolution,
            "actor": resolution.actor,
            "note": resolution.note[:1000],
        },
    )


async def _pending_entry_id(connection: AsyncConnection, hold_draft: Any) -> int | None:
    """The id of the payment's authorisation hold, found by its deterministic idempotency key."""
    return (
        await connection.execute(
            text("SELECT id FROM ledger.entries WHERE idempotency_key = :key"), {"key": hold_draft.idempotency_key}
        )
    ).scalar_one_or_none()
