"""Stripe's cursor pagination, shared by every list: `limit`, `starting_after`, `ending_before`.

A page is at most `limit` objects in the list's own order. `starting_after=X` gives the objects
after X; `ending_before=X` the ones just before X (still in the list's order); `has_more` says
whether more objects lie beyond the page in the direction it was read. The two cursors are
exclusive, as in Stripe's API.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from api.errors import invalid_request


def check_exclusive_cursors(starting_after: object | None, ending_before: object | None) -> None:
    if starting_after is not None and ending_before is not None:
        raise invalid_request(
            "parameters_exclusive",
            "You may only specify one of these parameters: starting_after, ending_before.",
            "ending_before",
        )


def ascending_window(
    keys: Sequence[int], limit: int, starting_after: int | None, ending_before: int | None
) -> tuple[int, int, bool]:
    """For `keys` sorted ascending (the list's order): the slice [start, end) of one page and
    whether more lie beyond it in the direction it was read."""
    assert all(earlier < later for earlier, later in itertools.pairwise(keys)), "keys must ascend"
    if ending_before is not None:
        end = sum(1 for key in keys if key < ending_before)
        start = max(0, end - limit)
        return start, end, start > 0
    start = sum(1 for key in keys if starting_after is not None and key <= starting_after)
    end = min(len(keys), start + limit)
    return start, end, end < len(keys)
