"""Logging set-up shared by the API and the worker, with card-number scrubbing.

Second line of defence for invariant 6 (no PAN in logs): every record's final message has
each card-number candidate that passes the Luhn check replaced by `[REDACTED-PAN]`.

This module also holds THE card-number detector, `card_number_spans`, used both by this
scrubber and by the API's request screening (`api.card_data`), so the two never disagree.
It lives here, not under `api/`, because the worker logs too and must not import the API.

The rule. A candidate is a run of 13 to 19 ASCII digits, optionally grouped by single spaces
or dashes ("4242424242424242", "4242 4242 4242 4242", "4242-4242-4242-4242"), that is neither
preceded nor followed by a letter, a digit or an underscore (a Unicode word character, `\\w`).
So a number standing on its own is found ("card 4242424242424242", `"4000056655665556"`,
`card[number]=4242424242424242`, a path segment `/4242424242424242`), while digits inside an
identifier are not: `pay_05eccc811280402087958c0e`, `pi_3Nabc4242424242424242`,
`acct_1234567890123456`. Penny's and Stripe's identifiers are alphanumeric tokens, so a digit
run inside one always touches a letter, digit or underscore.

Within a longer grouped run ("1 4242 4242 4242 4242 5") every stretch that starts and ends at a
group boundary is a candidate of its own: each is preceded and followed by a separator or by
the run's own outer boundary, so the rule above applies to it unchanged. Without this, a card
number written next to an unrelated number would hide inside a longer run failing Luhn.

UUIDs (8-4-4-4-12 hex, e.g. a v4 Idempotency-Key or a request id in a log line) are set aside
before the scan: no card number is written in that shape, and a UUID whose first groups happen
to be all digits would otherwise look like one (about 1 in 2000 random v4 UUIDs).

A 13-digit value that happens to pass Luhn (1 in 10 of them) is a hit too: that is the price of
never letting a real one through.
"""

from __future__ import annotations

import bisect
import itertools
import json
import logging
import re
from collections.abc import Iterator
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any

CARD_DIGITS_MIN = 13
CARD_DIGITS_MAX = 19
SCRUBBED = "[REDACTED-PAN]"

# A run of at least CARD_DIGITS_MIN digits, joined by single spaces or dashes. Greedy, so each
# match is a whole maximal run (a shorter run never matches, even from a later digit).
_LONG_DIGIT_RUN = re.compile(rf"[0-9](?:[ -]?[0-9]){{{CARD_DIGITS_MIN - 1},}}")
_DIGIT_GROUP = re.compile(r"[0-9]+")
# Luhn doubles every second digit from the right and adds the two digits of the product.
_LUHN_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)
_UUID = re.compile(
    r"(?<![0-9A-Fa-f-])[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}(?![0-9A-Fa-f-])"
)


def luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        digit = ord(char) - 48
        if index % 2 == 1:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def _is_word_character(char: str) -> bool:
    """A letter, digit or underscore, as `\\w` defines it: the characters ids are made of."""
    return char.isalnum() or char == "_"


def _blank_uuids(text: str) -> str:
    """The text with each UUID replaced by as many spaces, so offsets stay those of `text`.

    A UUID is bordered by neither a hex digit nor a dash, so no digit run touches one and
    blanking it never changes the boundary of a run outside it.
    """
    return _UUID.sub(lambda match: " " * len(match.group(0)), text)


def _luhn_prefix_sums(digits: bytes) -> tuple[list[int], list[int]]:
    """Two prefix sums of the Luhn weights: [0] for windows ending on an even index, [1] odd.

    In a window ending at index `last`, digits at the parity of `last` count as they are and the
    others doubled, so the Luhn sum of digits[start:last + 1] is
    `sums[last % 2][last + 1] - sums[last % 2][start]`.
    """
    values = [byte - 48 for byte in digits]
    even_plain = [value if index % 2 == 0 else _LUHN_DOUBLED[value] for index, value in enumerate(values)]
    odd_plain = [_LUHN_DOUBLED[value] if index % 2 == 0 else value for index, value in enumerate(values)]
    return list(itertools.accumulate(even_plain, initial=0)), list(itertools.accumulate(odd_plain, initial=0))


def _card_numbers_in_run(text: str, run: re.Match[str]) -> Iterator[tuple[int, int]]:
    """Yield the (start, end) text offsets of every Luhn-valid candidate in one maximal digit run.

    A candidate is a stretch of whole groups: it starts at a group start and ends at a group
    end. Inner group edges border a separator, so they always qualify; the run's own first edge
    qualifies only if no word character precedes the run, its last edge only if none follows.
    Each end is paired only with the starts 13 to 19 digits before it and each Luhn sum is read
    off prefix sums, so the work stays linear in the run's length whatever the input.
    """
    groups = [(group.start(), group.end()) for group in _DIGIT_GROUP.finditer(text, run.start(), run.end())]
    digits = "".join(text[start:end] for start, end in groups).encode("ascii")
    start_index_of: dict[int, int] = {}  # digit index where a group starts -> text offset
    end_index_of: dict[int, int] = {}  # digit index just past a group -> text offset
    count = 0
    for group_start, group_end in groups:
        start_index_of[count] = group_start
        count += group_end - group_start
        end_index_of[count] = group_end
    if run.start() > 0 and _is_word_character(text[run.start() - 1]):
        del start_index_of[0]
    if run.end() < len(text) and _is_word_character(text[run.end()]):
        del end_index_of[len(digits)]
    sums = _luhn_prefix_sums(digits)
    # starts_by_residue[parity][r]: the starts whose prefix sum is r modulo 10, ascending. A
    # window passes Luhn exactly when its start's prefix sum and its end's agree modulo 10.
    starts_by_residue: tuple[list[list[int]], ...] = ([[] for _ in range(10)], [[] for _ in range(10)])
    for start in sorted(start_index_of):
        for parity in (0, 1):
            starts_by_residue[parity][sums[parity][start] % 10].append(start)
    for end in sorted(end_index_of):
        parity = (end - 1) % 2
        starts = starts_by_residue[parity][sums[parity][end] % 10]
        first = bisect.bisect_left(starts, end - CARD_DIGITS_MAX)
        last = bisect.bisect_right(starts, end - CARD_DIGITS_MIN)
        for start in starts[first:last]:
            yield start_index_of[start], end_index_of[end]


def card_number_spans(text: str) -> Iterator[tuple[int, int]]:
    """Yield the (start, end) offsets in `text` of each Luhn-valid card-number candidate.

    Spans may overlap (candidates inside one grouped run). See the module docstring for the rule.
    """
    blanked = _blank_uuids(text)
    for run in _LONG_DIGIT_RUN.finditer(blanked):
        yield from _card_numbers_in_run(blanked, run)


def contains_card_number(text: str) -> bool:
    return next(card_number_spans(text), None) is not None


def scrub_card_numbers(message: str) -> str:
    """The message with every card-number candidate (overlapping ones merged) replaced by SCRUBBED."""
    merged: list[list[int]] = []
    for start, end in sorted(card_number_spans(message)):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    if not merged:
        return message
    pieces: list[str] = []
    cursor = 0
    for start, end in merged:
        pieces += [message[cursor:start], SCRUBBED]
        cursor = end
    pieces.append(message[cursor:])
    return "".join(pieces)


# ------------------------------------------------------------------------------- secrets

# Secrets that must never reach a log line: Penny's API keys, Stripe secret and restricted keys,
# webhook signing secrets (Stripe's and Penny's outbox endpoints'), and whatever follows
# `Bearer `. Matched as whole tokens, so ids that merely contain these letters are left alone.
SECRET_SCRUBBED = "[REDACTED-SECRET]"
_SECRET = re.compile(
    r"(?<![A-Za-z0-9_])(?:sk_penny_|sk_test_|sk_live_|rk_test_|rk_live_|whsec_)[A-Za-z0-9_\-]{6,}"
    r"|(?i:bearer)\s+[A-Za-z0-9._~+/=\-]{8,}"
)


def contains_secret(text: str) -> bool:
    return _SECRET.search(text) is not None


def scrub_secrets(text: str) -> str:
    return _SECRET.sub(SECRET_SCRUBBED, text)


def scrub(text: str) -> str:
    """Card numbers and secrets out of `text`."""
    return scrub_secrets(scrub_card_numbers(text))


class CardNumberScrubber(logging.Filter):
    """Rewrites each record's message so no Luhn-valid card number or secret reaches a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        _scrub_record(record)
        return True


def _scrub_record(record: logging.LogRecord) -> None:
    """Scrub the record in place: its message (args merged in) and its exception text, which every
    standard formatter then uses as it is (`exc_text` is the formatted traceback's cache)."""
    try:
        message = record.getMessage()
    except Exception:  # a bad format string: keep what logging would show, scrubbed
        message = f"{record.msg!r} {record.args!r}"
    scrubbed = scrub(message)
    if scrubbed != message or record.args:
        record.msg = scrubbed
        record.args = None
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = scrub(record.exc_text)
    if record.stack_info:
        record.stack_info = scrub(record.stack_info)


_BASE_FACTORY = logging.getLogRecordFactory()


def _scrubbing_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    record = _BASE_FACTORY(*args, **kwargs)
    _scrub_record(record)
    # The ids of the task that logs, taken now: a handler may format the record later, elsewhere.
    record.penny_ids = _ambient_ids()
    return record


def install_record_scrubbing() -> None:
    """Scrub every record as it is created, before any handler (ours, uvicorn's, a test
    runner's) sees it. Idempotent."""
    if logging.getLogRecordFactory() is not _scrubbing_factory:
        logging.setLogRecordFactory(_scrubbing_factory)


# ------------------------------------------------------------------------------- context

# Ids a log line carries when they are known: set by the API per request (`bind_log_context`),
# and read from Temporal's activity and workflow context in the worker.
CONTEXT_FIELDS = ("request_id", "payment_id", "order_id", "workflow_id")
_LOG_CONTEXT: ContextVar[dict[str, str] | None] = ContextVar("penny_log_context", default=None)
WORKFLOW_ID_PREFIX = "payment-"


def bind_log_context(**ids: str | None) -> Token[dict[str, str] | None]:
    """Add ids to this task's log context; `reset_log_context(token)` takes them off again."""
    merged = dict(_LOG_CONTEXT.get() or {})
    merged.update({name: value for name, value in ids.items() if value})
    return _LOG_CONTEXT.set(merged)


def reset_log_context(token: Token[dict[str, str] | None]) -> None:
    _LOG_CONTEXT.reset(token)


def _ambient_ids() -> dict[str, str]:
    """The bound context plus, inside a Temporal activity, its workflow id."""
    found = dict(_LOG_CONTEXT.get() or {})
    try:
        from temporalio import activity

        if activity.in_activity() and activity.info().workflow_id:
            found.setdefault("workflow_id", str(activity.info().workflow_id))
    except Exception:  # outside Temporal, or an SDK without it: no ids from there
        pass
    return found


def context_of(record: logging.LogRecord) -> dict[str, str]:
    """The ids known for `record`: taken when it was made (bound context, Temporal activity), and
    the workflow id Temporal's workflow and activity loggers attach."""
    ids = getattr(record, "penny_ids", None)
    found = dict(ids) if isinstance(ids, dict) else _ambient_ids()
    for name in CONTEXT_FIELDS:  # given as `extra={"payment_id": ...}` by the line itself
        value = getattr(record, name, None)
        if value:
            found[name] = str(value)
    workflow = getattr(record, "temporal_workflow", None) or getattr(record, "temporal_activity", None)
    if isinstance(workflow, dict) and workflow.get("workflow_id"):
        found.setdefault("workflow_id", str(workflow["workflow_id"]))
    workflow_id = found.get("workflow_id", "")
    if workflow_id.startswith(WORKFLOW_ID_PREFIX):
        found.setdefault("order_id", workflow_id.removeprefix(WORKFLOW_ID_PREFIX))
    return {name: found[name] for name in CONTEXT_FIELDS if found.get(name)}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the known ids, exc (if any)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **context_of(record),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc"] = record.exc_text
        return scrub(json.dumps(line, ensure_ascii=False, default=str))


class TextFormatter(logging.Formatter):
    """Readable lines for development: time, level, logger, message, then `key=value` ids."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = context_of(record)
        if ids:
            first, newline, rest = line.partition("\n")
            line = first + " [" + " ".join(f"{name}={value}" for name, value in ids.items()) + "]" + newline + rest
        return scrub(line)


def configure_logging(level: int = logging.INFO, *, json_lines: bool | None = None) -> None:
    """Logging for a Penny process: records scrubbed at creation; JSON lines in production,
    readable text in development and test (PENNY_LOG_FORMAT overrides)."""
    if json_lines is None:
        try:
            from penny.settings import get_settings

            json_lines = get_settings().json_logs
        except Exception:  # settings that do not load are reported elsewhere; log readably meanwhile
            json_lines = False
    install_record_scrubbing()
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    handler.addFilter(CardNumberScrubber())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
