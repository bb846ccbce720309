"""Logging set-up shared by the API and the worker, with card-number scrubbing.

Second line of defence for invariant 6 (no PAN in logs): every record's final message has
any Luhn-valid run of 13-19 digits (spaces or dashes allowed between digits) replaced.
"""

from __future__ import annotations

import logging
import re

CARD_NUMBER_CANDIDATE = re.compile(r"(?<![0-9])(?:[0-9][ -]?){12,18}[0-9](?![0-9])")
SCRUBBED = "[REDACTED-PAN]"


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


def scrub_card_numbers(message: str) -> str:
    def _replace(match: re.Match[str]) -> str:
        digits = re.sub(r"[ -]", "", match.group(0))
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            return SCRUBBED
        return match.group(0)

    return CARD_NUMBER_CANDIDATE.sub(_replace, message)


class CardNumberScrubber(logging.Filter):
    """Rewrites each record's message so no Luhn-valid card number reaches a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        scrubbed = scrub_card_numbers(message)
        if scrubbed != message:
            record.msg = scrubbed
            record.args = None
        return True


def configure_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(CardNumberScrubber())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
