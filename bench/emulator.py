"""Benchmark: PaymentIntent create+confirm against the Stripe emulator at concurrency 32.

    .venv/bin/python bench/emulator.py [--requests 4000] [--concurrency 32]

The emulator runs under uvicorn in a subprocess (so the load generator does not share its
core); the load comes from one httpx.AsyncClient. Two scenarios: `confirm=true` in the create
call (one request per payment) and create then confirm (two requests per payment). Prints
requests/s and p50/p99 latency per request.

httpx.AsyncClient costs more CPU per request than the emulator does, so with one load
process the client is the bottleneck. `--processes N` splits the same total concurrency
over N load processes, and a raw keep-alive asyncio client (`raw`) shows what the server
itself sustains.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from penny.services import free_port, wait_for_port  # noqa: E402

HEADERS = {"Authorization": "Bearer sk_test_bench"}
WARMUP_REQUESTS = 300


def start_server(port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "uvicorn", "stripe_emulator.app:app", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--log-level", "warning", "--no-access-log", "--timeout-keep-alive", "60"]
    environment = {**os.environ, "PENNY_EMULATOR_SQLITE_PATH": "", "PENNY_EMULATOR_DB": ""}
    process = subprocess.Popen(command, cwd=ROOT, env=environment)
    if not wait_for_port("127.0.0.1", port, 15):
        process.kill()
        raise SystemExit("the emulator did not start")
    return process


async def one_call(client: httpx.AsyncClient, index: int) -> list[float]:
    started = time.perf_counter()
    response = await client.post(
        "/v1/payment_intents",
        data={"amount": "1999", "currency": "usd", "payment_method": "pm_card_visa", "confirm": "true",
              "metadata[order_id]": f"bench-{index}"},
        headers={"Idempotency-Key": f"bench-one-{index}-{time.time_ns()}"},
    )  # fmt: skip
    assert response.status_code == 200 and response.json()["status"] == "succeeded", response.text
    return [time.perf_counter() - started]


async def two_calls(client: httpx.AsyncClient, index: int) -> list[float]:
    started = time.perf_counter()
    created = await client.post(
        "/v1/payment_intents",
        data={
            "amount": "1999",
            "currency": "usd",
            "payment_method": "pm_card_visa",
            "metadata[order_id]": f"bench2-{index}",
        },
        headers={"Idempotency-Key": f"bench-create-{index}-{time.time_ns()}"},
    )
    middle = time.perf_counter()
    assert created.status_code == 200, created.text
    confirmed = await client.post(
        f"/v1/payment_intents/{created.json()['id']}/confirm",
        headers={"Idempotency-Key": f"bench-confirm-{index}-{time.time_ns()}"},
    )
    assert confirmed.status_code == 200 and confirmed.json()["status"] == "succeeded", confirmed.text
    return [middle - started, time.perf_counter() - middle]


async def run(base_url: str, scenario, payments: int, concurrency: int) -> tuple[float, list[float]]:  # type: ignore[no-untyped-def]
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(payments):
        queue.put_nowait(index)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, headers=HEADERS, limits=limits, timeout=30) as client:

        async def worker() -> None:
            while not queue.empty():
                latencies.extend(await scenario(client, queue.get_nowait()))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return elapsed, latencies


class RawConnection:
    """HTTP/1.1 keep-alive over a bare asyncio stream: almost no client CPU per request."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader, self.writer, self.host = reader, writer, host

    async def post(self, path: str, body: bytes, key: str) -> tuple[int, bytes]:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer sk_test_bench\r\n"
            f"Idempotency-Key: {key}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        status_line = await self.reader.readline()
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        return int(status_line.split()[1]), await self.reader.readexactly(length)


async def raw_run(port: int, two_step: bool, payments: int, concurrency: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    counter = iter(range(payments))
    create = b"amount=1999&currency=usd&payment_method=pm_card_visa"

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        connection = RawConnection(reader, writer, f"127.0.0.1:{port}")
        for index in counter:
            started = time.perf_counter()
            if not two_step:
                status, body = await connection.post(
                    "/v1/payment_intents", create + b"&confirm=true", f"raw1-{index}-{time.time_ns()}"
                )
                assert status == 200, body
                latencies.append(time.perf_counter() - started)
                continue
            status, body = await connection.post("/v1/payment_intents", create, f"raw2-{index}-{time.time_ns()}")
            middle = time.perf_counter()
            assert status == 200, body
            intent_id = json.loads(body)["id"]
            status, body = await connection.post(
                f"/v1/payment_intents/{intent_id}/confirm", b"", f"raw3-{index}-{time.time_ns()}"
            )
            assert status == 200, body
            latencies.extend([middle - started, time.perf_counter() - middle])
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies


def _httpx_process(
    base_url: str, two_step: bool, payments: int, concurrency: int, results: multiprocessing.Queue
) -> None:  # type: ignore[type-arg]
    results.put(asyncio.run(run(base_url, two_calls if two_step else one_call, payments, concurrency)))


def httpx_processes(
    base_url: str, two_step: bool, payments: int, concurrency: int, processes: int
) -> tuple[float, list[float]]:
    results: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    workers = [
        multiprocessing.Process(
            target=_httpx_process, args=(base_url, two_step, payments // processes, concurrency // processes, results)
        )
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    collected = [results.get() for _ in workers]
    for worker in workers:
        worker.join()
    # The processes ran at the same time: the wall time is the slowest one's.
    return max(elapsed for elapsed, _ in collected), [latency for _, latencies in collected for latency in latencies]


def report(name: str, elapsed: float, latencies: list[float]) -> None:
    ordered = sorted(latencies)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    print(
        f"{name:<46} {len(ordered):>6} requests  {len(ordered) / elapsed:>8.0f} req/s  "
        f"p50 {p50:6.1f} ms  p99 {p99:6.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4_000, help="requests per scenario")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--processes", type=int, default=2, help="httpx load processes for the second run")
    args = parser.parse_args()
    port = free_port()
    server = start_server(port)
    base_url = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(run(base_url, one_call, WARMUP_REQUESTS, args.concurrency))
        print(f"Stripe emulator benchmark: concurrency {args.concurrency}, server in a subprocess (uvicorn, h11)")
        print(f"{'load generator: scenario':<46} {'count':>6}           {'rate':>8}")
        for two_step, label in ((False, "create with confirm=true"), (True, "create, then confirm (2 requests)")):
            payments = args.requests // 2 if two_step else args.requests
            elapsed, latencies = asyncio.run(
                run(base_url, two_calls if two_step else one_call, payments, args.concurrency)
            )
            report(f"httpx x1: {label}", elapsed, latencies)
            elapsed, latencies = httpx_processes(base_url, two_step, payments, args.concurrency, args.processes)
            report(f"httpx x{args.processes}: {label}", elapsed, latencies)
            elapsed, latencies = asyncio.run(raw_run(port, two_step, payments, args.concurrency))
            report(f"raw: {label}", elapsed, latencies)
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
