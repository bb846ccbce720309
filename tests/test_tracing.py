"""Tracing (README "Tracing", penny/tracing.py): one trace follows a payment from the API request through
the workflow and its activities; replaying it records nothing; card numbers never reach a span; with the
default settings nothing is instrumented and no exporter is even imported.

The traced stack is the real one (API app, Temporal dev server, Penny's worker, Postgres, the emulator),
with an SDK `TracerProvider` of the test's own feeding an in-memory exporter. It is handed to the
instrumentation explicitly: the global OpenTelemetry provider is never set, so tests cannot fight over it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.worker import Replayer

from api.app import create_app
from penny import tracing
from penny.logs import SCRUBBED, contains_card_number
from penny.settings import Settings
from tests.payment_fixtures import FAST_TIMINGS
from tests.test_api_support import PAN_VISA, auth, new_key, payment_body
from worker import build_worker, workflow_runner
from workflows.payment import PaymentWorkflow
from workflows.payment_models import PaymentState, workflow_id_for_order

ROOT = Path(__file__).resolve().parent.parent
RESULT_TIMEOUT_SECONDS = 60.0
SETTLEMENT_CLOCK_ADVANCE_SECONDS = 3 * 24 * 3600
DEFAULT_RUN_TIMEOUT_SECONDS = 60.0
REQUEST_SPAN = "POST /v1/payments"
START_SPAN = "StartUpdateWithStartWorkflow:PaymentWorkflow"
# The activities every captured-and-settled single-seller payment runs (the workflow's own names;
# the risk check runs inside prepare_payment since patch prepare-screens-v1).
PAYMENT_ACTIVITIES = {
    "prepare_payment",
    "apply_transition",
    "stripe_create_payment_intent",
    "stripe_charge_balance",
}


@dataclass
class Traced:
    provider: TracerProvider
    exporter: InMemorySpanExporter


@pytest.fixture
def traced() -> Iterator[Traced]:
    exporter = InMemorySpanExporter()
    # Penny's own provider factory (card numbers scrubbed on export), exporting synchronously to memory.
    provider = tracing.new_tracer_provider("penny-test", exporter, batched=False)
    yield Traced(provider, exporter)
    provider.shutdown()


def stack_settings(database_url: str, temporal_client: Client, stripe_emulator: Any, task_queue: str) -> Settings:
    return Settings(
        env="test",
        database_url=database_url,
        temporal_address=temporal_client.service_client.config.target_host,
        temporal_namespace=temporal_client.namespace,
        temporal_task_queue=task_queue,
        stripe_api_base=stripe_emulator.base_url,
    )


@dataclass
class TracedApi:
    http: httpx.AsyncClient
    settings: Settings


@pytest_asyncio.fixture(loop_scope="session")
async def traced_api(
    traced: Traced,
    temporal_client: Client,
    engine: AsyncEngine,
    database_url: str,
    stripe_emulator: Any,
    task_queue: str,
) -> AsyncIterator[TracedApi]:
    """The API and a worker on a fresh task queue, both on a client with the tracing interceptor, as the
    API's and the worker's own `Client.connect` make it when tracing is on."""
    settings = stack_settings(database_url, temporal_client, stripe_emulator, task_queue)
    config = temporal_client.config()
    config["interceptors"] = [*config["interceptors"], *tracing.temporal_interceptors(traced.provider)]
    traced_client = Client(**config)
    app = create_app(
        settings, temporal_client=traced_client, payment_timings=FAST_TIMINGS, tracer_provider=traced.provider
    )
    async with build_worker(traced_client, engine, settings, task_queue=task_queue), app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as http:
            yield TracedApi(http, settings)


def span_tree(spans: list[ReadableSpan]) -> str:
    """The spans as an indented tree (for failure messages and the README)."""
    ids = {span.context.span_id for span in spans}
    children: dict[int | None, list[ReadableSpan]] = {}
    for span in spans:
        parent = span.parent.span_id if span.parent is not None and span.parent.span_id in ids else None
        children.setdefault(parent, []).append(span)
    lines: list[str] = []

    def walk(parent: int | None, depth: int) -> None:
        for span in sorted(children.get(parent, []), key=lambda item: item.start_time or 0):
            lines.append("  " * depth + span.name)
            walk(span.context.span_id, depth + 1)

    walk(None, 0)
    return "\n".join(lines)


def only(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    matching = [span for span in spans if span.name == name]
    assert len(matching) == 1, f"{len(matching)} spans named {name}"
    return matching[0]


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_one_trace_follows_a_payment_from_the_request_through_the_workflow_and_its_activities(
    traced_api: TracedApi, traced: Traced, engine: AsyncEngine, temporal_client: Client, stripe_emulator: Any
) -> None:
    key = await new_key(engine, traced_api.settings)
    body = payment_body()
    response = await traced_api.http.post("/v1/payments", json=body, headers=auth(key, str(uuid.uuid4())))
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "captured"
    # The rest of the payment's life: settlement, then the dispute window closes the workflow. Read
    # through the untraced client, so the test's own calls add no spans.
    stripe_emulator.control.advance_clock(SETTLEMENT_CLOCK_ADVANCE_SECONDS)
    workflow_id = workflow_id_for_order(body["order_id"])
    handle = temporal_client.get_workflow_handle(workflow_id, result_type=PaymentState)
    final = await handle.result(rpc_timeout=None)
    assert final.status == "SETTLED"

    spans = list(traced.exporter.get_finished_spans())
    tree = span_tree(spans)
    request = only(spans, REQUEST_SPAN)
    start = only(spans, START_SPAN)
    # One trace: every span the API and the worker recorded for this payment, and nothing else.
    assert {span.context.trace_id for span in spans} == {request.context.trace_id}, tree
    assert request.parent is None and request.kind is SpanKind.SERVER, tree
    assert request.attributes is not None and request.attributes["http.route"] == "/v1/payments"
    assert request.resource.attributes["service.name"] == "penny-test"
    # The client span of the API's update-with-start is the request's child; the workflow's own spans and
    # its activities' start spans are the start span's children (the workflow's context is the one the
    # start carried in its headers); each activity run is the child of the start that scheduled it.
    assert parent_id(start) == request.context.span_id, tree
    workflow_spans = {"RunWorkflow:PaymentWorkflow", "HandleUpdate:first_milestone", "CompleteWorkflow:PaymentWorkflow"}
    for name in workflow_spans:
        assert parent_id(only(spans, name)) == start.context.span_id, tree
        assert only(spans, name).attributes == {"temporalWorkflowID": workflow_id, "temporalRunID": handle_run(spans)}
    activity_starts = {span.context.span_id: span for span in spans if span.name.startswith("StartActivity:")}
    activity_runs = [span for span in spans if span.name.startswith("RunActivity:")]
    for activity_start in activity_starts.values():
        assert parent_id(activity_start) == start.context.span_id, tree
    # No retries in this run: each scheduled activity ran exactly once, under its own start span.
    assert Counter(parent_id(run) for run in activity_runs) == Counter(list(activity_starts)), tree
    for run in activity_runs:
        scheduled = activity_starts[parent_id(run)]  # type: ignore[index]
        assert run.name.removeprefix("RunActivity:") == scheduled.name.removeprefix("StartActivity:"), tree
        assert run.attributes is not None and run.attributes["temporalWorkflowID"] == workflow_id
    assert {run.name.removeprefix("RunActivity:") for run in activity_runs} == PAYMENT_ACTIVITIES, tree
    # Nothing else: every span is one of the above.
    named = {REQUEST_SPAN, START_SPAN, *workflow_spans}
    assert len(spans) == len(named) + len(activity_starts) + len(activity_runs), tree

    # Replaying the traced history (as a worker does after a restart) is deterministic and records nothing.
    history = await handle.fetch_history()
    traced.exporter.clear()
    replayer = Replayer(
        workflows=[PaymentWorkflow],
        workflow_runner=workflow_runner(),
        interceptors=tracing.temporal_interceptors(traced.provider),
    )
    await replayer.replay_workflow(history)
    assert [span.name for span in traced.exporter.get_finished_spans()] == []


def handle_run(spans: list[ReadableSpan]) -> str:
    """The run id the workflow's RunWorkflow span names (one run: every workflow span names the same)."""
    run = only(spans, "RunWorkflow:PaymentWorkflow")
    assert run.attributes is not None
    return str(run.attributes["temporalRunID"])


async def test_a_card_number_in_a_request_url_never_reaches_a_span(
    traced: Traced, temporal_client: Client, database_url: str, stripe_emulator: Any, task_queue: str
) -> None:
    settings = stack_settings(database_url, temporal_client, stripe_emulator, task_queue)
    app = create_app(settings, temporal_client=temporal_client, tracer_provider=traced.provider)
    spaced = PAN_VISA[:4] + "%20" + PAN_VISA[4:8] + "%20" + PAN_VISA[8:12] + "%20" + PAN_VISA[12:]
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            plain = await http.get(f"/v1/payments?starting_after={PAN_VISA}")
            encoded = await http.get(f"/v1/payments?starting_after={spaced}")
    # The edge refuses both; their spans exist, with the number scrubbed from every attribute.
    assert (plain.status_code, encoded.status_code) == (400, 400)
    spans = list(traced.exporter.get_finished_spans())
    assert [span.name for span in spans] == ["GET /v1/payments", "GET /v1/payments"]
    for span in spans:
        texts = [str(value) for value in (span.attributes or {}).values()]
        assert not any(contains_card_number(text) for text in texts), texts
        assert any(SCRUBBED in text for text in texts), texts


def test_exporters_follow_the_settings() -> None:
    assert tracing.tracer_provider(Settings(env="test"), "api") is None
    assert tracing.temporal_interceptors(None) == []
    console = tracing.tracer_provider(Settings(env="test", tracing_exporter="console"), "worker")
    otlp = tracing.tracer_provider(
        Settings(
            env="test",
            tracing_exporter="otlp",
            tracing_otlp_endpoint="http://collector.invalid:4318/v1/traces",
            tracing_service_name="shop-penny",
        ),
        "api",
    )
    assert console is not None and otlp is not None
    try:
        assert console.resource.attributes["service.name"] == "penny-worker"
        assert otlp.resource.attributes["service.name"] == "shop-penny-api"
        exporters = [exporter_of(console), exporter_of(otlp)]
        assert isinstance(exporters[0], ConsoleSpanExporter)
        assert type(exporters[1]).__name__ == "OTLPSpanExporter"
        assert exporters[1]._endpoint == "http://collector.invalid:4318/v1/traces"
    finally:
        # Nothing was recorded, so nothing is sent to the (unresolvable) collector.
        console.shutdown()
        otlp.shutdown()


def exporter_of(provider: TracerProvider) -> Any:
    # One batch processor, exporting through the scrubber to the configured exporter.
    [processor] = provider._active_span_processor._span_processors
    assert isinstance(processor, BatchSpanProcessor)
    return getattr(processor._batch_processor._exporter, "inner", None)


def test_otlp_without_its_package_is_refused_at_startup(monkeypatch: pytest.MonkeyPatch) -> None:
    # `None` in sys.modules makes the import fail as if the package were not installed.
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with pytest.raises(tracing.TracingConfigurationError, match="opentelemetry-exporter-otlp-proto-http"):
        tracing.tracer_provider(Settings(env="test", tracing_exporter="otlp"), "worker")


def test_off_by_default_nothing_is_instrumented_and_no_exporter_is_loaded() -> None:
    """With the default settings, a fresh process builds the API and serves a request, and builds the
    worker's client interceptors, without instrumenting anything or importing the OpenTelemetry SDK,
    the FastAPI instrumentation or any exporter."""
    program = textwrap.dedent(
        """
        import asyncio, sys
        import httpx
        from api.app import create_app
        from penny import tracing
        from penny.settings import Settings
        import worker

        settings = Settings(env="test")
        app = create_app(settings, temporal_client=None)

        async def request() -> int:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                return (await http.get("/v1/payments")).status_code

        status = asyncio.run(request())
        interceptors = tracing.temporal_interceptors(tracing.tracer_provider(settings, "worker"))
        loaded = sorted(
            name for name in sys.modules
            if name.startswith(("opentelemetry.sdk", "opentelemetry.instrumentation", "opentelemetry.exporter"))
        )
        print(status, getattr(app, "_is_instrumented_by_opentelemetry", False), len(interceptors), loaded)
        """
    )
    environment = {"PATH": "/usr/bin:/bin", "PENNY_ENV": "test"}
    completed = subprocess.run(
        [sys.executable, "-c", program],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=DEFAULT_RUN_TIMEOUT_SECONDS,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    # 401: the request went through the whole (uninstrumented) app without an API key.
    assert completed.stdout.strip().splitlines()[-1] == "401 False 0 []", completed.stdout


def test_untraced_client_drops_only_the_tracing_interceptor(temporal_client: Client, traced: Traced) -> None:
    """The worker starts its forever-running relays through it (each relay round is then a trace of its own)."""
    config = temporal_client.config()
    config["interceptors"] = [*config["interceptors"], *tracing.temporal_interceptors(traced.provider)]
    traced_client = Client(**config)
    untraced = tracing.untraced_client(traced_client)
    assert untraced.config()["interceptors"] == temporal_client.config()["interceptors"]
    assert untraced.service_client is traced_client.service_client
    assert tracing.untraced_client(temporal_client) is temporal_client
