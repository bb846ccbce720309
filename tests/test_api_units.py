"""Unit tests of the API's pure parts: card-data detection, fingerprints, error shapes, limits."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from api import card_data
from api.errors import _validation_error, stripe_param
from api.idempotency import canonical_json, fingerprint, mismatched_parameters, parameter_fingerprints
from api.payments import api_status
from penny.keys import generate_api_key, hash_api_key
from penny.settings import Settings
from tests.test_api_support import PAN_FORMS


@pytest.mark.parametrize("pan", PAN_FORMS)
def test_card_numbers_are_found_in_any_spelling(pan: str) -> None:
    assert card_data.contains_card_number(pan)
    assert card_data.contains_card_number(f"note: {pan} thanks")


# "4242" * 3 + "4241": sixteen digits that fail the Luhn check (the Visa test card ends in 4242).
@pytest.mark.parametrize(
    "text", ["4242" * 3 + "4241", "123456789012", "order_2024_11_21", "12345678901234567890123", "2024-11-21"]
)
def test_non_card_numbers_pass(text: str) -> None:
    assert not card_data.contains_card_number(text)


@pytest.mark.parametrize(
    ("document", "param"),
    [
        ({"metadata": {"note": "4242 4242 4242 4242"}}, "metadata[note]"),
        ({"metadata": {"4242424242424242": "x"}}, "metadata"),
        ({"amount": 4242424242424242}, "amount"),
        ({"amount": 4242424242424242.0}, "amount"),
        ({"recipients": [{"account_id": "acct_1", "role": "4242-4242-4242-4242"}]}, "recipients[0][role]"),
        ({"card_number": "x"}, "card_number"),
        ({"metadata": {"CVC": "123"}}, "metadata[CVC]"),
        ({"exp_month": 12}, "exp_month"),
        ({"card": {"number": "1"}}, "card"),
        ("4242424242424242", None),
    ],
)
def test_card_data_is_located_by_param_never_by_value(document: object, param: str | None) -> None:
    with pytest.raises(card_data.CardDataFound) as found:
        card_data.check_json(document)
    assert found.value.param == param


def test_uuids_are_not_card_numbers() -> None:
    # The first 16 digits with their dashes pass Luhn: as a UUID it is still no card number.
    looks_like_a_card = "42424242-4242-4242-8a3b-0c1d2e3f4a5b"
    assert card_data.contains_card_number("4242424242424242")
    assert not card_data.contains_card_number(looks_like_a_card)
    assert not card_data.contains_card_number(f"order_{looks_like_a_card}")
    assert card_data.contains_card_number(f"{looks_like_a_card} and 4242 4242 4242 4242")


def test_processor_objects_are_scanned_for_numbers_not_field_names() -> None:
    stripe_object = {"payment_method_details": {"card": {"exp_month": 12, "last4": "4242", "brand": "visa"}}}
    card_data.check_json(stripe_object, check_names=False)
    with pytest.raises(card_data.CardDataFound):
        card_data.check_json({"card": {"number": "4242424242424242"}}, check_names=False)


def test_clean_documents_pass() -> None:
    card_data.check_json({"order_id": "o_1", "amount": 100, "metadata": {"expected": "yes", "number_of_items": "3"}})


def test_query_strings_are_checked_decoded_and_by_name() -> None:
    with pytest.raises(card_data.CardDataFound):
        card_data.check_query_string("customer=4242%204242%204242%204242")
    with pytest.raises(card_data.CardDataFound) as found:
        card_data.check_query_string("card%5Bnumber%5D=1")
    assert found.value.param == "card[number]"
    card_data.check_query_string("customer=cus_1&limit=10")


def test_deep_nesting_is_refused() -> None:
    document: object = "x"
    for _ in range(card_data.NESTING_DEPTH_MAX + 2):
        document = [document]
    with pytest.raises(card_data.NestingTooDeep):
        card_data.check_json(document)


def test_fingerprint_is_canonical() -> None:
    assert canonical_json({"b": 1, "a": [1, {"d": 2, "c": 3}]}) == '{"a":[1,{"c":3,"d":2}],"b":1}'
    assert fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})
    assert fingerprint({"amount": 100}) != fingerprint({"amount": 200})


def test_mismatched_parameters_are_named() -> None:
    stored = parameter_fingerprints({"amount": 10000, "currency": "usd", "metadata": {"a": "1"}})
    current = parameter_fingerprints({"amount": 20000, "currency": "usd", "tax_amount": 5})
    assert mismatched_parameters(stored, current) == ["amount", "metadata", "tax_amount"]


def test_stripe_param_notation() -> None:
    assert stripe_param(("body", "recipients", 0, "share_bps")) == "recipients[0][share_bps]"
    assert stripe_param(("query", "limit")) == "limit"
    assert stripe_param(("body",)) is None


def test_validation_errors_become_stripe_errors_without_values() -> None:
    error = _validation_error({"type": "int_parsing", "loc": ("body", "amount"), "msg": "Input should be an integer"})
    assert error.status_code == 400
    assert error.detail.code == "parameter_invalid_integer" and error.detail.param == "amount"
    missing = _validation_error({"type": "missing", "loc": ("header", "Idempotency-Key"), "msg": "Field required"})
    assert missing.detail.code == "idempotency_key_missing"


def test_api_status_presents_created_as_processing() -> None:
    assert api_status("CREATED") == "processing"
    assert api_status("PROCESSING") == "processing"
    assert api_status("REQUIRES_ACTION") == "requires_action"


def test_api_keys_are_hashed_with_the_pepper() -> None:
    key = generate_api_key()
    assert key.startswith("sk_penny_") and len(key) > 40
    assert hash_api_key("pepper-a", key) != hash_api_key("pepper-b", key)
    assert key not in hash_api_key("pepper-a", key)


def test_lock_timeout_must_outlive_the_first_milestone_wait() -> None:
    with pytest.raises(ValidationError):
        Settings(env="test", idempotency_lock_timeout_seconds=10, first_milestone_wait_seconds=20)
    assert Settings(env="test").currencies >= {"USD", "EUR"}


def test_processor_bodies_are_not_screened_but_merchant_bodies_are() -> None:
    """Stripe's signed webhook bodies carry card fields and many digits, never a PAN; refusing one
    would make Stripe retry a valid event forever. Merchant requests are always screened."""
    from api import card_data, edge

    body = b'{"id": "evt_1", "data": {"object": {"card": {"exp_month": 12}, "note": "4242 4242 4242 4242"}}}'
    edge._check_card_data({"path": "/webhooks/stripe", "query_string": b"", "headers": []}, body)
    with pytest.raises(card_data.CardDataFound):
        edge._check_card_data({"path": "/v1/payments", "query_string": b"", "headers": []}, body)
    # The path and query string of a processor request are still screened.
    with pytest.raises(card_data.CardDataFound):
        edge._check_card_data({"path": "/webhooks/stripe", "query_string": b"n=4242424242424242", "headers": []}, b"")


def test_every_error_code_is_documented_in_the_readme_and_found_in_the_code() -> None:
    """doc_url points at `README.md#error-<code>`: each code the API answers has its anchor, and
    each documented code is still answered somewhere (api/ literals, or the workflow's refusals)."""
    import re
    from pathlib import Path

    from api.errors import ERROR_CODES, doc_url

    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    for code in ERROR_CODES:
        assert f'<a id="error-{code}"></a>' in readme, code
        assert doc_url(code) == f"README.md#error-{code}"
    assert doc_url("not_a_code") == "README.md#errors" and '<a id="errors"></a>' in readme
    sources = "\n".join(path.read_text() for path in [*(root / "api").glob("*.py"), *(root / "workflows").glob("*.py")])
    answered = set(re.findall(r'invalid_request\(\s*"([a-z_]+)"', sources))
    answered |= set(re.findall(r'ApiError\(\s*[^,]+,\s*"[a-z_]+",\s*"([a-z_]+)"', sources))
    assert answered <= set(ERROR_CODES), answered - set(ERROR_CODES)
    for code in ERROR_CODES:
        assert f'"{code}"' in sources, code
