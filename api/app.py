"""The Penny API application (FastAPI). Run it with `penny api` or uvicorn `api.app:app`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from temporalio.client import Client

from api.health import check_postgres, check_stripe, check_temporal
from penny.db import create_engine
from penny.settings import Settings, get_settings

logger = logging.getLogger("penny.api")

TEMPORAL_CONNECT_TIMEOUT_SECONDS = 5.0


async def _connect_temporal(settings: Settings) -> Client | None:
    try:
        async with asyncio.timeout(TEMPORAL_CONNECT_TIMEOUT_SECONDS):
            return await Client.connect(settings.effective_temporal_address, namespace=settings.temporal_namespace)
    except Exception as error:
        logger.warning("Temporal not reachable at %s: %s", settings.effective_temporal_address, error)
        return None


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.engine = create_engine(settings.effective_database_url)
        app.state.temporal = await _connect_temporal(settings)
        try:
            yield
        finally:
            await app.state.engine.dispose()

    app = FastAPI(
        title="Penny",
        version="0.1.0",
        summary="Payment orchestration for marketplaces",
        lifespan=lifespan,
    )

    async def temporal_client(request: Request) -> Client | None:
        if request.app.state.temporal is None:
            request.app.state.temporal = await _connect_temporal(settings)
        return request.app.state.temporal  # type: ignore[no-any-return]

    async def dependency_states(request: Request) -> dict[str, dict[str, object]]:
        states = await asyncio.gather(
            check_postgres(request.app.state.engine),
            check_temporal(await temporal_client(request), settings.effective_temporal_address),
            check_stripe(settings.effective_stripe_api_base, settings.uses_emulator),
        )
        return {state.name: state.as_dict() for state in states}

    @app.get("/healthz", tags=["operations"], summary="Liveness, with each dependency's state")
    async def healthz(request: Request) -> dict[str, object]:
        return {"status": "ok", "dependencies": await dependency_states(request)}

    @app.get("/readyz", tags=["operations"], summary="Readiness: Postgres, Temporal and Stripe reachable")
    async def readyz(request: Request) -> JSONResponse:
        dependencies = await dependency_states(request)
        ready = all(bool(state["ok"]) for state in dependencies.values())
        return JSONResponse(
            {"status": "ready" if ready else "not_ready", "dependencies": dependencies},
            status_code=200 if ready else 503,
        )

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def __getattr__(name: str) -> FastAPI:
    # `uvicorn api.app:app` builds the app from settings on first access.
    if name == "app":
        return create_app()
    raise AttributeError(name)
