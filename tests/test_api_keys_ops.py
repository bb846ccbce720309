"""API keys in operation: every /v1 route checks the key's role, revoked keys are refused, key
use is recorded at most once a minute, and `penny keys list` / `penny keys revoke` work on the
real database. No payment worker runs: every request here is answered before a workflow would
start (a refusal, a validation error or a missing resource)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime

import httpx
import pytest
import pytest_asyncio
from fastapi.routing import iter_route_contexts
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from api.app import create_app
from penny.cli import build_parser
from penny.keys import find_api_key
from penny.settings import Settings
from tests.test_api_support import api_client, auth, error_of, new_key

MERCHANT = frozenset({"merchant"})
OPS = frozenset({"ops"})
BOTH = MERCHANT | OPS
ROLES = ("merchant", "ops")
# Who may call each /v1 route. A route missing here fails the test: add it with its roles.
ROUTE_ROLES: dict[tuple[str, str], frozenset[str]] = {
    ("POST", "/v1/payments"): MERCHANT,
    ("GET", "/v1/payments"): BOTH,
    ("GET", "/v1/payments/{payment_id}"): BOTH,
    ("GET", "/v1/payments/{payment_id}/events"): BOTH,
    ("GET", "/v1/payments/{payment_id}/ledger"): BOTH,
    ("POST", "/v1/payments/{payment_id}/capture"): MERCHANT,
    ("POST", "/v1/payments/{payment_id}/cancel"): MERCHANT,
    ("POST", "/v1/payments/{payment_id}/refunds"): MERCHANT,
    ("GET", "/v1/payments/{payment_id}/refunds"): BOTH,
    ("GET", "/v1/refunds/{refund_id}"): BOTH,
    ("GET", "/v1/ledger/accounts"): OPS,
    ("GET", "/v1/ledger/accounts/{code}"): OPS,
    ("GET", "/v1/reviews"): OPS,
    ("GET", "/v1/reviews/{review_id}"): OPS,
    ("POST", "/v1/reviews/{review_id}/resolve"): OPS,
    ("POST", "/v1/webhook_endpoints"): OPS,
    ("GET", "/v1/webhook_endpoints"): OPS,
    ("GET", "/v1/webhook_endpoints/{endpoint_id}"): OPS,
    ("POST", "/v1/webhook_endpoints/{endpoint_id}"): OPS,
    ("DELETE", "/v1/webhook_endpoints/{endpoint_id}"): OPS,
    ("POST", "/v1/webhook_endpoints/{endpoint_id}/roll_secret"): OPS,
    ("GET", "/v1/webhook_endpoints/{endpoint_id}/deliveries"): OPS,
    ("GET", "/v1/webhook_deliveries/{delivery_id}"): OPS,
    ("POST", "/v1/webhook_deliveries/{delivery_id}/redeliver"): OPS,
    ("POST", "/v1/reconciliation/runs"): OPS,
    ("GET", "/v1/reconciliation/runs"): OPS,
    ("GET", "/v1/reconciliation/runs/{run_id}"): OPS,
    ("GET", "/v1/reconciliation/runs/{run_id}/items"): OPS,
    ("GET", "/v1/reconciliation/runs/{run_id}/items.csv"): OPS,
    ("GET", "/v1/reconciliation/runs/{run_id}/report"): OPS,
}
# Path parameters that pass validation and name nothing that exists.
PATH_VALUES = {
    "payment_id": "pay_" + "q" * 24,
    "refund_id": "rf_" + "q" * 24,
    "code": "platform:fees:usd",
    "review_id": "rev_999999999",
    "endpoint_id": "we_" + "q" * 24,
    "delivery_id": "wd_" + "q" * 24,
    "run_id": "recon_" + "q" * 24,
}
# Bodies valid for the routes that need one, so an allowed role gets past validation.
BODIES = {
    "/v1/reviews/{review_id}/resolve": {"action": "acknowledged", "note": "role check"},
    "/v1/webhook_endpoints": {"url": "https://hooks.example.com/penny", "enabled_events": ["*"]},
}


@pytest.fixture
def settings(database_url: str, temporal_client: Client, task_queue: str) -> Settings:
    return Settings(
        env="test",
        database_url=database_url,
        temporal_address=temporal_client.service_client.config.target_host,
        temporal_namespace=temporal_client.namespace,
        temporal_task_queue=task_queue,
    )


@pytest_asyncio.fixture(loop_scope="session")
async def http(settings: Settings, temporal_client: Client) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(settings, temporal_client) as client:
        yield client


def v1_routes(settings: Settings) -> set[tuple[str, str]]:
    """Every (method, path) the app serves under /v1, through included routers too (FastAPI keeps
    an included router as one entry of `app.routes`; `iter_route_contexts` flattens them, with
    their prefixes, as FastAPI's own OpenAPI generation does), documented in the schema or not."""
    app = create_app(settings)
    return {
        (method, route.path)
        for route in iter_route_contexts(app.routes)
        if route.path is not None and route.path.startswith("/v1")
        for method in route.methods or ()
    }


async def call(http: httpx.AsyncClient, method: str, path: str, key: str | None) -> httpx.Response:
    url = path.format(**PATH_VALUES)
    headers = auth(key, "role-check") if key is not None else {"Idempotency-Key": "role-check"}
    if method == "POST":
        return await http.post(url, json=BODIES.get(path, {}), headers=headers)
    if method == "DELETE":
        return await http.delete(url, headers=headers)
    return await http.get(url, headers=headers)


async def test_every_v1_route_refuses_the_roles_that_must_not_call_it(
    http: httpx.AsyncClient, engine: AsyncEngine, settings: Settings
) -> None:
    assert v1_routes(settings) == set(ROUTE_ROLES), "a /v1 route was added or removed: list it in ROUTE_ROLES"
    keys = {role: await new_key(engine, settings, role) for role in ROLES}
    for (method, path), allowed in sorted(ROUTE_ROLES.items()):
        anonymous = await call(http, method, path, None)
        assert anonymous.status_code == 401, (method, path)
        assert error_of(anonymous)["code"] == "api_key_missing"
        for role in ROLES:
            response = await call(http, method, path, keys[role])
            if role in allowed:
                assert response.status_code not in (401, 403), (method, path, role, response.text)
            else:
                assert response.status_code == 403, (method, path, role, response.text)
                assert error_of(response) | {"message": ""} == {
                    "type": "permission_error",
                    "code": "insufficient_role",
                    "message": "",
                    "param": None,
                    "doc_url": "README.md#error-insufficient_role",
                }


async def last_used(engine: AsyncEngine, key_id: str) -> datetime | None:
    async with engine.connect() as connection:
        return (  # type: ignore[no-any-return]
            await connection.execute(text("SELECT last_used_at FROM api_keys WHERE id = :id"), {"id": key_id})
        ).scalar_one()


async def test_key_use_is_recorded_at_most_once_a_minute(
    http: httpx.AsyncClient, engine: AsyncEngine, settings: Settings, temporal_client: Client
) -> None:
    key = await new_key(engine, settings, "ops")
    async with engine.connect() as connection:
        found = await find_api_key(connection, settings.api_key_pepper, key)
    assert found is not None
    assert await last_used(engine, found.id) is None
    assert (await http.get("/v1/payments", headers=auth(key))).status_code == 200
    first = await last_used(engine, found.id)
    assert first is not None
    assert (await http.get("/v1/payments", headers=auth(key))).status_code == 200
    assert await last_used(engine, found.id) == first
    # Another API process (a fresh app) writes only once the minute has passed.
    async with engine.begin() as connection:
        await connection.execute(
            text("UPDATE api_keys SET last_used_at = now() - interval '30 seconds' WHERE id = :id"), {"id": found.id}
        )
    recent = await last_used(engine, found.id)
    async with api_client(settings, temporal_client) as other:
        assert (await other.get("/v1/payments", headers=auth(key))).status_code == 200
    assert await last_used(engine, found.id) == recent
    async with engine.begin() as connection:
        await connection.execute(
            text("UPDATE api_keys SET last_used_at = now() - interval '2 minutes' WHERE id = :id"), {"id": found.id}
        )
    stale = await last_used(engine, found.id)
    assert stale is not None
    async with api_client(settings, temporal_client) as other:
        assert (await other.get("/v1/payments", headers=auth(key))).status_code == 200
    refreshed = await last_used(engine, found.id)
    assert refreshed is not None and (refreshed - stale).total_seconds() >= 110


async def run_cli(settings: Settings, *argv: str) -> int:
    """`penny <argv>` in-process (its own event loop, in a thread, as from a shell), on the test database."""
    args = build_parser().parse_args(list(argv))
    return await asyncio.to_thread(args.handler, args, settings)  # type: ignore[no-any-return]


def key_line(output: str, key_id: str) -> list[str]:
    [line] = [line for line in output.splitlines() if line.startswith(key_id + " ")]
    return line.split("  ")


async def test_cli_lists_and_revokes_keys_and_a_revoked_key_is_401(
    http: httpx.AsyncClient, engine: AsyncEngine, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    key = await new_key(engine, settings, "merchant")
    async with engine.connect() as connection:
        found = await find_api_key(connection, settings.api_key_pepper, key)
    assert found is not None
    assert (await http.get("/v1/payments", headers=auth(key))).status_code == 200
    capsys.readouterr()

    assert await run_cli(settings, "keys", "list") == 0
    listed = capsys.readouterr().out
    assert listed.splitlines()[0].split() == ["ID", "NAME", "ROLE", "PREFIX", "CREATED", "LAST", "USED", "REVOKED"]
    columns = [column.strip() for column in key_line(listed, found.id) if column.strip()]
    assert columns[:4] == [found.id, "test merchant", "merchant", key[:13] + "…"]
    assert columns[5] != "-" and columns[6] == "-"  # used, not revoked
    assert key not in listed

    assert await run_cli(settings, "keys", "revoke", found.id) == 0
    assert capsys.readouterr().out.startswith(f"revoked {found.id} (merchant, 'test merchant')")
    refused = await http.get("/v1/payments", headers=auth(key))
    assert refused.status_code == 401
    assert (error_of(refused)["type"], error_of(refused)["code"]) == ("authentication_error", "api_key_invalid")

    assert await run_cli(settings, "keys", "list") == 0
    columns = [column.strip() for column in key_line(capsys.readouterr().out, found.id) if column.strip()]
    assert columns[6] != "-"
    assert await run_cli(settings, "keys", "revoke", found.id) == 1
    assert capsys.readouterr().err.startswith(f"penny: {found.id} was already revoked at ")
    assert await run_cli(settings, "keys", "revoke", "key_ffffffffffffffff") == 1
    assert capsys.readouterr().err.startswith("penny: no API key key_ffffffffffffffff")
