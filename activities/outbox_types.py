"""Names, inputs and outputs of the outbox relay, and the vocabulary its subscribers see.

Pure (standard library and the payment state machine only, no I/O): the relay workflow imports
it inside the Temporal sandbox, and the API (`api/webhook_endpoints.py`) validates subscribers'
event types and spells endpoint ids with it.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from workflows.ids import ID_ALPHABET
from workflows.state_machine import PaymentStatus

OUTBOX_RELAY_WORKFLOW_NAME = "OutboxRelayWorkflow"
OUTBOX_RELAY_ACTIVITY_NAME = "relay_outbox"
OUTBOX_RELAY_WORKFLOW_ID_PREFIX = "outbox-relay-"
# Rounds per workflow run before continue-as-new keeps the history short.
OUTBOX_RELAY_ROUNDS_PER_RUN = 200

# Every event a payment emits: `payment.<status>` (activities/payments.py `_append_outbox`), one per
# status change. A subscriber names the ones it wants, or "*" for all of them.
EVENT_TYPES: tuple[str, ...] = tuple(f"payment.{status.value.lower()}" for status in PaymentStatus)
ALL_EVENTS = "*"

# outbox_deliveries.status; see migration 0009_outbox_delivery.
DELIVERY_PENDING = "pending"  # waiting for its next attempt (or in flight, under a lease)
DELIVERY_DELIVERED = "delivered"  # the subscriber answered 2xx
DELIVERY_DEAD = "dead"  # attempts exhausted: a review item names it; `redeliver` revives it
DELIVERY_CANCELED = "canceled"  # its endpoint was deleted before it was delivered
DELIVERY_STATUSES = (DELIVERY_PENDING, DELIVERY_DELIVERED, DELIVERY_DEAD, DELIVERY_CANCELED)

ENDPOINT_ID_PREFIX = "we_"
DELIVERY_ID_PREFIX = "wd_"
ID_BODY_LENGTH = 24
ENDPOINT_ID_PATTERN = rf"^we_[{ID_ALPHABET}]{{{ID_BODY_LENGTH}}}$"
DELIVERY_ID_PATTERN = rf"^wd_[{ID_ALPHABET}]{{{ID_BODY_LENGTH}}}$"
REVIEW_KIND_DEAD_LETTER = "delivery_dead_letter"
# Live (not deleted) endpoints at most, as Stripe limits an account to 16.
WEBHOOK_ENDPOINTS_MAX = 16
WEBHOOK_URL_LENGTH_MAX = 2048
LOOPBACK_HOST_NAMES = frozenset({"localhost", "localhost.localdomain"})


def _host_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def url_problem(url: str, *, allow_loopback: bool) -> str | None:
    """Why `url` cannot be a subscriber's endpoint, or None. Checked when an endpoint is created or
    changed (the API answers 400 `url_invalid`) and again before every delivery.

    https only, or plain http to a loopback address when `allow_loopback` (development). No
    credentials in the URL (they would be stored and shown), no fragment, a length limit. An IP
    literal must be a public address: private, link-local (cloud metadata), multicast and
    reserved ranges are refused; loopback only when allowed. (A host name is not resolved here:
    a name pointing at a private address is the operator's choice.)
    """
    if not url or len(url) > WEBHOOK_URL_LENGTH_MAX:
        return f"the URL must be 1 to {WEBHOOK_URL_LENGTH_MAX} characters"
    if not url.isascii() or any(char.isspace() or ord(char) < 0x20 or ord(char) == 0x7F for char in url):
        return "the URL must be ASCII without spaces or control characters (percent-encode the rest)"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "the URL is not valid"
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if scheme not in ("https", "http"):
        return "the URL must start with https://"
    if not host:
        return "the URL has no host"
    if parts.username is not None or parts.password is not None:
        return "the URL must not contain a user name or password"
    if parts.fragment or url.endswith("#"):
        return "the URL must not contain a fragment (#...)"
    if port == 0:
        return "the URL's port must be 1 to 65535"
    host = host.removesuffix(".")
    address = _host_address(host)
    last_label = host.rsplit(".", 1)[-1]
    if address is None and (last_label.isdigit() or last_label.startswith("0x")):
        # "2130706433", "127.1", "0x7f.1": the resolver would read them as addresses.
        return "the URL's host is neither a host name nor a dotted IP address"
    loopback = host in LOOPBACK_HOST_NAMES or (address is not None and address.is_loopback)
    if loopback and not allow_loopback:
        return "loopback addresses are allowed only when PENNY_WEBHOOK_ALLOW_LOOPBACK is on (development)"
    if scheme == "http" and not loopback:
        return "the URL must start with https:// (plain http only to a loopback address, in development)"
    if address is not None and not loopback and not address.is_global:
        return "the URL's address must be public (not private, link-local, multicast or reserved)"
    return None


def event_type_enabled(enabled_events: list[str], event_type: str) -> bool:
    return ALL_EVENTS in enabled_events or event_type in enabled_events


def _letters_id(prefix: str, *parts: str) -> str:
    """`prefix` + 24 letters of ID_ALPHABET from the SHA-256 of `parts`, spelled as workflows/ids.py
    spells payment ids: letters only, so no id can ever look like a card number."""
    value = int.from_bytes(hashlib.sha256("\x00".join(parts).encode()).digest(), "big")
    letters: list[str] = []
    for _ in range(ID_BODY_LENGTH):
        value, index = divmod(value, len(ID_ALPHABET))
        letters.append(ID_ALPHABET[index])
    return prefix + "".join(reversed(letters))


def endpoint_id_for_request(api_key_id: str, idempotency_key: str) -> str:
    """`we_` + 24 letters: the same create request (same caller, same Idempotency-Key) names the
    same endpoint, so a retry after a lost response never creates a second one."""
    return _letters_id(ENDPOINT_ID_PREFIX, "webhook_endpoint", api_key_id, idempotency_key)


def delivery_id_for(event_id: str, endpoint_id: str) -> str:
    """`wd_` + 24 letters: one delivery per (event, endpoint), whoever fans the event out."""
    return _letters_id(DELIVERY_ID_PREFIX, "webhook_delivery", event_id, endpoint_id)


def relay_workflow_id(task_queue: str) -> str:
    """One outbox relay per task queue (one per deployment; tests get one per task queue)."""
    return f"{OUTBOX_RELAY_WORKFLOW_ID_PREFIX}{task_queue}"


@dataclass
class OutboxRelayInput:
    rounds_per_run: int = OUTBOX_RELAY_ROUNDS_PER_RUN


@dataclass
class OutboxRelayRoundInput:
    """One round of the relay. Limits come from the worker's settings, not from here, so a
    settings change applies to a relay that is already running."""

    round_number: int = 0


@dataclass
class OutboxRelayRoundResult:
    published: int = 0  # outbox rows fanned out (published_at set)
    deliveries_created: int = 0
    attempted: int = 0
    delivered: int = 0
    failed_attempts: int = 0  # attempts that will be retried after a backoff
    dead_lettered: int = 0
    limited: bool = False  # the round stopped at its batch or time limit, not for want of work
    # How long the relay workflow should sleep before the next round.
    sleep_seconds: float = 1.0
