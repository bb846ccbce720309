"""Tokens only: find raw card data anywhere in a request, without ever keeping the value.

A request is refused (400 `card_data_not_allowed`) when any part of it
- contains a card-number-like value (in any string or integer, any key, at any depth, in the
  body, the query string, the path or the Idempotency-Key), or
- has a field named like card data (card number, CVC/CVV, expiry): `card_number`, `cvc`,
  `exp_month`, `card[number]`, ... compared after lower-casing and dropping punctuation.

"Card-number-like" is decided by `penny.logs.card_number_spans`, the one detector shared with
the log scrubber: 13 to 19 digits, optionally grouped by single spaces or dashes, passing the
Luhn check, and standing on their own, i.e. neither preceded nor followed by a letter, digit or
underscore. Digits inside an identifier (`pay_05eccc811280402087958c0e`,
`pi_3Nabc4242424242424242`, `acct_1234567890123456`) are therefore never card data, so the
API never refuses its own or Stripe's ids. UUIDs are set aside (see `penny.logs`).

The functions return WHERE the card data was (a parameter name in Stripe notation), never
what it was. A 13-digit value that happens to pass Luhn (1 in 10 of them) is refused too:
that is the price of never accepting a real one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, unquote

from penny.logs import CARD_DIGITS_MAX, CARD_DIGITS_MIN, contains_card_number

__all__ = [
    "CARD_DIGITS_MAX",
    "CARD_DIGITS_MIN",
    "CARD_FIELD_NAMES",
    "NESTING_DEPTH_MAX",
    "CardDataFound",
    "NestingTooDeep",
    "check_json",
    "check_query_string",
    "check_text",
    "contains_card_number",
    "find_in_json",
    "is_card_field_name",
]

NESTING_DEPTH_MAX = 32  # deeper JSON is refused as invalid rather than walked
_NOT_ALPHANUMERIC = re.compile(r"[^a-z0-9]")

# Field names (lower-cased, punctuation removed) that only ever carry card data.
CARD_FIELD_NAMES = frozenset(
    {
        "card",
        "cardnumber",
        "cardnum",
        "cardno",
        "pan",
        "primaryaccountnumber",
        "cvc",
        "cvv",
        "cvc2",
        "cvv2",
        "csc",
        "cardcvc",
        "cardcvv",
        "securitycode",
        "cardsecuritycode",
        "exp",
        "expmonth",
        "expyear",
        "expiry",
        "expirydate",
        "expiration",
        "expirationdate",
        "expirationmonth",
        "expirationyear",
        "expdate",
        "cardexp",
        "cardexpiry",
        "cardexpmonth",
        "cardexpyear",
        "track1",
        "track2",
        "trackdata",
    }
)


class CardDataFound(Exception):
    """Raised with the location only (`param`), never the value."""

    def __init__(self, location: str, param: str | None) -> None:
        super().__init__(f"card data in {location}")
        self.location = location
        self.param = param


class NestingTooDeep(Exception):
    pass


def is_card_field_name(name: str) -> bool:
    return _NOT_ALPHANUMERIC.sub("", name.lower()) in CARD_FIELD_NAMES


def _child_param(parent: str | None, name: str) -> str:
    return name if parent is None else f"{parent}[{name}]"


def _walk(value: Any, param: str | None, depth: int, check_names: bool = True) -> Iterator[str | None]:
    """Yield the param of every place holding card data (None: the top level)."""
    if depth > NESTING_DEPTH_MAX:
        raise NestingTooDeep
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int | float):
        if contains_card_number(str(value)) or (isinstance(value, float) and contains_card_number(f"{value:.0f}")):
            yield param
    elif isinstance(value, str):
        if contains_card_number(value):
            yield param
    elif isinstance(value, dict):
        for key, child in value.items():
            key_text = str(key)
            if contains_card_number(key_text):
                yield param  # the key itself is the card number: name only its parent
            elif check_names and is_card_field_name(key_text):
                yield _child_param(param, key_text)
            else:
                yield from _walk(child, _child_param(param, key_text), depth + 1, check_names)
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _walk(child, _child_param(param, str(index)), depth + 1, check_names)


def find_in_json(value: Any, *, check_names: bool = True) -> str | bool | None:
    """The param holding card data in a parsed JSON document, None for the top level, False if clean."""
    for param in _walk(value, None, 0, check_names):
        return param
    return False


def check_json(value: Any, *, check_names: bool = True) -> None:
    """`check_names=False` looks for card numbers only (for Stripe's own objects, see api.edge)."""
    found = find_in_json(value, check_names=check_names)
    if found is not False:
        raise CardDataFound("body", found if isinstance(found, str) else None)


def check_text(text: str, location: str) -> None:
    if contains_card_number(text):
        raise CardDataFound(location, None)


def check_query_string(query_string: str) -> None:
    if contains_card_number(unquote(query_string)):
        raise CardDataFound("query", None)
    for name, value in parse_qsl(query_string, keep_blank_values=True):
        if is_card_field_name(name):
            raise CardDataFound("query", name)
        if contains_card_number(name) or contains_card_number(value):
            raise CardDataFound("query", None)
