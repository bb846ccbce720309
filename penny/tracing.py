"""OpenTelemetry tracing for the API and the worker, off unless PENNY_TRACING_EXPORTER says otherwise.

One trace follows a payment: the API's request span (FastAPI instrumentation) is the parent of the
Temporal client's `StartUpdateWithStartWorkflow:PaymentWorkflow` span; `temporalio.contrib.opentelemetry`
carries that context in the workflow's headers, so the workflow's spans and every activity it runs
(on any worker) hang under it. README "Tracing" draws the tree.

Each process builds its own SDK `TracerProvider` and hands it to the instrumentation explicitly; the
global OpenTelemetry provider is never set, so tests (and several apps in one process) can each use
their own provider. With the default `none` this module imports no SDK and no exporter, instruments
nothing and adds no interceptor: the API and the worker run exactly as without it.

Workflow code stays deterministic: the interceptor only records spans (never on replay) and adds
headers to the commands the workflow already sends, which replay does not compare.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from temporalio.client import Client

from penny.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from temporalio.contrib.opentelemetry import TracingInterceptor

# The instrumentation scope of Penny's Temporal spans.
TRACER_NAME = "penny"
# Probes and scrapes are called every few seconds and say nothing about a payment: not traced.
UNTRACED_URLS = ",".join(("/healthz", "/readyz", "/metrics"))
OTLP_PACKAGE = "opentelemetry-exporter-otlp-proto-http"


class TracingConfigurationError(RuntimeError):
    """Tracing was asked for in a way this installation cannot provide (refused at startup)."""


def tracer_provider(settings: Settings, component: str) -> TracerProvider | None:
    """A provider exporting `component`'s spans as PENNY_TRACING_EXPORTER says, or None when tracing is off.

    `component` names the process (`api`, `worker`); its `service.name` is
    `<PENNY_TRACING_SERVICE_NAME>-<component>`. The caller shuts the provider down when it stops, which
    flushes the spans still queued."""
    if settings.tracing_exporter == "none":
        return None
    return new_tracer_provider(f"{settings.tracing_service_name}-{component}", _span_exporter(settings))


def new_tracer_provider(service_name: str, exporter: SpanExporter, *, batched: bool = True) -> TracerProvider:
    """A provider named `service_name` whose spans reach `exporter` with card numbers and secrets scrubbed.

    Batched by default: exporting never runs on a request's or an activity's path. Tests pass an
    in-memory exporter with `batched=False` to read every span as soon as it ends."""
    from penny._tracing_sdk import new_tracer_provider as build

    return build(service_name, exporter, batched=batched)


def _span_exporter(settings: Settings) -> SpanExporter:
    if settings.tracing_exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if settings.tracing_exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as error:
            raise TracingConfigurationError(
                f"PENNY_TRACING_EXPORTER=otlp needs the {OTLP_PACKAGE} package "
                f"(pip install {OTLP_PACKAGE}), or set PENNY_TRACING_EXPORTER to console or none"
            ) from error
        return OTLPSpanExporter(endpoint=settings.tracing_otlp_endpoint)
    # Settings only admit none, console and otlp; a new value must be wired here first.
    raise TracingConfigurationError(f"unknown PENNY_TRACING_EXPORTER {settings.tracing_exporter!r}")


def temporal_interceptors(provider: TracerProvider | None) -> Sequence[TracingInterceptor]:
    """The interceptors for `Client.connect`: Temporal's OpenTelemetry `TracingInterceptor` on `provider`, or
    none. A worker built on the client inherits them, so its workflows and activities are traced too."""
    if provider is None:
        return []
    from temporalio.contrib.opentelemetry import TracingInterceptor

    return [TracingInterceptor(provider.get_tracer(TRACER_NAME))]


def untraced_client(client: Client) -> Client:
    """`client` without the tracing interceptor (the same connection): for workflows that run forever,
    whose spans would otherwise all belong to the one trace their start began. Without a traced start a
    workflow records no spans, and each activity it runs is a trace of its own."""
    config = client.config()
    if not config["interceptors"]:
        return client
    from temporalio.contrib.opentelemetry import TracingInterceptor

    kept = [item for item in config["interceptors"] if not isinstance(item, TracingInterceptor)]
    if len(kept) == len(config["interceptors"]):
        return client
    config["interceptors"] = kept
    return Client(**config)


def instrument_api(app: FastAPI, provider: TracerProvider | None) -> None:
    """Give every request of `app` (but the probes) a server span on `provider`; nothing when it is None.

    Call before the app serves its first request: the instrumentation wraps the middleware stack, outside
    every middleware of Penny's, so the span covers the whole request, refusals included."""
    if provider is None:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    # No per-message `http receive`/`http send` spans: one span per request is what a payment trace needs.
    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=provider, excluded_urls=UNTRACED_URLS, exclude_spans=["receive", "send"]
    )
