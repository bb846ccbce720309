"""Routes of the Stripe-compatible API: `@route("POST", "/v1/payment_intents/{intent}/confirm")`."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stripe_emulator._state import State


@dataclass
class Call:
    """One API call as a handler sees it."""

    state: State
    params: dict[str, Any]
    path: dict[str, str]
    request: dict[str, Any] = field(default_factory=lambda: {"id": None, "idempotency_key": None})
    strict: bool = True


Handler = Callable[[Call], dict[str, Any]]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    # Parameters this route accepts besides `expand` (None: not checked).
    allowed: frozenset[str] | None


ROUTES: list[Route] = []


def route(method: str, template: str, allowed: tuple[str, ...] | None = ()) -> Callable[[Handler], Handler]:
    regex = "^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template) + "$"

    def register(handler: Handler) -> Handler:
        names = None if allowed is None else frozenset((*allowed, "expand"))
        ROUTES.append(Route(method, re.compile(regex), handler, names))
        return handler

    return register


def match(method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
    """(route, path parameters, whether the path exists for another method)."""
    path_exists = False
    for candidate in ROUTES:
        found = candidate.pattern.match(path)
        if found is None:
            continue
        if candidate.method == method:
            return candidate, found.groupdict(), True
        path_exists = True
    return None, {}, path_exists
