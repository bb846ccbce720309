"""The Penny API application (FastAPI). Run it with `penny api` or uvicorn `api.app:app`.

Layers, outermost first: `EdgeMiddleware` (request id, body limit, card-data refusal,
metrics, no stack traces), authentication and roles (`api.auth`), validation (`api.models`,
`api.limits`), idempotency (`api.idempotency`), then the payment workflow (`api.workflow_client`).
The lifespan owns the database engine, the Temporal client and the idempotency-key sweeper.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from temporalio.client import Client

from api import (
    idempotency,
    ledger_views,
    ops_dashboard,
    payments,
    reconciliation,
    refunds,
    reviews,
    webhook_endpoints,
    webhooks,
)
from api.auth import KeyUseRecorder
from api.edge import EdgeMiddleware
from api.errors import ApiError, api_error_handler, http_error_handler, validation_error_handler
from api.health import check_postgres, check_stripe, check_temporal
from penny import tracing
from penny.db import create_engine
from penny.logs import CardNumberScrubber
from penny.payload_converter import DATA_CONVERTER
from penny.settings import Settings, get_settings
from workflows.payment_models import PaymentTimings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

logger = logging.getLogger("penny.api")

TEMPORAL_CONNECT_TIMEOUT_SECONDS = 5.0
IDEMPOTENCY_SWEEP_INTERVAL_SECONDS = 300.0
# Loggers that may see request data: each scrubs card numbers itself (second line of defence),
# whatever handlers the process installs.
SCRUBBED_LOGGERS = (
    "penny",
    "penny.api",
    "penny.api.idempotency",
    "penny.api.temporal",
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "fastapi",
)


def install_card_number_scrubber() -> None:
    for name in SCRUBBED_LOGGERS:
        target = logging.getLogger(name)
        if not any(isinstance(existing, CardNumberScrubber) for existing in target.filters):
            target.addFilter(CardNumberScrubber())


async def _connect_temporal(settings: Settings, tracer_provider: TracerProvider | None = None) -> Client | None:
    try:
        async with asyncio.timeout(TEMPORAL_CONNECT_TIMEOUT_SECONDS):
            return await Client.connect(
                settings.effective_temporal_address,
                namespace=settings.temporal_namespace,
                interceptors=tracing.temporal_interceptors(tracer_provider),
                # Decodes the first milestone's PaymentState with its field types resolved once (#16).
                data_converter=DATA_CONVERTER,
            )
    except Exception as error:
        logger.warning("Temporal not reachable at %s: %s", settings.effective_temporal_address, error)
        return None


async def _sweep_idempotency_keys_forever(app: FastAPI) -> None:
    while True:
        try:
            swept = await idempotency.sweep_expired(app.state.engine)
            if swept:
                logger.info("swept %d expired idempotency keys", swept)
        except Exception as error:  # the next run tries again; the API keeps serving
            logger.warning("idempotency key sweep failed: %s: %s", type(error).__name__, error)
        await asyncio.sleep(IDEMPOTENCY_SWEEP_INTERVAL_SECONDS)


def create_app(
    settings: Settings | None = None,
    *,
    temporal_client: Client | None = None,
    payment_timings: PaymentTimings | None = None,
    tracer_provider: TracerProvider | None = None,
) -> FastAPI:
    """Build the API. `temporal_client` reuses a connected client; `payment_timings` overrides the
    workflow's waits for payments this API starts (tests compress them). `tracer_provider` traces the
    requests (and the Temporal client the API connects itself; a given `temporal_client` brings its own
    interceptors) instead of the provider PENNY_TRACING_EXPORTER builds, which is None by default."""
    settings = settings or get_settings()
    install_card_number_scrubber()
    # The app flushes and stops only a provider it built; a caller's provider is the caller's.
    owned_tracer_provider = tracing.tracer_provider(settings, "api") if tracer_provider is None else None
    if owned_tracer_provider is not None:
        tracer_provider = owned_tracer_provider

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.engine = create_engine(settings.effective_database_url)
        app.state.temporal = temporal_client or await _connect_temporal(settings, tracer_provider)
        sweeper = asyncio.create_task(_sweep_idempotency_keys_forever(app), name="idempotency-sweeper")
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            await app.state.engine.dispose()
            if owned_tracer_provider is not None:
                # Exports the queued spans: blocking, bounded by the exporter's timeout, so off the loop.
                await asyncio.to_thread(owned_tracer_provider.shutdown)

    app = FastAPI(
        title="Penny",
        version="0.1.0",
        summary="Payment orchestration for marketplaces",
        description='Errors are always `{"error": {"type", "code", "message", "param", "doc_url"}}`. Every POST '
        "needs an `Idempotency-Key`; raw card data is refused anywhere in a request. Money fields are integers "
        "in minor units (`amount`, `tax_amount`, `application_fee_amount`); rates are basis points (`*_bps`). "
        "`Penny-Version` (a date) pins the API version; every answer echoes it and carries a `Request-Id`.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.key_use = KeyUseRecorder()
    app.state.payment_timings = payment_timings or settings.payment_timings_override
    app.state.temporal = temporal_client

    async def temporal(request_app: Any = None) -> Client | None:
        if app.state.temporal is None:
            app.state.temporal = await _connect_temporal(settings, tracer_provider)
        return app.state.temporal  # type: ignore[no-any-return]

    app.state.temporal_client = temporal

    def openapi_with_configured_limits() -> dict[str, Any]:
        # The currency set and the largest amount are configuration: document the deployed values.
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
            )
            create = schema["components"]["schemas"]["PaymentCreate"]["properties"]
            codes = sorted(settings.currencies)
            create["currency"]["enum"] = codes + [code.lower() for code in codes]
            create["amount"]["maximum"] = settings.max_amount_minor
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi_with_configured_limits  # type: ignore[method-assign]
    app.add_middleware(EdgeMiddleware, max_body_bytes=settings.max_body_bytes)
    # Outermost of all (penny.tracing): the request span covers the edge's refusals too. Nothing when off.
    tracing.instrument_api(app, tracer_provider)
    app.add_exception_handler(ApiError, api_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.include_router(payments.router)
    app.include_router(refunds.router)
    app.include_router(ledger_views.router)
    app.include_router(reviews.router)
    app.include_router(webhook_endpoints.router)
    app.include_router(reconciliation.router)
    app.include_router(webhooks.router)
    app.include_router(ops_dashboard.router)

    async def dependency_states(request: Request) -> dict[str, dict[str, object]]:
        states = await asyncio.gather(
            check_postgres(request.app.state.engine),
            check_temporal(await temporal(), settings.effective_temporal_address),
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
