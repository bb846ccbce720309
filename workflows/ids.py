"""Penny's own identifiers, spelled so they can never be mistaken for card data.

Pure (standard library only, no I/O): the payment workflow imports it inside the Temporal
sandbox and calls `payment_id_from_uuid(workflow.uuid4())`, which is deterministic on replay.

Why letters only. Payment ids used to be `pay_` + 24 hex characters; about 1 in 670 of them held
a digit run that passes the Luhn check, so the API's card-data screening refused requests naming
that payment and the log scrubber blanked the id. An id made of lowercase letters after `pay_`
holds no digit at all, so no detector, however its boundaries are drawn, can take it for a card
number.

Entropy. The 24 characters are the 24 lowest base-26 digits of the UUID's 128-bit integer,
most significant first: 26**24 is about 2**112.8 distinct ids. A v4 UUID carries 122 random
bits (6 are fixed version and variant bits), more than the id can hold, so the id is close to
uniform over its 2**112.8 values; among a billion payments the chance of any two sharing an id
is about 1e-16.

Payments created before this module keep their hex ids (`pay_` + 24 of [0-9a-f]); the API
accepts both shapes, and `LEGACY_PAYMENT_ID_PATTERN` names the old one.
"""

from __future__ import annotations

import hashlib
import re
import uuid

ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz"
PAYMENT_ID_PREFIX = "pay_"
PAYMENT_ID_BODY_LENGTH = 24

PAYMENT_ID_PATTERN = re.compile(rf"\Apay_[{ID_ALPHABET}]{{{PAYMENT_ID_BODY_LENGTH}}}\Z")
LEGACY_PAYMENT_ID_PATTERN = re.compile(rf"\Apay_[0-9a-f]{{{PAYMENT_ID_BODY_LENGTH}}}\Z")


REFUND_ID_PATTERN = re.compile(rf"\Arf_[{ID_ALPHABET}]{{{PAYMENT_ID_BODY_LENGTH}}}\Z")


def _letters(value: int) -> str:
    """The 24 lowest base-26 digits of `value`, most significant first, as letters."""
    letters: list[str] = []
    for _ in range(PAYMENT_ID_BODY_LENGTH):
        value, index = divmod(value, len(ID_ALPHABET))
        letters.append(ID_ALPHABET[index])
    return "".join(reversed(letters))


def payment_id_from_uuid(value: uuid.UUID) -> str:
    """`pay_` + 24 letters of ID_ALPHABET, a pure function of the UUID's 128 bits."""
    payment_id = PAYMENT_ID_PREFIX + _letters(value.int)
    assert PAYMENT_ID_PATTERN.match(payment_id), payment_id
    return payment_id


def refund_id_for_request(payment_id: str, api_key_id: str, idempotency_key: str) -> str:
    """`rf_` + 24 letters: a pure function of the payment, the caller and its Idempotency-Key.

    The same request retried (same key) names the same refund, so the workflow answers it with
    the refund it already made instead of making a second one, even if the API's stored
    response was lost. SHA-256 gives the 113 bits the letters hold.
    """
    digest = hashlib.sha256("\x00".join((payment_id, api_key_id, idempotency_key)).encode()).digest()
    refund_id = "rf_" + _letters(int.from_bytes(digest, "big"))
    assert REFUND_ID_PATTERN.match(refund_id), refund_id
    return refund_id
