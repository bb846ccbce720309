"""`penny chaos`: a seeded soak that drives orders through the real API while everything misbehaves.

Two phases, as in Jepsen's bank test and TigerBeetle's VOPR:

1. Safety (faults on). N orders go through the real HTTP API, `concurrency` at a time: automatic
   and manual capture (some partial, some canceled, some left to expire), 1–3 recipients with
   shares and fixed amounts, tax, declines, 3-D Secure completed and abandoned, disputes won
   and lost (closed through the emulator's control API), requests carrying a card number
   (which must be refused), and the same order sent again under a new key. Clients are
   `penny.client`, as a marketplace's backend would use it: on a timeout, a dropped connection
   or a 5xx they retry with the same Idempotency-Key. Meanwhile, from the seed: emulator
   faults on every Stripe call Penny makes (500 before and after commit, timeout after commit,
   429, latency), one connected account whose transfers fail for the first part of the run,
   webhook duplicates, delays, reordering and drops, the worker SIGKILLed several times, the
   API killed, a second worker for part of the run. An outbox subscriber
   (penny/chaos_subscriber.py) registered through the API receives every payment event
   signed, answering 500 to some first attempts.
2. Liveness (faults off). The emulator's clock moves past settlement, and the run waits, at
   most `quiescence_timeout_seconds`, until no payment is in a transient state and every
   outbox event of the run is delivered. Then the invariants are checked from the outside
   (penny/chaos_checks.py) and a report is printed: orders by final state, faults by kind,
   each invariant with its count and examples, the duration and the seed. Last, a
   reconciliation run over the soak's window must agree (penny/chaos_reconcile.py). Any
   violation → exit code 1.

The same seed replays the same orders and the same fault schedule (process timing aside);
`--orders` shrinks a failing seed. By default the run starts its own stack (as `penny dev`
does) in a temporary data directory on free ports, so it never touches a running one.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from penny.chaos_checks import ClientRecord, InvariantResult, Violation, check_invariants, format_report
from penny.chaos_subscriber import OutboxSubscription, Subscriber
from penny.client import RETRYABLE_CONFLICT_CODES, AsyncPennyClient, PennyError, RetryEvent, RetryPolicy
from penny.services import ServiceError
from penny.settings import Settings
from stripe_emulator.control import EmulatorControlError

# Compressed waits for payments the chaos API starts (PENNY_PAYMENT_TIMINGS): every path of a
# payment's life fits in a run; the logic is the production logic.
CHAOS_PAYMENT_TIMINGS: dict[str, float | int] = {
    "authorization_expiry_seconds": 40,
    "requires_action_timeout_seconds": 25,
    "processing_poll_interval_seconds": 2,
    "processing_polls_max": 40,
    # Funds become available when the run moves the emulator's clock (every tenth of the orders);
    # the balance.available webhook wakes the CAPTURED payments, the poll is the fallback.
    "settlement_poll_interval_seconds": 120,
    "settlement_timeout_seconds": 1800,
    "dispute_window_seconds": 3600,
    "stripe_attempts_max": 6,
    "stripe_initial_interval_seconds": 0.2,
    "stripe_maximum_interval_seconds": 2.0,
    "stripe_call_timeout_seconds": 15.0,
    "uncertain_rounds_max": 3,
    # A flaky account's transfers are retried for about 8 minutes before review.
    "transfer_rounds_max": 12,
    "transfer_retry_initial_seconds": 5.0,
    "transfer_retry_maximum_seconds": 60.0,
    "database_attempts_max": 10,
    "database_maximum_interval_seconds": 5.0,
}

CHAOS_IDEMPOTENCY_LOCK_TIMEOUT_SECONDS = 30
# Clients: what a careful merchant backend does.
CLIENT_TIMEOUT_SECONDS = 40.0
CLIENT_ATTEMPTS_MAX = 14
# Refunds are not interactive: a merchant's refund job sends a refund again with the same key when
# the client's own retries are spent on "still running" (409), no answer or 5xx (after a worker is
# SIGKILLed on 2 cores, the restarted worker replays every open payment and the API answers 503
# for minutes: seeds 13 and 14 at 2000 orders saw about 5 minutes).
CLIENT_REFUND_ROUNDS_MAX = 5
CLIENT_BACKOFF_INITIAL_SECONDS = 0.5
CLIENT_BACKOFF_MAX_SECONDS = 8.0
# How long a client follows one order (waiting for 3-D Secure, a dispute, an authorisation).
ORDER_FOLLOW_TIMEOUT_SECONDS = 120.0
ORDER_POLL_SECONDS = 1.0
# Liveness: quiescence must come within this bound (plus a little per order).
QUIESCENCE_TIMEOUT_SECONDS = 240.0
QUIESCENCE_SECONDS_PER_ORDER = 0.15
QUIESCENCE_POLL_SECONDS = 2.0
SETTLEMENT_CLOCK_ADVANCE_SECONDS = 4 * 24 * 3600
SETTLEMENT_EVERY_PROGRESS = 0.1
CHAOS_EMULATOR_IDEMPOTENCY_WINDOW_SECONDS = 365 * 24 * 3600
# Faults.
PROCESS_KILLS_WORKER = 3
STRIPE_POST_PATHS = (
    "/v1/payment_intents",
    "/v1/payment_intents/*/capture",
    "/v1/payment_intents/*/cancel",
    "/v1/transfers",
    "/v1/refunds",
    "/v1/transfers/*/reversals",
)
STRIPE_GET_PATHS = (
    "/v1/payment_intents/*",
    "/v1/payment_intents/search",
    "/v1/charges/*",
    "/v1/transfers",
    "/v1/balance_transactions/*",
    "/v1/refunds",
    "/v1/refunds/*",
    "/v1/transfers/*/reversals",
    "/v1/disputes/*",
)
TRANSIENT_STATUSES = ("created", "processing", "requires_action", "requires_payment_method", "authorized")
WEBHOOKS_WAITING = "webhook:received"
# Deliveries the emulator still holds (a dropped or delayed event waits for its retry).
WEBHOOKS_AT_STRIPE = "webhook:at stripe"
OUTBOX_WAITING = "outbox:undelivered"
CHAOS_OPS_KEY_NAME = "penny-chaos-ops"
# Statuses (payments rows) a payment passes through; quiescence is none of them left (and no
# stored webhook event waiting for delivery).
TRANSIENT_PAYMENT_STATUSES = (
    "CREATED",
    "PROCESSING",
    "REQUIRES_ACTION",
    "REQUIRES_PAYMENT_METHOD",
    "AUTHORIZED",
    "CAPTURED",
)
ORDERS_MAX = 100_000
CONCURRENCY_MAX = 256
# A test card number (Luhn-valid): requests carrying it must be refused, and it must never be stored.
CARD_NUMBER = "4242424242424242"

# Kinds of orders and their weights (per 100).
ORDER_KINDS: tuple[tuple[str, int], ...] = (
    ("automatic", 21),
    ("refund_partial", 6),  # a partial refund (sent twice with its key), then the rest
    ("refund_race", 3),  # three concurrent refunds of more than half: exactly one is made
    ("refund_fail", 2),  # pm_card_refundFail: refunded, then Stripe fails the refund (review)
    ("manual_full", 9),
    ("manual_partial", 8),
    ("manual_cancel", 4),
    ("manual_expire", 3),
    ("declined", 8),
    ("three_ds_completed", 6),
    ("three_ds_abandoned", 4),
    ("dispute_won", 5),
    ("dispute_lost", 5),
    ("dispute_inquiry", 2),  # pm_card_createDisputeInquiry: an inquiry, closed warning_closed (no money moves)
    ("card_number", 4),
    ("same_order_new_key", 10),
)
DECLINE_METHODS = (
    "pm_card_chargeDeclined",
    "pm_card_chargeDeclinedInsufficientFunds",
    "pm_card_chargeDeclinedFraudulent",
)


def say(message: str) -> None:
    print(message, flush=True)


# ====================================================================================== plans


@dataclass
class OrderPlan:
    index: int
    order_id: str
    kind: str
    body: dict[str, Any]
    capture_amount: int | None = None  # manual_partial: how much to capture
    refund_amount: int | None = None  # refund_partial: the first refund
    action_delay_seconds: float = 0.0


@dataclass
class ProcessEvent:
    at_progress: float  # fraction of orders started when it happens
    action: str  # kill_worker | kill_api | add_worker | remove_worker
    done: bool = False


@dataclass
class FaultPlan:
    api_rules: list[dict[str, Any]]
    webhook_rules: list[dict[str, Any]]
    flaky_account: str
    flaky_until_progress: float
    process_events: list[ProcessEvent]


def _split(rng: random.Random, amount: int, flaky_account: str, run_tag: str, index: int) -> dict[str, Any]:
    count = rng.choice((1, 1, 2, 2, 3))
    accounts = [f"acct_{run_tag}{index:05d}r{n}" for n in range(count)]
    if count > 1 and rng.random() < 0.3:
        accounts[-1] = flaky_account
    platform_fee_bps = rng.choice((0, 500, 1000, 1250, 2000))
    tax = rng.choice((0, 0, amount // 20, amount // 11))
    remaining = amount - (amount * platform_fee_bps) // 10_000 - tax
    splits: list[dict[str, Any]] = []
    fixed = count > 1 and rng.random() < 0.4 and remaining > 200
    if fixed:
        splits.append({"account_id": accounts[0], "amount": rng.randint(1, remaining // 2), "role": "driver"})
        accounts = accounts[1:]
    cuts = sorted(rng.sample(range(1, 10_000), len(accounts) - 1)) if len(accounts) > 1 else []
    shares = [b - a for a, b in zip([0, *cuts], [*cuts, 10_000], strict=True)]
    splits.extend({"account_id": account, "share_bps": share} for account, share in zip(accounts, shares, strict=True))
    return {"recipients": splits, "application_fee_bps": platform_fee_bps, "tax_amount": tax}


def plan_orders(rng: random.Random, orders: int, run_tag: str, flaky_account: str) -> list[OrderPlan]:
    kinds = [kind for kind, _ in ORDER_KINDS]
    weights = [weight for _, weight in ORDER_KINDS]
    plans = []
    for index in range(orders):
        kind = rng.choices(kinds, weights)[0]
        amount = rng.randint(500, 250_000)
        order_id = f"order_{run_tag}_{index:05d}"
        method = {
            "declined": rng.choice(DECLINE_METHODS),
            "three_ds_completed": "pm_card_authenticationRequired",
            "three_ds_abandoned": "pm_card_authenticationRequired",
            "dispute_won": "pm_card_createDispute",
            "dispute_lost": "pm_card_createDispute",
            "dispute_inquiry": "pm_card_createDisputeInquiry",
            "refund_fail": "pm_card_refundFail",
        }.get(kind, rng.choice(("pm_card_visa", "pm_card_mastercard")))
        body: dict[str, Any] = {
            "order_id": order_id,
            "amount": amount,
            "currency": "usd",
            "customer": f"cus_{run_tag}{index:05d}",
            "payment_method": method,
            "capture_method": "manual" if kind.startswith("manual") else "automatic",
            **_split(rng, amount, flaky_account, run_tag, index),
        }
        if kind == "card_number":
            body["metadata"] = {"note": f"card {CARD_NUMBER}"}
        plan = OrderPlan(index, order_id, kind, body, action_delay_seconds=rng.uniform(0.0, 3.0))
        if kind == "manual_partial":
            plan.capture_amount = max(1, int(amount * rng.uniform(0.3, 0.9)))
        if kind == "refund_partial":
            plan.refund_amount = rng.randint(1, amount - 1)
        plans.append(plan)
    return plans


def plan_faults(rng: random.Random, run_tag: str, workers: int) -> FaultPlan:
    rules: list[dict[str, Any]] = []
    for path in STRIPE_POST_PATHS:
        rules.append({"method": "POST", "path": path, "kind": "error_500_before", "probability": 0.03})
        rules.append({"method": "POST", "path": path, "kind": "error_500_after", "probability": 0.03})
        rules.append(
            {"method": "POST", "path": path, "kind": "timeout_after", "probability": 0.02, "latency_seconds": 2.0}
        )
        rules.append({"method": "POST", "path": path, "kind": "rate_limit_429", "probability": 0.03})
        rules.append({"method": "POST", "path": path, "kind": "latency", "probability": 0.05, "latency_seconds": 0.3})
    for path in STRIPE_GET_PATHS:
        rules.append({"method": "GET", "path": path, "kind": "error_500_before", "probability": 0.02})
        rules.append({"method": "GET", "path": path, "kind": "rate_limit_429", "probability": 0.02})
        rules.append({"method": "GET", "path": path, "kind": "latency", "probability": 0.05, "latency_seconds": 0.3})
    webhook_rules = [
        {"kind": "duplicate", "probability": 0.10},
        {"kind": "delay", "probability": 0.10, "delay_seconds": 3.0},
        {"kind": "reorder", "probability": 0.05, "window": 3},
        {"kind": "drop", "probability": 0.03},
    ]
    events = [ProcessEvent(rng.uniform(0.1, 0.85), "kill_worker") for _ in range(PROCESS_KILLS_WORKER)]
    events.append(ProcessEvent(rng.uniform(0.2, 0.8), "kill_api"))
    # Settlement happens during the run, as in production: the emulator's clock moves past the
    # settlement delay every SETTLEMENT_EVERY_PROGRESS of the orders.
    events.extend(
        ProcessEvent(step * SETTLEMENT_EVERY_PROGRESS, "settle")
        for step in range(1, int(1 / SETTLEMENT_EVERY_PROGRESS))
    )
    if workers < 2:
        start = rng.uniform(0.15, 0.35)
        events.append(ProcessEvent(start, "add_worker"))
        events.append(ProcessEvent(start + rng.uniform(0.3, 0.45), "remove_worker"))
    events.sort(key=lambda event: event.at_progress)
    return FaultPlan(rules, webhook_rules, f"acct_{run_tag}flaky", rng.uniform(0.1, 0.3), events)


# ====================================================================================== clients


@dataclass
class ChaosState:
    """What the clients saw; shared with the supervising thread (progress) under a lock."""

    records: list[ClientRecord] = field(default_factory=list)
    started: int = 0
    finished: int = 0
    client_retries: int = 0
    refused_card_numbers: int = 0
    late_customers: int = 0
    refunds_made: int = 0
    unexpected: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True)
class Answer:
    """What one logical call came to: the status and body a merchant's code would look at."""

    status_code: int
    payload: dict[str, Any]

    @property
    def error(self) -> dict[str, Any]:
        return dict(self.payload.get("error") or {})

    @property
    def text(self) -> str:
        return json.dumps(self.payload)[:300]


class Client:
    """The soak's merchant backend: `penny.client` (the typed client a marketplace would use), so
    every call keeps one Idempotency-Key across its retries (timeouts, dropped connections, 5xx,
    429 and the 409s that mean "still running"), bounded by CLIENT_ATTEMPTS_MAX."""

    def __init__(self, api_url: str, api_key: str, state: ChaosState) -> None:
        self._state = state
        self._penny = AsyncPennyClient(
            api_key,
            api_url,
            timeout_seconds=CLIENT_TIMEOUT_SECONDS,
            retry_policy=RetryPolicy(
                retries_max=CLIENT_ATTEMPTS_MAX - 1,
                backoff_initial_seconds=CLIENT_BACKOFF_INITIAL_SECONDS,
                backoff_max_seconds=CLIENT_BACKOFF_MAX_SECONDS,
            ),
            on_retry=self._count_retry,
        )

    def _count_retry(self, event: RetryEvent) -> None:
        with self._state.lock:
            self._state.client_retries += 1

    async def aclose(self) -> None:
        await self._penny.aclose()

    @staticmethod
    async def _answer(call: Awaitable[Any]) -> Answer:
        try:
            return Answer(200, dict(await call))
        except PennyError as error:
            body = {"type": error.type, "code": error.code, "message": error.message, "param": error.param}
            return Answer(error.status or 0, {"error": body})

    async def create(self, plan: OrderPlan, key: str) -> dict[str, Any] | None:
        answer = await self._answer(self._penny.create_payment(**plan.body, idempotency_key=key))
        payment_id = answer.payload.get("id") if answer.status_code == 200 else None
        with self._state.lock:
            self._state.records.append(ClientRecord(key, plan.order_id, payment_id, answer.status_code))
        if plan.kind == "card_number":
            with self._state.lock:
                if answer.status_code == 400 and answer.error.get("code") == "card_data_not_allowed":
                    self._state.refused_card_numbers += 1
                else:
                    self._state.unexpected.append(f"{plan.order_id}: card number answered {answer.status_code}")
            return None
        if answer.status_code != 200:
            with self._state.lock:
                self._state.unexpected.append(f"{plan.order_id}: create answered {answer.status_code} {answer.text}")
            return None
        return answer.payload

    async def capture(self, payment_id: str, key: str, amount: int | None) -> Answer:
        return await self._answer(self._penny.capture_payment(payment_id, amount=amount, idempotency_key=key))

    async def cancel(self, payment_id: str, key: str) -> Answer:
        return await self._answer(self._penny.cancel_payment(payment_id, idempotency_key=key))

    async def refund(self, payment_id: str, key: str, amount: int | None = None) -> Answer:
        """A refund, retried with its key; "still running" (409) that outlasts the client's own
        retries (or no answer, or a 5xx) is sent again, at most CLIENT_REFUND_ROUNDS_MAX times."""
        answer = Answer(0, {})
        for _ in range(CLIENT_REFUND_ROUNDS_MAX):
            answer = await self._answer(self._penny.create_refund(payment_id, amount=amount, idempotency_key=key))
            still_running = answer.status_code == 409 and answer.error.get("code") in RETRYABLE_CONFLICT_CODES
            if not (still_running or answer.status_code == 0 or answer.status_code >= 500):
                break
        return answer

    async def payment(self, payment_id: str) -> dict[str, Any]:
        answer = await self._answer(self._penny.retrieve_payment(payment_id))
        return answer.payload


# ====================================================================================== the run


@dataclass
class ChaosOptions:
    orders: int
    seed: int
    concurrency: int = 16
    workers: int = 1
    keep_data: bool = False
    data_dir: Path | None = None


@dataclass
class ChaosReport:
    seed: int
    orders: int
    duration_seconds: float
    final_states: dict[str, int]
    faults: dict[str, int]
    invariants: list[InvariantResult]
    unexpected: list[str]

    @property
    def violations(self) -> int:
        return sum(len(result.violations) for result in self.invariants) + len(self.unexpected)

    def render(self) -> str:
        lines = [
            f"penny chaos: seed {self.seed}, {self.orders} orders, {self.duration_seconds:.0f} s",
            "final states: " + ", ".join(f"{state} {count}" for state, count in sorted(self.final_states.items())),
            "faults injected: " + ", ".join(f"{kind} {count}" for kind, count in sorted(self.faults.items())),
            format_report(self.invariants),
        ]
        if self.unexpected:
            lines.append(f"unexpected client answers: {len(self.unexpected)}")
            lines.extend(f"  {line}" for line in self.unexpected[:10])
        lines.append("RESULT: " + ("PASS" if self.violations == 0 else f"FAIL ({self.violations} violations)"))
        return "\n".join(lines)


class ChaosRun:
    def __init__(self, options: ChaosOptions, api_url: str, api_key: str, emulator_url: str) -> None:
        self.options = options
        self.api_url = api_url
        self.api_key = api_key
        self.emulator_url = emulator_url
        self.rng = random.Random(options.seed)
        self.run_tag = f"c{options.seed % 100_000:05d}{uuid.UUID(int=self.rng.getrandbits(128)).hex[:6]}"
        self.fault_plan = plan_faults(self.rng, self.run_tag, options.workers)
        self.plans = plan_orders(self.rng, options.orders, self.run_tag, self.fault_plan.flaky_account)
        self.state = ChaosState()
        self.done = threading.Event()
        self.flaky_rule_id: str | None = None
        self._extra_worker: str | None = None
        self.process_counts: Counter[str] = Counter()

    # ------------------------------------------------------------------ safety phase (async thread)

    async def drive(self) -> None:
        from stripe_emulator.control import AsyncEmulatorControl

        client = Client(self.api_url, self.api_key, self.state)
        control = AsyncEmulatorControl(self.emulator_url)
        try:
            await control.seed(self.options.seed)
            for rule in self.fault_plan.api_rules:
                await control._call("POST", "/faults", rule)
            flaky = {
                "method": "POST",
                "path": "/v1/transfers",
                "kind": "error_500_before",
                "params": {"destination": self.fault_plan.flaky_account},
            }
            self.flaky_rule_id = (await control._call("POST", "/faults", flaky))["id"]
            for rule in self.fault_plan.webhook_rules:
                await control._call("POST", "/webhook_faults", rule)
            semaphore = asyncio.Semaphore(self.options.concurrency)

            async def one(plan: OrderPlan) -> None:
                async with semaphore:
                    with self.state.lock:
                        self.state.started += 1
                    try:
                        await self._follow(client, control, plan)
                    except Exception as error:  # a client crash is reported, never hidden
                        with self.state.lock:
                            self.state.unexpected.append(f"{plan.order_id}: client error {error!r}"[:300])
                    with self.state.lock:
                        self.state.finished += 1
                    if (
                        self.flaky_rule_id is not None
                        and self.state.started / max(1, len(self.plans)) >= self.fault_plan.flaky_until_progress
                    ):
                        rule_id, self.flaky_rule_id = self.flaky_rule_id, None
                        await control.remove_fault(rule_id)
                        say("  chaos: the flaky account's transfers recover")

            await asyncio.gather(*(one(plan) for plan in self.plans))
        finally:
            await client.aclose()
            await control.aclose()

    async def _follow(self, client: Client, control: Any, plan: OrderPlan) -> None:
        key = f"{plan.order_id}-k1"
        payment = await client.create(plan, key)
        if payment is None:
            return
        if plan.kind == "same_order_new_key":
            again = await client.create(plan, f"{plan.order_id}-k2")
            if again is not None and again.get("id") != payment.get("id"):
                with self.state.lock:
                    self.state.unexpected.append(f"{plan.order_id}: a new key answered another payment")
            return
        await asyncio.sleep(plan.action_delay_seconds)
        payment_id = str(payment["id"])
        if plan.kind in ("manual_full", "manual_partial", "manual_cancel"):
            payment = await self._wait_status(client, payment_id, ("authorized",), payment)
            if payment.get("status") != "authorized":
                return
            if plan.kind == "manual_cancel":
                await client.cancel(payment_id, f"{plan.order_id}-cancel")
            else:
                await client.capture(payment_id, f"{plan.order_id}-capture", plan.capture_amount or None)
        elif plan.kind == "three_ds_completed":
            payment = await self._wait_status(client, payment_id, ("requires_action",), payment)
            intent_id = payment.get("stripe_payment_intent_id")
            if payment.get("status") == "requires_action" and intent_id:
                try:
                    await control.complete_action(intent_id, "succeed")
                except EmulatorControlError as error:
                    # The customer came back too late: the payment was abandoned (canceled) first.
                    if "payment_intent_unexpected_state" not in str(error):
                        raise
                    with self.state.lock:
                        self.state.late_customers += 1
        elif plan.kind in ("dispute_won", "dispute_lost", "dispute_inquiry"):
            await self._close_dispute(client, control, plan, payment_id, payment)
        elif plan.kind in ("refund_partial", "refund_race", "refund_fail"):
            await self._refund(client, plan, payment_id, payment)

    def _unexpected(self, line: str) -> None:
        with self.state.lock:
            self.state.unexpected.append(line[:300])

    async def _refund(self, client: Client, plan: OrderPlan, payment_id: str, payment: dict[str, Any]) -> None:
        """Refunds as a merchant's backend makes them: retried with their key, raced, sent twice."""
        payment = await self._wait_status(client, payment_id, ("captured", "settled"), payment)
        if payment.get("status") not in ("captured", "settled"):
            return
        captured = int(payment["amount_captured"])
        if plan.kind == "refund_race":
            share = captured // 2 + 1
            answers = await asyncio.gather(
                *(client.refund(payment_id, f"{plan.order_id}-race{n}", share) for n in range(3))
            )
            made = [answer for answer in answers if answer.status_code == 200]
            with self.state.lock:
                self.state.refunds_made += len(made)
            if len(made) > 1:
                self._unexpected(f"{plan.order_id}: {len(made)} racing refunds of {share} of {captured} were made")
            for answer in answers:
                self._check_refund_answer(plan, answer)
            return
        first_key = f"{plan.order_id}-refund1"
        first = await client.refund(payment_id, first_key, plan.refund_amount or None)
        self._check_refund_answer(plan, first)
        if first.status_code != 200:
            return
        again = await client.refund(payment_id, first_key, plan.refund_amount or None)
        if again.status_code != 200 or again.payload.get("id") != first.payload.get("id"):
            self._unexpected(f"{plan.order_id}: the same refund key answered {again.status_code} {again.text[:120]}")
        with self.state.lock:
            self.state.refunds_made += 1
        if plan.refund_amount:
            rest = await client.refund(payment_id, f"{plan.order_id}-refund2")
            self._check_refund_answer(plan, rest)
            if rest.status_code == 200:
                with self.state.lock:
                    self.state.refunds_made += 1

    def _check_refund_answer(self, plan: OrderPlan, answer: Answer) -> None:
        """A refund answer is the refund, or a Stripe-shaped refusal a merchant can act on."""
        if answer.status_code == 200:
            return
        error = answer.error
        expected = {
            400: ("amount_too_large", "charge_already_refunded", "charge_disputed"),
            409: ("payment_disbursement_pending", "refund_in_progress", "payment_state_conflict"),
        }.get(answer.status_code, ())
        if error.get("code") not in expected or not error.get("message") or error.get("type") is None:
            self._unexpected(f"{plan.order_id}: refund answered {answer.status_code} {answer.text[:160]}")

    async def _wait_status(
        self, client: Client, payment_id: str, wanted: tuple[str, ...], payment: dict[str, Any]
    ) -> dict[str, Any]:
        deadline = time.monotonic() + ORDER_FOLLOW_TIMEOUT_SECONDS
        while payment.get("status") not in wanted and payment.get("status") in (*TRANSIENT_STATUSES, "processing"):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(ORDER_POLL_SECONDS)
            payment = await client.payment(payment_id)
        return payment

    async def _close_dispute(
        self, client: Client, control: Any, plan: OrderPlan, payment_id: str, payment: dict[str, Any]
    ) -> None:
        deadline = time.monotonic() + ORDER_FOLLOW_TIMEOUT_SECONDS
        intent_id = payment.get("stripe_payment_intent_id")
        while time.monotonic() < deadline:
            if not intent_id:
                payment = await client.payment(payment_id)
                intent_id = payment.get("stripe_payment_intent_id")
            if intent_id:
                state = await control.state(["disputes"])
                disputes = [d for d in state.get("disputes", []) if d.get("payment_intent") == intent_id]
                open_disputes = [d for d in disputes if d.get("status") not in ("won", "lost", "warning_closed")]
                if open_disputes:
                    # Let the dispute reach the payment first (sometimes), then the network decides.
                    await asyncio.sleep(plan.action_delay_seconds)
                    outcome = {"dispute_won": "won", "dispute_lost": "lost"}.get(plan.kind, "warning_closed")
                    await control.close_dispute(open_disputes[0]["id"], outcome)
                    return
                if disputes:
                    return
            await asyncio.sleep(ORDER_POLL_SECONDS)

    # ------------------------------------------------------------------ process chaos (main thread)

    def progress(self) -> float:
        with self.state.lock:
            return self.state.started / max(1, len(self.plans))

    def process_step(self, stack: Any) -> None:
        """Run the process events whose time (progress) has come; called from the supervising thread."""
        progress = self.progress()
        for event in self.fault_plan.process_events:
            if event.done or progress < event.at_progress:
                continue
            if event.action in ("kill_worker", "kill_api"):
                try:
                    stack.kill("worker" if event.action == "kill_worker" else "api", signal.SIGKILL)
                except ServiceError:
                    # Killed a moment ago and not restarted yet (two kills close together in a
                    # short run): this kill waits for a later step, once the process is back.
                    return
            elif event.action == "add_worker":
                self._extra_worker = stack.add_worker()
            elif event.action == "remove_worker" and self._extra_worker is not None:
                stack.remove_worker(self._extra_worker)
            elif event.action == "settle":
                from stripe_emulator.control import EmulatorControl

                with EmulatorControl(self.emulator_url) as control:
                    control.advance_clock(SETTLEMENT_CLOCK_ADVANCE_SECONDS)
            event.done = True
            self.process_counts[event.action] += 1
            say(f"  chaos: {event.action} at {progress:.0%} of orders")


# ====================================================================================== liveness + checks


async def _faults_fired(emulator_url: str) -> Counter[str]:
    from stripe_emulator.control import AsyncEmulatorControl

    counts: Counter[str] = Counter()
    async with AsyncEmulatorControl(emulator_url) as control:
        for rule in await control.faults():
            counts[f"stripe {rule['kind']}"] += int(rule["fired"])
        for rule in await control.webhook_faults():
            counts[f"webhook {rule['kind']}"] += int(rule["fired"])
    return counts


async def _faults_off(emulator_url: str) -> None:
    from stripe_emulator.control import AsyncEmulatorControl

    async with AsyncEmulatorControl(emulator_url) as control:
        await control.clear_faults()
        await control.clear_webhook_faults()
        await control.advance_clock(SETTLEMENT_CLOCK_ADVANCE_SECONDS)


# The run's outbox events not yet delivered to the subscriber: unpublished, or published with a
# pending delivery. (`dead` ones are not waited for: the invariant reports them.)
_UNDELIVERED_OUTBOX = """
    SELECT count(*) FROM outbox event
    JOIN payments payment ON payment.id = event.aggregate_id
    WHERE payment.order_id = ANY(:ids)
      AND event.created_at >= (SELECT created_at FROM webhook_endpoints WHERE id = :endpoint_id)
      AND (event.published_at IS NULL OR EXISTS (
          SELECT 1 FROM outbox_deliveries delivery
          WHERE delivery.outbox_id = event.id AND delivery.endpoint_id = :endpoint_id
            AND delivery.status = 'pending'))
"""


async def _transient_payments(database_url: str, order_ids: list[str], endpoint_id: str | None) -> Counter[str]:
    """Payments of the run by status, plus `webhook:received`: stored events still waiting for
    delivery, and `outbox:undelivered`: events of the run not yet delivered to the subscriber."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                text("SELECT status, count(*) FROM payments WHERE order_id = ANY(:ids) GROUP BY status"),
                {"ids": order_ids},
            )
            statuses = Counter({row[0]: int(row[1]) for row in rows})
            waiting = (
                await connection.execute(text("SELECT count(*) FROM webhook_events WHERE status = 'received'"))
            ).scalar_one()
            if waiting:
                statuses[WEBHOOKS_WAITING] = int(waiting)
            if endpoint_id is not None:
                undelivered = (
                    await connection.execute(text(_UNDELIVERED_OUTBOX), {"ids": order_ids, "endpoint_id": endpoint_id})
                ).scalar_one()
                if undelivered:
                    statuses[OUTBOX_WAITING] = int(undelivered)
            return statuses
    finally:
        await engine.dispose()


async def _check(target: Target, run: ChaosRun, outbox: OutboxSubscription) -> list[InvariantResult]:
    from sqlalchemy.ext.asyncio import create_async_engine
    from temporalio.client import Client as TemporalClient

    engine = create_async_engine(target.database_url)
    try:
        temporal = await TemporalClient.connect(target.temporal_address, namespace=target.namespace)
        return await check_invariants(
            engine=engine,
            emulator_url=target.emulator_url,
            temporal=temporal,
            logs_dir=target.logs_dir,
            client_records=list(run.state.records),
            order_ids=[plan.order_id for plan in run.plans],
            outbox=outbox,
        )
    finally:
        await engine.dispose()


async def _reconcile(target: Target, run: ChaosRun, started_unix: int) -> InvariantResult:
    """`reconciliation_agrees` (penny/chaos_reconcile.py); a run that cannot finish is reported."""
    from sqlalchemy.ext.asyncio import create_async_engine
    from temporalio.client import Client as TemporalClient

    from penny.chaos_reconcile import RECONCILIATION_AGREES, check_reconciliation_agrees

    engine = create_async_engine(target.database_url)
    try:
        temporal = await TemporalClient.connect(target.temporal_address, namespace=target.namespace)
        return await check_reconciliation_agrees(
            engine=engine,
            temporal=temporal,
            task_queue=target.task_queue,
            emulator_url=target.emulator_url,
            started_unix=started_unix,
            order_ids=[plan.order_id for plan in run.plans],
            seed=run.options.seed,
        )
    except Exception as error:  # reported, never hidden: a reconciliation nobody could run is a failure
        message = f"could not reconcile: {type(error).__name__}: {error}"[:300]
        return InvariantResult(
            name=RECONCILIATION_AGREES,
            checked=0,
            violations=[Violation(RECONCILIATION_AGREES, None, message)],
            violation_count=1,
            error=message,
        )
    finally:
        await engine.dispose()


def _wait_quiescent(
    run: ChaosRun,
    database_url: str,
    emulator_url: str,
    endpoint_id: str,
    supervise: Callable[[Callable[[], bool], float], bool],
) -> Counter[str]:
    """Wait until no payment of the run is in a transient state, the emulator has delivered every
    webhook (retries of dropped and delayed ones included) and every outbox event of the run
    reached the subscriber (bounded). Returns the final states."""
    from stripe_emulator.control import EmulatorControl

    order_ids = [plan.order_id for plan in run.plans]
    timeout = QUIESCENCE_TIMEOUT_SECONDS + QUIESCENCE_SECONDS_PER_ORDER * len(order_ids)
    latest: Counter[str] = Counter()
    last_check = 0.0

    def quiet() -> bool:
        nonlocal latest, last_check
        if time.monotonic() - last_check < QUIESCENCE_POLL_SECONDS:
            return False
        last_check = time.monotonic()
        latest = asyncio.run(_transient_payments(database_url, order_ids, endpoint_id))
        # Webhooks not yet handled count too, stored or still at the emulator: late disputes (the
        # last clock advance opens them) and a dispute's closing event whose first delivery was
        # dropped arrive after every payment looks final (DISPUTED is not transient).
        with EmulatorControl(emulator_url) as control:
            if not control.webhooks_idle():
                latest[WEBHOOKS_AT_STRIPE] = 1
        waiting = (*TRANSIENT_PAYMENT_STATUSES, WEBHOOKS_WAITING, WEBHOOKS_AT_STRIPE, OUTBOX_WAITING)
        return not any(status in latest for status in waiting)

    if not supervise(quiet, timeout):
        say(f"  chaos: not quiescent after {timeout:.0f} s: {dict(latest)}")
    return latest


def _free_settings(data_dir: Path) -> Settings:
    from penny.services import free_port

    ports = iter({free_port() for _ in range(40)})
    return Settings(
        env="development",
        data_dir=data_dir,
        postgres_port=next(ports),
        temporal_port=next(ports),
        temporal_ui_port=next(ports),
        emulator_port=next(ports),
        api_port=next(ports),
        worker_metrics_port=0,
        worker_temporal_metrics_port=0,
        temporal_task_queue="penny-chaos",
    )


@dataclass
class Target:
    """Where the soak runs: the API, the emulator, the database and Temporal it checks."""

    api_url: str
    api_key: str
    emulator_url: str
    database_url: str
    temporal_address: str
    namespace: str
    logs_dir: Path | None
    task_queue: str = "penny"


def _wait_until(condition: Callable[[], bool], timeout_seconds: float) -> bool:
    deadline = time.monotonic() + timeout_seconds
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return True


async def _subscribe(target: Target, url: str, run_tag: str) -> OutboxSubscription:
    """Register the run's subscriber as an operator would: an `ops` key (made on the database,
    as `penny keys create --role ops` does), then POST /v1/webhook_endpoints for every event type."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from penny.keys import create_api_key

    engine = create_async_engine(target.database_url)
    try:
        async with engine.begin() as connection:
            ops_key = await create_api_key(connection, "ops", f"{CHAOS_OPS_KEY_NAME}-{run_tag}")
    finally:
        await engine.dispose()
    async with AsyncPennyClient(ops_key, target.api_url, timeout_seconds=CLIENT_TIMEOUT_SECONDS) as penny:
        try:
            endpoint = await penny.create_webhook_endpoint(
                url=url, enabled_events=["*"], description=f"penny chaos {run_tag}"
            )
        except PennyError as error:
            raise ServiceError(f"could not register the chaos subscriber: {error}") from None
    say(f"  chaos: outbox subscriber {endpoint['id']} at {url}")
    return OutboxSubscription(endpoint_id=endpoint["id"], secret=endpoint["secret"])


def _soak(
    options: ChaosOptions,
    target: Target,
    supervise: Callable[[Callable[[], bool], float], bool],
    process_step: Callable[[ChaosRun], None] | None,
    started: float,
) -> ChaosReport:
    run = ChaosRun(options, target.api_url, target.api_key, target.emulator_url)
    say(f"penny chaos: seed {options.seed}, {options.orders} orders, concurrency {options.concurrency}")
    started_unix = int(time.time())
    subscriber = Subscriber(options.seed)
    subscriber.start()
    try:
        outbox = asyncio.run(_subscribe(target, subscriber.url, run.run_tag))
        return _soak_subscribed(
            options, target, supervise, process_step, started, run, outbox, subscriber, started_unix
        )
    finally:
        subscriber.stop()


def _soak_subscribed(
    options: ChaosOptions,
    target: Target,
    supervise: Callable[[Callable[[], bool], float], bool],
    process_step: Callable[[ChaosRun], None] | None,
    started: float,
    run: ChaosRun,
    outbox: OutboxSubscription,
    subscriber: Subscriber,
    started_unix: int,
) -> ChaosReport:
    driver = threading.Thread(target=lambda: asyncio.run(run.drive()), name="chaos-driver", daemon=True)
    driver.start()

    def driven() -> bool:
        if process_step is not None:
            process_step(run)
        return not driver.is_alive()

    supervise(driven, float("inf"))
    say("  chaos: all orders driven; faults off, waiting for quiescence")
    faults = asyncio.run(_faults_fired(target.emulator_url))
    asyncio.run(_faults_off(target.emulator_url))
    final_states = _wait_quiescent(run, target.database_url, target.emulator_url, outbox.endpoint_id, supervise)
    faults.update(run.process_counts)
    faults["client retries"] = run.state.client_retries
    faults["card numbers refused"] = run.state.refused_card_numbers
    faults["3-D Secure completed too late"] = run.state.late_customers
    faults["refunds made"] = run.state.refunds_made
    outbox.receipts = subscriber.snapshot()
    faults.update(subscriber.counts())
    invariants = asyncio.run(_check(target, run, outbox))
    invariants.append(asyncio.run(_reconcile(target, run, started_unix)))
    final_states.pop(WEBHOOKS_WAITING, None)
    final_states.pop(OUTBOX_WAITING, None)
    final_states.pop(WEBHOOKS_AT_STRIPE, None)
    return ChaosReport(
        seed=options.seed,
        orders=options.orders,
        duration_seconds=time.monotonic() - started,
        final_states=dict(final_states),
        faults=dict(faults),
        invariants=invariants,
        unexpected=list(run.state.unexpected),
    )


def run_chaos(options: ChaosOptions, external: Target | None = None) -> ChaosReport:
    """Run the soak and return its report (PASS or FAIL).

    Without `external`, the run starts its own stack (as `penny dev` does) in a temporary data
    directory on free ports and kills and adds processes from the seed. With `external` (a
    running stack: `penny chaos --api ...`), it drives and checks that stack but kills nothing;
    note that it injects faults into that stack's emulator and moves its clock.
    """
    if not 1 <= options.orders <= ORDERS_MAX:
        raise ValueError(f"--orders must be between 1 and {ORDERS_MAX}")
    if not 1 <= options.concurrency <= CONCURRENCY_MAX:
        raise ValueError(f"--concurrency must be between 1 and {CONCURRENCY_MAX}")
    started = time.monotonic()
    if external is not None:
        return _soak(options, external, _wait_until, None, started)
    from penny.stack import Stack

    data_dir = options.data_dir or Path(tempfile.mkdtemp(prefix="penny-chaos-"))
    # The stack's children read these: compressed payment waits; a key whose request died with a
    # killed API is taken over sooner (it must still outlive the first-milestone wait). The run
    # moves the emulator's clock by days to settle payments while requests are in flight; in real
    # time those requests are seconds apart, so Stripe would still hold their keys: the emulator
    # keeps keys longer than all the jumps (found by chaos seed 3: a retry of a committed create,
    # landing right after a jump that pruned its key, charged a second time). Restored afterwards.
    chaos_environment = {
        "PENNY_PAYMENT_TIMINGS": json.dumps(CHAOS_PAYMENT_TIMINGS),
        "PENNY_IDEMPOTENCY_LOCK_TIMEOUT_SECONDS": str(CHAOS_IDEMPOTENCY_LOCK_TIMEOUT_SECONDS),
        "PENNY_EMULATOR_IDEMPOTENCY_WINDOW_SECONDS": str(CHAOS_EMULATOR_IDEMPOTENCY_WINDOW_SECONDS),
        # Both dispute loss policies get soaked: odd seeds pull lost disputes back from recipients.
        "PENNY_DISPUTE_LOSS_POLICY": "recipients" if options.seed % 2 else "platform",
        # The subscriber's refusals are retried within the run, not minutes later.
        "PENNY_OUTBOX_DELIVERY_BACKOFF_INITIAL_SECONDS": "1",
    }
    saved_environment = {name: os.environ.get(name) for name in chaos_environment}
    os.environ.update(chaos_environment)
    settings = _free_settings(data_dir)
    stack = Stack(settings)
    try:
        stack.start()
        for _ in range(options.workers - 1):
            stack.add_worker()
        assert stack.dev_api_key is not None
        say(f"  chaos: data in {data_dir}")
        target = Target(
            api_url=f"http://{settings.host}:{settings.api_port}",
            api_key=stack.dev_api_key,
            emulator_url=settings.effective_stripe_api_base,
            database_url=settings.effective_database_url,
            temporal_address=settings.effective_temporal_address,
            namespace=settings.temporal_namespace,
            logs_dir=stack.logs_dir,
            task_queue=settings.temporal_task_queue,
        )
        return _soak(options, target, stack.supervise_until, lambda run: run.process_step(stack), started)
    finally:
        stack.stop()
        for name, value in saved_environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if not options.keep_data and options.data_dir is None:
            shutil.rmtree(data_dir, ignore_errors=True)
