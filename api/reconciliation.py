"""Reconciliation endpoints (ops keys only): start a run for a window, read runs and their items,
the HTML report (with an inline SVG chart of recent runs) and the CSV export.

A run is a `ReconciliationWorkflow` (README "Reconciliation"); `POST /v1/reconciliation/runs`
starts one and answers at once with the run (`status` `running`); read it again, or its report,
to see what it found.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from temporalio.service import RPCError

from api.auth import OpsKey
from api.errors import (
    ERROR_RESPONSES,
    IDEMPOTENT_POST_RESPONSES,
    invalid_request,
    json_response,
    resource_missing,
    service_unavailable,
)
from api.payments import Engine, IdempotencyKey, _raw_json, _run_idempotent, _settings, _temporal
from penny import reconciliation_reports as reports
from penny.reconciliation_schedule import new_run_id, start_reconciliation

router = APIRouter(prefix="/v1", tags=["reconciliation"])

WINDOW_SECONDS_MAX = 31 * 86_400
# A window may not end further in the future than this (Stripe has nothing there yet).
WINDOW_END_FUTURE_SECONDS_MAX = 86_400
UNIX_SECONDS_MAX = 2**40
RUNS_PAGE_DEFAULT = 20

RunId = Annotated[
    str,
    Path(max_length=30, pattern=reports.RUN_ID_PATTERN, examples=["recon_abcdefghijklmnopqrstuvwx"]),
]


class ReconciliationRunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    window_start: int = Field(ge=0, le=UNIX_SECONDS_MAX, description="Window start, unix seconds (included).")
    window_end: int = Field(ge=1, le=UNIX_SECONDS_MAX, description="Window end, unix seconds (excluded).")


class ReconciliationRun(BaseModel):
    id: str
    object: str = "reconciliation_run"
    window_start: int
    window_end: int
    trigger: str
    requested_by: str
    status: str
    counts: dict[str, int]
    mismatches: int
    fetched: dict[str, int]
    tolerances: dict[str, int]
    repaired: int
    started_at: int
    finished_at: int | None
    workflow_id: str


class ReconciliationRunList(BaseModel):
    object: str = "list"
    url: str
    data: list[ReconciliationRun]


class ReconciliationItem(BaseModel):
    id: int
    object: str = "reconciliation_item"
    item_class: str = Field(alias="class")
    item_key: str
    payment_id: str | None
    order_id: str | None
    stripe_id: str | None
    reason: str
    stripe: dict[str, Any]
    penny: dict[str, Any]
    review_id: str | None
    repair: str | None


class ReconciliationItemList(BaseModel):
    object: str = "list"
    url: str
    data: list[ReconciliationItem]


async def _run_or_404(engine: Any, run_id: str) -> reports.RunView:
    run = await reports.get_run(engine, run_id)
    if run is None:
        raise resource_missing("reconciliation_run")
    return run


@router.post(
    "/reconciliation/runs",
    response_model=ReconciliationRun,
    responses=IDEMPOTENT_POST_RESPONSES,
    summary="Reconcile a window against Stripe now",
    description="Starts a reconciliation run for `[window_start, window_end)` (unix seconds, at most 31 days) "
    "and answers with the run at once (`running`). Requires `Idempotency-Key`.",
)
async def create_run(
    request: Request,
    body: ReconciliationRunCreate,
    api_key: OpsKey,
    idempotency_key: IdempotencyKey,
    engine: Engine,
) -> Response:
    if body.window_end <= body.window_start:
        raise invalid_request("window_invalid", "window_end must be after window_start.", "window_end")
    if body.window_end - body.window_start > WINDOW_SECONDS_MAX:
        raise invalid_request("window_too_long", "A window is at most 31 days.", "window_end")
    if body.window_end > time.time() + WINDOW_END_FUTURE_SECONDS_MAX:
        raise invalid_request("window_in_future", "window_end is more than a day in the future.", "window_end")
    settings = _settings(request)

    async def operation() -> tuple[int, dict[str, Any], str | None]:
        client = await _temporal(request)
        run_id = new_run_id()
        requested_by = f"api:{api_key.name} ({api_key.id})"
        try:
            handle = await start_reconciliation(
                client,
                settings.temporal_task_queue,
                run_id=run_id,
                window_start_unix=body.window_start,
                window_end_unix=body.window_end,
                trigger="api",
                requested_by=requested_by,
            )
        except RPCError as error:
            raise service_unavailable("The reconciliation engine (Temporal)") from error
        run = await reports.record_requested_run(
            engine,
            run_id=run_id,
            window_start_unix=body.window_start,
            window_end_unix=body.window_end,
            trigger="api",
            requested_by=requested_by,
            workflow_id=handle.id,
        )
        payload = run.as_dict()
        return 200, payload, run_id

    return await _run_idempotent(request, api_key, idempotency_key, await _raw_json(request), operation)


@router.get(
    "/reconciliation/runs",
    response_model=ReconciliationRunList,
    responses=ERROR_RESPONSES,
    summary="List reconciliation runs, newest first",
)
async def list_runs(
    api_key: OpsKey, engine: Engine, limit: Annotated[int, Query(ge=1, le=reports.RUNS_LISTED_MAX)] = RUNS_PAGE_DEFAULT
) -> Response:
    runs = await reports.list_runs(engine, limit)
    return json_response(200, {"object": "list", "url": "/v1/reconciliation/runs", "data": [r.as_dict() for r in runs]})


@router.get(
    "/reconciliation/runs/{run_id}",
    response_model=ReconciliationRun,
    responses=ERROR_RESPONSES,
    summary="Retrieve a reconciliation run with its counts per class",
)
async def get_run(run_id: RunId, api_key: OpsKey, engine: Engine) -> Response:
    return json_response(200, (await _run_or_404(engine, run_id)).as_dict())


@router.get(
    "/reconciliation/runs/{run_id}/items",
    response_model=ReconciliationItemList,
    responses=ERROR_RESPONSES,
    summary="The mismatches a run found, with both sides' values",
)
async def get_items(run_id: RunId, api_key: OpsKey, engine: Engine) -> Response:
    await _run_or_404(engine, run_id)
    items = await reports.run_items(engine, run_id)
    return json_response(
        200,
        {
            "object": "list",
            "url": f"/v1/reconciliation/runs/{run_id}/items",
            "data": [item.as_dict() for item in items],
        },
    )


@router.get(
    "/reconciliation/runs/{run_id}/report",
    response_class=HTMLResponse,
    responses=ERROR_RESPONSES,
    summary="The run's HTML report, with a chart of matched and mismatched by class over recent runs",
)
async def get_report(run_id: RunId, api_key: OpsKey, engine: Engine) -> HTMLResponse:
    run = await _run_or_404(engine, run_id)
    items = await reports.run_items(engine, run_id)
    recent = await reports.list_runs(engine, reports.CHART_RUNS_MAX)
    return HTMLResponse(
        reports.render_html(run, items, recent),
        headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"},
    )


@router.get(
    "/reconciliation/runs/{run_id}/items.csv",
    responses=ERROR_RESPONSES,
    summary="The run's items as CSV",
)
async def get_items_csv(run_id: RunId, api_key: OpsKey, engine: Engine) -> Response:
    await _run_or_404(engine, run_id)
    items = await reports.run_items(engine, run_id)
    return Response(
        reports.render_csv(items),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{run_id}.csv"'},
    )
