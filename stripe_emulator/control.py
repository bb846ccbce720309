"""Python clients for the emulator's control API (`/_emulator/...`).

`EmulatorControl` is synchronous; `AsyncEmulatorControl` has the same methods as coroutines.

control = EmulatorControl("http://127.0.0.1:12111")
fault_id = control.add_fault("POST", "/v1/payment_intents/*/confirm", "timeout_after", count=1, latency_seconds=1)
...
assert control.payment_intents()[-1]["status"] == "succeeded"   # the operation happened anyway
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

CONTROL_TIMEOUT_SECONDS = 30.0
WAIT_POLL_SECONDS = 0.05


class EmulatorControlError(RuntimeError):
    pass


def _fault_body(
    method: str,
    path: str,
    kind: str,
    count: int | None,
    probability: float | None,
    latency_seconds: float | None,
    params: dict[str, str] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"method": method, "path": path, "kind": kind, "count": count}
    if params:
        body["params"] = params
    if probability is not None:
        body["probability"] = probability
    if latency_seconds is not None:
        body["latency_seconds"] = latency_seconds
    return body


def _webhook_fault_body(
    kind: str, probability: float | None, delay_seconds: float | None, window: int | None, count: int | None
) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": kind, "count": count}
    if probability is not None:
        body["probability"] = probability
    if delay_seconds is not None:
        body["delay_seconds"] = delay_seconds
    if window is not None:
        body["window"] = window
    return body


def _refund_failure_body(failure_reason: str | None) -> dict[str, Any]:
    return {} if failure_reason is None else {"failure_reason": failure_reason}


def _result(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        raise EmulatorControlError(
            f"{response.request.method} {response.request.url.path}: {response.status_code} {response.text}"
        )
    return response.json()


class EmulatorControl:
    def __init__(self, base_url: str, timeout_seconds: float = CONTROL_TIMEOUT_SECONDS) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout_seconds)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> EmulatorControl:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(
        self, method: str, path: str, json: dict[str, Any] | None = None, params: dict[str, str] | None = None
    ) -> Any:
        return _result(self._client.request(method, "/_emulator" + path, json=json, params=params))

    def add_fault(
        self,
        method: str,
        path: str,
        kind: str,
        count: int | None = None,
        probability: float | None = None,
        latency_seconds: float | None = None,
        params: dict[str, str] | None = None,
    ) -> str:
        body = _fault_body(method, path, kind, count, probability, latency_seconds, params)
        return str(self._call("POST", "/faults", body)["id"])

    def faults(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/faults")["data"])

    def remove_fault(self, fault_id: str) -> None:
        self._call("DELETE", f"/faults/{fault_id}")

    def clear_faults(self) -> None:
        self._call("DELETE", "/faults")

    def add_webhook_fault(
        self,
        kind: str,
        probability: float | None = None,
        delay_seconds: float | None = None,
        window: int | None = None,
        count: int | None = None,
    ) -> str:
        return str(
            self._call("POST", "/webhook_faults", _webhook_fault_body(kind, probability, delay_seconds, window, count))[
                "id"
            ]
        )

    def webhook_faults(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/webhook_faults")["data"])

    def clear_webhook_faults(self) -> None:
        self._call("DELETE", "/webhook_faults")

    def reset(self) -> None:
        self._call("POST", "/reset")

    def seed(self, seed: int) -> None:
        self._call("POST", "/seed", {"seed": seed})

    def advance_clock(self, seconds: int | float) -> dict[str, Any]:
        return dict(self._call("POST", "/clock/advance", {"seconds": seconds}))

    def clock(self) -> dict[str, Any]:
        return dict(self._call("GET", "/clock"))

    def state(self, include: list[str] | None = None) -> dict[str, Any]:
        return dict(self._call("GET", "/state", params={"include": ",".join(include)} if include else None))

    def payment_intents(self) -> list[dict[str, Any]]:
        return list(self.state(["payment_intents"])["payment_intents"])

    def webhook_deliveries(self, **filters: str) -> list[dict[str, Any]]:
        return list(self._call("GET", "/webhook_deliveries", params=filters or None)["data"])

    def complete_action(self, pi_id: str, outcome: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/payment_intents/{pi_id}/complete_action", {"outcome": outcome}))

    def override_intent_status(self, pi_id: str, status: str) -> dict[str, Any]:
        """The PaymentIntent reports `status` from now on ("reset" restores the real one)."""
        return dict(self._call("POST", f"/payment_intents/{pi_id}/override_status", {"status": status}))

    def close_dispute(self, dp_id: str, outcome: str) -> dict[str, Any]:
        """A chargeback ends `won` or `lost`; an inquiry ends `warning_closed`."""
        return dict(self._call("POST", f"/disputes/{dp_id}/close", {"outcome": outcome}))

    def fail_refund(self, refund_id: str, failure_reason: str | None = None) -> dict[str, Any]:
        """The succeeded refund fails now, as pm_card_refundFail's do later (default expired_or_canceled_card)."""
        return dict(self._call("POST", f"/refunds/{refund_id}/fail", _refund_failure_body(failure_reason)))

    def fail_reversals(self, account_id: str, fail: bool = True) -> dict[str, Any]:
        """Reversals of transfers to the account are refused with balance_insufficient (until fail=False)."""
        return dict(self._call("POST", f"/accounts/{account_id}/reversals", {"fail": fail}))

    def roll_webhook_secret(self, endpoint_id: str, expires_in_seconds: int | None = None) -> str:
        body = {} if expires_in_seconds is None else {"expires_in_seconds": expires_in_seconds}
        return str(self._call("POST", f"/webhook_endpoints/{endpoint_id}/roll_secret", body)["secret"])

    def webhooks_idle(self) -> bool:
        """No webhook delivery is pending (a retry or a delay included) or in progress."""
        return bool(self._call("GET", "/webhooks/idle")["idle"])

    def wait_for_webhooks(self, timeout_seconds: float = 10.0) -> bool:
        """Until no delivery is pending or in progress (retries included); False on timeout."""
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if self.webhooks_idle():
                return True
            time.sleep(WAIT_POLL_SECONDS)
        return False


class AsyncEmulatorControl:
    def __init__(self, base_url: str, timeout_seconds: float = CONTROL_TIMEOUT_SECONDS) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.AsyncClient(base_url=self.base_url, timeout=timeout_seconds)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> AsyncEmulatorControl:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _call(
        self, method: str, path: str, json: dict[str, Any] | None = None, params: dict[str, str] | None = None
    ) -> Any:
        return _result(await self._client.request(method, "/_emulator" + path, json=json, params=params))

    async def add_fault(
        self,
        method: str,
        path: str,
        kind: str,
        count: int | None = None,
        probability: float | None = None,
        latency_seconds: float | None = None,
        params: dict[str, str] | None = None,
    ) -> str:
        body = _fault_body(method, path, kind, count, probability, latency_seconds, params)
        return str((await self._call("POST", "/faults", body))["id"])

    async def faults(self) -> list[dict[str, Any]]:
        return list((await self._call("GET", "/faults"))["data"])

    async def remove_fault(self, fault_id: str) -> None:
        await self._call("DELETE", f"/faults/{fault_id}")

    async def clear_faults(self) -> None:
        await self._call("DELETE", "/faults")

    async def add_webhook_fault(
        self,
        kind: str,
        probability: float | None = None,
        delay_seconds: float | None = None,
        window: int | None = None,
        count: int | None = None,
    ) -> str:
        body = _webhook_fault_body(kind, probability, delay_seconds, window, count)
        return str((await self._call("POST", "/webhook_faults", body))["id"])

    async def webhook_faults(self) -> list[dict[str, Any]]:
        return list((await self._call("GET", "/webhook_faults"))["data"])

    async def clear_webhook_faults(self) -> None:
        await self._call("DELETE", "/webhook_faults")

    async def reset(self) -> None:
        await self._call("POST", "/reset")

    async def seed(self, seed: int) -> None:
        await self._call("POST", "/seed", {"seed": seed})

    async def advance_clock(self, seconds: int | float) -> dict[str, Any]:
        return dict(await self._call("POST", "/clock/advance", {"seconds": seconds}))

    async def clock(self) -> dict[str, Any]:
        return dict(await self._call("GET", "/clock"))

    async def state(self, include: list[str] | None = None) -> dict[str, Any]:
        return dict(await self._call("GET", "/state", params={"include": ",".join(include)} if include else None))

    async def payment_intents(self) -> list[dict[str, Any]]:
        return list((await self.state(["payment_intents"]))["payment_intents"])

    async def webhook_deliveries(self, **filters: str) -> list[dict[str, Any]]:
        return list((await self._call("GET", "/webhook_deliveries", params=filters or None))["data"])

    async def complete_action(self, pi_id: str, outcome: str) -> dict[str, Any]:
        return dict(await self._call("POST", f"/payment_intents/{pi_id}/complete_action", {"outcome": outcome}))

    async def override_intent_status(self, pi_id: str, status: str) -> dict[str, Any]:
        """The PaymentIntent reports `status` from now on ("reset" restores the real one)."""
        return dict(await self._call("POST", f"/payment_intents/{pi_id}/override_status", {"status": status}))

    async def close_dispute(self, dp_id: str, outcome: str) -> dict[str, Any]:
        return dict(await self._call("POST", f"/disputes/{dp_id}/close", {"outcome": outcome}))

    async def fail_refund(self, refund_id: str, failure_reason: str | None = None) -> dict[str, Any]:
        return dict(await self._call("POST", f"/refunds/{refund_id}/fail", _refund_failure_body(failure_reason)))

    async def fail_reversals(self, account_id: str, fail: bool = True) -> dict[str, Any]:
        return dict(await self._call("POST", f"/accounts/{account_id}/reversals", {"fail": fail}))

    async def roll_webhook_secret(self, endpoint_id: str, expires_in_seconds: int | None = None) -> str:
        body = {} if expires_in_seconds is None else {"expires_in_seconds": expires_in_seconds}
        return str((await self._call("POST", f"/webhook_endpoints/{endpoint_id}/roll_secret", body))["secret"])

    async def wait_for_webhooks(self, timeout_seconds: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if (await self._call("GET", "/webhooks/idle"))["idle"]:
                return True
            await asyncio.sleep(WAIT_POLL_SECONDS)
        return False
