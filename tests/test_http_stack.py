"""The async HTTP stack Penny's processes share: httpx over httpcore finds what it looks up per
request, and uvicorn serves on uvloop.

Unit tests (no services).
"""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import pytest
from httpcore import _synchronization


class _CountingFinder(importlib.abc.MetaPathFinder):
    def __init__(self) -> None:
        self.searched: list[str] = []

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None) -> Any:
        self.searched.append(fullname)
        return None


async def test_httpcore_tells_asyncio_without_searching_for_a_module_each_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """httpcore imports sniffio in every async request; without it installed, each of those
    imports fails only after a search of sys.path (15 % of the emulator's CPU under load, #16)."""
    finder = _CountingFinder()
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    for _ in range(3):
        assert _synchronization.current_async_library() == "asyncio"
    assert finder.searched == []


@pytest.mark.skipif(sys.platform == "win32", reason="uvloop does not run on Windows")
def test_uvicorn_runs_the_api_on_uvloop() -> None:
    """`penny api` leaves the loop to uvicorn ("auto"), which takes uvloop when it is installed."""
    import uvloop
    from uvicorn.loops.auto import auto_loop_factory

    loop = auto_loop_factory()()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()
