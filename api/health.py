"""Dependency checks shared by /healthz and /readyz."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

CHECK_TIMEOUT_SECONDS = 2.0


@dataclass
class DependencyState:
    name: str
    ok: bool
    detail: str

    def as_dict(self) -> dict[str, object]:
        return {"ok": self.ok, "detail": self.detail}


async def check_postgres(engine: AsyncEngine) -> DependencyState:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            async with engine.connect() as connection:
                version = (await connection.execute(text("SHOW server_version"))).scalar_one()
        return DependencyState("postgres", True, f"PostgreSQL {version}")
    except Exception as error:
        return DependencyState("postgres", False, f"{type(error).__name__}: {error}"[:300])


async def check_temporal(client: Client | None, address: str) -> DependencyState:
    if client is None:
        return DependencyState("temporal", False, f"not connected to {address}")
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            await client.service_client.check_health()
        return DependencyState("temporal", True, f"{address} namespace {client.namespace}")
    except Exception as error:
        return DependencyState("temporal", False, f"{type(error).__name__}: {error}"[:300])


async def check_stripe(api_base: str, uses_emulator: bool) -> DependencyState:
    if not uses_emulator:
        return DependencyState("stripe", True, f"configured: {api_base}")
    try:
        async with httpx.AsyncClient(timeout=CHECK_TIMEOUT_SECONDS) as http:
            response = await http.get(f"{api_base}/health")
        return DependencyState("stripe", response.status_code == 200, f"emulator at {api_base}")
    except httpx.HTTPError as error:
        return DependencyState("stripe", False, f"emulator at {api_base}: {type(error).__name__}")
