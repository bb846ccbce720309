"""The API against its own /openapi.json, on the real stack (real HTTP, Temporal, Postgres, emulator).

- Fuzzing (schemathesis): for a bounded number of generated requests per operation, no 5xx,
  and every response (status, content type, body) matches the documented schema. Generated
  bodies are almost never valid payments (shares must add up, fee and tax must fit, ...), so
  this part shows the API refuses garbage cleanly, not that payments work.
- Valid payments (Hypothesis, valid by construction): every body the API documents as valid,
  built from its rules rather than filtered out of random ones, is accepted and answered with
  the payment the request asked for, in the documented shape, and can be read back.

The API runs under uvicorn on the test's event loop (it shares the loop with the database
and Temporal clients); schemathesis and Hypothesis are synchronous, so they run in a thread
against the real HTTP port.
"""

from __future__ import annotations

import asyncio
import itertools
import string
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import hypothesis
import pytest_asyncio
import schemathesis
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from activities.payments import RISK_REVIEW_AMOUNT_MINOR, RISK_VELOCITY_MAX_PAYMENTS
from api.models import (
    ACCOUNT_ID_LENGTH_MAX,
    BASIS_POINTS_MAX,
    CUSTOMER_LENGTH_MAX,
    DESCRIPTION_LENGTH_MAX,
    METADATA_VALUE_LENGTH_MAX,
    SPLITS_MAX,
)
from ledger.money import CURRENCY_EXPONENTS, SplitRecipient, compute_split
from stripe_emulator._payments import AMOUNT_MINIMUM_MINOR
from tests.payment_fixtures import FAST_TIMINGS, PaymentStack
from tests.test_api_support import new_key, served_api_url

EXAMPLES_PER_OPERATION_MAX = 30
# Each operation must really have been exercised (Hypothesis may stop early on a small space).
RESPONSES_PER_OPERATION_MIN = 10
# Each valid payment runs a real workflow to its first milestone: a few seconds each at most.
VALID_PAYMENTS_MAX = 15
# Fewer than the risk check's per-customer velocity limit, should Hypothesis repeat a customer.
assert VALID_PAYMENTS_MAX < RISK_VELOCITY_MAX_PAYMENTS
REQUEST_TIMEOUT_SECONDS = 60
OPERATIONS = [
    ("/v1/payments", "POST"),
    ("/v1/payments", "GET"),
    ("/v1/payments/{payment_id}", "GET"),
    ("/v1/payments/{payment_id}/events", "GET"),
]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Test cards that succeed (the decline and 3-D Secure cards have their own tests).
SUCCEEDING_PAYMENT_METHODS = ("pm_card_visa", "pm_card_visa_debit", "pm_card_mastercard", "pm_card_amex")
# Metadata keys from a fixed vocabulary: a key named like card data (`cvc`, `exp`, ...) is refused.
METADATA_KEYS = ("cart", "channel", "campaign", "note", "store", "locale", "source", "basket")
METADATA_ENTRIES_MAX = 4
TEXT_SIZE_MAX = 60
ROLES = ("seller", "driver", "courier", "tax_authority")
# Letters, digits, underscore: after a `cus_` or `acct_` prefix no digit run stands on its own,
# so no generated id can look like a card number (which the API refuses, rightly).
ID_ALPHABET = string.ascii_letters + string.digits + "_"
ID_SUFFIX_LENGTH_MAX = 24


@pytest_asyncio.fixture(loop_scope="session")
async def served_api(payment_stack: PaymentStack) -> AsyncIterator[str]:
    async with served_api_url(payment_stack.settings, payment_stack.client, FAST_TIMINGS) as url:
        yield url


# ----------------------------------------------------------------------------- fuzzing


def _fuzz_operation(
    operation: Any, label: str, base_url: str, api_key: str, answered: Counter[str], seen: Counter[str]
) -> None:
    @hypothesis.settings(
        max_examples=EXAMPLES_PER_OPERATION_MAX,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(case=operation.as_strategy())
    def check(case: schemathesis.Case) -> None:
        response = case.call(
            base_url=base_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=REQUEST_TIMEOUT_SECONDS
        )
        answered[label] += 1
        seen[f"{label} {response.status_code}"] += 1
        if response.status_code >= 400:
            seen[f"{label} {response.json()['error']['code']}"] += 1
        case.validate_response(response, checks=CHECKS)

    check()


def _fuzz(base_url: str, api_key: str) -> tuple[Counter[str], Counter[str]]:
    """How many responses each operation got, and each (operation, status or error code)."""
    answered: Counter[str] = Counter()
    seen: Counter[str] = Counter()
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    for path, method in OPERATIONS:
        _fuzz_operation(schema[path][method], f"{method} {path}", base_url, api_key, answered, seen)
    return answered, seen


async def test_schemathesis_finds_no_5xx_and_no_schema_violation(served_api: str, payment_stack: PaymentStack) -> None:
    api_key = await new_key(payment_stack.engine, payment_stack.settings)
    answered, seen = await asyncio.to_thread(_fuzz, served_api, api_key)
    print(dict(seen))
    assert {f"{method} {path}" for path, method in OPERATIONS} == set(answered), answered
    assert min(answered.values()) >= RESPONSES_PER_OPERATION_MIN, answered


# ----------------------------------------------------------------------------- valid payments


def _partition(draw: st.DrawFn, total: int, parts: int, part_minimum: int) -> list[int]:
    """`parts` integers, each at least `part_minimum`, adding up to exactly `total`."""
    free = total - parts * part_minimum
    assert free >= 0, (total, parts, part_minimum)
    cuts = sorted(draw(st.lists(st.integers(0, free), min_size=parts - 1, max_size=parts - 1)))
    bounds = [0, *cuts, free]
    return [part_minimum + high - low for low, high in itertools.pairwise(bounds)]


def _identifier(prefix: str, length_max: int) -> st.SearchStrategy[str]:
    suffix_length_max = min(ID_SUFFIX_LENGTH_MAX, length_max - len(prefix))
    return st.text(ID_ALPHABET, min_size=1, max_size=suffix_length_max).map(lambda suffix: prefix + suffix)


def _free_text(size_max: int) -> st.SearchStrategy[str]:
    # Any Unicode but NUL (Postgres refuses it), surrogates, and decimal digits: a digit run in
    # free text could be card-shaped, which the API refuses (that is tested elsewhere).
    characters = st.characters(exclude_categories=("Cs", "Nd"), exclude_characters="\x00")
    return st.text(characters, max_size=min(size_max, TEXT_SIZE_MAX))


@st.composite
def valid_payment_bodies(draw: st.DrawFn, currencies: list[str]) -> dict[str, Any]:
    """A POST /v1/payments body valid by construction (without `order_id`, which the test numbers).

    Amounts stay within what the emulator charges and the risk check passes without review,
    so the payment reaches its first milestone: captured (automatic) or authorized (manual).
    """
    amount = draw(st.integers(AMOUNT_MINIMUM_MINOR, RISK_REVIEW_AMOUNT_MINOR))
    currency = draw(st.sampled_from(currencies))
    currency = draw(st.sampled_from((currency.upper(), currency.lower(), currency.capitalize())))
    tax = draw(st.one_of(st.just(0), st.integers(0, amount)))
    platform_fee_bps = draw(st.integers(0, BASIS_POINTS_MAX))
    # What remains for the recipients, by the one rule the API and the workflow both use.
    [(_, rest)] = compute_split(
        amount,
        currency.upper(),
        platform_fee_bps=platform_fee_bps,
        tax_amount=tax,
        recipients=[SplitRecipient("acct_rest", share_bps=BASIS_POINTS_MAX)],
    ).recipients
    recipients_count = draw(st.integers(1, SPLITS_MAX))
    accounts = draw(
        st.lists(
            _identifier("acct_", ACCOUNT_ID_LENGTH_MAX),
            min_size=recipients_count,
            max_size=recipients_count,
            unique=True,
        )
    )
    # Fixed amounts are at least 1 each; without any share recipient they take exactly the rest.
    fixed_count = draw(st.integers(0, min(recipients_count, rest)))
    share_count = recipients_count - fixed_count
    fixed_total = rest if share_count == 0 else draw(st.integers(fixed_count, rest))
    fixed = [{"amount": part} for part in _partition(draw, fixed_total, fixed_count, 1)] if fixed_count else []
    shares = [{"share_bps": part} for part in _partition(draw, BASIS_POINTS_MAX, share_count, 0)] if share_count else []
    kinds = draw(st.permutations([*fixed, *shares]))
    recipients = [
        {"account_id": account, **kind, **draw(st.fixed_dictionaries({}, optional={"role": st.sampled_from(ROLES)}))}
        for account, kind in zip(accounts, kinds, strict=True)
    ]
    body: dict[str, Any] = {
        "amount": amount,
        "currency": currency,
        "customer": draw(_identifier("cus_", CUSTOMER_LENGTH_MAX)),
        "payment_method": draw(st.sampled_from(SUCCEEDING_PAYMENT_METHODS)),
        "recipients": recipients,
    }
    optional = st.fixed_dictionaries(
        {},
        optional={
            "capture_method": st.sampled_from(("automatic", "manual")),
            "description": _free_text(DESCRIPTION_LENGTH_MAX),
            "metadata": st.dictionaries(
                st.sampled_from(METADATA_KEYS), _free_text(METADATA_VALUE_LENGTH_MAX), max_size=METADATA_ENTRIES_MAX
            ),
        },
    )
    body.update(draw(optional))
    # An omitted fee or tax means 0: both are sent when they are not 0, and sometimes when they are.
    if platform_fee_bps or draw(st.booleans()):
        body["application_fee_bps"] = platform_fee_bps
    if tax or draw(st.booleans()):
        body["tax_amount"] = tax
    return body


def _check_payment(body: dict[str, Any], payment: dict[str, Any]) -> None:
    """What the caller of POST /v1/payments sees: the payment it asked for, at its first milestone."""
    amount = body["amount"]
    manual = body.get("capture_method") == "manual"
    assert payment["id"].startswith("pay_") and payment["object"] == "payment"
    assert (payment["order_id"], payment["amount"], payment["currency"], payment["customer"]) == (
        body["order_id"],
        amount,
        body["currency"].upper(),
        body["customer"],
    )
    assert payment["capture_method"] == body.get("capture_method", "automatic")
    if manual:
        expected = ("authorized", amount, 0)
        assert (payment["status"], payment["amount_capturable"], payment["amount_captured"]) == expected
    else:
        assert (payment["status"], payment["amount_captured"]) == ("captured", amount)
    assert payment["amount_refunded"] == 0 and payment["failure_code"] is None
    assert payment["metadata"] == body.get("metadata", {})
    split = payment["split"]
    expected = (amount, body["currency"].upper(), body.get("tax_amount", 0))
    assert (split["amount"], split["currency"], split["tax_amount"]) == expected
    parts = split["recipients"]
    assert [part["account_id"] for part in parts] == [recipient["account_id"] for recipient in body["recipients"]]
    assert [part["role"] for part in parts] == [recipient.get("role", "seller") for recipient in body["recipients"]]
    for part, recipient in zip(parts, body["recipients"], strict=True):
        if "amount" in recipient:
            assert part["amount"] == recipient["amount"]
    fee = compute_split(
        amount,
        body["currency"].upper(),
        platform_fee_bps=body.get("application_fee_bps", 0),
        tax_amount=body.get("tax_amount", 0),
        recipients=[SplitRecipient("acct_rest", share_bps=BASIS_POINTS_MAX)],
    ).platform_fee
    assert split["application_fee_amount"] == fee
    assert split["application_fee_amount"] + split["tax_amount"] + sum(part["amount"] for part in parts) == amount


def _pay(operations: Any, base_url: str, api_key: str, currencies: list[str], paid: list[str]) -> None:
    create, retrieve = operations
    run = uuid.uuid4().hex[:12]
    order_numbers = itertools.count(1)
    authorization = {"Authorization": f"Bearer {api_key}"}

    @hypothesis.settings(
        max_examples=VALID_PAYMENTS_MAX,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @hypothesis.given(body=valid_payment_bodies(currencies))
    def check(body: dict[str, Any]) -> None:
        # Order ids are numbered, not drawn: one order makes one payment, so two examples must
        # never share one (a repeated order with another body is rightly a 409).
        body = {"order_id": f"order_{run}_{next(order_numbers)}", **body}
        case = create.Case(body=body, headers={"Idempotency-Key": f"key_{uuid.uuid4().hex}"})
        response = case.call(base_url=base_url, headers=authorization, timeout=REQUEST_TIMEOUT_SECONDS)
        assert response.status_code == 200, (body, response.text)
        case.validate_response(response, checks=CHECKS)
        payment = response.json()
        _check_payment(body, payment)
        lookup = retrieve.Case(path_parameters={"payment_id": payment["id"]})
        fetched = lookup.call(base_url=base_url, headers=authorization, timeout=REQUEST_TIMEOUT_SECONDS)
        assert fetched.status_code == 200, fetched.text
        lookup.validate_response(fetched, checks=CHECKS)
        assert {key: fetched.json()[key] for key in ("id", "status", "amount", "currency", "order_id")} == {
            key: payment[key] for key in ("id", "status", "amount", "currency", "order_id")
        }
        paid.append(payment["id"])

    check()


def _operations(base_url: str) -> tuple[Any, Any]:
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    return schema["/v1/payments"]["POST"], schema["/v1/payments/{payment_id}"]["GET"]


async def test_every_valid_payment_is_accepted_as_asked(served_api: str, payment_stack: PaymentStack) -> None:
    api_key = await new_key(payment_stack.engine, payment_stack.settings)
    currencies = sorted(payment_stack.settings.currencies & CURRENCY_EXPONENTS.keys())
    assert currencies
    paid: list[str] = []
    operations = await asyncio.to_thread(_operations, served_api)
    await asyncio.to_thread(_pay, operations, served_api, api_key, currencies, paid)
    # Every example was a real payment, and they were all distinct.
    assert len(paid) == len(set(paid)) and paid, paid
