"""Card-number detection respects token boundaries: ids are never card data, card numbers are.

Issue "fault-paths", item 11: about 1 in 670 hex payment ids held a Luhn-valid digit run, so the
API answered 400 `card_data_not_allowed` to requests naming its own payment and the log scrubber
blanked the id. The detector (`penny.logs.card_number_spans`, shared by `api.card_data` and the
scrubber) now only takes digit runs that no letter, digit or underscore touches.
"""

from __future__ import annotations

import logging
import re
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api import card_data, edge
from api.models import PAYMENT_ID_PATTERN as API_PAYMENT_ID_PATTERN
from penny.logs import SCRUBBED, CardNumberScrubber, card_number_spans, luhn_valid, scrub_card_numbers
from workflows.ids import (
    ID_ALPHABET,
    LEGACY_PAYMENT_ID_PATTERN,
    PAYMENT_ID_PATTERN,
    payment_id_from_uuid,
)

# The id seen refused in production: "811280402087958" passes Luhn.
REFUSED_PAYMENT_ID = "pay_05eccc811280402087958c0e"
STRIPE_ID_PREFIXES = ("pi_", "ch_", "tr_", "acct_", "evt_", "re_", "dp_", "po_", "txn_", "cus_", "pm_", "py_", "src_")
ALPHANUMERIC = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
PROPERTY_EXAMPLES_MAX = 300


def _luhn_check_digit(payload: str) -> str:
    """The digit that makes `payload + digit` pass the Luhn check."""
    for digit in "0123456789":
        if luhn_valid(payload + digit):
            return digit
    raise AssertionError(f"no Luhn check digit for {payload}")


def _in_contexts(identifier: str) -> list[str]:
    """The places an id really appears: alone, in a path, a query, a JSON body, a log line."""
    return [
        identifier,
        f"/v1/payments/{identifier}/capture",
        f"/v1/payments?starting_after={identifier}&limit=10",
        f'{{"id": "{identifier}", "object": "payment"}}',
        f"capture-{identifier}",
        f"payment {identifier} captured (attempt 2)",
        f"{identifier} {identifier}",
    ]


def _assert_never_card_data(identifier: str) -> None:
    for text in _in_contexts(identifier):
        assert not card_data.contains_card_number(text), text
        assert scrub_card_numbers(text) == text
    card_data.check_query_string(f"starting_after={identifier}")
    card_data.check_json({"payment": identifier, "metadata": {"ref": identifier}})


# ----------------------------------------------------------------------------- examples


@pytest.mark.parametrize(
    "identifier",
    [
        REFUSED_PAYMENT_ID,
        "pi_3Nabc4242424242424242",
        "acct_1234567890123456",
        "ch_4242424242424242",
        "order_4242424242424242",
        "4242424242424242x",
        "x4242424242424242",
    ],
)
def test_digits_inside_an_identifier_are_not_card_data(identifier: str) -> None:
    _assert_never_card_data(identifier)


@pytest.mark.parametrize(
    "text",
    [
        "4242424242424242",
        "card 4242424242424242",
        "4242 4242 4242 4242",
        "4242-4242-4242-4242",
        # Stripe's debit test card, assembled here so no card-shaped literal is stored in the repo.
        '"number": "' + "4000" + "0566" + "5566" + "5556" + '"',
        "card[number]=4242424242424242",
        "/v1/payments/4242424242424242",
        "amex 378282246310005.",
        # A card number next to an unrelated number is still found: every stretch of whole
        # groups is a candidate, not only the longest run.
        "ref 1 4242 4242 4242 4242 7",
        "pay_x-4242424242424242",
    ],
)
def test_standalone_card_numbers_are_found_and_scrubbed(text: str) -> None:
    assert card_data.contains_card_number(text)
    with pytest.raises(card_data.CardDataFound):
        card_data.check_text(text, "body")
    scrubbed = scrub_card_numbers(text)
    assert SCRUBBED in scrubbed
    assert re.search(r"[0-9](?:[ -]?[0-9]){12}", scrubbed) is None, scrubbed


def test_form_encoded_card_number_is_refused_by_the_query_check() -> None:
    with pytest.raises(card_data.CardDataFound):
        card_data.check_query_string("card%5Bnumber%5D=4242424242424242")
    with pytest.raises(card_data.CardDataFound):
        card_data.check_query_string("note=4242+4242+4242+4242")


def test_the_refused_payment_id_passes_every_screen() -> None:
    assert not card_data.contains_card_number(REFUSED_PAYMENT_ID)
    scope = {
        "path": f"/v1/payments/{REFUSED_PAYMENT_ID}/capture",
        "query_string": f"starting_after={REFUSED_PAYMENT_ID}".encode(),
        "headers": [(b"idempotency-key", f"capture-{REFUSED_PAYMENT_ID}".encode())],
    }
    edge._check_card_data(scope, f'{{"payment_id": "{REFUSED_PAYMENT_ID}"}}'.encode())
    assert re.fullmatch(API_PAYMENT_ID_PATTERN, REFUSED_PAYMENT_ID)
    assert LEGACY_PAYMENT_ID_PATTERN.match(REFUSED_PAYMENT_ID)


def test_the_log_scrubber_keeps_ids_and_blanks_card_numbers() -> None:
    record = logging.LogRecord(
        "penny", logging.INFO, __file__, 1, "payment %s paid with %s", (REFUSED_PAYMENT_ID, "4242424242424242"), None
    )
    assert CardNumberScrubber().filter(record)
    assert record.getMessage() == f"payment {REFUSED_PAYMENT_ID} paid with {SCRUBBED}"


def test_uuids_stay_set_aside_in_both_the_screen_and_the_scrubber() -> None:
    looks_like_a_card = "42424242-4242-4242-8a3b-0c1d2e3f4a5b"
    assert not card_data.contains_card_number(looks_like_a_card)
    assert scrub_card_numbers(f"request {looks_like_a_card}") == f"request {looks_like_a_card}"


def test_payment_ids_are_letters_only_and_deterministic() -> None:
    value = uuid.UUID("05eccc81-1280-4020-8795-8c0e12345678")
    payment_id = payment_id_from_uuid(value)
    assert payment_id == payment_id_from_uuid(uuid.UUID(str(value)))
    assert PAYMENT_ID_PATTERN.match(payment_id)
    assert not LEGACY_PAYMENT_ID_PATTERN.match(payment_id)
    assert re.fullmatch(API_PAYMENT_ID_PATTERN, payment_id)
    assert set(payment_id.removeprefix("pay_")) <= set(ID_ALPHABET)
    assert payment_id_from_uuid(uuid.UUID(int=0)) == "pay_" + ID_ALPHABET[0] * 24
    assert payment_id_from_uuid(uuid.UUID(int=1)) == "pay_" + ID_ALPHABET[0] * 23 + ID_ALPHABET[1]
    for not_an_id in ("pay_" + "a" * 23, "pay_" + "a" * 25, "pay_" + "a" * 24 + "\n", "x_pay_" + "a" * 24):
        assert not PAYMENT_ID_PATTERN.match(not_an_id)


# ----------------------------------------------------------------------------- properties

uuid_ints = st.integers(min_value=0, max_value=2**128 - 1)
stripe_ids = st.builds(
    lambda prefix, body: prefix + body,
    st.sampled_from(STRIPE_ID_PREFIXES),
    st.text(alphabet=ALPHANUMERIC, min_size=14, max_size=40),
)


@settings(max_examples=PROPERTY_EXAMPLES_MAX)
@given(uuid_ints)
def test_no_payment_id_is_card_data(value: int) -> None:
    payment_id = payment_id_from_uuid(uuid.UUID(int=value))
    assert PAYMENT_ID_PATTERN.match(payment_id)
    _assert_never_card_data(payment_id)


@settings(max_examples=PROPERTY_EXAMPLES_MAX)
@given(st.integers(min_value=0, max_value=16**24 - 1))
def test_no_legacy_hex_payment_id_is_card_data(value: int) -> None:
    # Existing payments keep their hex ids; they must keep working too.
    _assert_never_card_data(f"pay_{value:024x}")


@settings(max_examples=PROPERTY_EXAMPLES_MAX)
@given(stripe_ids)
def test_no_stripe_id_is_card_data(identifier: str) -> None:
    _assert_never_card_data(identifier)


@st.composite
def luhn_valid_numbers(draw: st.DrawFn) -> str:
    """A Luhn-valid number of 13 to 19 digits, written plain or grouped by single spaces or dashes."""
    length = draw(st.integers(min_value=13, max_value=19))
    payload = draw(st.text(alphabet="0123456789", min_size=length - 1, max_size=length - 1))
    digits = payload + _luhn_check_digit(payload)
    separator = draw(st.sampled_from(["", " ", "-"]))
    if not separator:
        return digits
    # A separator after digit i (never after the last one) wherever breaks[i] says so.
    breaks = draw(st.lists(st.booleans(), min_size=length - 1, max_size=length - 1))
    pieces = [digit + separator if broken else digit for digit, broken in zip(digits, breaks, strict=False)]
    return "".join(pieces) + digits[-1]


# What may touch a card number for it to count as standing on its own.
BOUNDARY_CHARACTERS = " \t\n.,;:!?\"'()[]{}<>/=&+#*|-"
# Surrounding text without dashes or hex letters, so no UUID can form across the number and be
# set aside (a UUID needs four dashes and 32 hex digits; a card number has at most 19).
WORDS = "ghijklmnopqrstuvwxyz_ .,:;"


@settings(max_examples=PROPERTY_EXAMPLES_MAX)
@given(
    luhn_valid_numbers(),
    st.text(alphabet=WORDS, max_size=20),
    st.sampled_from(BOUNDARY_CHARACTERS),
    st.sampled_from(BOUNDARY_CHARACTERS),
    st.text(alphabet=WORDS, max_size=20),
)
def test_every_standalone_card_number_is_found(number: str, before: str, left: str, right: str, after: str) -> None:
    text = f"{before}{left}{number}{right}{after}"
    assert card_data.contains_card_number(text)
    assert scrub_card_numbers(text) == f"{before}{left}{SCRUBBED}{right}{after}"


@settings(max_examples=PROPERTY_EXAMPLES_MAX)
@given(
    luhn_valid_numbers(),
    st.text(alphabet="0123456789 .,:", max_size=20),
    st.sampled_from(BOUNDARY_CHARACTERS),
    st.sampled_from(BOUNDARY_CHARACTERS),
    st.text(alphabet="0123456789 .,:", max_size=20),
)
def test_a_card_number_beside_other_numbers_is_found(
    number: str, before: str, left: str, right: str, after: str
) -> None:
    # Other numbers, even joined to the card number by a single space or dash, do not hide it.
    text = f"{before}{left}{number}{right}{after}"
    start = len(before) + 1
    assert (start, start + len(number)) in set(card_number_spans(text))
    assert SCRUBBED in scrub_card_numbers(text)
