"""Structured, scrubbed logs: formatters and the record factory on their own, then a payment on
the real stack whose transition lines carry the payment, order and workflow ids."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from penny.logs import (
    SCRUBBED,
    SECRET_SCRUBBED,
    JsonFormatter,
    TextFormatter,
    bind_log_context,
    contains_secret,
    install_record_scrubbing,
    reset_log_context,
)
from tests.payment_fixtures import FAST_TIMINGS, PaymentStack
from tests.test_api_support import api_client, auth, new_key, payment_body
from tests.test_payment_workflow import new_order, start, wait_for_status

# Split so the source holds no card number and no secret that a scanner would flag as real.
CARD = "4242" + "4242" + "4242" + "4242"
API_KEY = "sk_penny_" + "Zx9" * 8
WEBHOOK_SECRET = "whsec_" + "Qw7" * 8


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def collected() -> Iterator[Collect]:
    install_record_scrubbing()
    handler = Collect()
    logger = logging.getLogger("penny.test_logging")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)


def test_every_handler_gets_records_scrubbed_at_creation(collected: Collect) -> None:
    logger = logging.getLogger("penny.test_logging")
    logger.info("card %s key %s secret %s auth Bearer %s", CARD, API_KEY, WEBHOOK_SECRET, API_KEY)
    try:
        raise ValueError(f"the processor echoed {CARD}")
    except ValueError:
        logger.exception("failed with %s", WEBHOOK_SECRET)
    first, second = collected.records
    assert first.getMessage() == (
        f"card {SCRUBBED} key {SECRET_SCRUBBED} secret {SECRET_SCRUBBED} auth {SECRET_SCRUBBED}"
    )
    assert second.getMessage() == f"failed with {SECRET_SCRUBBED}"
    assert second.exc_text is not None and f"the processor echoed {SCRUBBED}" in second.exc_text
    assert CARD not in second.exc_text
    # A plain formatter (any library's handler) shows only scrubbed text.
    shown = logging.Formatter("%(message)s").format(second)
    assert CARD not in shown and WEBHOOK_SECRET not in shown


def test_json_lines_carry_the_bound_ids(collected: Collect) -> None:
    token = bind_log_context(request_id="req_abc", payment_id="pay_xyz")
    try:
        logging.getLogger("penny.test_logging").warning("refused %s", CARD)
    finally:
        reset_log_context(token)
    logging.getLogger("penny.test_logging").warning("after the request")
    inside, outside = (json.loads(JsonFormatter().format(record)) for record in collected.records)
    assert {key: inside[key] for key in ("level", "logger", "message", "request_id", "payment_id")} == {
        "level": "WARNING",
        "logger": "penny.test_logging",
        "message": f"refused {SCRUBBED}",
        "request_id": "req_abc",
        "payment_id": "pay_xyz",
    }
    assert "request_id" not in outside and "payment_id" not in outside
    text = TextFormatter().format(collected.records[0])
    assert text.endswith(f"refused {SCRUBBED} [request_id=req_abc payment_id=pay_xyz]")


def test_secret_detector_leaves_ids_alone() -> None:
    assert contains_secret(API_KEY) and contains_secret(f"Authorization: Bearer {API_KEY}")
    assert not contains_secret("pay_sk_test_lookalike pi_3Nabc whsec")  # inside an id, or too short
    assert not contains_secret("ask_penny_about_it")


async def test_a_payments_transition_lines_name_its_payment_order_and_workflow(
    payment_stack: PaymentStack, collected: Collect
) -> None:
    penny_payments = logging.getLogger("penny.payments")
    penny_payments.addHandler(collected)
    previous = penny_payments.level
    penny_payments.setLevel(logging.INFO)
    try:
        order = new_order()
        state, handle = await start(payment_stack, order)
        await wait_for_status(handle, "CAPTURED", "SETTLED")
    finally:
        penny_payments.removeHandler(collected)
        penny_payments.setLevel(previous)
    lines = [json.loads(JsonFormatter().format(record)) for record in collected.records]
    mine = [line for line in lines if line.get("payment_id") == state.payment_id]
    assert mine, lines
    for line in mine:
        assert line["workflow_id"] == f"payment-{order.order_id}"
        assert line["order_id"] == order.order_id
    assert any("-> CAPTURED" in line["message"] for line in mine)


async def test_an_api_requests_lines_carry_its_request_id(payment_stack: PaymentStack) -> None:
    api_logger = logging.getLogger("penny.api")
    handler = Collect()
    api_logger.addHandler(handler)
    previous = api_logger.level
    api_logger.setLevel(logging.INFO)
    try:
        async with api_client(payment_stack.settings, payment_stack.client, FAST_TIMINGS) as http:
            key = await new_key(payment_stack.engine, payment_stack.settings)
            body = payment_body(metadata={"note": f"card {CARD}"})
            response = await http.post("/v1/payments", json=body, headers=auth(key, "k-" + body["order_id"]))
    finally:
        api_logger.removeHandler(handler)
        api_logger.setLevel(previous)
    assert response.status_code == 400 and response.json()["error"]["code"] == "card_data_not_allowed"
    request_id = response.headers["Request-Id"]
    lines = [json.loads(JsonFormatter().format(record)) for record in handler.records]
    mine = [line for line in lines if line.get("request_id") == request_id]
    # The refusal (where the card data was, never the value) and the access line.
    assert [line["level"] for line in mine] == ["WARNING", "INFO"], lines
    param = response.json()["error"]["param"]
    assert mine[0]["message"] == f"refused a request with card data in its body (param {param})"
    # Refused before routing, so the access line names no route template.
    assert mine[1]["message"].startswith(f"{request_id} POST unmatched 400 ")
    assert not any(CARD in json.dumps(line) for line in lines)
