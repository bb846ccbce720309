"""Stripe webhook signatures, verified on the raw body before anything is parsed or stored.

`Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...]` where each v1 is
HMAC-SHA256(secret, "<t>.<raw body>"). Stripe sends one v1 per active secret of the endpoint
(two during a secret roll), and Penny may accept several secrets (PENNY_STRIPE_WEBHOOK_SECRETS)
during its own rotation: the event is genuine when ANY v1 matches ANY configured secret.
Every comparison is constant-time (`hmac.compare_digest`) and every candidate pair is
compared, so the time taken does not tell which one matched. A timestamp more than the
tolerance away from now, in the past (a replay) or in the future, is refused.

Pure functions: no I/O, no clock except the `now` passed in.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

SIGNATURE_TOLERANCE_SECONDS = 300
SIGNATURE_HEADER_LENGTH_MAX = 4096
SIGNATURES_MAX = 8  # v1 entries looked at; Stripe sends one per active secret (two during a roll)
SIGNATURE_SCHEME = "v1"
_HEX_DIGITS = frozenset("0123456789abcdef")
_SHA256_HEX_LENGTH = 64


class SignatureError(Exception):
    """Why a signature was refused. `reason` is a bounded metrics label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class ParsedSignature:
    timestamp: int
    signatures: tuple[str, ...]


def parse_header(header: str | None) -> ParsedSignature:
    if header is None or not header.strip():
        raise SignatureError("missing", "No Stripe-Signature header.")
    if len(header) > SIGNATURE_HEADER_LENGTH_MAX:
        raise SignatureError("malformed", "The Stripe-Signature header is too long.")
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        key, separator, value = item.strip().partition("=")
        if not separator:
            continue
        if key == "t":
            if timestamp is not None or not value.isascii() or not value.isdigit() or len(value) > 12:
                raise SignatureError("malformed", "The Stripe-Signature timestamp is not valid.")
            timestamp = int(value)
        elif key == SIGNATURE_SCHEME and len(signatures) < SIGNATURES_MAX:
            signatures.append(value.lower())
    if timestamp is None:
        raise SignatureError("malformed", "The Stripe-Signature header has no timestamp.")
    if not signatures:
        raise SignatureError("malformed", "The Stripe-Signature header has no v1 signature.")
    return ParsedSignature(timestamp, tuple(signatures))


def expected_signature(secret: str, timestamp: int, body: bytes) -> str:
    signed = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def sign(body: bytes, secrets: list[str], timestamp: int) -> str:
    """The header Stripe would send (tests and the benchmark sign their own events)."""
    parts = [f"t={timestamp}"] + [f"v1={expected_signature(secret, timestamp, body)}" for secret in secrets]
    return ",".join(parts)


def verify(
    body: bytes,
    header: str | None,
    secrets: list[str],
    now: int,
    tolerance_seconds: int = SIGNATURE_TOLERANCE_SECONDS,
) -> int:
    """Return the signed timestamp when the signature is genuine and fresh; raise SignatureError otherwise."""
    assert tolerance_seconds > 0, tolerance_seconds
    if not secrets:
        raise SignatureError("no_secret", "No webhook secret is configured.")
    parsed = parse_header(header)
    matched = False
    for secret in secrets:
        expected = expected_signature(secret, parsed.timestamp, body)
        for candidate in parsed.signatures:
            well_formed = len(candidate) == _SHA256_HEX_LENGTH and set(candidate) <= _HEX_DIGITS
            # Compare every pair (no early exit) so timing does not reveal which one matched.
            matched = (well_formed and hmac.compare_digest(candidate, expected)) or matched
    if not matched:
        raise SignatureError("mismatch", "No signature matches the payload with any configured secret.")
    # Freshness is checked after authenticity: a timestamp is only meaningful once signed.
    if abs(now - parsed.timestamp) > tolerance_seconds:
        raise SignatureError(
            "stale" if parsed.timestamp < now else "future",
            f"The signature timestamp is outside the tolerance of {tolerance_seconds} seconds.",
        )
    return parsed.timestamp
