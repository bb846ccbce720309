"""The async HTTP stack Penny's processes share: httpx over httpcore finds what it looks up per
request, uvicorn serves on uvloop, and Penny's servers keep idle connections longer than httpx.

Unit tests, and one that starts `penny emulator` and talks to it over a real socket.
"""

from __future__ import annotations

import argparse
import importlib.abc
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from httpcore import _synchronization

from penny.services import HTTP_KEEP_ALIVE_SECONDS, free_port, stop_process, wait_for_port

# httpx's default idle expiry for a pooled connection (`httpx.Limits().keepalive_expiry`).
HTTPX_KEEPALIVE_EXPIRY_SECONDS = httpx.Limits().keepalive_expiry or 0.0


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


def _http_get(connection: socket.socket, path: str) -> bytes:
    """One HTTP/1.1 GET on an open connection (kept alive); the response's head and body."""
    connection.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = connection.recv(65536)
        if not chunk:
            return received  # the server closed the connection
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: *(\d+)", head, re.IGNORECASE).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        body += connection.recv(65536)
    return head


def test_penny_emulator_keeps_an_idle_connection_longer_than_httpx_does(tmp_path: Path) -> None:
    """uvicorn's default keep-alive (5 s) equals httpx's idle expiry, so a client could reuse a
    connection the server was closing and lose a request it never read (a reconciliation test
    once failed so: "Remote end closed connection without response"). `penny emulator` keeps an
    idle connection HTTP_KEEP_ALIVE_SECONDS: after httpx's expiry it still answers on it."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "penny.cli", "emulator", "--port", str(port)],
        env={**os.environ, "PENNY_EMULATOR_DB": "", "PENNY_EMULATOR_PORT": str(port)},
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert wait_for_port("127.0.0.1", port, 30), "penny emulator did not start"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
            assert _http_get(connection, "/health").startswith(b"HTTP/1.1 200")
            time.sleep(HTTPX_KEEPALIVE_EXPIRY_SECONDS + 1.0)
            assert _http_get(connection, "/health").startswith(b"HTTP/1.1 200")
    finally:
        stop_process(process)


def test_penny_api_and_emulator_run_uvicorn_with_the_long_keep_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both servers `penny` starts get the same keep-alive (the API is started like the emulator)."""
    import uvicorn

    from penny import cli

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: calls.append(kwargs))
    monkeypatch.setattr("penny.logs.configure_logging", lambda: None)  # no global logging set-up in a test
    cli.command_api(argparse.Namespace())
    cli.command_emulator(argparse.Namespace(port=None))
    assert [call["timeout_keep_alive"] for call in calls] == [HTTP_KEEP_ALIVE_SECONDS, HTTP_KEEP_ALIVE_SECONDS]
    assert HTTP_KEEP_ALIVE_SECONDS > HTTPX_KEEPALIVE_EXPIRY_SECONDS
