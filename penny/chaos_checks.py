"""Invariant checks for `penny chaos`, run from the outside once the soak is quiescent.

The chaos driver (`penny/chaos.py`) drives orders through the HTTP API while faults are
injected, turns the faults off, waits until nothing moves, and then calls
`check_invariants`. Every check reads what a user or an auditor could read — the
processor's state (the emulator's control API), Penny's database, Temporal's visibility, the
log files — and never Penny's in-process state, so a bug in Penny cannot hide itself.

    results = await check_invariants(
        engine=engine, emulator_url="http://127.0.0.1:12111", temporal=client,
        logs_dir=Path(".penny/logs"), client_records=records, order_ids=orders,
    )
    print(format_report(results))
    failed = any(not result.ok for result in results)

Counting. `InvariantResult.checked` is how many things one check examined (its docstring says
what a "thing" is) and `violation_count` is the exact number of violations; `violations`
keeps only the first VIOLATION_EXAMPLES_MAX of them as examples, in a deterministic order
(sorted order ids, then what the check iterates), so a seeded soak prints the same report
twice. A check that cannot run (the emulator or the database unreachable, a query error) does
not stop the others: its result carries `error` and counts as one violation, because an
invariant nobody could check is not an invariant that holds.

Scope. The processor and the database may hold more than one soak's data (a shared test
emulator, an earlier run), so the per-order checks (`one_charge_per_order`, `nothing_stuck`,
`money_matches`) look only at the orders the caller names: `order_ids` plus every order of
`client_records`. `ledger_balanced` and `no_card_numbers` are global (the whole ledger, every
table, every log file). `no_failed_workflows` is global unless `workflows_of_orders_only`;
`webhooks_accounted` covers every endpoint unless `webhook_endpoint_ids` names Penny's.

No check prints a card number: a hit is named by file and line, or by table, primary key and
column, and every violation's text and order id pass through `scrub_card_numbers` (a key or an
id quoted in a detail could hold one).
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from temporalio.client import Client

from activities.webhook_types import (
    STATUS_DELIVERED,
    STATUS_FAILED,
    STATUS_IGNORED,
    STATUS_RECEIVED,
    STATUS_UNROUTED,
)
from ledger import ledger as books
from penny.chaos_subscriber import OUTBOX_DELIVERED, OutboxSubscription, outbox_findings, run_events
from penny.logs import contains_card_number, scrub_card_numbers
from stripe_emulator.control import AsyncEmulatorControl
from workflows.payment_models import WORKFLOW_ID_PREFIX
from workflows.state_machine import TERMINAL_STATES, PaymentStatus

# ------------------------------------------------------------------------------------ names

ONE_CHARGE_PER_ORDER = "one_charge_per_order"
LEDGER_BALANCED = "ledger_balanced"
NO_FAILED_WORKFLOWS = "no_failed_workflows"
NOTHING_STUCK = "nothing_stuck"
MONEY_MATCHES = "money_matches"
WEBHOOKS_ACCOUNTED = "webhooks_accounted"
IDEMPOTENCY_KEYS_CONSISTENT = "idempotency_keys_consistent"
NO_CARD_NUMBERS = "no_card_numbers"
INVARIANT_NAMES = (
    ONE_CHARGE_PER_ORDER,
    LEDGER_BALANCED,
    NO_FAILED_WORKFLOWS,
    NOTHING_STUCK,
    MONEY_MATCHES,
    WEBHOOKS_ACCOUNTED,
    IDEMPOTENCY_KEYS_CONSISTENT,
    NO_CARD_NUMBERS,
    OUTBOX_DELIVERED,
)

# ------------------------------------------------------------------------------------ limits

VIOLATION_EXAMPLES_MAX = 20
REPORT_EXAMPLES_MAX = 3
REPORT_DETAIL_CHARS_MAX = 160
# Ids sent in one `= ANY(:ids)` query; longer lists are sent in pages of this size.
IDS_PER_QUERY_MAX = 1000
# Executions read from Temporal's visibility by `no_failed_workflows`.
WORKFLOWS_LISTED_MAX = 10_000
WORKFLOW_IDS_PER_COUNT_MAX = 100
# The database dump streams each table through a server-side cursor, this many rows a fetch.
DUMP_ROWS_PER_FETCH = 500
DUMP_ROWS_PER_TABLE_MAX = 10_000_000
LOG_FILES_MAX = 10_000
# Log files are read in pieces of LOG_READ_CHARS; each piece is scanned with the last
# LOG_CARRY_CHARS of the one before, which holds any card number crossing the cut (at most 19
# digits and 18 separators) and the character before it.
LOG_READ_CHARS = 1 << 20
LOG_CARRY_CHARS = 64

# PaymentIntent statuses in which the buyer's card has been charged or held.
CHARGED_INTENT_STATUSES = frozenset({"succeeded", "requires_capture"})
COUNTED_REFUND_STATUSES = frozenset({"succeeded", "pending", "requires_action"})
# A payment may rest in these: terminal, or settled and open in its dispute window.
RESTING_STATUSES = frozenset(
    {str(status) for status in TERMINAL_STATES}
    | {PaymentStatus.SETTLED.value, PaymentStatus.DISPUTED.value, PaymentStatus.PARTIALLY_REFUNDED.value}
)
NEEDS_REVIEW = PaymentStatus.NEEDS_REVIEW.value
UNEXPECTED_END_QUERY = 'ExecutionStatus="Failed" OR ExecutionStatus="Terminated" OR ExecutionStatus="TimedOut"'
EMULATOR_COLLECTIONS = ["payment_intents", "refunds", "transfers", "disputes", "application_fees"]
DUMPED_SCHEMAS = ("public", "ledger")
# The money compared per order by `money_matches`, in this order.
# `refund_unrecovered` is the ledger's refund_recoverable balance: recipients' refund shares not
# yet back by transfer reversal; at the processor it is always 0 (a reversal is made or it is not).
MONEY_QUANTITIES = ("captured", "transferred", "refunded", "disputes_lost", "refund_unrecovered")


# ------------------------------------------------------------------------------------ results


@dataclass
class ClientRecord:
    """One answer a chaos client got from POST /v1/payments."""

    idempotency_key: str
    order_id: str
    payment_id: str | None  # the payment id in the answer, if any
    status_code: int


@dataclass
class Violation:
    invariant: str
    order_id: str | None
    detail: str


@dataclass
class InvariantResult:
    """One invariant's outcome. `violations` holds at most VIOLATION_EXAMPLES_MAX examples;
    `violation_count` is exact (never less than the examples). `explained` counts differences
    a review item accounts for (money_matches), with examples in `explained_examples`;
    `notes` say what could not be checked completely; `error` is set when the check could not
    run at all (then it counts as one violation)."""

    name: str
    checked: int
    violations: list[Violation]
    violation_count: int = 0
    explained: int = 0
    explained_examples: list[Violation] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def __post_init__(self) -> None:
        self.violation_count = max(self.violation_count, len(self.violations))

    @property
    def ok(self) -> bool:
        return self.violation_count == 0 and self.error is None


def _violation(name: str, order_id: str | None, detail: str) -> Violation:
    """A violation whose text holds no card number, whatever ids or keys it quotes."""
    scrubbed_order = None if order_id is None else scrub_card_numbers(order_id)
    return Violation(name, scrubbed_order, scrub_card_numbers(detail))


class _Tally:
    """Collects one invariant's findings: exact counts, bounded examples."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.checked = 0
        self.count = 0
        self.examples: list[Violation] = []
        self.explained = 0
        self.explained_examples: list[Violation] = []
        self.notes: list[str] = []

    def violation(self, order_id: str | None, detail: str) -> None:
        self.count += 1
        if len(self.examples) < VIOLATION_EXAMPLES_MAX:
            self.examples.append(_violation(self.name, order_id, detail))

    def explain(self, order_id: str | None, detail: str) -> None:
        self.explained += 1
        if len(self.explained_examples) < VIOLATION_EXAMPLES_MAX:
            self.explained_examples.append(_violation(self.name, order_id, detail))

    def result(self) -> InvariantResult:
        return InvariantResult(
            name=self.name,
            checked=self.checked,
            violations=self.examples,
            violation_count=self.count,
            explained=self.explained,
            explained_examples=self.explained_examples,
            notes=self.notes,
        )


# ------------------------------------------------------------------------------------ helpers


def _pages(values: Sequence[str]) -> Iterator[list[str]]:
    for start in range(0, len(values), IDS_PER_QUERY_MAX):
        yield list(values[start : start + IDS_PER_QUERY_MAX])


def _orders_in_scope(order_ids: Collection[str], client_records: Sequence[ClientRecord]) -> list[str]:
    return sorted(set(order_ids) | {record.order_id for record in client_records})


@asynccontextmanager
async def _snapshot(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A read-only, repeatable-read transaction: one consistent view, and no check can write."""
    async with engine.connect() as connection:
        await connection.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
        try:
            yield connection
        finally:
            await connection.rollback()


def _metadata_order(obj: Mapping[str, Any]) -> str | None:
    metadata = obj.get("metadata")
    order_id = metadata.get("order_id") if isinstance(metadata, Mapping) else None
    return order_id if isinstance(order_id, str) else None


def _amount(value: Any) -> int:
    """An amount from the emulator's JSON: an int, never a float or a bool."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"amount {value!r} is not an integer")
    return value


async def _payments_by_order(connection: AsyncConnection, order_ids: Sequence[str]) -> dict[str, Any]:
    """order id -> its payments row (id, order_id, status, has_review, has_open_review)."""
    rows: dict[str, Any] = {}
    for page in _pages(order_ids):
        result = await connection.execute(
            text(
                """
                SELECT p.id, p.order_id, p.status,
                       EXISTS (SELECT 1 FROM review_items r WHERE r.payment_id = p.id) AS has_review,
                       EXISTS (SELECT 1 FROM review_items r WHERE r.payment_id = p.id AND r.status = 'open')
                           AS has_open_review
                  FROM payments p
                 WHERE p.order_id = ANY(:order_ids)
                """
            ),
            {"order_ids": page},
        )
        rows.update({row.order_id: row for row in result})
    return rows


# ------------------------------------------------------------------------------------ 1. one charge


def check_one_charge_per_order(
    payment_intents: Sequence[Mapping[str, Any]], order_ids: Sequence[str]
) -> InvariantResult:
    """Per order, at most one PaymentIntent at the processor that charged or holds the card
    (status succeeded or requires_capture), found by our `order_id` metadata.

    checked = orders in scope. Pure: pass the emulator's `payment_intents`."""
    tally = _Tally(ONE_CHARGE_PER_ORDER)
    scope = set(order_ids)
    charged: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for intent in payment_intents:
        order_id = _metadata_order(intent)
        if order_id in scope and intent.get("status") in CHARGED_INTENT_STATUSES:
            charged[order_id].append(intent)
    tally.checked = len(scope)
    for order_id in sorted(charged):
        intents = charged[order_id]
        if len(intents) > 1:
            listed = ", ".join(
                f"{intent.get('id')} ({intent.get('status')}, {intent.get('amount_received') or intent.get('amount')})"
                for intent in intents
            )
            tally.violation(order_id, f"{len(intents)} charged PaymentIntents: {listed}")
    return tally.result()


# ------------------------------------------------------------------------------------ 2. ledger balanced

_UNBALANCED_CURRENCIES = text(
    """
    SELECT currency, CAST(sum(amount) AS text) AS total, count(*) AS postings
      FROM ledger.postings GROUP BY currency ORDER BY currency
    """
)
_ORDERS_OF_ENTRIES = text(
    """
    SELECT e.id, p.order_id
      FROM ledger.entries e JOIN payments p ON p.id = e.metadata ->> 'payment_id'
     WHERE e.id = ANY(:entry_ids) AND e.metadata ? 'payment_id'
    """
)


async def check_ledger_balanced(connection: AsyncConnection) -> InvariantResult:
    """`ledger.verify` finds nothing, and every currency's postings sum to zero.

    checked = ledger entries. `verify` reports at most 100 findings per kind of finding, so
    past that the count is a lower bound (a note says so)."""
    tally = _Tally(LEDGER_BALANCED)
    tally.checked = int((await connection.execute(text("SELECT count(*) FROM ledger.entries"))).scalar_one())
    findings = await books.verify(connection)
    entry_ids = sorted({finding.entry_id for finding in findings if finding.entry_id is not None})
    orders: dict[int, str] = {}
    for start in range(0, len(entry_ids), IDS_PER_QUERY_MAX):
        page = entry_ids[start : start + IDS_PER_QUERY_MAX]
        result = await connection.execute(_ORDERS_OF_ENTRIES, {"entry_ids": page})
        orders.update({row.id: row.order_id for row in result})
    by_code = Counter(finding.code for finding in findings)
    for code, count in sorted(by_code.items()):
        if count >= books.FINDINGS_PER_CHECK_MAX:
            tally.notes.append(f"verify stops at {books.FINDINGS_PER_CHECK_MAX} {code} findings: the count is a floor")
    for finding in findings:
        order_id = orders.get(finding.entry_id) if finding.entry_id is not None else None
        tally.violation(order_id, f"{finding.code}: {finding.message}")
    for row in await connection.execute(_UNBALANCED_CURRENCIES):
        if int(row.total) != 0:
            tally.violation(None, f"{row.currency}: {row.postings} postings sum to {row.total}, not 0")
    return tally.result()


# ------------------------------------------------------------------------------------ 3. workflows


def _order_of_workflow(workflow_id: str) -> str | None:
    return workflow_id[len(WORKFLOW_ID_PREFIX) :] if workflow_id.startswith(WORKFLOW_ID_PREFIX) else None


async def _count_executions(temporal: Client, workflow_ids: Sequence[str] | None) -> int:
    """Executions (running or closed) in the namespace, or those with one of `workflow_ids`."""
    if workflow_ids is None:
        return (await temporal.count_workflows()).count
    total = 0
    for start in range(0, len(workflow_ids), WORKFLOW_IDS_PER_COUNT_MAX):
        page = workflow_ids[start : start + WORKFLOW_IDS_PER_COUNT_MAX]
        # json.dumps quotes and escapes like the visibility query language's string literals.
        query = f"WorkflowId IN ({', '.join(json.dumps(workflow_id) for workflow_id in page)})"
        total += (await temporal.count_workflows(query)).count
    return total


async def check_no_failed_workflows(temporal: Client, order_ids: Sequence[str] | None = None) -> InvariantResult:
    """No workflow execution ended Failed, Terminated or TimedOut (a payment workflow never
    fails; nothing else should either). With `order_ids`, only those orders' payment workflows
    (`payment-<order_id>`) count; otherwise every execution in the namespace.

    checked = executions in scope (every run, running or closed), from Temporal's count.
    Visibility trails the executions by a moment: run this after quiescence."""
    tally = _Tally(NO_FAILED_WORKFLOWS)
    wanted = None if order_ids is None else sorted(WORKFLOW_ID_PREFIX + order_id for order_id in order_ids)
    wanted_set = None if wanted is None else set(wanted)
    listed = 0
    ended: list[tuple[str, str, str, str]] = []
    async for execution in temporal.list_workflows(UNEXPECTED_END_QUERY, limit=WORKFLOWS_LISTED_MAX):
        listed += 1
        if wanted_set is not None and execution.id not in wanted_set:
            continue
        status = execution.status.name if execution.status is not None else "UNKNOWN"
        ended.append((execution.id, execution.run_id, execution.workflow_type, status))
    if listed >= WORKFLOWS_LISTED_MAX:
        tally.notes.append(f"read the first {WORKFLOWS_LISTED_MAX} such executions only: the count is a floor")
    tally.checked = await _count_executions(temporal, wanted)
    for workflow_id, run_id, workflow_type, status in sorted(ended):
        tally.violation(_order_of_workflow(workflow_id), f"{workflow_type} {workflow_id} (run {run_id}) ended {status}")
    return tally.result()


# ------------------------------------------------------------------------------------ 4. nothing stuck


async def check_nothing_stuck(
    connection: AsyncConnection, order_ids: Sequence[str], client_records: Sequence[ClientRecord]
) -> InvariantResult:
    """Every payment of the orders in scope rests: terminal (FAILED, CANCELED, REFUNDED,
    REVERSED), open in its dispute window (SETTLED, DISPUTED, PARTIALLY_REFUNDED), or
    NEEDS_REVIEW with an open review item. And every payment id the API answered exists.

    checked = payments rows of the orders in scope + distinct payment ids answered."""
    tally = _Tally(NOTHING_STUCK)
    scope = _orders_in_scope(order_ids, client_records)
    rows = await _payments_by_order(connection, scope)
    answered: dict[str, str] = {}
    for record in client_records:
        if record.payment_id is not None:
            answered.setdefault(record.payment_id, record.order_id)
    existing: set[str] = set()
    for page in _pages(sorted(answered)):
        result = await connection.execute(text("SELECT id FROM payments WHERE id = ANY(:ids)"), {"ids": page})
        existing.update(row.id for row in result)
    tally.checked = len(rows) + len(answered)
    for order_id in scope:
        row = rows.get(order_id)
        if row is None:
            continue
        if row.status == NEEDS_REVIEW and not row.has_open_review:
            tally.violation(order_id, f"payment {row.id} is NEEDS_REVIEW without an open review item")
        elif row.status != NEEDS_REVIEW and row.status not in RESTING_STATUSES:
            tally.violation(order_id, f"payment {row.id} is stuck in {row.status}")
    for payment_id in sorted(answered):
        if payment_id not in existing:
            order_id = answered[payment_id]
            tally.violation(order_id, f"the API answered payment {payment_id}, which has no payments row")
    return tally.result()


# ------------------------------------------------------------------------------------ 5. money

# Per payment and currency, what the ledger booked (see ledger/chart.py):
# - captured: the capture entry's debit (`payment:<id>:capture`, the split entry, whether it
#   debits stripe:pending or, after a hold, the clearing account). The hold's own final posting
#   (`payment:<id>:authorization:capture`) moves the same money into the clearing account and is
#   left out, or a manual capture would count twice.
# - transferred: transfer entries' debits on seller payables, minus transfer reversals: reversal
#   entries' credits on seller payables, refund recoveries' credits on the payment's
#   refund_recoverable account, lost-dispute recoveries' credits on platform:disputes.
# - refunded: refund entries' credit on stripe:pending (the refund amount), net of the debit a
#   failed refund books back (recoveries, which also carry the refund id, are left out).
# - disputes_lost: lost-dispute entries' debit on platform:disputes.
# - refund_unrecovered: the payment's refund_recoverable balance (0 once every reversal landed).
_LEDGER_MONEY = text(
    """
    SELECT e.metadata ->> 'payment_id' AS payment_id, p.currency,
           CAST(coalesce(sum(p.amount) FILTER (
               WHERE e.kind = 'posted' AND e.idempotency_key LIKE :capture_key
                 AND e.idempotency_key NOT LIKE :hold_capture_key AND p.amount > 0), 0) AS text) AS captured,
           CAST(coalesce(sum(p.amount) FILTER (
               WHERE e.metadata ? 'transfer_id' AND a.code LIKE :seller_payable AND p.amount > 0), 0)
             + coalesce(sum(p.amount) FILTER (
               WHERE e.metadata ? 'reversal_id' AND a.code LIKE :seller_payable AND p.amount < 0), 0)
             + coalesce(sum(p.amount) FILTER (
               WHERE e.metadata ? 'reversal_id' AND a.code LIKE :refund_recoverable AND p.amount < 0), 0)
             + coalesce(sum(p.amount) FILTER (
               WHERE e.metadata ? 'reversal_id' AND a.code LIKE :platform_disputes AND p.amount < 0), 0)
             AS text) AS transferred,
           CAST(coalesce(-sum(p.amount) FILTER (
               WHERE e.metadata ? 'refund_id' AND NOT e.metadata ? 'reversal_id'
                 AND a.code LIKE :stripe_pending), 0) AS text)
             AS refunded,
           CAST(coalesce(sum(p.amount) FILTER (
               WHERE e.metadata ? 'dispute_id' AND e.idempotency_key LIKE :dispute_lost_key
                 AND a.code LIKE :platform_disputes AND p.amount > 0), 0) AS text) AS disputes_lost,
           CAST(coalesce(sum(p.amount) FILTER (
               WHERE e.kind = 'posted' AND a.code LIKE :refund_recoverable), 0) AS text) AS refund_unrecovered
      FROM ledger.entries e
      JOIN ledger.postings p ON p.entry_id = e.id
      JOIN ledger.accounts a ON a.id = p.account_id
     WHERE e.metadata ? 'payment_id' AND e.metadata ->> 'payment_id' = ANY(:payment_ids)
     GROUP BY 1, 2
    """
)
# LIKE patterns, passed as parameters: a colon inside the SQL text would read as a bind parameter.
_LEDGER_MONEY_PATTERNS = {
    "capture_key": "%:capture",
    "hold_capture_key": "%:authorization:capture",
    "seller_payable": "seller:%:payable:%",
    "refund_recoverable": "payment:%:refund_recoverable:%",
    "stripe_pending": "stripe:pending:%",
    "dispute_lost_key": "%:dispute:%:lost",
    "platform_disputes": "platform:disputes:%",
}

# (quantity, currency) -> amount in minor units; a Counter so a missing key reads as 0.
Money = Counter[tuple[str, str]]


def emulator_money(emulator_state: Mapping[str, Any], order_ids: Collection[str]) -> dict[str, Money]:
    """Per order in `order_ids`, what the processor holds: captured (amount_received of
    succeeded PaymentIntents), transferred (what connected accounts keep: transfers in the
    order's transfer_group net of reversals, minus the application fees of the order's charges
    net of fee refunds — a destination charge transfers the whole amount and takes the
    platform's fee back), refunded (refunds of the order's PaymentIntents, unless failed or
    canceled), disputes_lost (lost disputes' amounts). Pure."""
    scope = set(order_ids)
    money: dict[str, Money] = defaultdict(Counter)
    order_of_intent: dict[str, str] = {}
    order_of_charge: dict[str, str] = {}
    for intent in emulator_state.get("payment_intents", []):
        order_id = _metadata_order(intent)
        if order_id not in scope:
            continue
        order_of_intent[intent["id"]] = order_id
        if intent.get("latest_charge"):
            order_of_charge[intent["latest_charge"]] = order_id
        if intent.get("status") == "succeeded":
            money[order_id]["captured", intent["currency"].upper()] += _amount(intent.get("amount_received", 0))
    for transfer in emulator_state.get("transfers", []):
        order_id = transfer.get("transfer_group")
        if order_id in scope:
            net = _amount(transfer["amount"]) - _amount(transfer.get("amount_reversed", 0))
            money[order_id]["transferred", transfer["currency"].upper()] += net
    for fee in emulator_state.get("application_fees", []):
        order_id = order_of_charge.get(fee.get("charge") or "")
        if order_id is not None:
            kept_by_platform = _amount(fee["amount"]) - _amount(fee.get("amount_refunded", 0))
            money[order_id]["transferred", fee["currency"].upper()] -= kept_by_platform
    for refund in emulator_state.get("refunds", []):
        order_id = order_of_intent.get(refund.get("payment_intent") or "")
        if order_id is not None and refund.get("status") in COUNTED_REFUND_STATUSES:
            money[order_id]["refunded", refund["currency"].upper()] += _amount(refund["amount"])
    for dispute in emulator_state.get("disputes", []):
        order_id = order_of_intent.get(dispute.get("payment_intent") or "")
        if order_id is not None and dispute.get("status") == "lost":
            money[order_id]["disputes_lost", dispute["currency"].upper()] += _amount(dispute["amount"])
    return dict(money)


async def ledger_money(connection: AsyncConnection, payment_ids: Sequence[str]) -> dict[str, Money]:
    """Per payment id, what the ledger booked (see the comment on _LEDGER_MONEY)."""
    money: dict[str, Money] = defaultdict(Counter)
    for page in _pages(payment_ids):
        for row in await connection.execute(_LEDGER_MONEY, {"payment_ids": page, **_LEDGER_MONEY_PATTERNS}):
            for quantity in MONEY_QUANTITIES:
                money[row.payment_id][quantity, row.currency.upper()] += int(getattr(row, quantity))
    return dict(money)


def money_differences(processor: Money, books_money: Money) -> list[str]:
    """One phrase per quantity where the processor and the ledger differ (exactly; no tolerance)."""

    def shown(money: Money, quantity: str) -> str:
        amounts = sorted((currency, amount) for (name, currency), amount in money.items() if name == quantity)
        return ", ".join(f"{currency} {amount}" for currency, amount in amounts if amount != 0) or "0"

    differences = []
    for quantity in MONEY_QUANTITIES:
        at_processor = Counter({key: amount for key, amount in processor.items() if key[0] == quantity})
        in_ledger = Counter({key: amount for key, amount in books_money.items() if key[0] == quantity})
        if at_processor != in_ledger:
            differences.append(
                f"{quantity}: processor {shown(processor, quantity)} != ledger {shown(books_money, quantity)}"
            )
    return differences


async def check_money_matches(
    connection: AsyncConnection,
    emulator_state: Mapping[str, Any],
    order_ids: Sequence[str],
    client_records: Sequence[ClientRecord] = (),
) -> InvariantResult:
    """Per order in scope, the processor's captured, transferred, refunded and lost-dispute
    amounts equal the ledger's for the order's payment, exactly. A difference on a payment
    with any review item (open or resolved) is `explained`, not a violation; money at the
    processor for an order without a payment is a violation.

    checked = orders in scope."""
    tally = _Tally(MONEY_MATCHES)
    scope = _orders_in_scope(order_ids, client_records)
    processor = emulator_money(emulator_state, scope)
    payments = await _payments_by_order(connection, scope)
    booked = await ledger_money(connection, sorted(row.id for row in payments.values()))
    tally.checked = len(scope)
    for order_id in scope:
        row = payments.get(order_id)
        booked_money = booked.get(row.id, Counter()) if row is not None else Counter()
        differences = money_differences(processor.get(order_id, Counter()), booked_money)
        if not differences:
            continue
        who = f"payment {row.id}" if row is not None else "no payment"
        detail = f"{who}: " + "; ".join(differences)
        if row is not None and row.has_review:
            tally.explain(order_id, detail)
        else:
            tally.violation(order_id, detail)
    return tally.result()


# ------------------------------------------------------------------------------------ 6. webhooks

_INBOX_ROWS = text(
    """
    SELECT w.event_id, w.type, w.status, w.last_error,
           coalesce((SELECT p.order_id FROM payments p WHERE p.id = coalesce(w.payment_id, w.payment_ids[1])),
                    w.payload #>> '{data,object,metadata,order_id}',
                    CASE WHEN w.object_type = 'transfer' THEN w.payload #>> '{data,object,transfer_group}' END)
               AS order_id,
           CASE WHEN w.status IN ('unrouted', 'failed')
                THEN EXISTS (SELECT 1 FROM review_items r WHERE r.details ->> 'event_id' = w.event_id)
                ELSE false END AS has_review
      FROM webhook_events w
     WHERE w.event_id = ANY(:event_ids)
    """
)


def _webhook_finding(row: Any) -> str | None:
    """Why an inbox row does not account for its event, or None if it does."""
    if row.status == STATUS_DELIVERED:
        return None
    if row.status == STATUS_IGNORED:
        return None if (row.last_error or "").strip() else "ignored without a reason"
    if row.status in (STATUS_UNROUTED, STATUS_FAILED):
        return None if row.has_review else f"{row.status} without a review item"
    if row.status == STATUS_RECEIVED:
        return "stored but never delivered to its payment (still received)"
    return f"unknown inbox status {row.status!r}"


async def check_webhooks_accounted(
    connection: AsyncConnection,
    deliveries: Sequence[Mapping[str, Any]],
    webhook_endpoint_ids: Collection[str] | None = None,
    events_of: Callable[[], Awaitable[Sequence[Mapping[str, Any]]]] | None = None,
) -> InvariantResult:
    """Every event the processor delivered successfully (a 2xx answer) to Penny is in the
    `webhook_events` inbox as delivered, ignored with a reason, or unrouted/failed with a review
    item — never missing and never left `received`.

    `deliveries` is the emulator's delivery log; only `succeeded` deliveries to
    `webhook_endpoint_ids` (None: every endpoint) count. `events_of` fetches the processor's
    events, used only to name the order of an event Penny never stored.
    checked = distinct events delivered."""
    tally = _Tally(WEBHOOKS_ACCOUNTED)
    delivered: dict[str, str] = {}
    for delivery in deliveries:
        if delivery.get("status") != "succeeded":
            continue
        if webhook_endpoint_ids is not None and delivery.get("endpoint_id") not in webhook_endpoint_ids:
            continue
        delivered.setdefault(str(delivery["event_id"]), str(delivery.get("event_type", "")))
    rows: dict[str, Any] = {}
    for page in _pages(sorted(delivered)):
        rows.update({row.event_id: row for row in await connection.execute(_INBOX_ROWS, {"event_ids": page})})
    tally.checked = len(delivered)
    missing = [event_id for event_id in sorted(delivered) if event_id not in rows]
    missing_orders: dict[str, str | None] = {}
    if missing and events_of is not None:
        wanted = set(missing)
        for event in await events_of():
            if event.get("id") in wanted:
                obj = (event.get("data") or {}).get("object") or {}
                missing_orders[event["id"]] = _metadata_order(obj) or (
                    obj.get("transfer_group") if obj.get("object") == "transfer" else None
                )
    for event_id in sorted(delivered):
        row = rows.get(event_id)
        if row is None:
            detail = f"{delivered[event_id]} {event_id} was delivered (2xx) but is not in the inbox"
            tally.violation(missing_orders.get(event_id), detail)
            continue
        finding = _webhook_finding(row)
        if finding is not None:
            tally.violation(row.order_id, f"{row.type} {event_id}: {finding}")
    return tally.result()


# ------------------------------------------------------------------------------------ 7. idempotency


def idempotency_conflicts(
    client_records: Sequence[ClientRecord], stored_payment_of_order: Mapping[str, str]
) -> InvariantResult:
    """No Idempotency-Key answered with two payment ids, no order answered with two, and no
    answer naming another payment than the one stored for its order. Pure.

    checked = answers carrying a payment id."""
    tally = _Tally(IDEMPOTENCY_KEYS_CONSISTENT)
    by_key: dict[str, set[str]] = defaultdict(set)
    orders_of_key: dict[str, set[str]] = defaultdict(set)
    by_order: dict[str, set[str]] = defaultdict(set)
    for record in client_records:
        if record.payment_id is None:
            continue
        tally.checked += 1
        by_key[record.idempotency_key].add(record.payment_id)
        orders_of_key[record.idempotency_key].add(record.order_id)
        by_order[record.order_id].add(record.payment_id)
    for key in sorted(by_key):
        if len(by_key[key]) > 1:
            orders = sorted(orders_of_key[key])
            tally.violation(
                orders[0],
                f"Idempotency-Key {key[:80]!r} answered {len(by_key[key])} payment ids: "
                f"{', '.join(sorted(by_key[key]))} (orders {', '.join(orders)})",
            )
    for order_id in sorted(by_order):
        if len(by_order[order_id]) > 1:
            tally.violation(
                order_id, f"order answered {len(by_order[order_id])} payment ids: {sorted(by_order[order_id])}"
            )
        stored = stored_payment_of_order.get(order_id)
        foreign = sorted(by_order[order_id] - {stored}) if stored is not None else []
        if foreign:
            tally.violation(order_id, f"answered {', '.join(foreign)} but the order's stored payment is {stored}")
    return tally.result()


async def check_idempotency_keys_consistent(
    connection: AsyncConnection, client_records: Sequence[ClientRecord]
) -> InvariantResult:
    """See `idempotency_conflicts`; reads the stored payment of each answered order."""
    orders = sorted({record.order_id for record in client_records if record.payment_id is not None})
    payments = await _payments_by_order(connection, orders)
    return idempotency_conflicts(client_records, {order_id: row.id for order_id, row in payments.items()})


# ------------------------------------------------------------------------------------ 8. card numbers


def _open_log(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace", newline="")
    return path.open(encoding="utf-8", errors="replace", newline="")


def card_number_lines(path: Path) -> Iterator[int]:
    """The 1-based numbers of the lines of `path` holding a card number (`.gz` read unpacked).

    Reads at most LOG_READ_CHARS at a time, so a huge single-line log stays bounded in memory;
    a candidate crossing a cut is still seen (LOG_CARRY_CHARS). Inside a digit run longer than
    LOG_CARRY_CHARS that crosses a cut, a stretch may be taken for a candidate: a false alarm
    at worst, never a miss."""
    with _open_log(path) as file:
        line_number, carry, hit = 1, "", False
        while piece := file.readline(LOG_READ_CHARS):
            hit = hit or contains_card_number(carry + piece)
            if piece.endswith("\n"):
                if hit:
                    yield line_number
                line_number, carry, hit = line_number + 1, "", False
            else:
                carry = piece[-LOG_CARRY_CHARS:]
        if hit:
            yield line_number


def scan_logs(logs_dir: Path) -> tuple[int, list[tuple[str, int]], list[str]]:
    """(files scanned, [(relative path, line number)] of card numbers, notes). Blocking: run it
    in a thread. Every regular file below `logs_dir` is a log, in path order."""
    files = sorted(path for path in logs_dir.rglob("*") if path.is_file())
    notes = []
    if len(files) > LOG_FILES_MAX:
        notes.append(f"{len(files)} files under {logs_dir}: scanned the first {LOG_FILES_MAX}")
        files = files[:LOG_FILES_MAX]
    hits: list[tuple[str, int]] = []
    for path in files:
        try:
            hits.extend((str(path.relative_to(logs_dir)), line) for line in card_number_lines(path))
        except OSError as error:
            notes.append(f"could not read {path.relative_to(logs_dir)}: {type(error).__name__}")
    return len(files), hits, notes


def _columns_with_card_numbers(row_json: str) -> tuple[list[str], Mapping[str, Any]]:
    try:
        row = json.loads(row_json)
    except ValueError:
        return [], {}
    if not isinstance(row, dict):
        return [], {}
    columns = [
        name
        for name, value in row.items()
        if contains_card_number(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
    ]
    return columns, row


async def _dumped_tables(connection: AsyncConnection) -> list[tuple[str, str, list[str]]]:
    """(schema, table, primary key columns) of every table to dump, in name order."""
    result = await connection.execute(
        text(
            """
            SELECT n.nspname, c.relname,
                   coalesce((SELECT array_agg(a.attname ORDER BY k.ordinality)
                               FROM pg_catalog.pg_index i
                               CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ordinality)
                               JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
                              WHERE i.indrelid = c.oid AND i.indisprimary), '{}') AS key_columns
              FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = ANY(:schemas) AND c.relkind IN ('r', 'p') AND NOT c.relispartition
             ORDER BY n.nspname, c.relname
            """
        ),
        {"schemas": list(DUMPED_SCHEMAS)},
    )
    return [(row.nspname, row.relname, list(row.key_columns)) for row in result]


def _row_key(row: Mapping[str, Any], key_columns: Sequence[str], ordinal: int) -> str:
    """The row's primary key (`kind=customer, value=cus_1`), or its position in the scan.
    Key values may hold the very card number found: the violation's text is scrubbed."""
    if key_columns and all(column in row for column in key_columns):
        return ", ".join(f"{column}={row[column]}" for column in key_columns)
    return f"#{ordinal}"


async def _scan_table(
    connection: AsyncConnection, schema: str, table: str, key_columns: Sequence[str], tally: _Tally
) -> None:
    quote = connection.dialect.identifier_preparer.quote_identifier
    statement = text(f"SELECT to_jsonb(t)::text AS row FROM {quote(schema)}.{quote(table)} t")
    result = await connection.stream(statement, execution_options={"yield_per": DUMP_ROWS_PER_FETCH})
    scanned = 0
    try:
        async for (row_json,) in result:
            scanned += 1
            if scanned > DUMP_ROWS_PER_TABLE_MAX:
                tally.notes.append(f"{schema}.{table}: scanned the first {DUMP_ROWS_PER_TABLE_MAX} rows only")
                break
            tally.checked += 1
            if not contains_card_number(row_json):
                continue
            columns, row = _columns_with_card_numbers(row_json)
            key = _row_key(row, key_columns, scanned)
            order_id = row.get("order_id") if isinstance(row.get("order_id"), str) else None
            where = ", ".join(columns) if columns else "a value spanning columns"
            tally.violation(order_id, f"{schema}.{table} row {key}: card number in {where}")
    finally:
        await result.close()


async def check_no_card_numbers(connection: AsyncConnection, logs_dir: Path | None) -> InvariantResult:
    """No card number (penny.logs.contains_card_number) in any file under `logs_dir` nor in any
    row of any table in the `public` and `ledger` schemas (`to_jsonb(row)::text`, streamed).

    checked = log files + database rows scanned; one violation per log line or row."""
    tally = _Tally(NO_CARD_NUMBERS)
    if logs_dir is not None:
        files, hits, notes = await asyncio.to_thread(scan_logs, logs_dir)
        tally.checked += files
        tally.notes.extend(notes)
        for relative_path, line in hits:
            tally.violation(None, f"log {relative_path} line {line}: card number")
    for schema, table, key_columns in await _dumped_tables(connection):
        await _scan_table(connection, schema, table, key_columns, tally)
    return tally.result()


async def check_outbox_delivered(
    connection: AsyncConnection, outbox: OutboxSubscription | None, order_ids: Sequence[str]
) -> InvariantResult:
    """Every outbox event of the orders' payments reached the run's subscriber, signed, first
    copies in order per payment (penny/chaos_subscriber.py). Without a subscriber (a caller that
    registered none) nothing is checked, and the report says so."""
    tally = _Tally(OUTBOX_DELIVERED)
    if outbox is None:
        tally.notes.append("no outbox subscriber registered: not checked")
        return tally.result()
    events = await run_events(connection, outbox.endpoint_id, order_ids)
    tally.checked = len(events)
    orders = {
        row[0]: row[1]
        for page in _pages(sorted({event.payment_id for event in events}))
        for row in await connection.execute(
            text("SELECT id, order_id FROM payments WHERE id = ANY(:ids)"), {"ids": page}
        )
    }
    for payment_id, finding in outbox_findings(events, outbox.receipts, outbox.secret):
        tally.violation(orders.get(payment_id), finding)
    return tally.result()


# ------------------------------------------------------------------------------------ all together


async def _guarded(name: str, check: Callable[[], Awaitable[InvariantResult]]) -> InvariantResult:
    """Run one check; an error becomes that check's result instead of stopping the others."""
    try:
        return await check()
    except Exception as error:  # a check that cannot run is reported, never hidden
        message = scrub_card_numbers(f"could not check: {type(error).__name__}: {error}")[: REPORT_DETAIL_CHARS_MAX * 2]
        return InvariantResult(
            name=name, checked=0, violations=[Violation(name, None, message)], violation_count=1, error=message
        )


async def check_invariants(
    *,
    engine: AsyncEngine,
    emulator_url: str,
    temporal: Client,
    logs_dir: Path | None,
    client_records: Sequence[ClientRecord],
    order_ids: Sequence[str],
    webhook_endpoint_ids: Collection[str] | None = None,
    workflows_of_orders_only: bool = False,
    outbox: OutboxSubscription | None = None,
) -> list[InvariantResult]:
    """Check every invariant (INVARIANT_NAMES order) after the soak has gone quiescent.

    `webhook_endpoint_ids`: Penny's endpoints at the emulator (None: every endpoint's
    deliveries count). `workflows_of_orders_only`: look only at the orders' payment workflows
    for failed executions (a Temporal server shared with other runs); default: all of them.
    `outbox`: the run's outbox subscriber and what it received (None: not checked)."""
    scope = _orders_in_scope(order_ids, client_records)
    async with AsyncEmulatorControl(emulator_url) as control:
        cache: dict[str, Any] = {}

        async def emulator_state() -> dict[str, Any]:
            if "state" not in cache:
                cache["state"] = await control.state(EMULATOR_COLLECTIONS)
            return dict(cache["state"])

        async def events() -> list[dict[str, Any]]:
            return list((await control.state(["events"]))["events"])

        async def one_charge() -> InvariantResult:
            return check_one_charge_per_order((await emulator_state())["payment_intents"], scope)

        async def ledger_balanced() -> InvariantResult:
            async with _snapshot(engine) as connection:
                return await check_ledger_balanced(connection)

        async def workflows() -> InvariantResult:
            return await check_no_failed_workflows(temporal, scope if workflows_of_orders_only else None)

        async def stuck() -> InvariantResult:
            async with _snapshot(engine) as connection:
                return await check_nothing_stuck(connection, scope, client_records)

        async def money() -> InvariantResult:
            state = await emulator_state()
            async with _snapshot(engine) as connection:
                return await check_money_matches(connection, state, scope)

        async def webhooks() -> InvariantResult:
            deliveries = await control.webhook_deliveries(status="succeeded")
            async with _snapshot(engine) as connection:
                return await check_webhooks_accounted(connection, deliveries, webhook_endpoint_ids, events)

        async def idempotency() -> InvariantResult:
            async with _snapshot(engine) as connection:
                return await check_idempotency_keys_consistent(connection, client_records)

        async def card_numbers() -> InvariantResult:
            async with _snapshot(engine) as connection:
                return await check_no_card_numbers(connection, logs_dir)

        async def outbox_delivered() -> InvariantResult:
            async with _snapshot(engine) as connection:
                return await check_outbox_delivered(connection, outbox, scope)

        checks: tuple[tuple[str, Callable[[], Awaitable[InvariantResult]]], ...] = (
            (ONE_CHARGE_PER_ORDER, one_charge),
            (LEDGER_BALANCED, ledger_balanced),
            (NO_FAILED_WORKFLOWS, workflows),
            (NOTHING_STUCK, stuck),
            (MONEY_MATCHES, money),
            (WEBHOOKS_ACCOUNTED, webhooks),
            (IDEMPOTENCY_KEYS_CONSISTENT, idempotency),
            (NO_CARD_NUMBERS, card_numbers),
            (OUTBOX_DELIVERED, outbox_delivered),
        )
        return [await _guarded(name, check) for name, check in checks]


# ------------------------------------------------------------------------------------ report


def _shorten(detail: str) -> str:
    return detail if len(detail) <= REPORT_DETAIL_CHARS_MAX else detail[: REPORT_DETAIL_CHARS_MAX - 1] + "…"


def format_report(results: Sequence[InvariantResult]) -> str:
    """A compact table: invariant, checked, violations, explained, then up to
    REPORT_EXAMPLES_MAX examples (order id: detail), notes and errors."""
    width = max([len("invariant"), *(len(result.name) for result in results)])
    header = f"{'invariant':<{width}}  {'checked':>9}  {'violations':>10}  {'explained':>9}  examples"
    lines = [header, "-" * len(header)]
    indent = " " * (width + 36)
    for result in results:
        examples = [
            f"{example.order_id or '-'}: {_shorten(example.detail)}"
            for example in result.violations[:REPORT_EXAMPLES_MAX]
        ]
        if not examples and result.explained_examples:
            examples = [
                f"(explained) {example.order_id or '-'}: {_shorten(example.detail)}"
                for example in result.explained_examples[:REPORT_EXAMPLES_MAX]
            ]
        if not examples and result.error is not None:
            examples = [f"error: {_shorten(result.error)}"]
        first = examples[0] if examples else "ok"
        lines.append(
            f"{result.name:<{width}}  {result.checked:>9}  {result.violation_count:>10}  {result.explained:>9}  {first}"
        )
        lines.extend(indent + example for example in examples[1:])
        lines.extend(f"{indent}note: {note}" for note in result.notes)
    failed = [result.name for result in results if not result.ok]
    lines.append("-" * len(header))
    lines.append(f"FAILED: {', '.join(failed)}" if failed else f"all {len(results)} invariants hold")
    return "\n".join(lines)


__all__ = [
    "IDEMPOTENCY_KEYS_CONSISTENT",
    "INVARIANT_NAMES",
    "LEDGER_BALANCED",
    "MONEY_MATCHES",
    "NOTHING_STUCK",
    "NO_CARD_NUMBERS",
    "NO_FAILED_WORKFLOWS",
    "ONE_CHARGE_PER_ORDER",
    "OUTBOX_DELIVERED",
    "VIOLATION_EXAMPLES_MAX",
    "WEBHOOKS_ACCOUNTED",
    "ClientRecord",
    "InvariantResult",
    "Violation",
    "card_number_lines",
    "check_idempotency_keys_consistent",
    "check_invariants",
    "check_ledger_balanced",
    "check_money_matches",
    "check_no_card_numbers",
    "check_no_failed_workflows",
    "check_nothing_stuck",
    "check_one_charge_per_order",
    "check_outbox_delivered",
    "check_webhooks_accounted",
    "emulator_money",
    "format_report",
    "idempotency_conflicts",
    "ledger_money",
    "money_differences",
    "scan_logs",
]
