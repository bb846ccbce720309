"""Asynchronous webhook delivery: signed POSTs to every endpoint, retries with backoff, faults.

Each (event, endpoint) pair is one delivery record in the state with every attempt recorded.
A non-2xx answer, a timeout or a connection error schedules the next attempt after the next
interval of `webhook_retry_schedule_seconds` (real seconds); when the schedule is exhausted
the delivery is `failed`. Webhook faults are drawn once per delivery, before its first attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import logging
import time
from typing import Any

import httpx

from stripe_emulator._events import active_secrets, signature_header
from stripe_emulator._faults import FaultRegistry
from stripe_emulator._state import State

logger = logging.getLogger("stripe_emulator.webhooks")
IDLE_WAIT_SECONDS = 1.0
REORDER_HOLD_SECONDS_MIN = 0.5
RESPONSE_BODY_RECORDED_MAX = 200


class WebhookDispatcher:
    def __init__(self, state: State, faults: FaultRegistry) -> None:
        self.state = state
        self.faults = faults
        self.wake = asyncio.Event()
        self.queue: list[tuple[float, str]] = []
        self.known: set[str] = set()
        self.reorder_buffer: list[str] = []
        self.reorder_deadline = 0.0
        self.client: httpx.AsyncClient | None = None
        self.semaphore = asyncio.Semaphore(state.config.webhook_concurrency_max)
        self.tasks: set[asyncio.Task[None]] = set()
        self.in_progress = 0

    def notify(self) -> None:
        self.wake.set()

    def reset(self) -> None:
        self.queue.clear()
        self.known.clear()
        self.reorder_buffer.clear()

    def full_scan(self) -> None:
        """After a restart or reset: every pending delivery is queued again."""
        self.state.delivery_inbox = []
        for delivery_id, delivery in self.state.deliveries.items():
            if delivery["status"] == "pending":
                self._push(delivery_id, delivery["next_attempt_at"])

    def _push(self, delivery_id: str, at: float) -> None:
        if delivery_id not in self.known:
            self.known.add(delivery_id)
            heapq.heappush(self.queue, (at, delivery_id))

    def _collect(self) -> None:
        inbox, self.state.delivery_inbox = self.state.delivery_inbox, []
        for delivery_id in inbox:
            delivery = self.state.deliveries.get(delivery_id)
            if delivery is not None and delivery["status"] == "pending":
                self._push(delivery_id, delivery["next_attempt_at"])

    def idle(self) -> bool:
        pending = self.known or self.state.delivery_inbox or self.reorder_buffer
        return not pending and self.in_progress == 0

    async def run(self) -> None:
        self.client = httpx.AsyncClient(timeout=self.state.config.webhook_timeout_seconds)
        self.full_scan()
        try:
            while True:
                self.wake.clear()
                self._collect()
                now = time.time()
                while self.queue and self.queue[0][0] <= now:
                    _, delivery_id = heapq.heappop(self.queue)
                    self.known.discard(delivery_id)
                    delivery = self.state.deliveries.get(delivery_id)
                    if delivery is not None and delivery["status"] == "pending":
                        self._dispatch(delivery)
                if self.reorder_buffer and now >= self.reorder_deadline:
                    self._release_reordered()
                wait = IDLE_WAIT_SECONDS
                if self.queue:
                    wait = min(wait, max(self.queue[0][0] - time.time(), 0.0))
                if self.reorder_buffer:
                    wait = min(wait, max(self.reorder_deadline - time.time(), 0.0))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout=max(wait, 0.005))
        finally:
            for task in list(self.tasks):
                task.cancel()
            await self.client.aclose()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _dispatch(self, delivery: dict[str, Any]) -> None:
        if "faults_drawn" not in delivery:
            delivery["faults_drawn"] = True
            rules = self.faults.webhook(self.state.rng)
            delivery["faults"] = [rule.kind for rule in rules]
            self.state.dirty = True
            for rule in rules:
                if rule.kind == "delay" and rule.delay_seconds > 0:
                    self._requeue(delivery, time.time() + rule.delay_seconds)
                    return
                if rule.kind == "reorder":
                    self.reorder_buffer.append(delivery["id"])
                    delivery["status"] = "in_progress"
                    if len(self.reorder_buffer) == 1:
                        self.reorder_deadline = time.time() + max(rule.delay_seconds, REORDER_HOLD_SECONDS_MIN)
                    if len(self.reorder_buffer) >= rule.window:
                        self._release_reordered()
                    return
        delivery["status"] = "in_progress"
        self.in_progress += 1
        self._spawn(self._attempt_guarded(delivery))

    def _release_reordered(self) -> None:
        held, self.reorder_buffer = self.reorder_buffer[::-1], []
        self.in_progress += 1
        self._spawn(self._send_in_order(held))

    async def _send_in_order(self, delivery_ids: list[str]) -> None:
        try:
            for delivery_id in delivery_ids:
                delivery = self.state.deliveries.get(delivery_id)
                if delivery is not None:
                    await self._attempt(delivery)
        finally:
            self.in_progress -= 1
            self.wake.set()

    def _requeue(self, delivery: dict[str, Any], at: float) -> None:
        delivery["status"] = "pending"
        delivery["next_attempt_at"] = at
        self._push(delivery["id"], at)
        self.state.dirty = True
        self.wake.set()

    async def _attempt_guarded(self, delivery: dict[str, Any]) -> None:
        try:
            async with self.semaphore:
                await self._attempt(delivery)
        finally:
            self.in_progress -= 1
            self.wake.set()

    async def _attempt(self, delivery: dict[str, Any]) -> None:
        state = self.state
        event = state.find(delivery["event_id"])
        endpoint = state.find(delivery["endpoint_id"])
        if event is None or endpoint is None or endpoint["status"] != "enabled":
            self._finish(delivery, event, "failed", "event or endpoint no longer exists or is disabled")
            return
        first = not delivery["attempts"]
        faults = delivery.get("faults", []) if first else []
        payload = json.dumps(event, separators=(",", ":")).encode()
        if first and "bad_signature_extra" in faults:
            bad_header = signature_header(payload, [state.new_id("whsec", 32)], int(time.time()))
            status, error, _ = await self._post(delivery["url"], payload, bad_header)
            delivery.setdefault("extra_deliveries", []).append(
                {"kind": "bad_signature_extra", "at": time.time(), "status_code": status, "error": error}
            )
        if first and "drop" in faults:
            self._record(delivery, None, "dropped by webhook fault", 0.0, "drop")
            self._after_failure(delivery, event)
            return
        ok = await self._send(delivery, payload, endpoint["id"], None)
        if first and "duplicate" in faults:
            ok = await self._send(delivery, payload, endpoint["id"], "duplicate") or ok
        if ok:
            self._finish(delivery, event, "succeeded", None)
        else:
            self._after_failure(delivery, event)

    async def _send(self, delivery: dict[str, Any], payload: bytes, endpoint_id: str, fault: str | None) -> bool:
        header = signature_header(payload, active_secrets(self.state, endpoint_id), int(time.time()))
        started = time.monotonic()
        status, error, body = await self._post(delivery["url"], payload, header)
        self._record(delivery, status, error, (time.monotonic() - started) * 1000, fault, body)
        return status is not None and 200 <= status < 300

    async def _post(self, url: str, payload: bytes, header: str) -> tuple[int | None, str | None, str | None]:
        assert self.client is not None
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Stripe-Signature": header,
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        }
        try:
            response = await self.client.post(url, content=payload, headers=headers)
        except httpx.HTTPError as error:
            return None, f"{type(error).__name__}: {error}"[:RESPONSE_BODY_RECORDED_MAX], None
        return response.status_code, None, response.text[:RESPONSE_BODY_RECORDED_MAX]

    def _record(
        self,
        delivery: dict[str, Any],
        status: int | None,
        error: str | None,
        duration_ms: float,
        fault: str | None,
        body: str | None = None,
    ) -> None:
        delivery["attempts"].append(
            {
                "attempt": len(delivery["attempts"]) + 1,
                "at": time.time(),
                "status_code": status,
                "error": error,
                "response_body": body,
                "duration_ms": round(duration_ms, 2),
                "fault": fault,
            }
        )
        self.state.dirty = True

    def _after_failure(self, delivery: dict[str, Any], event: dict[str, Any]) -> None:
        schedule = self.state.config.webhook_retry_schedule_seconds
        failures = sum(1 for attempt in delivery["attempts"] if attempt["fault"] != "duplicate")
        if failures > len(schedule):
            self._finish(delivery, event, "failed", "retry schedule exhausted")
            return
        self._requeue(delivery, time.time() + schedule[failures - 1])

    def _finish(self, delivery: dict[str, Any], event: dict[str, Any] | None, status: str, reason: str | None) -> None:
        delivery["status"] = status
        delivery["next_attempt_at"] = None
        if reason:
            delivery["final_error"] = reason
        if event is not None and event["pending_webhooks"] > 0:
            event["pending_webhooks"] -= 1
        self.state.dirty = True
