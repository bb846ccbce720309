"""Fault injection rules for API requests and webhook deliveries.

Paths: an exact path, or a glob where `*` matches within one path segment and a trailing `*`
(or `**` anywhere) matches the rest, e.g. "/v1/payment_intents/*/confirm", "/v1/refunds*".
Method "*" (or empty) matches every method. Rules fire with `probability` (default 1.0),
at most `count` times (None: unlimited), in the order they were added; draws use the
emulator's seeded random generator so a run with a seed is reproducible.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import asdict, dataclass, field
from random import Random
from typing import Any

from stripe_emulator._errors import invalid_request

API_FAULT_KINDS = ("latency", "error_500_before", "error_500_after", "timeout_after", "rate_limit_429")
BEFORE_KINDS = ("rate_limit_429", "error_500_before")
AFTER_KINDS = ("error_500_after", "timeout_after")
WEBHOOK_FAULT_KINDS = ("duplicate", "delay", "reorder", "drop", "bad_signature_extra")
FAULTS_MAX = 1_000
LATENCY_SECONDS_MAX = 600.0
FAULT_PARAMS_MAX = 10


def compile_path(pattern: str) -> re.Pattern[str]:
    regex = ""
    index = 0
    while index < len(pattern):
        if pattern.startswith("**", index):
            regex += ".*"
            index += 2
        elif pattern[index] == "*":
            regex += ".*" if index == len(pattern) - 1 else "[^/]*"
            index += 1
        else:
            regex += re.escape(pattern[index])
            index += 1
    return re.compile("^" + regex + "$")


@dataclass
class FaultRule:
    id: str
    kind: str
    method: str
    path: str
    count: int | None
    probability: float
    latency_seconds: float | None
    fired: int = 0
    pattern: re.Pattern[str] = field(default=re.compile(""), repr=False)
    # Only requests whose (top-level) parameters equal these match, e.g. {"destination": "acct_x"}:
    # one connected account whose transfers fail while the others' succeed.
    params: dict[str, str] = field(default_factory=dict)

    def matches(self, method: str, path: str, params: dict[str, Any] | None = None) -> bool:
        if self.count is not None and self.fired >= self.count:
            return False
        if self.params and any(str((params or {}).get(name)) != value for name, value in self.params.items()):
            return False
        return self.method in ("*", "", method) and bool(self.pattern.match(path))

    def draw(self, rng: Random) -> bool:
        if self.probability >= 1.0 or rng.random() < self.probability:
            self.fired += 1
            return True
        return False

    def describe(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("pattern")
        if not data["params"]:
            data.pop("params")
        data["remaining"] = None if self.count is None else max(self.count - self.fired, 0)
        return data


@dataclass
class WebhookFaultRule:
    id: str
    kind: str
    probability: float
    delay_seconds: float
    window: int
    count: int | None
    fired: int = 0

    def draw(self, rng: Random) -> bool:
        if self.count is not None and self.fired >= self.count:
            return False
        if self.probability >= 1.0 or rng.random() < self.probability:
            self.fired += 1
            return True
        return False

    def describe(self) -> dict[str, Any]:
        data = asdict(self)
        data["remaining"] = None if self.count is None else max(self.count - self.fired, 0)
        return data


def _number(body: dict[str, Any], name: str, default: float | None, minimum: float, maximum: float) -> float | None:
    value = body.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not minimum <= value <= maximum:
        raise invalid_request(f"{name} must be a number between {minimum} and {maximum}", param=name)
    return float(value)


def _count(body: dict[str, Any]) -> int | None:
    value = body.get("count")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise invalid_request("count must be a non-negative integer or null", param="count")
    return value


class FaultRegistry:
    def __init__(self) -> None:
        self.rules: list[FaultRule] = []
        self.webhook_rules: list[WebhookFaultRule] = []
        self._ids = itertools.count(1)

    def clear(self) -> None:
        self.rules.clear()

    def clear_webhook(self) -> None:
        self.webhook_rules.clear()

    def remove(self, rule_id: str) -> None:
        self.rules[:] = [rule for rule in self.rules if rule.id != rule_id]

    def remove_webhook(self, rule_id: str) -> None:
        self.webhook_rules[:] = [rule for rule in self.webhook_rules if rule.id != rule_id]

    def add(self, body: dict[str, Any]) -> FaultRule:
        kind = body.get("kind")
        if kind not in API_FAULT_KINDS:
            raise invalid_request(f"kind must be one of {', '.join(API_FAULT_KINDS)}", param="kind")
        path = body.get("path")
        if not isinstance(path, str) or not path.startswith("/"):
            raise invalid_request("path must be an absolute path such as /v1/payment_intents", param="path")
        method = str(body.get("method") or "*").upper()
        if len(self.rules) >= FAULTS_MAX:
            raise invalid_request(f"At most {FAULTS_MAX} fault rules.")
        latency = _number(body, "latency_seconds", None, 0.0, LATENCY_SECONDS_MAX)
        params = body.get("params") or {}
        if (
            not isinstance(params, dict)
            or len(params) > FAULT_PARAMS_MAX
            or not all(isinstance(key, str) and isinstance(value, str) for key, value in params.items())
        ):
            raise invalid_request(
                f"params must be an object of at most {FAULT_PARAMS_MAX} string parameters", param="params"
            )
        if kind == "latency" and latency is None:
            raise invalid_request("latency_seconds is required for latency faults", param="latency_seconds")
        rule = FaultRule(
            id=f"fault_{next(self._ids)}",
            kind=kind,
            method=method,
            path=path,
            count=_count(body),
            probability=_number(body, "probability", 1.0, 0.0, 1.0) or 0.0,
            latency_seconds=latency,
            pattern=compile_path(path),
            params=dict(params),
        )
        self.rules.append(rule)
        return rule

    def add_webhook(self, body: dict[str, Any]) -> WebhookFaultRule:
        kind = body.get("kind")
        if kind not in WEBHOOK_FAULT_KINDS:
            raise invalid_request(f"kind must be one of {', '.join(WEBHOOK_FAULT_KINDS)}", param="kind")
        window = body.get("window", 3)
        if isinstance(window, bool) or not isinstance(window, int) or not 2 <= window <= 100:
            raise invalid_request("window must be an integer between 2 and 100", param="window")
        rule = WebhookFaultRule(
            id=f"webhook_fault_{next(self._ids)}",
            kind=kind,
            probability=_number(body, "probability", 1.0, 0.0, 1.0) or 0.0,
            delay_seconds=_number(body, "delay_seconds", 1.0, 0.0, LATENCY_SECONDS_MAX) or 0.0,
            window=window,
            count=_count(body),
        )
        self.webhook_rules.append(rule)
        return rule

    def before(
        self, method: str, path: str, rng: Random, params: dict[str, Any] | None = None
    ) -> tuple[FaultRule | None, float]:
        """The first firing 429 / 500-before rule, and the summed latency of firing latency rules."""
        if not self.rules:
            return None, 0.0
        outcome = None
        latency = 0.0
        for rule in self.rules:
            if rule.kind == "latency":
                if rule.matches(method, path, params) and rule.draw(rng):
                    latency += rule.latency_seconds or 0.0
            elif (
                rule.kind in BEFORE_KINDS and outcome is None and rule.matches(method, path, params) and rule.draw(rng)
            ):
                outcome = rule
        return outcome, latency

    def after(self, method: str, path: str, rng: Random, params: dict[str, Any] | None = None) -> FaultRule | None:
        for rule in self.rules:
            if rule.kind in AFTER_KINDS and rule.matches(method, path, params) and rule.draw(rng):
                return rule
        return None

    def webhook(self, rng: Random) -> list[WebhookFaultRule]:
        return [rule for rule in self.webhook_rules if rule.draw(rng)]
