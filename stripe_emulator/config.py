"""Emulator configuration: one frozen dataclass, every field overridable by a PENNY_EMULATOR_* variable.

Durations on the emulator clock (settlement, payouts, idempotency window, disputes, refund
failures, event retention) move when the clock is advanced; webhook retry and timeout durations
are real seconds, because they govern real HTTP deliveries.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass

DAY_SECONDS = 86_400
ENV_PREFIX = "PENNY_EMULATOR_"


@dataclass(frozen=True)
class EmulatorConfig:
    # Charges' balance transactions move from pending to available after this long.
    settlement_delay_seconds: int = 2 * DAY_SECONDS
    # Automatic payouts run every interval (daily, at 00:00 UTC on the emulator clock).
    payout_interval_seconds: int = DAY_SECONDS
    # A payout goes from pending to paid this long after it is created.
    payout_arrival_delay_seconds: int = DAY_SECONDS
    # Stripe forgets idempotency keys after 24 hours.
    idempotency_window_seconds: int = DAY_SECONDS
    # Real seconds between webhook delivery attempts; attempts_max = len(schedule) + 1.
    webhook_retry_schedule_seconds: tuple[float, ...] = (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0, 7200.0)
    webhook_timeout_seconds: float = 10.0
    webhook_concurrency_max: int = 16
    # pm_card_createDispute / pm_card_createDisputeInquiry: the dispute (or inquiry) appears this
    # long (emulator clock) after the charge succeeds.
    dispute_delay_seconds: float = 1.0
    # Stripe's US dispute fee, withdrawn with a chargeback and kept even when it is won (an inquiry
    # withdraws nothing).
    dispute_fee_minor: int = 1500
    # pm_card_refundFail: its refunds are created `succeeded` and fail this long (emulator clock)
    # later, as Stripe's asynchronous refund failures do.
    refund_failure_delay_seconds: float = 5.0
    event_retention_seconds: int = 30 * DAY_SECONDS
    # A rolled webhook secret stays valid (and is still signed with) for this long.
    webhook_secret_roll_expiry_seconds: int = DAY_SECONDS
    # Default hang for the timeout_after fault before the connection is dropped.
    timeout_after_default_seconds: float = 30.0
    # Stripe refuses transfers beyond the available balance unless source_transaction is given;
    # off by default so a marketplace flow can transfer right after a charge (documented).
    enforce_transfer_balance: bool = False
    seed: int | None = None
    sqlite_path: str | None = None
    persist_interval_seconds: float = 1.0
    # How often (real seconds) due work runs (settlement, payouts, disputes, pruning).
    tick_interval_seconds: float = 0.2
    # Unknown request parameters are refused as Stripe does ("Received unknown parameter").
    strict_parameters: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> EmulatorConfig:
        """Defaults, then PENNY_EMULATOR_<FIELD> variables, then explicit overrides."""
        source = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for field in dataclasses.fields(cls):
            raw = source.get(ENV_PREFIX + field.name.upper())
            if raw is None and field.name == "sqlite_path":
                raw = source.get("PENNY_EMULATOR_DB")
            if raw is None or raw == "":
                continue
            values[field.name] = _parse(field.name, str(field.type), raw)
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


def _parse(name: str, type_name: str, raw: str) -> object:
    try:
        if type_name.startswith("tuple"):
            return tuple(float(part) for part in raw.split(",") if part.strip())
        if type_name == "bool":
            return raw.strip().lower() in {"1", "true", "yes", "on"}
        if type_name.startswith("int"):
            return int(raw)
        if type_name.startswith("float"):
            return float(raw)
        return raw
    except ValueError as error:
        raise ValueError(f"{ENV_PREFIX}{name.upper()}: cannot parse {raw!r}: {error}") from None
