"""Penny's Temporal worker: registers the workflows and activities and runs them.

Run it on its own with `python worker.py` (or `penny worker`); `penny dev` starts it too.
This file only wires things together; the logic lives in workflows/ and activities/.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence
from typing import Any

from prometheus_client import start_http_server
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.health import HealthActivities
from activities.outbox import OutboxRelayActivities
from activities.payments import PaymentActivities
from activities.reconciliation import ReconciliationActivities
from activities.stripe import StripeActivities
from activities.webhooks import WebhookRelayActivities
from penny import sandbox_runner, tracing
from penny.db import create_engine
from penny.logs import configure_logging
from penny.ops_monitor import monitor_forever
from penny.payload_converter import with_penny_converter
from penny.reconciliation_schedule import ensure_reconciliation_schedule
from penny.settings import Settings, get_settings
from penny.temporal_runtime import worker_runtime
from workflows.health import HealthCheckWorkflow
from workflows.outbox_relay import OutboxRelayWorkflow, start_outbox_relay
from workflows.payment import PaymentWorkflow
from workflows.reconciliation import ReconciliationWorkflow
from workflows.webhook_relay import WebhookRelayWorkflow, start_webhook_relay

logger = logging.getLogger("penny.worker")

# Bounded concurrency per worker process (TIGER_STYLE: a limit on everything).
MAX_CONCURRENT_ACTIVITIES = 200
MAX_CONCURRENT_WORKFLOW_TASKS = 200
# Payment workflows stay open for weeks (authorisation, settlement, dispute window); a cache
# smaller than the open set makes every wake-up replay a whole history.
MAX_CACHED_WORKFLOWS = 10_000
SHUTDOWN_TIMEOUT_SECONDS = 10.0


# Pure, deterministic modules shared by workflows: imported once and passed through the
# sandbox instead of re-imported for every workflow run (a large CPU saving per payment).
SANDBOX_PASSTHROUGH_MODULES = (
    "workflows.payment_models",
    "workflows.state_machine",
    "workflows.payment_core",
    "workflows.ids",
    # The payment workflow's shell and step mixins, and the frozen pre-patch class: workflow
    # code without module-level state, so one import serves every run.
    "workflows.payment_shell",
    "workflows.payment_charge",
    "workflows.payment_disbursement",
    "workflows.payment_events",
    "workflows.payment_legacy",
    "workflows.payment_refunds",
    # The workflow's own module too: re-importing it for every new payment (and re-running
    # @workflow.defn's inspection of the class) was 5 % of the worker's CPU (py-spy, #16).
    "workflows.payment",
    "workflows.search_attributes",
    "activities.payment_types",
    "activities.stripe_types",
    "activities.outbox_types",
    "workflows.reconciliation_models",
)


def workflow_runner() -> SandboxedWorkflowRunner:
    restrictions = SandboxRestrictions.default.with_passthrough_modules(*SANDBOX_PASSTHROUGH_MODULES)
    # The SDK's sandbox, its per-activation code strings compiled once (penny/sandbox_runner.py).
    return sandbox_runner.workflow_runner(restrictions)


def workflow_classes() -> Sequence[type]:
    return [HealthCheckWorkflow, PaymentWorkflow, WebhookRelayWorkflow, OutboxRelayWorkflow, ReconciliationWorkflow]


def activity_functions(engine: AsyncEngine, settings: Settings, client: Client | None = None) -> Sequence[Any]:
    health = HealthActivities(engine)
    webhook_relay = WebhookRelayActivities(engine, settings, client)
    outbox_relay = OutboxRelayActivities(engine, settings)
    payments = PaymentActivities(engine)
    stripe_calls = StripeActivities(settings)
    reconciliation = ReconciliationActivities(engine, settings, client)
    return [
        health.record_heartbeat,
        payments.prepare_payment,
        payments.risk_check,
        payments.apply_transition,
        payments.record_ignored_event,
        stripe_calls.create_payment_intent,
        stripe_calls.retrieve_payment_intent,
        stripe_calls.find_payment_intent,
        stripe_calls.find_transfer,
        stripe_calls.capture_payment_intent,
        stripe_calls.cancel_payment_intent,
        stripe_calls.create_transfer,
        stripe_calls.charge_balance,
        stripe_calls.retrieve_dispute,
        stripe_calls.create_refund,
        stripe_calls.retrieve_refund,
        stripe_calls.find_refund,
        stripe_calls.reverse_transfer,
        stripe_calls.find_reversal,
        webhook_relay.relay_webhook_events,
        outbox_relay.relay_outbox,
        reconciliation.start_run,
        reconciliation.fetch_pages,
        reconciliation.compare,
        reconciliation.repair,
        reconciliation.finish,
    ]


def build_worker(client: Client, engine: AsyncEngine, settings: Settings, task_queue: str | None = None) -> Worker:
    return Worker(
        # Same connection; payloads decoded with each dataclass's field types resolved once (#16).
        with_penny_converter(client),
        task_queue=task_queue or settings.temporal_task_queue,
        workflows=list(workflow_classes()),
        activities=list(activity_functions(engine, settings, client)),
        max_concurrent_activities=MAX_CONCURRENT_ACTIVITIES,
        max_concurrent_workflow_tasks=MAX_CONCURRENT_WORKFLOW_TASKS,
        max_cached_workflows=MAX_CACHED_WORKFLOWS,
        workflow_runner=workflow_runner(),
    )


async def run_worker(settings: Settings) -> None:
    if settings.worker_metrics_port:
        # The worker's own metrics (relay backlogs, webhook and outbox delivery counters) for Prometheus.
        start_http_server(settings.worker_metrics_port, addr=settings.host)
    # Tracing (penny.tracing; off by default): the worker inherits the client's interceptors.
    tracer_provider = tracing.tracer_provider(settings, "worker")
    client = await Client.connect(
        settings.effective_temporal_address,
        namespace=settings.temporal_namespace,
        interceptors=tracing.temporal_interceptors(tracer_provider),
        # The SDK's own metrics on PENNY_WORKER_TEMPORAL_METRICS_PORT (penny/temporal_runtime.py).
        runtime=worker_runtime(settings),
    )
    engine = create_engine(settings.effective_database_url, pre_ping=False)
    worker = build_worker(client, engine, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    logger.info(
        "worker polling task queue %r on %s (namespace %s)",
        settings.temporal_task_queue,
        settings.effective_temporal_address,
        settings.temporal_namespace,
    )
    running = asyncio.create_task(worker.run())
    # The relays run forever (continue-as-new): started without a trace, so each round is a trace of its
    # own rather than all of them one endless trace.
    relay_client = tracing.untraced_client(client)
    # One relay per task queue re-delivers stored-but-undelivered webhook events.
    await start_webhook_relay(relay_client, settings.temporal_task_queue)
    # One relay per task queue publishes committed outbox events to subscribers (webhook endpoints).
    await start_outbox_relay(relay_client, settings.temporal_task_queue)
    # The daily reconciliation Schedule: created, or brought to the current settings (idempotent).
    await ensure_reconciliation_schedule(client, settings)
    # The consistency-risk gauges (stuck payments, review queue depth, ledger verify, ...).
    monitor = asyncio.create_task(monitor_forever(engine, settings))
    await asyncio.wait([running, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    monitor.cancel()
    logger.info("worker stopping: finishing in-flight tasks (at most %ss)", SHUTDOWN_TIMEOUT_SECONDS)
    try:
        # Bounded: with Temporal unreachable a graceful shutdown could wait forever.
        await asyncio.wait_for(worker.shutdown(), timeout=SHUTDOWN_TIMEOUT_SECONDS)
    except TimeoutError:
        logger.warning("worker shutdown timed out; exiting anyway (activities will be retried)")
    await engine.dispose()
    if tracer_provider is not None:
        # Exports the queued spans: blocking, bounded by the exporter's timeout, so off the loop.
        await asyncio.to_thread(tracer_provider.shutdown)


def main() -> None:
    configure_logging()
    asyncio.run(run_worker(get_settings()))


if __name__ == "__main__":
    main()
