"""Reconciliation activities: fetch Stripe's records into Postgres, compare in SQL, repair, report.

- `reconciliation_start_run`: the run row (idempotent by run id); a scheduled run's window.
- `reconciliation_fetch_pages`: pages through one Stripe list endpoint for the window (plus
  the margins), at most `pages_max` pages per call; each page is staged with COPY
  (asyncpg `copy_records_to_table` into a temporary table, then inserted with
  ON CONFLICT DO NOTHING, so a retried page writes nothing twice) and the cursor is
  heartbeated after it commits: a retry resumes from the heartbeat, not from the start.
  Returns a count and the next cursor, never the objects.
- `reconciliation_compare`: activities/reconciliation_sql.py in one transaction.
- `reconciliation_repair`: the one unambiguous repair (see `repair`).
- `reconciliation_finish`: review items, the run's end, metrics (once per run).

Stripe errors: a refused request (4xx other than 429/409) is final (ApplicationError, not
retried: a bad key or an unknown parameter does not fix itself); anything else is retried by
the workflow's policy.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from datetime import time as time_of_day
from typing import Any
from zoneinfo import ZoneInfo

import stripe
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from activities import reconciliation_sql as sql
from activities.webhooks import DependencyUnavailable, Target, signal_payment
from penny import payment_metrics
from penny import reconciliation_metrics as metrics
from penny.settings import Settings
from workflows.payment_models import StripeEventSignal
from workflows.reconciliation_models import (
    MATCHED,
    MISMATCH_CLASSES,
    OBJECT_TYPES,
    REVIEW_KIND,
    CompareResult,
    FetchPagesInput,
    FetchPagesResult,
    RepairResult,
    RunInput,
    StartRunInput,
    StartRunResult,
)

logger = logging.getLogger("penny.reconciliation")

STRIPE_HTTP_TIMEOUT_SECONDS = 30.0
PAYOUT_MEMBER_PAGES_MAX = 100
REPAIRS_PER_RUN_MAX = 500
SIGNAL_TIMEOUT_SECONDS = 10.0
STRIPE_REFUSED = "StripeRequestRefused"
WINDOW_DAYS_MAX = 31

STAGE_COLUMNS = (
    "run_id",
    "object_type",
    "stripe_id",
    "created_at",
    "status",
    "amount",
    "amount_received",
    "amount_reversed",
    "application_fee_amount",
    "fee",
    "net",
    "currency",
    "payment_intent",
    "charge",
    "transfer",
    "destination",
    "transfer_group",
    "payout",
    "source",
    "transaction_type",
    "automatic",
    "available_on",
    "order_id",
    "payment_id",
    "penny_refund_id",
)

# ---------------------------------------------------------------------------------------- rows


def _plain(stripe_object: Any) -> dict[str, Any]:
    if hasattr(stripe_object, "to_dict"):
        return stripe_object.to_dict()  # type: ignore[no-any-return]
    return dict(stripe_object)


def _id(value: Any) -> str | None:
    """A Stripe reference: an id, or an expanded object with one."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _time(value: Any) -> datetime | None:
    unix = _integer(value)
    return datetime.fromtimestamp(unix, UTC) if unix is not None else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def stage_rows(run_id: str, object_type: str, obj: dict[str, Any], payout: str | None = None) -> list[tuple[Any, ...]]:
    """The staging rows of one Stripe object (a transfer adds one per embedded reversal). Pure."""
    metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    assert isinstance(metadata, dict)
    created = _time(obj.get("created"))
    if created is None or not _id(obj.get("id")):
        raise ValueError(f"a Stripe {object_type} without id or created")
    row: dict[str, Any] = {name: None for name in STAGE_COLUMNS}
    row.update(
        run_id=run_id,
        object_type=object_type,
        stripe_id=obj["id"],
        created_at=created,
        status=_text(obj.get("status")),
        amount=_integer(obj.get("amount")),
        currency=_text(obj.get("currency")),
        payment_intent=_id(obj.get("payment_intent")),
        charge=_id(obj.get("charge")),
        order_id=_text(metadata.get("order_id")),
        payment_id=_text(metadata.get("payment_id")),
        penny_refund_id=_text(metadata.get("refund_id")),
    )
    if object_type == "payment_intent":
        row.update(amount_received=_integer(obj.get("amount_received")), charge=_id(obj.get("latest_charge")))
    elif object_type == "charge":
        row.update(
            charge=obj["id"],
            transfer=_id(obj.get("transfer")),
            application_fee_amount=_integer(obj.get("application_fee_amount")),
            amount_received=_integer(obj.get("amount_captured")),
        )
    elif object_type == "transfer":
        row.update(
            amount_reversed=_integer(obj.get("amount_reversed")) or 0,
            charge=_id(obj.get("source_transaction")),
            destination=_id(obj.get("destination")),
            transfer_group=_text(obj.get("transfer_group")),
        )
    elif object_type in ("balance_transaction", "payout_member"):
        row.update(
            fee=_integer(obj.get("fee")),
            net=_integer(obj.get("net")),
            source=_id(obj.get("source")),
            transaction_type=_text(obj.get("type")),
            available_on=_time(obj.get("available_on")),
            payout=payout,
        )
    elif object_type == "payout":
        row.update(automatic=obj.get("automatic") is True, available_on=_time(obj.get("arrival_date")))
    rows = [tuple(row[name] for name in STAGE_COLUMNS)]
    if object_type == "transfer":
        reversals = obj.get("reversals") if isinstance(obj.get("reversals"), dict) else {}
        assert isinstance(reversals, dict)
        for reversal in reversals.get("data") or []:
            if isinstance(reversal, dict) and _id(reversal.get("id")) and _time(reversal.get("created")):
                reversal_row: dict[str, Any] = {name: None for name in STAGE_COLUMNS}
                reversal_row.update(
                    run_id=run_id,
                    object_type="transfer_reversal",
                    stripe_id=reversal["id"],
                    created_at=_time(reversal.get("created")),
                    amount=_integer(reversal.get("amount")),
                    currency=_text(reversal.get("currency")),
                    transfer=obj["id"],
                    destination=row["destination"],
                )
                rows.append(tuple(reversal_row[name] for name in STAGE_COLUMNS))
    return rows


def scheduled_window(scheduled_unix: int, timezone: str, window_days: int) -> tuple[int, int]:
    """The `window_days` whole days (in `timezone`) before the day `scheduled_unix` falls on. Pure."""
    if not 1 <= window_days <= WINDOW_DAYS_MAX:
        raise ValueError(f"window_days must be 1..{WINDOW_DAYS_MAX}")
    zone = ZoneInfo(timezone)
    day: date = datetime.fromtimestamp(scheduled_unix, zone).date()
    end = datetime.combine(day, time_of_day(0), zone)
    start = datetime.combine(day - timedelta(days=window_days), time_of_day(0), zone)
    return int(start.timestamp()), int(end.timestamp())


# ---------------------------------------------------------------------------------- activities

StripeList = Callable[[dict[str, Any]], Awaitable[Any]]


class ReconciliationActivities:
    def __init__(self, engine: AsyncEngine, settings: Settings, client: Client | None = None) -> None:
        self._engine = engine
        self._settings = settings
        self._client = client
        self._stripe = stripe.StripeClient(
            settings.stripe_api_key,
            base_addresses={"api": settings.effective_stripe_api_base},
            http_client=stripe.HTTPXClient(timeout=STRIPE_HTTP_TIMEOUT_SECONDS),
            max_network_retries=0,
        )

    def _lister(self, object_type: str) -> StripeList:
        v1 = self._stripe.v1
        listers: dict[str, StripeList] = {
            "payment_intent": v1.payment_intents.list_async,  # type: ignore[dict-item]
            "charge": v1.charges.list_async,  # type: ignore[dict-item]
            "refund": v1.refunds.list_async,  # type: ignore[dict-item]
            "transfer": v1.transfers.list_async,  # type: ignore[dict-item]
            "dispute": v1.disputes.list_async,  # type: ignore[dict-item]
            "balance_transaction": v1.balance_transactions.list_async,  # type: ignore[dict-item]
            "payout": v1.payouts.list_async,  # type: ignore[dict-item]
        }
        return listers[object_type]

    async def _temporal(self) -> Client:
        if self._client is None:
            self._client = await Client.connect(
                self._settings.effective_temporal_address, namespace=self._settings.temporal_namespace
            )
        return self._client

    @activity.defn(name="reconciliation_start_run")
    async def start_run(self, request: StartRunInput) -> StartRunResult:
        if request.window_start_unix is not None and request.window_end_unix is not None:
            start_unix, end_unix = request.window_start_unix, request.window_end_unix
        else:
            try:
                start_unix, end_unix = scheduled_window(request.scheduled_unix, request.timezone, request.window_days)
            except (ValueError, KeyError) as error:  # an unknown timezone or a bad day count: not retried
                raise ApplicationError(f"no window: {error}", non_retryable=True) from error
        if start_unix >= end_unix:
            raise ApplicationError("the window's start must be before its end", non_retryable=True)
        tolerances = {
            "amount_minor": self._settings.reconciliation_amount_tolerance_minor,
            "fee_minor": self._settings.reconciliation_fee_tolerance_minor,
            "settlement_late_seconds": self._settings.reconciliation_settlement_late_seconds,
            "margin_seconds": self._settings.reconciliation_margin_seconds,
            "lookahead_seconds": self._settings.reconciliation_lookahead_seconds,
        }
        async with self._engine.begin() as connection:
            await connection.execute(
                text(
                    """
                    INSERT INTO reconciliation_runs (id, window_start, window_end, trigger, requested_by,
                                                     workflow_id, tolerances)
                    VALUES (:id, :start, :end, :trigger, :requested_by, :workflow_id, CAST(:tolerances AS jsonb))
                    ON CONFLICT (id) DO NOTHING
                    """
                ),
                {
                    "id": request.run_id,
                    "start": datetime.fromtimestamp(start_unix, UTC),
                    "end": datetime.fromtimestamp(end_unix, UTC),
                    "trigger": request.trigger,
                    "requested_by": request.requested_by[:200],
                    "workflow_id": request.workflow_id,
                    "tolerances": json.dumps(tolerances),
                },
            )
            # Tolerances are this run's: the row written first (the API's, or an earlier attempt) wins.
            await connection.execute(
                text(
                    "UPDATE reconciliation_runs SET tolerances = CAST(:tolerances AS jsonb) "
                    "WHERE id = :id AND tolerances = '{}'::jsonb"
                ),
                {"id": request.run_id, "tolerances": json.dumps(tolerances)},
            )
            row = (
                await connection.execute(
                    text("SELECT window_start, window_end FROM reconciliation_runs WHERE id = :id"),
                    {"id": request.run_id},
                )
            ).one()
        return StartRunResult(int(row.window_start.timestamp()), int(row.window_end.timestamp()))

    @activity.defn(name="reconciliation_fetch_pages")
    async def fetch_pages(self, request: FetchPagesInput) -> FetchPagesResult:
        cursor = request.starting_after
        details = activity.info().heartbeat_details
        if details:
            # A retry: the previous attempt staged pages up to this cursor.
            cursor = details[0] if isinstance(details[0], str) else cursor
        if request.object_type == "payout_member":
            return await self._fetch_payout_members(request, cursor)
        settings = self._settings
        params: dict[str, Any] = {
            "created": {
                "gte": request.window_start_unix - settings.reconciliation_margin_seconds,
                "lt": request.window_end_unix + settings.reconciliation_lookahead_seconds,
            },
            "limit": settings.reconciliation_page_size,
        }
        lister = self._lister(request.object_type)
        fetched = 0
        for _ in range(max(1, request.pages_max)):
            if cursor:
                params["starting_after"] = cursor
            page = await self._list(lister, params, request.object_type)
            objects = [_plain(item) for item in page.data]
            rows = [row for obj in objects for row in stage_rows(request.run_id, request.object_type, obj)]
            await self._stage(rows)
            fetched += len(objects)
            if not page.has_more or not objects:
                return FetchPagesResult(fetched=fetched, next_cursor=None)
            cursor = str(objects[-1]["id"])
            activity.heartbeat(cursor)
        return FetchPagesResult(fetched=fetched, next_cursor=cursor)

    async def _fetch_payout_members(self, request: FetchPagesInput, cursor: str | None) -> FetchPagesResult:
        """Each staged automatic payout's balance transactions (Stripe's `payout` filter), one payout at a time."""
        async with self._engine.connect() as connection:
            payouts = (
                (
                    await connection.execute(
                        text(
                            """
                            SELECT stripe_id FROM reconciliation_stripe_objects
                             WHERE run_id = :run_id AND object_type = 'payout' AND automatic
                               AND stripe_id > :cursor
                             ORDER BY stripe_id LIMIT :limit
                            """
                        ),
                        {"run_id": request.run_id, "cursor": cursor or "", "limit": max(1, request.pages_max) + 1},
                    )
                )
                .scalars()
                .all()
            )
        fetched = 0
        lister = self._stripe.v1.balance_transactions.list_async
        done = cursor
        for payout_id in payouts[: max(1, request.pages_max)]:
            params: dict[str, Any] = {"payout": payout_id, "limit": self._settings.reconciliation_page_size}
            for _ in range(PAYOUT_MEMBER_PAGES_MAX):
                page = await self._list(lister, params, "payout balance transactions")  # type: ignore[arg-type]
                objects = [_plain(item) for item in page.data]
                await self._stage(
                    [row for obj in objects for row in stage_rows(request.run_id, "payout_member", obj, payout_id)]
                )
                fetched += len(objects)
                if not page.has_more or not objects:
                    break
                params["starting_after"] = objects[-1]["id"]
                # Alive, but this payout is not done: a retry starts it again (its rows are skipped).
                activity.heartbeat(done)
            else:
                logger.warning("payout %s has more than %d pages of transactions", payout_id, PAYOUT_MEMBER_PAGES_MAX)
            done = payout_id
            activity.heartbeat(done)
        more = len(payouts) > max(1, request.pages_max)
        return FetchPagesResult(fetched=fetched, next_cursor=payouts[max(1, request.pages_max) - 1] if more else None)

    async def _list(self, lister: StripeList, params: dict[str, Any], what: str) -> Any:
        try:
            return await lister(dict(params))
        except stripe.StripeError as error:
            status = error.http_status or 0
            if 400 <= status < 500 and status not in (409, 429):
                raise ApplicationError(
                    f"Stripe refused listing {what}: {error.user_message or error}",
                    {"http_status": status},
                    type=STRIPE_REFUSED,
                    non_retryable=True,
                ) from error
            raise RuntimeError(f"Stripe {what} list failed (HTTP {status}): {type(error).__name__}") from error

    async def _stage(self, rows: list[tuple[Any, ...]]) -> None:
        """COPY the rows into a temporary table, then into the staging table (duplicates skipped)."""
        if not rows:
            return
        async with self._engine.connect() as connection:
            raw = await connection.get_raw_connection()
            driver: Any = raw.driver_connection
            async with driver.transaction():
                await driver.execute(
                    "CREATE TEMPORARY TABLE recon_copy (LIKE reconciliation_stripe_objects) ON COMMIT DROP"
                )
                await driver.copy_records_to_table("recon_copy", records=rows, columns=list(STAGE_COLUMNS))
                await driver.execute(
                    "INSERT INTO reconciliation_stripe_objects SELECT * FROM recon_copy ON CONFLICT DO NOTHING"
                )

    def _compare_parameters(self, run: Any) -> dict[str, Any]:
        settings = self._settings
        return {
            "run_id": run.id,
            "ws": run.window_start,
            "we": run.window_end,
            "as_of": datetime.now(UTC),
            "amount_tolerance": settings.reconciliation_amount_tolerance_minor,
            "fee_tolerance": settings.reconciliation_fee_tolerance_minor,
            "settlement_late_seconds": float(settings.reconciliation_settlement_late_seconds),
            "threshold_seconds": settings.reconciliation_settlement_late_seconds,
        }

    @activity.defn(name="reconciliation_compare")
    async def compare(self, request: RunInput) -> CompareResult:
        async with self._engine.begin() as connection:
            run = await _run_row(connection, request.run_id)
            parameters = self._compare_parameters(run)
            for statement in sql.CREATE_TEMPORARY:
                await connection.execute(text(statement), _used(statement, parameters))
            for statement in sql.CLASS_STATEMENTS:
                await connection.execute(text(statement), _used(statement, parameters))
            await connection.execute(text(sql.UPSERT_ITEMS), _used(sql.UPSERT_ITEMS, parameters))
            found = {str(row[0]): int(row[1]) for row in (await connection.execute(text(sql.COUNT_CLASSES))).all()}
            matched = (await connection.execute(text(sql.COUNT_MATCHED))).scalar_one()
            counts = {MATCHED: int(matched), **{name: int(found.get(name, 0)) for name in MISMATCH_CLASSES}}
            staged = {
                row.object_type: int(row.staged)
                for row in (
                    await connection.execute(
                        text(
                            "SELECT object_type, count(*) AS staged FROM reconciliation_stripe_objects "
                            "WHERE run_id = :run_id GROUP BY object_type"
                        ),
                        {"run_id": request.run_id},
                    )
                ).all()
            }
            # Every type, fetched or not (0), so a report shows what was asked of Stripe.
            fetched = {name: staged.get(name, 0) for name in (*OBJECT_TYPES, "transfer_reversal")}
            await connection.execute(
                text(
                    "UPDATE reconciliation_runs SET counts = CAST(:counts AS jsonb), fetched = CAST(:fetched AS jsonb) "
                    "WHERE id = :id"
                ),
                {"id": request.run_id, "counts": json.dumps(counts), "fetched": json.dumps(fetched)},
            )
        return CompareResult(counts=counts, items=sum(found.values()))

    @activity.defn(name="reconciliation_repair")
    async def repair(self, request: RunInput) -> RepairResult:
        """Signal the payment workflow of a PaymentIntent Stripe reports succeeded while Penny's payment
        (naming that same PaymentIntent, found by the order id in Stripe's metadata) still waits for
        Stripe: the webhook was missed. The workflow re-fetches the PaymentIntent and applies it as it
        would the webhook (dedupes by event id, forward only). Nothing else is repaired."""
        if not self._settings.reconciliation_repair_enabled:
            return RepairResult(signalled=0, skipped=0)
        async with self._engine.connect() as connection:
            candidates = (
                await connection.execute(
                    text(
                        f"""
                        SELECT i.id, i.stripe_id, p.id AS payment_id, p.order_id, p.workflow_id, p.status,
                               i.stripe_values
                          FROM reconciliation_run_items ri
                          JOIN reconciliation_items i ON i.id = ri.item_id
                          JOIN payments p ON p.id = i.payment_id
                         WHERE ri.run_id = :run_id AND i.class = 'penny_missing_or_not_captured'
                           AND p.stripe_payment_intent_id = i.stripe_id
                           AND p.order_id = i.stripe_values ->> 'order_id'
                           AND i.stripe_values ->> 'status' = 'succeeded'
                           AND p.status IN {sql._in(sql.AWAITING_STRIPE_STATUSES)}
                         ORDER BY i.id
                         LIMIT :limit
                        """
                    ),
                    {"run_id": request.run_id, "limit": REPAIRS_PER_RUN_MAX},
                )
            ).all()
        client = await self._temporal()
        signalled = skipped = 0
        for candidate in candidates:
            values = candidate.stripe_values
            signal = StripeEventSignal(
                # Deterministic: a re-run's signal is deduplicated by the workflow.
                event_id=f"reconciliation:{candidate.stripe_id}:succeeded",
                type="payment_intent.succeeded",
                created=int(time.time()),
                object_id=candidate.stripe_id,
                object_type="payment_intent",
                status="succeeded",
                amount_received=_integer(values.get("amount_received")),
                data={"currency": str(values.get("currency") or "").lower(), "reconciliation_run": request.run_id},
            )
            target = Target(candidate.payment_id, candidate.order_id, f"payment-{candidate.order_id}", candidate.status)
            try:
                delivered = await signal_payment(client, target, signal, SIGNAL_TIMEOUT_SECONDS)
            except DependencyUnavailable as error:
                raise RuntimeError(f"Temporal unavailable while repairing: {error}") from error
            if not delivered:
                skipped += 1
                continue
            signalled += 1
            metrics.REPAIRS.inc()
            async with self._engine.begin() as connection:
                await connection.execute(
                    text("UPDATE reconciliation_items SET repair = :repair, updated_at = now() WHERE id = :id"),
                    {
                        "id": candidate.id,
                        "repair": f"signalled payment-{candidate.order_id} with payment_intent.succeeded "
                        f"(run {request.run_id})",
                    },
                )
        return RepairResult(signalled=signalled, skipped=skipped)

    @activity.defn(name="reconciliation_finish")
    async def finish(self, request: RunInput) -> None:
        async with self._engine.begin() as connection:
            opened = (
                await connection.execute(
                    text(
                        """
                        INSERT INTO review_items (payment_id, dedupe_key, kind, reason, details)
                        SELECT (SELECT p.id FROM payments p WHERE p.id = i.payment_id),
                               'reconciliation:' || i.class || ':' || i.item_key, :kind, left(i.reason, 1000),
                               jsonb_build_object(
                                   'class', i.class, 'item_id', i.id, 'run_id', CAST(:run_id AS text),
                                   'window_start', i.window_start, 'window_end', i.window_end,
                                   'stripe_id', i.stripe_id, 'order_id', i.order_id, 'stripe', i.stripe_values,
                                   'penny', i.penny_values, 'repair', i.repair,
                                   'resume', 'compare both sides; correct Stripe or Penny, then resolve the item '
                                             '(acknowledged or dismissed) with a note')
                          FROM reconciliation_run_items ri
                          JOIN reconciliation_items i ON i.id = ri.item_id
                         WHERE ri.run_id = :run_id AND i.review_item_id IS NULL
                         ORDER BY i.id
                        ON CONFLICT (dedupe_key) DO NOTHING
                        RETURNING id
                        """
                    ),
                    {"run_id": request.run_id, "kind": REVIEW_KIND},
                )
            ).all()
            await connection.execute(
                text(
                    """
                    UPDATE reconciliation_items i SET review_item_id = r.id
                      FROM review_items r, reconciliation_run_items ri
                     WHERE ri.run_id = :run_id AND ri.item_id = i.id AND i.review_item_id IS NULL
                       AND r.dedupe_key = 'reconciliation:' || i.class || ':' || i.item_key
                    """
                ),
                {"run_id": request.run_id},
            )
            repaired = (
                await connection.execute(
                    text(
                        "SELECT count(*) FROM reconciliation_run_items ri JOIN reconciliation_items i "
                        "ON i.id = ri.item_id WHERE ri.run_id = :run_id AND i.repair IS NOT NULL"
                    ),
                    {"run_id": request.run_id},
                )
            ).scalar_one()
            finished = (
                await connection.execute(
                    text(
                        """
                        UPDATE reconciliation_runs SET status = 'completed', finished_at = now(), repaired = :repaired
                         WHERE id = :id AND status = 'running'
                        RETURNING trigger, counts, EXTRACT(EPOCH FROM finished_at - started_at) AS seconds
                        """
                    ),
                    {"id": request.run_id, "repaired": int(repaired)},
                )
            ).first()
            new_items = (
                await connection.execute(
                    text(
                        "SELECT class, count(*) AS found FROM reconciliation_items WHERE first_run_id = :run_id "
                        "GROUP BY class"
                    ),
                    {"run_id": request.run_id},
                )
            ).all()
        if finished is None:
            return  # an earlier attempt finished the run (and counted its metrics)
        # Once per run: only the attempt whose UPDATE moved the run to completed gets here.
        for _ in opened:
            payment_metrics.REVIEW_ITEMS_OPENED.labels(kind=REVIEW_KIND).inc()
        for row in new_items:
            metrics.MISMATCHES.labels(row[0]).inc(row.found)
        for name, count in dict(finished.counts).items():
            metrics.LAST_RUN_COUNTS.labels(name).set(count)
        metrics.RUN_SECONDS.observe(float(finished.seconds))
        metrics.RUNS.labels(finished.trigger).inc()


async def _run_row(connection: AsyncConnection, run_id: str) -> Any:
    row = (
        await connection.execute(
            text("SELECT id, window_start, window_end FROM reconciliation_runs WHERE id = :id"), {"id": run_id}
        )
    ).first()
    if row is None:
        raise ApplicationError(f"no reconciliation run {run_id}", non_retryable=True)
    return row


def _used(statement: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """Only the parameters a statement names (asyncpg refuses unused ones)."""
    return {name: value for name, value in parameters.items() if f":{name}" in statement}
