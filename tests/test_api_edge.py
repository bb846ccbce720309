"""The HTTP edge without a payment worker: authentication, validation limits, card-data
refusal, Stripe-shaped errors, body limits and the OpenAPI document. Nothing here reaches
the workflow: every request is refused (or answered) before it would start one."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from api.models import METADATA_KEYS_MAX, SPLITS_MAX
from penny.keys import hash_api_key
from penny.settings import Settings
from tests.test_api_support import PAN_FORMS, PAN_VISA, api_client, auth, error_of, new_key, payment_body


@pytest.fixture
def settings(database_url: str, temporal_client: Client, task_queue: str) -> Settings:
    return Settings(
        env="test",
        database_url=database_url,
        temporal_address=temporal_client.service_client.config.target_host,
        temporal_namespace=temporal_client.namespace,
        temporal_task_queue=task_queue,
        max_amount_minor=1_000_000,
        supported_currencies="USD,EUR,JPY",
        max_body_bytes=4096,
    )


@pytest_asyncio.fixture(loop_scope="session")
async def http(settings: Settings, temporal_client: Client) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(settings, temporal_client) as client:
        yield client


@pytest_asyncio.fixture(loop_scope="session")
async def merchant(engine: AsyncEngine, settings: Settings) -> str:
    return await new_key(engine, settings, "merchant")


@pytest_asyncio.fixture(loop_scope="session")
async def ops(engine: AsyncEngine, settings: Settings) -> str:
    return await new_key(engine, settings, "ops")


async def _post(http: httpx.AsyncClient, key: str, body: Any, idempotency_key: str = "k-1") -> httpx.Response:
    return await http.post("/v1/payments", json=body, headers=auth(key, idempotency_key))


# ----------------------------------------------------------------------------- authentication


async def test_missing_key_is_401(http: httpx.AsyncClient) -> None:
    response = await http.get("/v1/payments")
    assert response.status_code == 401
    assert error_of(response)["type"] == "authentication_error"
    assert error_of(response)["code"] == "api_key_missing"
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("header", ["Bearer sk_penny_not-a-real-key", "Basic dXNlcjpwYXNz", "Bearer ", "sk_penny_x"])
async def test_wrong_key_is_401(http: httpx.AsyncClient, header: str) -> None:
    response = await http.get("/v1/payments", headers={"Authorization": header})
    assert response.status_code == 401
    assert error_of(response)["type"] == "authentication_error"


async def test_revoked_key_is_401(http: httpx.AsyncClient, engine: AsyncEngine, settings: Settings) -> None:
    key = await new_key(engine, settings)
    assert (await http.get("/v1/payments", headers=auth(key))).status_code == 200
    async with engine.begin() as connection:
        await connection.execute(
            text("UPDATE api_keys SET revoked_at = now() WHERE key_hash = :hash"),
            {"hash": hash_api_key(settings.api_key_pepper, key)},
        )
    assert (await http.get("/v1/payments", headers=auth(key))).status_code == 401


async def test_roles(http: httpx.AsyncClient, engine: AsyncEngine, settings: Settings) -> None:
    merchant = await new_key(engine, settings, "merchant")
    ops = await new_key(engine, settings, "ops")
    # Both roles read payments.
    assert (await http.get("/v1/payments", headers=auth(merchant))).status_code == 200
    assert (await http.get("/v1/payments", headers=auth(ops))).status_code == 200
    # Only ops reads the platform's books.
    forbidden = await http.get("/v1/ledger/accounts", headers=auth(merchant))
    assert forbidden.status_code == 403 and error_of(forbidden)["type"] == "permission_error"
    assert (await http.get("/v1/ledger/accounts", headers=auth(ops))).status_code == 200
    # Only merchants create payments.
    refused = await _post(http, ops, payment_body())
    assert refused.status_code == 403 and error_of(refused)["code"] == "insufficient_role"


# ----------------------------------------------------------------------------- idempotency key


async def test_post_without_idempotency_key_is_400(
    http: httpx.AsyncClient, engine: AsyncEngine, settings: Settings
) -> None:
    key = await new_key(engine, settings)
    response = await http.post("/v1/payments", json=payment_body(), headers=auth(key))
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "idempotency_key_missing" and error["param"] == "Idempotency-Key"
    assert "Idempotency-Key" in error["message"]


async def test_idempotency_key_over_255_is_400(
    http: httpx.AsyncClient, engine: AsyncEngine, settings: Settings
) -> None:
    key = await new_key(engine, settings)
    response = await _post(http, key, payment_body(), idempotency_key="k" * 256)
    assert response.status_code == 400
    assert error_of(response)["code"] == "idempotency_key_invalid"


# ----------------------------------------------------------------------------- validation limits

LIMIT_CASES: list[tuple[dict[str, Any], str, str]] = [
    ({"amount": 0}, "amount", "amount_too_small"),
    ({"amount": -5}, "amount", "amount_too_small"),
    ({"amount": 1_000_001}, "amount", "amount_too_large"),
    ({"amount": "100"}, "amount", "parameter_invalid_integer"),
    ({"amount": 10.5}, "amount", "parameter_invalid_integer"),
    ({"currency": "XXX"}, "currency", "currency_not_supported"),
    ({"currency": "GBP"}, "currency", "currency_not_supported"),
    ({"currency": "us"}, "currency", "parameter_invalid"),
    ({"order_id": ""}, "order_id", "parameter_invalid"),
    ({"order_id": "o" * 101}, "order_id", "parameter_invalid"),
    ({"order_id": "order 1"}, "order_id", "parameter_invalid"),
    ({"order_id": "order/1"}, "order_id", "parameter_invalid"),
    ({"customer": "c" * 101}, "customer", "parameter_invalid"),
    ({"customer": "cus<script>"}, "customer", "parameter_invalid"),
    ({"payment_method": "card_4"}, "payment_method", "parameter_invalid"),
    ({"capture_method": "later"}, "capture_method", "parameter_invalid"),
    ({"metadata": {f"k{i}": "v" for i in range(METADATA_KEYS_MAX + 1)}}, "metadata", "parameter_invalid"),
    ({"metadata": {"k" * 41: "v"}}, "metadata[" + "k" * 41 + "]", "parameter_invalid"),
    ({"metadata": {"k": "v" * 501}}, "metadata[k]", "parameter_invalid"),
    ({"metadata": {"k": 5}}, "metadata[k]", "parameter_invalid"),
    ({"metadata": {"a[b]": "v"}}, "metadata[a[b]]", "parameter_invalid"),
    ({"metadata": {"": "v"}}, "metadata[]", "parameter_invalid"),
    ({"recipients": []}, "recipients", "parameter_invalid"),
    (
        {"recipients": [{"account_id": f"acct_{i}", "amount": 1} for i in range(SPLITS_MAX + 1)]},
        "recipients",
        "parameter_invalid",
    ),
    ({"recipients": [{"account_id": "acct_1", "share_bps": -1}]}, "recipients[0][share_bps]", "parameter_invalid"),
    ({"recipients": [{"account_id": "acct_1", "share_bps": 10001}]}, "recipients[0][share_bps]", "parameter_invalid"),
    (
        {"recipients": [{"account_id": "acct_1", "share_bps": 6000}, {"account_id": "acct_2", "share_bps": 6000}]},
        "recipients",
        "parameter_invalid",
    ),
    ({"recipients": [{"account_id": "acct_1", "share_bps": 5000}]}, "recipients", "parameter_invalid"),
    (
        {"recipients": [{"account_id": "acct_1", "share_bps": 5000, "amount": 5}]},
        "recipients[0][amount]",
        "parameter_ambiguous",
    ),
    ({"recipients": [{"account_id": "acct_1"}]}, "recipients[0][amount]", "parameter_missing_one_of"),
    (
        {"recipients": [{"account_id": "acct_1", "share_bps": 5000}, {"account_id": "acct_1", "share_bps": 5000}]},
        "recipients",
        "parameter_invalid",
    ),
    ({"recipients": [{"account_id": "bob", "share_bps": 10000}]}, "recipients[0][account_id]", "parameter_invalid"),
    ({"recipients": [{"account_id": "acct_1", "amount": 20000}]}, "recipients", "parameter_invalid"),
    ({"recipients": [{"account_id": "acct_1", "amount": 0}]}, "recipients[0][amount]", "parameter_invalid"),
    ({"application_fee_bps": -1}, "application_fee_bps", "parameter_invalid"),
    ({"application_fee_bps": 10001}, "application_fee_bps", "parameter_invalid"),
    ({"application_fee_bps": 12.5}, "application_fee_bps", "parameter_invalid_integer"),
    ({"tax_amount": -1}, "tax_amount", "parameter_invalid"),
    ({"tax_amount": 10001}, "tax_amount", "parameter_invalid"),
    ({"tax_amount": 1.5}, "tax_amount", "parameter_invalid_integer"),
    # Renamed before the first release: a 400 naming the old parameter and its replacement.
    ({"platform_fee": 1000}, "platform_fee", "parameter_renamed"),
    ({"tax": 0}, "tax", "parameter_renamed"),
    ({"splits": [{"account_id": "acct_1", "share_bps": 10000}]}, "splits", "parameter_renamed"),
    ({"unknown_field": 1}, "unknown_field", "parameter_unknown"),
    ({"description": "nul \x00 byte"}, "description", "parameter_invalid"),
    ({"metadata": {"k": "nul \x00"}}, "metadata[k]", "parameter_invalid"),
]


@pytest.mark.parametrize(("overrides", "param", "code"), LIMIT_CASES)
async def test_every_limit_is_enforced_with_its_param(
    http: httpx.AsyncClient, merchant: str, overrides: dict[str, Any], param: str, code: str
) -> None:
    response = await _post(http, merchant, payment_body(**overrides))
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert (error["param"], error["code"]) == (param, code), error
    assert error["type"] == "invalid_request_error"


RENAMED = [
    (
        "platform_fee",
        499,
        "platform_fee was replaced by application_fee_bps: the platform fee's rate, in basis "
        "points of amount net of tax_amount (1000 is 10 %).",
    ),
    ("tax", 100, "tax was replaced by tax_amount: tax in minor units, included in amount."),
    (
        "splits",
        [],
        "splits was replaced by recipients: the recipients, each with amount (minor units) or "
        "share_bps (basis points).",
    ),
]


@pytest.mark.parametrize(("old", "value", "message"), RENAMED)
async def test_an_old_field_name_says_what_replaced_it(
    http: httpx.AsyncClient, merchant: str, old: str, value: object, message: str
) -> None:
    # The case: `platform_fee: 499` on 4999 was read as 4.99 % (249), not as 4.99 USD.
    body = payment_body(amount=4999)
    del body["application_fee_bps"]
    response = await _post(http, merchant, {**body, old: value})
    assert response.status_code == 400
    error = error_of(response)
    assert (error["type"], error["code"], error["param"], error["message"]) == (
        "invalid_request_error",
        "parameter_renamed",
        old,
        message,
    )


async def test_a_fee_in_minor_units_is_refused_never_read_as_a_rate(http: httpx.AsyncClient, merchant: str) -> None:
    body = payment_body(amount=4999)
    del body["application_fee_bps"]
    alone = error_of(await _post(http, merchant, {**body, "application_fee_amount": 499}, "k-fee-1"))
    assert (alone["code"], alone["param"]) == ("parameter_unsupported", "application_fee_amount")
    assert "application_fee_bps" in alone["message"]
    both = error_of(
        await _post(http, merchant, {**body, "application_fee_amount": 499, "application_fee_bps": 998}, "k-fee-2")
    )
    assert (both["code"], both["param"]) == ("parameter_ambiguous", "application_fee_amount")


async def test_a_rate_out_of_the_basis_point_range_says_its_unit(http: httpx.AsyncClient, merchant: str) -> None:
    # 20000 looks like an amount (200.00) given as a rate: refused with the unit spelled out.
    error = error_of(await _post(http, merchant, payment_body(application_fee_bps=20000)))
    assert (error["code"], error["param"]) == ("parameter_invalid", "application_fee_bps")
    assert "basis points, 0 to 10000" in error["message"]
    share = payment_body(recipients=[{"account_id": "acct_1", "share_bps": 25000}])
    error = error_of(await _post(http, merchant, share, "k-share"))
    assert (error["code"], error["param"]) == ("parameter_invalid", "recipients[0][share_bps]")
    assert "for a fixed sum give amount (minor units)" in error["message"]
    tax = error_of(await _post(http, merchant, payment_body(amount=5000, tax_amount=5001), "k-tax"))
    assert (tax["code"], tax["param"]) == ("parameter_invalid", "tax_amount")


async def test_missing_param_is_named(http: httpx.AsyncClient, merchant: str) -> None:
    body = payment_body()
    del body["amount"]
    error = error_of(await _post(http, merchant, body))
    assert (error["code"], error["param"]) == ("parameter_missing", "amount")


async def test_invalid_json_is_400(http: httpx.AsyncClient, merchant: str) -> None:
    response = await http.post(
        "/v1/payments", content=b"{not json", headers={**auth(merchant, "k"), "Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert error_of(response)["code"] == "body_invalid"


async def test_body_over_the_limit_is_413(http: httpx.AsyncClient, merchant: str) -> None:
    body = payment_body(description="x" * 5000)
    response = await _post(http, merchant, body)
    assert response.status_code == 413
    assert error_of(response)["code"] == "request_too_large"


async def test_streamed_body_over_the_limit_is_413(http: httpx.AsyncClient, merchant: str) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 1000

    response = await http.post(
        "/v1/payments", content=chunks(), headers={**auth(merchant, "k"), "Content-Type": "application/json"}
    )
    assert response.status_code == 413


# ----------------------------------------------------------------------------- errors everywhere


async def test_unknown_url_is_a_stripe_404(http: httpx.AsyncClient) -> None:
    response = await http.get("/v1/nothing-here")
    assert response.status_code == 404 and error_of(response)["code"] == "resource_missing"


async def test_unknown_payment_is_404(http: httpx.AsyncClient, merchant: str) -> None:
    for path in ("/v1/payments/pay_missing", "/v1/payments/pay_missing/events", "/v1/payments/pay_missing/ledger"):
        response = await http.get(path, headers=auth(merchant))
        assert response.status_code == 404, path
        assert error_of(response)["code"] == "resource_missing"
    capture = await http.post("/v1/payments/pay_missing/capture", headers=auth(merchant, "cap-1"))
    assert capture.status_code == 404


async def test_unknown_account_is_404(http: httpx.AsyncClient, ops: str) -> None:
    response = await http.get("/v1/ledger/accounts/nobody:payable", headers=auth(ops))
    assert response.status_code == 404 and error_of(response)["param"] == "code"


async def test_wrong_method_is_405(http: httpx.AsyncClient, merchant: str) -> None:
    response = await http.delete("/v1/payments", headers=auth(merchant))
    assert response.status_code == 405 and error_of(response)["code"] == "method_not_allowed"


async def test_bad_query_params_are_named(http: httpx.AsyncClient, merchant: str) -> None:
    for query, param in (
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("status=bogus", "status"),
        ("created[gte]=x", "created[gte]"),
        ("starting_after=pay_nope", "starting_after"),
        ("customer=a%00b", "customer"),
        ("starting_after=pay%00", "starting_after"),
    ):
        response = await http.get(f"/v1/payments?{query}", headers=auth(merchant))
        assert response.status_code == 400, query
        assert error_of(response)["param"] == param, query


# ----------------------------------------------------------------------------- card data


def _pan_cases() -> list[tuple[str, str, Any]]:
    """(description, where, payload): the PAN in every place a request can carry it."""
    cases: list[tuple[str, str, Any]] = []
    for pan in PAN_FORMS:
        cases += [
            (f"metadata value {pan!r}", "body", payment_body(metadata={"note": f"card {pan}"})),
            (f"metadata key {pan!r}", "body", payment_body(metadata={pan: "x"})),
            (f"order_id {pan!r}", "body", payment_body(order_id=pan.replace(" ", "-"))),
            (f"customer {pan!r}", "body", payment_body(customer=pan)),
            (f"payment_method {pan!r}", "body", payment_body(payment_method=pan)),
            (f"description {pan!r}", "body", payment_body(description=pan)),
            (
                f"split role {pan!r}",
                "body",
                payment_body(recipients=[{"account_id": "acct_1", "share_bps": 10000, "role": pan}]),
            ),
        ]
    cases += [
        ("amount as a number", "body", payment_body(amount=int(PAN_VISA))),
        ("card_number field", "body", payment_body(card_number="x")),
        ("card object", "body", payment_body(card={"number": "x", "exp_month": 12, "cvc": "123"})),
        ("cvc field", "body", payment_body(cvc="123")),
        ("exp_year in metadata", "body", payment_body(metadata={"exp_year": "2030"})),
        ("unicode-escaped digits", "raw", b'{"metadata": {"n": "\\u0034242424242424242"}}'),
        ("query value", "query", f"/v1/payments?customer={PAN_VISA}"),
        ("query value with spaces", "query", "/v1/payments?customer=4242%204242%204242%204242"),
        ("query name", "query", "/v1/payments?card_number=1"),
        ("path", "path", f"/v1/payments/{PAN_VISA}"),
        ("idempotency key", "key", PAN_VISA),
    ]
    return cases


@pytest.mark.parametrize(("description", "where", "payload"), _pan_cases(), ids=lambda value: str(value)[:40])
async def test_card_data_is_refused_and_never_echoed_or_logged(
    http: httpx.AsyncClient, merchant: str, caplog: pytest.LogCaptureFixture, description: str, where: str, payload: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the test client logs its own URLs
    if where == "body":
        response = await _post(http, merchant, payload)
    elif where == "raw":
        response = await http.post(
            "/v1/payments", content=payload, headers={**auth(merchant, "k"), "Content-Type": "application/json"}
        )
    elif where == "key":
        response = await _post(http, merchant, payment_body(), idempotency_key=payload)
    else:
        response = await http.get(payload, headers=auth(merchant))
    assert response.status_code == 400, (description, response.text)
    assert error_of(response)["code"] == "card_data_not_allowed"
    digits = [pan.replace(" ", "").replace("-", "") for pan in PAN_FORMS]
    for pan in [*PAN_FORMS, *digits]:
        assert pan not in response.text
        assert all(pan not in record.getMessage() for record in caplog.records), description
    assert any("card data" in record.getMessage() for record in caplog.records)


async def test_card_data_is_refused_even_without_a_key(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/payments", json=payment_body(metadata={"n": PAN_VISA}))
    assert response.status_code == 400 and error_of(response)["code"] == "card_data_not_allowed"


async def test_card_data_rejections_are_counted(http: httpx.AsyncClient, merchant: str) -> None:
    await _post(http, merchant, payment_body(metadata={"n": PAN_VISA}))
    metrics = (await http.get("/metrics")).text
    assert 'penny_api_card_data_rejections_total{location="body"}' in metrics
    assert "penny_api_requests_total{" in metrics and 'route="/v1/payments"' in metrics


async def test_no_pan_reaches_the_database(engine: AsyncEngine) -> None:
    """After every refused request above, no row anywhere holds a card number (full scan)."""
    async with engine.connect() as connection:
        tables = (
            await connection.execute(
                text("SELECT schemaname, tablename FROM pg_tables WHERE schemaname IN ('public', 'ledger')")
            )
        ).all()
        for table in tables:
            dump = await connection.execute(text(f'SELECT t::text FROM "{table.schemaname}"."{table.tablename}" t'))
            for (row,) in dump:
                assert PAN_VISA not in row and "4242 4242" not in row, table.tablename


# ----------------------------------------------------------------------------- OpenAPI


async def test_openapi_documents_errors_and_the_idempotency_header(http: httpx.AsyncClient) -> None:
    document = (await http.get("/openapi.json")).json()
    create = document["paths"]["/v1/payments"]["post"]
    assert create["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/Payment")
    for status in ("400", "401", "403", "409", "413", "422"):
        assert create["responses"][status]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    header = next(parameter for parameter in create["parameters"] if parameter["name"] == "Idempotency-Key")
    assert header["required"] and header["schema"]["maxLength"] == 255
    assert "HTTPValidationError" not in document["components"]["schemas"]
    assert document["components"]["securitySchemes"]


async def test_openapi_shows_examples_and_every_error_response(http: httpx.AsyncClient) -> None:
    document = (await http.get("/openapi.json")).json()
    for path, operations in document["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, operation in operations.items():
            for status in ("400", "401", "403", "404", "500", "503"):
                example = operation["responses"][status]["content"]["application/json"]["example"]["error"]
                assert example["doc_url"] == f"README.md#error-{example['code']}", (path, method, status)
            if method == "post":
                assert {"409", "422"} <= set(operation["responses"]), (path, method)
    schemas = document["components"]["schemas"]
    create_examples = schemas["PaymentCreate"]["examples"]
    assert all({"application_fee_bps", "recipients"} <= set(example) for example in create_examples)
    assert not any({"platform_fee", "tax", "splits"} & set(example) for example in create_examples)
    assert schemas["Payment"]["examples"][0]["split"]["application_fee_amount"] == 1000
    assert set(schemas["SplitOut"]["properties"]) == {
        "amount",
        "currency",
        "application_fee_amount",
        "tax_amount",
        "recipients",
    }
    assert set(schemas["ErrorDetail"]["properties"]) == {"type", "code", "message", "param", "doc_url"}
    retrieve = document["paths"]["/v1/payments/{payment_id}"]["get"]
    names = {parameter["name"] for parameter in retrieve["parameters"]}
    assert {"expand[]", "Penny-Version"} <= names
