"""Stripe-Signature verification (pure): secrets, rotation, tolerance both ways, malformed headers."""

from __future__ import annotations

import stripe
from hypothesis import given, settings
from hypothesis import strategies as st

from activities.webhooks import PayloadInvalid, build_signal, event_from_payload, parse_event
from api.webhook_signature import SIGNATURE_TOLERANCE_SECONDS, SignatureError, sign, verify

SECRET = "whsec_" + "k" * 32
OTHER = "whsec_" + "o" * 32
NOW = 1_800_000_000
BODY = b'{"id":"evt_1","type":"payment_intent.succeeded"}'


def reason(body: bytes, header: str | None, secrets: list[str], now: int = NOW) -> str | None:
    try:
        verify(body, header, secrets, now)
    except SignatureError as error:
        return error.reason
    return None


def test_a_genuine_signature_verifies_and_agrees_with_the_stripe_sdk() -> None:
    header = sign(BODY, [SECRET], NOW)
    assert verify(BODY, header, [SECRET], NOW) == NOW
    # Our signer and Stripe's own verifier agree (the SDK checks against the real clock).
    import time

    fresh = sign(BODY, [SECRET], int(time.time()))
    assert stripe.WebhookSignature.verify_header(BODY.decode(), fresh, SECRET, tolerance=300)


def test_refusals_name_their_reason() -> None:
    assert reason(BODY, None, [SECRET]) == "missing"
    assert reason(BODY, "", [SECRET]) == "missing"
    assert reason(BODY, "v1=" + "0" * 64, [SECRET]) == "malformed"
    assert reason(BODY, f"t={NOW}", [SECRET]) == "malformed"
    assert reason(BODY, f"t=abc,v1={'0' * 64}", [SECRET]) == "malformed"
    assert reason(BODY, sign(BODY, [OTHER], NOW), [SECRET]) == "mismatch"
    assert reason(BODY + b" ", sign(BODY, [SECRET], NOW), [SECRET]) == "mismatch"
    assert reason(BODY, sign(BODY, [SECRET], NOW - SIGNATURE_TOLERANCE_SECONDS - 1), [SECRET]) == "stale"
    assert reason(BODY, sign(BODY, [SECRET], NOW + SIGNATURE_TOLERANCE_SECONDS + 1), [SECRET]) == "future"
    assert reason(BODY, sign(BODY, [SECRET], NOW - SIGNATURE_TOLERANCE_SECONDS), [SECRET]) is None
    assert reason(BODY, sign(BODY, [SECRET], NOW), []) == "no_secret"


def test_rotation_any_configured_secret_and_any_v1_signature() -> None:
    # Stripe signs with both the old and the new secret during its roll; we hold either one.
    both = sign(BODY, [OTHER, SECRET], NOW)
    assert reason(BODY, both, [SECRET]) is None
    assert reason(BODY, sign(BODY, [OTHER], NOW), [SECRET, OTHER]) is None
    # An unknown scheme (v0) is ignored; a good v1 after bad ones still counts.
    header = f"t={NOW},v0={'1' * 64},v1={'2' * 64}," + sign(BODY, [SECRET], NOW).split(",", 1)[1]
    assert reason(BODY, header, [SECRET]) is None


@settings(max_examples=100, deadline=None)
@given(body=st.binary(max_size=256), index=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=255))
def test_any_changed_byte_breaks_the_signature(body: bytes, index: int, flip: int) -> None:
    header = sign(body, [SECRET], NOW)
    assert reason(body, header, [SECRET]) is None
    if body:
        position = index % len(body)
        tampered = body[:position] + bytes([body[position] ^ flip]) + body[position + 1 :]
        assert reason(tampered, header, [SECRET]) == "mismatch"


@settings(max_examples=100, deadline=None)
@given(header=st.text(max_size=200))
def test_random_headers_are_refused_never_crash(header: str) -> None:
    assert reason(BODY, header, [SECRET]) in {"missing", "malformed", "mismatch"}


def test_payload_parsing_keeps_what_postgres_can_store() -> None:
    event, _ = parse_event(b'{"id":"evt_2","type":"charge.dispute.closed","created":5,'
                           b'"data":{"object":{"id":"dp_1","object":"dispute","status":"won","amount":100,'
                           b'"charge":"ch_1","payment_intent":"pi_1","metadata":{}}}}')  # fmt: skip
    signal = build_signal(event)
    assert (signal.event_id, signal.object_type, signal.status, signal.amount) == ("evt_2", "dispute", "won", 100)
    assert signal.data == {"charge": "ch_1", "payment_intent": "pi_1"}
    for bad in (
        b"[]",
        b'{"type":"x"}',
        b'{"id":"evt_3"}',
        b"\xff",
        b'{"id":"e","type":"t","x":"\\u0000"}',
        b'{"id":"e","type":"t","x":Infinity}',
        b'{"id":"e","type":"t","x":NaN}',
    ):
        try:
            parse_event(bad)
        except PayloadInvalid:
            continue
        raise AssertionError(f"accepted {bad!r}")
    assert event_from_payload({"id": "evt_4", "type": "t", "created": True}).created == 0
