"""Schemathesis against the API's own /openapi.json, on the real stack: for a bounded number
of generated requests per operation, no 5xx, and every response (status, content type, body)
matches the documented schema.

The API runs under uvicorn on the test's event loop (it shares the loop with the database
and Temporal clients); schemathesis is synchronous, so it runs in a thread against the real
HTTP port.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import hypothesis
import pytest_asyncio
import schemathesis
import uvicorn
from hypothesis import HealthCheck, Phase
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from penny.services import free_port
from tests.payment_fixtures import FAST_TIMINGS, PaymentStack
from tests.test_api_support import new_key

EXAMPLES_PER_OPERATION_MAX = 30
SERVER_START_TIMEOUT_SECONDS = 10.0
SERVER_POLL_SECONDS = 0.02
OPERATIONS = [
    ("/v1/payments", "POST"),
    ("/v1/payments", "GET"),
    ("/v1/payments/{payment_id}", "GET"),
    ("/v1/payments/{payment_id}/events", "GET"),
]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest_asyncio.fixture(loop_scope="session")
async def served_api(payment_stack: PaymentStack) -> AsyncIterator[str]:
    port = free_port()
    app = create_app(payment_stack.settings, temporal_client=payment_stack.client, payment_timings=FAST_TIMINGS)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on")
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


def _fuzz_operation(operation: Any, label: str, base_url: str, api_key: str, seen: Counter[str]) -> None:
    @hypothesis.settings(
        max_examples=EXAMPLES_PER_OPERATION_MAX,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(case=operation.as_strategy())
    def check(case: schemathesis.Case) -> None:
        response = case.call(base_url=base_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=60)
        seen[f"{label} {response.status_code}"] += 1
        if response.status_code >= 400:
            seen[f"{label} {response.json()['error']['code']}"] += 1
        case.validate_response(response, checks=CHECKS)

    check()


def _fuzz(base_url: str, api_key: str) -> Counter[str]:
    """Returns how many responses each (operation, status) got, so the test can show it ran."""
    seen: Counter[str] = Counter()
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    for path, method in OPERATIONS:
        _fuzz_operation(schema[path][method], f"{method} {path}", base_url, api_key, seen)
    return seen


async def test_schemathesis_finds_no_5xx_and_no_schema_violation(served_api: str, payment_stack: PaymentStack) -> None:
    api_key = await new_key(payment_stack.engine, payment_stack.settings)
    seen = await asyncio.to_thread(_fuzz, served_api, api_key)
    print(dict(seen))
    assert seen["POST /v1/payments 200"] > 0, seen  # some generated payments really ran
    assert sum(seen.values()) >= len(OPERATIONS) * 10
