"""Benchmark: Stripe webhooks verified + stored + signalled, at concurrency 32, and the duplicate path.

    .venv/bin/python bench/webhooks.py [--events 3000] [--concurrency 32] [--payments 64]

Builds the real stack in separate processes: embedded PostgreSQL (migrated), the Temporal dev
server, the Stripe emulator, the Penny worker (`worker.py`, which also starts the webhook
relay) and the Penny API under uvicorn with the webhook router. It opens `--payments`
manual-capture payments (they wait AUTHORIZED), then POSTs signed `transfer.updated` events
routed to them by metadata order id: each request verifies the signature, inserts into the
inbox, routes, signals the payment workflow and marks the event delivered. Then it sends the
same events again: the duplicate path (verify + insert conflict + 200). Last, new
`charge.updated` events: a type the payment workflow never acts on, which the router marks
ignored without a signal. Prints events/s and p50/p99 latency for each. The load comes from
one httpx.AsyncClient in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from penny.db import migrate  # noqa: E402
from penny.services import EmbeddedPostgres, free_port, temporal_binary, wait_for_port  # noqa: E402

SECRET = "whsec_penny_bench_" + "s" * 24
TASK_QUEUE = "penny-bench"
WARMUP_EVENTS = 200
STARTUP_TIMEOUT_SECONDS = 60.0


def serve_api(port: int) -> None:
    """Child process: the Penny API with the webhook router (settings from the environment)."""
    import uvicorn

    from api.app import create_app
    from api.webhooks import WEBHOOK_PATH, router

    app = create_app()
    if not any(getattr(route, "path", None) == WEBHOOK_PATH for route in app.routes):
        app.include_router(router)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, timeout_keep_alive=60)


def spawn(command: list[str], environment: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    handle = open(log, "ab")  # noqa: SIM115 - the child owns it
    return subprocess.Popen(command, cwd=ROOT, env=environment, stdout=handle, stderr=subprocess.STDOUT)


def wait_http(url: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer")


def event_body(order_id: str, event_type: str = "transfer.updated") -> bytes:
    """A signed-to-be event routed to `order_id` by metadata. `transfer.updated` is a type the
    payment workflow acts on, so it is signalled (the workflow then finds nothing to book and
    records it as ignored); `charge.updated` is one it never acts on, so the router itself marks
    it ignored without signalling."""
    prefix, kind = ("tr", "transfer") if event_type.startswith("transfer.") else ("ch", "charge")
    event = {
        "id": f"evt_bench_{uuid.uuid4().hex}",
        "object": "event",
        "created": int(time.time()),
        "livemode": False,
        "type": event_type,
        "data": {"object": {"id": f"{prefix}_bench_{uuid.uuid4().hex[:16]}", "object": kind, "status": "succeeded",
                            "amount": 5000, "metadata": {"order_id": order_id}}},
    }  # fmt: skip
    return json.dumps(event, separators=(",", ":")).encode()


async def post_all(base_url: str, bodies: list[bytes], concurrency: int) -> tuple[float, list[float], dict[int, int]]:
    from api.webhook_signature import sign

    latencies: list[float] = []
    codes: dict[int, int] = {}
    queue = list(reversed(bodies))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:

        async def worker() -> None:
            while queue:
                body = queue.pop()
                signature = sign(body, [SECRET], int(time.time()))
                headers = {"Content-Type": "application/json", "Stripe-Signature": signature}
                started = time.perf_counter()
                response = await client.post("/webhooks/stripe", content=body, headers=headers)
                latencies.append(time.perf_counter() - started)
                codes[response.status_code] = codes.get(response.status_code, 0) + 1

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - began, latencies, codes


def report(name: str, elapsed: float, latencies: list[float], codes: dict[int, int]) -> None:
    ordered = sorted(latencies)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    print(
        f"{name:<34} {len(latencies) / elapsed:8.0f} events/s   p50 {p50:6.1f} ms   p99 {p99:6.1f} ms   "
        f"({len(latencies)} events in {elapsed:.1f}s, status {codes})",
        flush=True,
    )


async def open_payments(temporal_address: str, count: int) -> list[str]:
    from temporalio.client import Client

    from workflows.payment_models import (
        PAYMENT_WORKFLOW_NAME,
        QUERY_STATE,
        PaymentInput,
        PaymentState,
        SplitRecipientSpec,
        workflow_id_for_order,
    )

    client = await Client.connect(temporal_address)
    orders = [f"bench_{uuid.uuid4().hex[:12]}" for _ in range(count)]
    handles = [
        await client.start_workflow(
            PAYMENT_WORKFLOW_NAME,
            PaymentInput(
                order_id=order,
                amount=5000,
                currency="USD",
                customer=f"cus_{order}",  # one customer each: the risk check limits payments per customer
                payment_method="pm_card_visa",
                capture_method="manual",
                recipients=[SplitRecipientSpec(account_id="acct_bench_seller", share_bps=10_000)],
                platform_fee_bps=1000,
            ),
            id=workflow_id_for_order(order),
            task_queue=TASK_QUEUE,
        )
        for order in orders
    ]
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    for handle in handles:
        while True:
            state = await handle.query(QUERY_STATE, result_type=PaymentState)
            if state is not None and state.status == "AUTHORIZED":
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"payment stuck in {state.status if state else None}")
            await asyncio.sleep(0.1)
    return orders


async def bench(args: argparse.Namespace, api_url: str, temporal_address: str) -> None:
    orders = await open_payments(temporal_address, args.payments)
    warmup = [event_body(orders[index % len(orders)]) for index in range(WARMUP_EVENTS)]
    await post_all(api_url, warmup, args.concurrency)
    bodies = [event_body(orders[index % len(orders)]) for index in range(args.events)]
    elapsed, latencies, codes = await post_all(api_url, bodies, args.concurrency)
    report("verified + stored + signalled", elapsed, latencies, codes)
    elapsed, latencies, codes = await post_all(api_url, bodies, args.concurrency)
    report("duplicates (verified, stopped)", elapsed, latencies, codes)
    unsignalled = [event_body(orders[index % len(orders)], "charge.updated") for index in range(args.events)]
    elapsed, latencies, codes = await post_all(api_url, unsignalled, args.concurrency)
    report("routed, not signalled (charge.updated)", elapsed, latencies, codes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--payments", type=int, default=64)
    parser.add_argument("--serve-api", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_api is not None:
        serve_api(args.serve_api)
        return

    from temporalio.testing import WorkflowEnvironment

    from workflows.search_attributes import ALL_SEARCH_ATTRIBUTES

    work = Path(tempfile.mkdtemp(prefix="penny-bench-webhooks-"))
    postgres = EmbeddedPostgres(data_dir=work / "postgres", port=free_port(), log_path=work / "postgres.log")
    postgres.start()
    children: list[subprocess.Popen[bytes]] = []

    async def run() -> None:
        environment_server = await WorkflowEnvironment.start_local(
            dev_server_existing_path=str(temporal_binary()),
            search_attributes=ALL_SEARCH_ATTRIBUTES,
            dev_server_log_level="error",
            dev_server_extra_args=["--dynamic-config-value", "frontend.enableUpdateWorkflowExecution=true"],
        )
        try:
            temporal_address = environment_server.client.service_client.config.target_host
            emulator_port, api_port = free_port(), free_port()
            environment = {
                **os.environ,
                "PENNY_ENV": "test",
                "DATABASE_URL": postgres.url("penny"),
                "TEMPORAL_ADDRESS": temporal_address,
                "TEMPORAL_TASK_QUEUE": TASK_QUEUE,
                "STRIPE_API_BASE": f"http://127.0.0.1:{emulator_port}",
                "STRIPE_WEBHOOK_SECRETS": SECRET,
                "PENNY_EMULATOR_SQLITE_PATH": "",
                "PENNY_EMULATOR_DB": "",
                "PYTHONPATH": str(ROOT),
            }
            emulator = [sys.executable, "-m", "uvicorn", "stripe_emulator.app:app", "--host", "127.0.0.1"]
            children.append(spawn([*emulator, "--port", str(emulator_port)], environment, work / "emulator.log"))
            children.append(spawn([sys.executable, "worker.py"], environment, work / "worker.log"))
            api = [sys.executable, str(Path(__file__).resolve()), "--serve-api", str(api_port)]
            children.append(spawn(api, environment, work / "api.log"))
            if not wait_for_port("127.0.0.1", emulator_port, STARTUP_TIMEOUT_SECONDS):
                raise SystemExit("the emulator did not start")
            await asyncio.to_thread(wait_http, f"http://127.0.0.1:{api_port}/healthz")
            print(f"stack up (logs in {work}); {args.events} events at concurrency {args.concurrency}", flush=True)
            await bench(args, f"http://127.0.0.1:{api_port}", temporal_address)
        finally:
            for child in children:
                child.terminate()
            for child in children:
                try:
                    child.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    child.kill()
            await environment_server.shutdown()

    try:
        postgres.ensure_database("penny")
        migrate(postgres.url("penny"))
        asyncio.run(run())
    finally:
        postgres.stop()


if __name__ == "__main__":
    main()
