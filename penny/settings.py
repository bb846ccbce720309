"""Every Penny setting, read from environment variables, each with a documented default.

The README's configuration table is generated from the field descriptions here
(`penny config`), so the two never drift apart.

Conventions:
- Well-known names (`DATABASE_URL`, `TEMPORAL_ADDRESS`, `STRIPE_API_KEY`, ...) are read as is,
  and also with the `PENNY_` prefix; everything Penny-specific is `PENNY_<NAME>`.
- A service given by configuration (a database URL, a Temporal address, a Stripe API base)
  is used instead of the embedded one that `penny dev` would otherwise start.
- Placeholder secrets are accepted only when `PENNY_ENV` is `development` or `test`.
"""

from __future__ import annotations

import json
from dataclasses import fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from workflows.payment_models import PaymentTimings

PLACEHOLDER_STRIPE_API_KEY = "sk_test_penny_placeholder"
PLACEHOLDER_WEBHOOK_SECRET = "whsec_penny_placeholder"
PLACEHOLDER_API_KEY_PEPPER = "penny-placeholder-pepper"

DEVELOPMENT_ENVIRONMENTS = frozenset({"development", "test"})


def _aliases(name: str) -> AliasChoices:
    return AliasChoices(name, f"PENNY_{name}")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PENNY_", extra="ignore", populate_by_name=True)

    env: Literal["development", "test", "production"] = Field(
        "development",
        description="Deployment environment. Outside development/test, placeholder secrets are refused.",
    )
    log_format: Literal["json", "text"] | None = Field(
        None,
        description="Log lines as JSON objects (one per line: ts, level, logger, message, request/payment/order/"
        "workflow ids) or readable text. Unset: json in production, text in development and test.",
    )
    data_dir: Path = Field(
        Path(".penny"),
        description="Where `penny dev` keeps Postgres, Temporal and emulator data and logs.",
    )
    host: str = Field("127.0.0.1", description="Interface the local stack binds to.")

    database_url: str | None = Field(
        None,
        validation_alias=_aliases("DATABASE_URL"),
        description="PostgreSQL URL (postgresql+asyncpg://...). Unset: `penny dev` runs embedded Postgres.",
    )
    postgres_port: int = Field(54320, description="Port of the embedded Postgres started by `penny dev`.")

    temporal_address: str | None = Field(
        None,
        validation_alias=_aliases("TEMPORAL_ADDRESS"),
        description="Temporal frontend host:port. Unset: `penny dev` runs the Temporal dev server.",
    )
    temporal_namespace: str = Field(
        "default", validation_alias=_aliases("TEMPORAL_NAMESPACE"), description="Temporal namespace."
    )
    temporal_task_queue: str = Field(
        "penny", validation_alias=_aliases("TEMPORAL_TASK_QUEUE"), description="Task queue of the Penny worker."
    )
    temporal_port: int = Field(7233, description="Port of the embedded Temporal dev server (gRPC).")
    temporal_ui_port: int = Field(8233, description="Port of the embedded Temporal Web UI.")

    stripe_api_key: str = Field(
        PLACEHOLDER_STRIPE_API_KEY,
        validation_alias=_aliases("STRIPE_API_KEY"),
        description="Stripe secret key (sk_test_... for test mode). The placeholder works only with the emulator.",
    )
    stripe_api_base: str | None = Field(
        None,
        validation_alias=_aliases("STRIPE_API_BASE"),
        description="Stripe API base URL. Unset with a placeholder key: the embedded emulator. "
        "Set to https://api.stripe.com for real test mode.",
    )
    stripe_webhook_secrets: str = Field(
        PLACEHOLDER_WEBHOOK_SECRET,
        validation_alias=_aliases("STRIPE_WEBHOOK_SECRETS"),
        description="Comma-separated whsec_ secrets accepted on /webhooks/stripe (several during a rotation).",
    )
    webhook_signal_timeout_seconds: float = Field(
        5.0,
        gt=0,
        le=60,
        description="Longest /webhooks/stripe (and the relay) waits for Temporal to accept one event's signal; "
        "past it the API answers 503 so Stripe retries, and the stored event waits for the relay.",
    )
    webhook_relay_interval_seconds: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="How often the webhook relay (a workflow the worker starts) looks for stored, undelivered events.",
    )
    webhook_relay_grace_seconds: float = Field(
        10.0,
        ge=0,
        le=3600,
        description="A freshly stored webhook event is left to the API's own delivery for this long before the "
        "relay may deliver it.",
    )
    webhook_relay_batch_size: int = Field(
        100, ge=1, le=1000, description="Most stored webhook events the relay delivers per round."
    )
    webhook_relay_attempts_max: int = Field(
        12,
        ge=1,
        le=100,
        description="Delivery attempts of one webhook event before the relay gives up on it (status `failed`) "
        "and opens a review item.",
    )
    webhook_unrouted_attempts_max: int = Field(
        6,
        ge=1,
        le=100,
        description="Routing attempts of a payment event that matches no payment yet (its PaymentIntent may not be "
        "known to Penny for a few seconds) before it is kept as `unrouted` with a review item; retried with the "
        "relay's backoff.",
    )
    webhook_relay_backoff_initial_seconds: float = Field(
        2.0, gt=0, le=3600, description="Wait before the first re-delivery of a webhook event; doubles per attempt."
    )
    webhook_relay_backoff_max_seconds: float = Field(
        300.0, gt=0, le=86400, description="Longest wait between re-deliveries of one webhook event."
    )
    webhook_allow_loopback: bool | None = Field(
        None,
        description="Whether outbox subscribers (POST /v1/webhook_endpoints) may use plain http to a loopback "
        "address (localhost, 127.0.0.1, ::1); otherwise only https URLs are accepted. Unset: true when PENNY_ENV is "
        "development or test, false otherwise.",
    )
    outbox_relay_interval_seconds: float = Field(
        1.0,
        gt=0,
        le=3600,
        description="How often the outbox relay (a workflow the worker starts) looks for unpublished outbox events "
        "and due deliveries when it found none.",
    )
    outbox_relay_batch_size: int = Field(
        100,
        ge=1,
        le=1000,
        description="Most outbox events the relay fans out to subscribers per transaction, and most delivery "
        "attempts per round.",
    )
    outbox_delivery_concurrency: int = Field(
        8,
        ge=1,
        le=64,
        description="Most outbox deliveries one relay round has in flight at once (at most "
        "OUTBOX_DELIVERY_CONCURRENCY_PER_ENDPOINT of them to one subscriber).",
    )
    outbox_delivery_connect_timeout_seconds: float = Field(
        3.0, gt=0, le=30, description="Longest the relay waits to connect to a subscriber."
    )
    outbox_delivery_read_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=60,
        description="Longest the relay waits for a subscriber's answer; the whole request is also bounded by "
        "connect + read timeout. A timeout counts as a failed attempt.",
    )
    outbox_delivery_attempts_max: int = Field(
        16,
        ge=1,
        le=100,
        description="Delivery attempts of one event to one subscriber before it is dead-lettered (status `dead`, a "
        "`delivery_dead_letter` review item; POST /v1/webhook_deliveries/{id}/redeliver sends it again).",
    )
    outbox_delivery_backoff_initial_seconds: float = Field(
        5.0, gt=0, le=3600, description="Wait before the second attempt of an outbox delivery; doubles per attempt."
    )
    outbox_delivery_backoff_max_seconds: float = Field(
        3600.0, gt=0, le=86400, description="Longest wait between attempts of one outbox delivery."
    )
    ops_monitor_interval_seconds: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="How often the worker reads the ops snapshot (payments by status, stuck payments, review "
        "queue depth, undelivered webhooks and outbox events) into its Prometheus gauges.",
    )
    ledger_verify_interval_seconds: float = Field(
        300.0,
        gt=0,
        le=86400,
        description="How often the worker runs the ledger's verify() (it reads the whole ledger) and exports "
        "penny_ledger_verify_findings; alert on any non-zero value.",
    )
    stuck_after_seconds: int = Field(
        3600,
        ge=60,
        le=7 * 86400,
        description="A payment in CREATED or PROCESSING unchanged for longer than this counts as stuck "
        "(penny_payments_stuck, `penny status`, `penny ops stuck`).",
    )
    emulator_port: int = Field(12111, description="Port of the Stripe emulator.")

    api_port: int = Field(8000, description="Port of the Penny API.")
    worker_metrics_port: int = Field(
        9464,
        description="Port of the worker's Prometheus /metrics (webhook and outbox relay backlogs, lag and counters); "
        "0 disables.",
    )
    worker_temporal_metrics_port: int = Field(
        9465,
        ge=0,
        le=65535,
        description="Port of the Temporal SDK's own Prometheus metrics in the worker (task slots, poll and "
        "schedule-to-start latency, task failures, sticky cache: `temporal_*`); 0 disables.",
    )
    # Tracing (README "Tracing"): OpenTelemetry spans from the API through the workflow to its activities.
    tracing_exporter: Literal["none", "console", "otlp"] = Field(
        "none",
        description="Where the API and the worker send OpenTelemetry traces: `none` (nothing is instrumented), "
        "`console` (spans as JSON on standard output) or `otlp` (OTLP over HTTP; needs the "
        'opentelemetry-exporter-otlp-proto-http package). README "Tracing".',
    )
    tracing_otlp_endpoint: str | None = Field(
        None,
        max_length=2048,
        pattern=r"^https?://",
        description="OTLP/HTTP traces URL (e.g. http://collector:4318/v1/traces) when PENNY_TRACING_EXPORTER is "
        "`otlp`. Unset: the exporter's own default (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, "
        "OTEL_EXPORTER_OTLP_ENDPOINT, else http://localhost:4318/v1/traces).",
    )
    tracing_service_name: str = Field(
        "penny",
        min_length=1,
        max_length=100,
        description="Prefix of the OpenTelemetry `service.name` of traced processes: the API reports "
        "`<prefix>-api`, the worker `<prefix>-worker`.",
    )
    api_key_pepper: str = Field(
        PLACEHOLDER_API_KEY_PEPPER,
        description="Secret mixed into stored API key hashes.",
    )

    idempotency_window_seconds: int = Field(
        86400,
        ge=60,
        description="How long an Idempotency-Key and its stored response are kept (replayed); then swept.",
    )
    idempotency_lock_timeout_seconds: int = Field(
        60,
        ge=5,
        description="An in-flight Idempotency-Key whose request has held it this long is taken over by a retry "
        "(crash recovery). Must exceed PENNY_FIRST_MILESTONE_WAIT_SECONDS.",
    )
    first_milestone_wait_seconds: float = Field(
        20.0,
        gt=0,
        description="Longest POST /v1/payments waits for the payment's first milestone before answering `processing`.",
    )
    max_amount_minor: int = Field(
        99_999_999,
        ge=1,
        description="Largest payment amount accepted by the API, in minor units of the currency.",
    )
    supported_currencies: str = Field(
        "USD,EUR,GBP,CAD,AUD,CHF,SEK,NOK,DKK,JPY",
        description="Comma-separated ISO 4217 codes the API accepts.",
    )
    payment_timings: str = Field(
        "",
        description="JSON object overriding the waits of payments the API starts (workflows.payment_models."
        'PaymentTimings fields, e.g. {"settlement_poll_interval_seconds": 5}); empty: production defaults. '
        "For tests and chaos runs.",
    )
    refund_policy: Literal["proportional", "platform_keeps_fee"] = Field(
        "proportional",
        description="Who gives a refund back, fixed for each payment when it starts: `proportional` (the "
        "platform fee, the tax and every recipient return their exact share) or `platform_keeps_fee` (tax and "
        'recipients first, up to what they hold; the fee only for the rest). README "Refunds".',
    )
    dispute_loss_policy: Literal["platform", "recipients"] = Field(
        "platform",
        description="Who bears a lost dispute, fixed for each payment when it starts: `platform` (recipients keep "
        "what the capture owed them) or `recipients` (each gives back its share of the disputed amount by transfer "
        'reversal; fee and tax stay with the platform). README "Disputes".',
    )
    max_body_bytes: int = Field(
        65536,
        ge=1024,
        description="Largest request body the API reads; bigger bodies get 413.",
    )
    # Reconciliation (README "Reconciliation"): the daily Temporal Schedule and the comparison.
    reconciliation_schedule_enabled: bool = Field(
        True,
        description="Whether the worker creates (or updates) the daily reconciliation Schedule at start.",
    )
    reconciliation_time: str = Field(
        "03:00",
        pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$",
        description="Time of day (HH:MM, in PENNY_RECONCILIATION_TIMEZONE) the daily reconciliation runs; it "
        "reconciles the whole previous day.",
    )
    reconciliation_timezone: str = Field(
        "UTC",
        max_length=64,
        description="IANA timezone of the reconciliation time and of the day a scheduled run reconciles.",
    )
    reconciliation_overlap_policy: Literal["skip", "buffer_one", "buffer_all", "cancel_other", "allow_all"] = Field(
        "skip",
        description="What the Schedule does when a run is due while the previous one still runs (Temporal "
        "ScheduleOverlapPolicy); `skip` starts none.",
    )
    reconciliation_catchup_window_seconds: int = Field(
        86_400,
        ge=60,
        description="How late (after Temporal or the worker was down) a missed scheduled run is still started.",
    )
    reconciliation_margin_seconds: int = Field(
        3_600,
        ge=0,
        description="Stripe records created this long before a window's start are fetched too, so an object "
        "created just across the boundary on one side still finds its counterpart.",
    )
    reconciliation_lookahead_seconds: int = Field(
        7 * 86_400,
        ge=0,
        description="Stripe records created up to this long after a window's end are fetched too (transfers, "
        "reversals and payouts of the window's payments come later).",
    )
    reconciliation_page_size: int = Field(
        100, ge=1, le=100, description="Objects per Stripe list request of the reconciliation fetch."
    )
    reconciliation_amount_tolerance_minor: int = Field(
        0,
        ge=0,
        description="Largest difference (minor units) between Stripe's and Penny's amount (payments, refunds, "
        "transfers, payouts) still counted as matched.",
    )
    reconciliation_fee_tolerance_minor: int = Field(
        0, ge=0, description="Largest difference (minor units) between Stripe's and Penny's processing fee."
    )
    reconciliation_settlement_late_seconds: int = Field(
        86_400,
        ge=0,
        description="A charge whose funds Stripe made available this long ago and that Penny has not marked "
        "SETTLED (or marked later than that) is `settlement_late`.",
    )
    reconciliation_repair_enabled: bool = Field(
        True,
        description="Whether a run signals the payment workflow of a PaymentIntent Stripe reports succeeded "
        "while Penny's payment still waits for it (a missed webhook). Nothing else is repaired automatically.",
    )

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("reconciliation_timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as error:
            raise ValueError(f"unknown IANA timezone {value!r}") from error
        return value

    @model_validator(mode="after")
    def _refuse_placeholders_outside_development(self) -> Settings:
        if self.env in DEVELOPMENT_ENVIRONMENTS:
            return self
        placeholders = []
        if self.stripe_api_key == PLACEHOLDER_STRIPE_API_KEY:
            placeholders.append("STRIPE_API_KEY")
        if PLACEHOLDER_WEBHOOK_SECRET in self.webhook_secrets:
            placeholders.append("STRIPE_WEBHOOK_SECRETS")
        if self.api_key_pepper == PLACEHOLDER_API_KEY_PEPPER:
            placeholders.append("PENNY_API_KEY_PEPPER")
        if placeholders:
            raise ValueError(
                f"PENNY_ENV={self.env} refuses placeholder secrets; set real values for: {', '.join(placeholders)}"
            )
        return self

    @model_validator(mode="after")
    def _lock_outlives_first_milestone_wait(self) -> Settings:
        if self.idempotency_lock_timeout_seconds <= self.first_milestone_wait_seconds:
            raise ValueError(
                "PENNY_IDEMPOTENCY_LOCK_TIMEOUT_SECONDS must exceed PENNY_FIRST_MILESTONE_WAIT_SECONDS, "
                "or a slow request's key would be taken over while it still runs"
            )
        return self

    @field_validator("payment_timings")
    @classmethod
    def _known_payment_timings(cls, value: str) -> str:
        if value.strip():
            payment_timings_from_json(value)
        return value

    @model_validator(mode="after")
    def _unrouted_retries_within_relay_attempts(self) -> Settings:
        if self.webhook_unrouted_attempts_max > self.webhook_relay_attempts_max:
            raise ValueError("PENNY_WEBHOOK_UNROUTED_ATTEMPTS_MAX must not exceed PENNY_WEBHOOK_RELAY_ATTEMPTS_MAX")
        return self

    @model_validator(mode="after")
    def _outbox_backoff_bounds(self) -> Settings:
        if self.outbox_delivery_backoff_initial_seconds > self.outbox_delivery_backoff_max_seconds:
            raise ValueError(
                "PENNY_OUTBOX_DELIVERY_BACKOFF_INITIAL_SECONDS must not exceed "
                "PENNY_OUTBOX_DELIVERY_BACKOFF_MAX_SECONDS"
            )
        return self

    @property
    def json_logs(self) -> bool:
        """PENNY_LOG_FORMAT, or by default: JSON lines in production."""
        if self.log_format is not None:
            return self.log_format == "json"
        return self.env not in DEVELOPMENT_ENVIRONMENTS

    @property
    def webhook_loopback_allowed(self) -> bool:
        """PENNY_WEBHOOK_ALLOW_LOOPBACK, or by default: only in development and test."""
        if self.webhook_allow_loopback is not None:
            return self.webhook_allow_loopback
        return self.env in DEVELOPMENT_ENVIRONMENTS

    @property
    def payment_timings_override(self) -> PaymentTimings | None:
        return payment_timings_from_json(self.payment_timings) if self.payment_timings.strip() else None

    @property
    def currencies(self) -> frozenset[str]:
        return frozenset(code.strip().upper() for code in self.supported_currencies.split(",") if code.strip())

    @property
    def webhook_secrets(self) -> list[str]:
        return [secret.strip() for secret in self.stripe_webhook_secrets.split(",") if secret.strip()]

    @property
    def uses_embedded_postgres(self) -> bool:
        return self.database_url is None

    @property
    def uses_embedded_temporal(self) -> bool:
        return self.temporal_address is None

    @property
    def runs_embedded_emulator(self) -> bool:
        """`penny dev` starts the emulator only when no Stripe API base is configured."""
        return self.stripe_api_base is None

    @property
    def uses_emulator(self) -> bool:
        """True unless Stripe itself is configured: the emulator answers /health, Stripe does not."""
        return self.stripe_api_base is None or not self.stripe_api_base.startswith("https://api.stripe.com")

    @property
    def effective_database_url(self) -> str:
        if self.database_url is not None:
            return self.database_url
        return f"postgresql+asyncpg://postgres@{self.host}:{self.postgres_port}/penny"

    @property
    def effective_temporal_address(self) -> str:
        return self.temporal_address or f"{self.host}:{self.temporal_port}"

    @property
    def effective_stripe_api_base(self) -> str:
        return self.stripe_api_base or f"http://{self.host}:{self.emulator_port}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def payment_timings_from_json(text: str) -> PaymentTimings:
    """PaymentTimings with the fields a JSON object names; unknown names and non-positive values are refused."""
    try:
        overrides = json.loads(text)
    except ValueError as error:
        raise ValueError(f"PENNY_PAYMENT_TIMINGS is not JSON: {error}") from error
    if not isinstance(overrides, dict):
        raise ValueError("PENNY_PAYMENT_TIMINGS must be a JSON object")
    known = {item.name: item.type for item in fields(PaymentTimings)}
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ValueError(f"PENNY_PAYMENT_TIMINGS names unknown fields: {', '.join(unknown)}")
    for name, value in overrides.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(f"PENNY_PAYMENT_TIMINGS.{name} must be a non-negative number")
        if "int" in str(known[name]) and not isinstance(value, int):
            raise ValueError(f"PENNY_PAYMENT_TIMINGS.{name} must be an integer")
    return replace(PaymentTimings(), **overrides)
