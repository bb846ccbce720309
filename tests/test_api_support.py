"""Shared helpers for the API tests (no tests here): an in-process app with its lifespan, an
httpx client over ASGI, API keys, and request bodies."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import uvicorn
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from api.app import create_app
from penny.cli import build_parser
from penny.keys import create_api_key
from penny.services import HTTP_KEEP_ALIVE_SECONDS, free_port
from penny.settings import Settings
from workflows.payment_models import PaymentTimings

SERVER_START_TIMEOUT_SECONDS = 10.0
SERVER_POLL_SECONDS = 0.02
PAN_VISA = "4242424242424242"
PAN_FORMS = ("4242424242424242", "4242 4242 4242 4242", "4242-4242-4242-4242", "4000056655665556", "378282246310005")


@asynccontextmanager
async def api_client(
    settings: Settings, temporal_client: Client | None = None, payment_timings: PaymentTimings | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, temporal_client=temporal_client, payment_timings=payment_timings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            yield client


@asynccontextmanager
async def served_api_url(
    settings: Settings, temporal_client: Client | None = None, payment_timings: PaymentTimings | None = None
) -> AsyncIterator[str]:
    """The app served by uvicorn on a free local port (real HTTP, real sockets): its base URL."""
    port = free_port()
    app = create_app(settings, temporal_client=temporal_client, payment_timings=payment_timings)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_keep_alive=HTTP_KEEP_ALIVE_SECONDS,  # as `penny api` runs it
        )
    )
    serving = asyncio.create_task(server.serve())
    for _ in range(int(SERVER_START_TIMEOUT_SECONDS / SERVER_POLL_SECONDS)):
        if server.started:
            break
        await asyncio.sleep(SERVER_POLL_SECONDS)
    assert server.started, "the API did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await serving


async def new_key(engine: AsyncEngine, settings: Settings, role: str = "merchant") -> str:
    async with engine.begin() as connection:
        return await create_api_key(connection, role, f"test {role}", pepper=settings.api_key_pepper)


def auth(key: str, idempotency_key: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {key}"}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    return headers


def payment_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "order_id": f"order_{uuid.uuid4().hex[:12]}",
        "amount": 10000,
        "currency": "usd",
        "customer": f"cus_{uuid.uuid4().hex[:10]}",
        "payment_method": "pm_card_visa",
        "recipients": [{"account_id": f"acct_{uuid.uuid4().hex[:10]}", "share_bps": 10000}],
        "application_fee_bps": 1000,
        "metadata": {"cart": "c_1"},
    }
    body.update(overrides)
    return body


def error_of(response: httpx.Response) -> dict[str, Any]:
    payload = response.json()
    assert set(payload) == {"error"}, payload
    assert set(payload["error"]) == {"type", "code", "message", "param", "doc_url"}, payload
    assert payload["error"]["doc_url"] == f"README.md#error-{payload['error']['code']}", payload
    return payload["error"]  # type: ignore[no-any-return]


async def run_cli(settings: Settings, *argv: str) -> int:
    """`penny <argv>` in-process (its own event loop, in a thread, as from a shell), on the test stack."""
    args = build_parser().parse_args(list(argv))
    return await asyncio.to_thread(args.handler, args, settings)  # type: ignore[no-any-return]
