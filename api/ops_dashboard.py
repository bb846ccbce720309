"""The ops dashboard: `GET /ops`, one server-rendered page for people on call (ops keys only).

What it shows is read by `penny.ops_dashboard_data` (which builds on `penny.ops_monitor`'s
snapshot and `penny.reconciliation_reports`); this module authenticates and renders. Charts are
inline SVG drawn here: no script, no external resource, no CDN.

Authentication. A browser cannot send `Authorization: Bearer` from a link, and an API key must
never travel in a URL, so the page accepts either:
- `Authorization: Bearer <ops key>` (curl, scripts, tests), checked exactly like the /v1 API
  (401 for a missing or unknown key, 403 `insufficient_role` for a merchant key); or
- a session cookie from the sign-in form: `POST /ops/login` with the key in a form field
  (a password input) checks that the key is an active `ops` key and answers with
  `penny_ops_session` = `<key id>.<expiry>.<HMAC-SHA256>`, HttpOnly, SameSite=Strict, Path=/ops,
  Secure over HTTPS (and always in production), valid SESSION_SECONDS. The HMAC key is derived
  from PENNY_API_KEY_PEPPER, so only this deployment can mint one; the cookie holds no secret
  usable elsewhere (it is not the key), and every request re-reads the key: revoking it
  (`penny keys revoke`) ends its sessions at once. `POST /ops/logout` clears the cookie.
  Both POSTs refuse a cross-site `Origin` (the cookie is SameSite=Strict as well).
Without credentials the page answers 401 with the sign-in form.

Every value is escaped (`html.escape`). Every answer carries a strict Content-Security-Policy
(`default-src 'none'`, styles and the icon from this origin only, forms to this origin only, no
framing), `no-store`, `nosniff` and `Referrer-Policy: same-origin` (not `no-referrer`: with it
Chromium sends `Origin: null` from the sign-in form, which the cross-site check refuses). The
routes are not in the OpenAPI schema: they are a page for people, not part of the API contract.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import time
from datetime import UTC, datetime
from typing import Annotated
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from api import review_queue
from api.auth import authenticate, bearer
from api.errors import ApiError
from api.models import REVIEW_ID_LENGTH_MAX, REVIEW_ID_PATTERN, Review
from penny import ops_dashboard_data as data
from penny import reconciliation_reports as reports
from penny.keys import KEY_LENGTH_MAX, ApiKey, find_api_key
from penny.settings import Settings

router = APIRouter(include_in_schema=False)

SESSION_COOKIE = "penny_ops_session"
SESSION_SECONDS = 3600
SESSION_HMAC_CONTEXT = b"penny ops dashboard session v1"
LOGIN_BODY_BYTES_MAX = 1024
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
# The reconciliation report (penny/reconciliation_reports.py) styles inline: no script either way.
REPORT_CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}
STYLESHEET = """
body{font-family:system-ui,sans-serif;margin:20px 28px;color:#222;background:#fafafa}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:26px 0 8px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:6px 0;background:#fff}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top;font-size:13px}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.tiles{display:flex;flex-wrap:wrap;gap:10px}
.tile{background:#fff;border:1px solid #ccc;border-radius:6px;padding:8px 14px;min-width:150px}
.tile .v{font-size:24px;font-weight:600}.tile .l{font-size:12px;color:#555}
.ok{color:#2e7d32}.bad{color:#c62828}.muted{color:#666;font-size:12px}
.legend span{margin-right:12px;font-size:12px;white-space:nowrap}
.error{color:#c62828;font-weight:600}
form.inline{display:inline}header{display:flex;justify-content:space-between;align-items:baseline}
input[type=password]{width:32em}
"""
FAVICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">'
    '<circle cx="8" cy="8" r="7" fill="#b8860b"/><text x="8" y="12" font-size="10" text-anchor="middle" '
    'fill="#fff">P</text></svg>'
)
# One colour per payment status in the chart; a status not listed is drawn grey.
STATUS_COLOURS = {
    "CREATED": "#90a4ae",
    "REQUIRES_PAYMENT_METHOD": "#b0bec5",
    "REQUIRES_ACTION": "#ffb74d",
    "PROCESSING": "#4fc3f7",
    "AUTHORIZED": "#7986cb",
    "CAPTURED": "#43a047",
    "SETTLED": "#1b5e20",
    "PARTIALLY_REFUNDED": "#9ccc65",
    "REFUNDED": "#c0ca33",
    "DISPUTED": "#ff7043",
    "REVERSED": "#8d6e63",
    "CANCELED": "#9e9e9e",
    "FAILED": "#c62828",
    "NEEDS_REVIEW": "#8e24aa",
}
OTHER_STATUS_COLOUR = "#616161"

escape = html.escape


# ----------------------------------------------------------------------------------- authentication


def _session_signature(settings: Settings, payload: str) -> str:
    secret = hmac.new(settings.api_key_pepper.encode(), SESSION_HMAC_CONTEXT, hashlib.sha256).digest()
    return hmac.new(secret, payload.encode(), hashlib.sha256).hexdigest()


def issue_session(settings: Settings, key_id: str, now_unix: int) -> str:
    payload = f"{key_id}.{now_unix + SESSION_SECONDS}"
    return f"{payload}.{_session_signature(settings, payload)}"


def session_key_id(settings: Settings, token: str, now_unix: int) -> str | None:
    """The key id of a valid, unexpired session token; None for anything else."""
    parts = token.split(".")
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    key_id, expires, signature = parts
    if not hmac.compare_digest(signature, _session_signature(settings, f"{key_id}.{expires}")):
        return None
    # A token valid for longer than a session lasts was not minted by this code: refuse it.
    if not now_unix < int(expires) <= now_unix + SESSION_SECONDS:
        return None
    return key_id


async def _active_key(engine: AsyncEngine, key_id: str) -> ApiKey | None:
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                text("SELECT id, name, role FROM api_keys WHERE id = :id AND revoked_at IS NULL"), {"id": key_id}
            )
        ).one_or_none()
    return ApiKey(row.id, row.name, row.role) if row is not None else None


def _insufficient_role(api_key: ApiKey) -> ApiError:
    return ApiError(
        403,
        "permission_error",
        "insufficient_role",
        f"A {api_key.role} key may not call this endpoint; it needs a ops key.",
    )


async def ops_viewer(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> ApiKey | None:
    """The ops key behind the request (Bearer header or session cookie); None: not signed in.
    A Bearer key that is unknown is a 401 and a merchant key a 403, like the /v1 API."""
    if credentials is not None:
        api_key = await authenticate(request, credentials)
        if api_key.role != "ops":
            raise _insufficient_role(api_key)
        return api_key
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    key_id = session_key_id(request.app.state.settings, token, int(time.time()))
    if key_id is None:
        return None
    session_key = await _active_key(request.app.state.engine, key_id)
    if session_key is None or session_key.role != "ops":
        return None
    await request.app.state.key_use.record(request.app.state.engine, session_key.id)
    return session_key


OpsViewer = Annotated[ApiKey | None, Depends(ops_viewer)]


def _same_origin(request: Request) -> bool:
    """A POST from a page of another site carries its Origin: refuse it. (No Origin: not a browser's
    cross-site form, which always sends one.)"""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    parsed = urlsplit(origin)
    return parsed.scheme == request.url.scheme and parsed.netloc == request.url.netloc


def _page(body: str, status_code: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
    return HTMLResponse(
        body,
        status_code=status_code,
        headers={**SECURITY_HEADERS, "Content-Security-Policy": CONTENT_SECURITY_POLICY, **(headers or {})},
    )


def _document(title: str, body: str) -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title>"
        '<link rel=stylesheet href="/ops/static/ops.css"><link rel=icon href="/ops/static/favicon.svg">'
        f"</head><body>{body}</body></html>"
    )


def render_login(message: str | None = None) -> str:
    problem = f"<p class=error id=login-error role=alert>{escape(message)}</p>" if message else ""
    return _document(
        "Penny ops: sign in",
        "<h1>Penny ops dashboard</h1>"
        f"{problem}"
        "<p>Sign in with an <code>ops</code> API key (<code>penny keys create --role ops</code>). "
        f"The session lasts {SESSION_SECONDS // 60} minutes; the key is not stored in the browser.</p>"
        '<form method=post action="/ops/login">'
        "<label for=key>API key</label> <input type=password id=key name=key autocomplete=off required "
        f"maxlength={KEY_LENGTH_MAX}> <button type=submit id=sign-in>Sign in</button></form>",
    )


def _sign_in_required() -> HTMLResponse:
    return _page(render_login(), 401, {"WWW-Authenticate": "Bearer"})


# ----------------------------------------------------------------------------------- rendering


def number(value: int) -> str:
    return str(value)


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}%"


def seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} s"


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso_unix(unix: int) -> str:
    return iso(datetime.fromtimestamp(unix, UTC))


def _metric(name: str, value: str) -> str:
    """A number the page shows, findable by its name (`data-metric`)."""
    return f'<span data-metric="{escape(name)}">{escape(value)}</span>'


def _tile(name: str, value: str, label: str, css: str = "") -> str:
    return f'<div class="tile {css}"><div class=v>{_metric(name, value)}</div><div class=l>{escape(label)}</div></div>'


def _count_rows(counts: dict[str, int], metric_prefix: str) -> str:
    if not counts:
        return "<tr><td colspan=2 class=muted>none</td></tr>"
    return "".join(
        f"<tr><td>{escape(name)}</td><td class=n>{_metric(f'{metric_prefix}.{name}', number(count))}</td></tr>"
        for name, count in sorted(counts.items())
    )


CHART_WIDTH = 760
CHART_HEIGHT = 240
CHART_MARGIN = 36


def render_payments_chart(window: data.PaymentWindow) -> str:
    """Inline SVG: one stacked bar per hour of the window (oldest left), a colour per status."""
    tallest = max(1, *(hour.total for hour in window.hours))
    plot_height = CHART_HEIGHT - 2 * CHART_MARGIN
    slot = (CHART_WIDTH - 2 * CHART_MARGIN) // len(window.hours)
    bar = max(4, slot * 3 // 4)
    base = CHART_HEIGHT - CHART_MARGIN
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{CHART_WIDTH}" height="{CHART_HEIGHT}" role="img" '
        f'aria-label="Payments created per hour by current status" id="payments-chart">'
        f'<line x1="{CHART_MARGIN}" y1="{base}" x2="{CHART_WIDTH - CHART_MARGIN}" y2="{base}" stroke="#555"/>'
        f'<text x="4" y="{CHART_MARGIN}" font-size="11">{tallest}</text>'
        f'<text x="4" y="{base}" font-size="11">0</text>'
    ]
    for index, hour in enumerate(window.hours):
        x = CHART_MARGIN + index * slot
        y = base
        for status, count in sorted(hour.counts_by_status.items()):
            height = max(1, count * plot_height // tallest)
            y -= height
            colour = STATUS_COLOURS.get(status, OTHER_STATUS_COLOUR)
            parts.append(
                f'<rect x="{x}" y="{y}" width="{bar}" height="{height}" fill="{colour}">'
                f"<title>{escape(hour.hour_start.strftime('%H:00'))} {escape(status)}: {count}</title></rect>"
            )
        if index % 3 == 0:
            parts.append(
                f'<text x="{x}" y="{base + 14}" font-size="10">{escape(hour.hour_start.strftime("%H:00"))}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def _swatch(colour: str) -> str:
    return f'<svg width="10" height="10" aria-hidden="true"><rect width="10" height="10" fill="{colour}"/></svg>'


def _legend(colours: dict[str, str]) -> str:
    return (
        "<p class=legend>"
        + "".join(f"<span>{_swatch(colour)} {escape(name)}</span>" for name, colour in colours.items())
        + "</p>"
    )


def _payments_section(window: data.PaymentWindow) -> str:
    shown = window.totals_by_status
    colours = {status: STATUS_COLOURS.get(status, OTHER_STATUS_COLOUR) for status in sorted(shown)}
    return (
        f"<h2>Payments over the last {data.PAYMENT_WINDOW_HOURS} hours</h2>"
        f"<p class=muted>Payments created in each UTC hour since {escape(iso(window.window_start))}, "
        "by their current status.</p>"
        f"{render_payments_chart(window)}{_legend(colours)}"
        '<table id="payments-window"><tr><th>Status</th><th class=n>Created in the window</th></tr>'
        f"{_count_rows(shown, 'window')}</table>"
        f"<p class=muted>Success rate = succeeded / (succeeded + failed) among these payments; succeeded: "
        f"{escape(', '.join(data.SUCCEEDED_STATUSES))}; failed: {escape(', '.join(data.FAILED_STATUSES))}. "
        "Payments in flight, authorized, canceled or in review are not counted.</p>"
    )


def _reviews_section(by_kind: dict[str, int], items: list[Review]) -> str:
    rows = "".join(
        "<tr>"
        f'<td><a href="/ops/reviews/{escape(item.id)}" data-review="{escape(item.id)}">{escape(item.id)}</a></td>'
        f"<td>{escape(item.kind)}</td><td>{escape(item.payment or '-')}</td>"
        f"<td>{escape(iso_unix(item.created))}</td><td>{escape(item.reason[:200])}</td>"
        "</tr>"
        for item in items
    )
    return (
        "<h2>Review queue</h2>"
        '<table id="review-kinds"><tr><th>Open items by kind</th><th class=n>Count</th></tr>'
        f"{_count_rows(by_kind, 'reviews.open')}</table>"
        f"<p>Newest open items (at most {data.REVIEW_ITEMS_SHOWN_MAX}):</p>"
        + (
            '<table id="review-items"><tr><th>Item</th><th>Kind</th><th>Payment</th><th>Opened</th><th>Reason</th>'
            f"</tr>{rows}</table>"
            if items
            else "<p class=muted>The queue is empty.</p>"
        )
    )


def _runs_section(runs: list[reports.RunView]) -> str:
    rows = "".join(
        "<tr>"
        f'<td><a href="/ops/reconciliation/runs/{escape(run.id)}/report">{escape(run.id)}</a></td>'
        f"<td>{escape(iso_unix(run.window_start))} .. {escape(iso_unix(run.window_end))}</td>"
        f"<td>{escape(run.status)}</td><td>{escape(run.trigger)}</td>"
        f"<td class=n>{_metric(f'run.{run.id}.matched', number(run.counts.get('matched', 0)))}</td>"
        f"<td class=n>{_metric(f'run.{run.id}.mismatches', number(run.mismatches))}</td>"
        f"<td>{escape(iso_unix(run.started_at))}</td>"
        "</tr>"
        for run in runs
    )
    chronological = sorted(runs, key=lambda run: (run.started_at, run.id))
    return "<h2>Reconciliation runs</h2>" + (
        '<table id="reconciliation-runs"><tr><th>Run</th><th>Window (end excluded)</th><th>Status</th>'
        f"<th>Trigger</th><th class=n>Matched</th><th class=n>Mismatches</th><th>Started</th></tr>{rows}</table>"
        f"{reports.render_chart(chronological)}{_legend(dict(reports.CLASS_COLOURS))}"
        if runs
        else "<p class=muted>No reconciliation run yet.</p>"
    )


def _ledger_section(snapshot: data.OpsSnapshot) -> str:
    check = snapshot.ledger
    assert check is not None, "the dashboard always reads a ledger check"
    findings = sum(check.findings_by_code.values())
    verdict = (
        '<p class=ok data-metric="ledger.status">consistent</p>'
        if check.ok
        else '<p class=bad data-metric="ledger.status">FINDINGS</p>'
    )
    examples = "".join(f"<li>{escape(example)}</li>" for example in check.examples)
    return (
        "<h2>Ledger verify</h2>"
        f"{verdict}<p>Findings: {_metric('ledger.findings', number(findings))}; checked "
        f"{escape(iso(check.checked_at))} in {escape(seconds(check.duration_seconds))} "
        f"(at most once per {int(data.LEDGER_VERIFY_MIN_INTERVAL_SECONDS)} s per API process).</p>"
        + (
            '<table id="ledger-findings"><tr><th>Code</th><th class=n>Findings</th></tr>'
            f"{_count_rows(check.findings_by_code, 'ledger.code')}</table><ul>{examples}</ul>"
            if not check.ok
            else ""
        )
    )


def _metric_row(label: str, name: str, value: str) -> str:
    return f"<tr><td>{label}</td><td class=n>{_metric(name, value)}</td></tr>"


def _webhooks_section(stats: data.WebhookStats, snapshot: data.OpsSnapshot) -> str:
    return (
        "<h2>Stripe webhooks</h2>"
        '<table id="webhooks">'
        + _metric_row("Events stored in the window", "webhooks.stored", number(stats.stored))
        + _metric_row(
            "Delay, Stripe's <code>created</code> to stored: median",
            "webhooks.delay_median",
            seconds(stats.delay_median_seconds),
        )
        + _metric_row("Delay, 95th percentile", "webhooks.delay_p95", seconds(stats.delay_p95_seconds))
        + _metric_row("Delay, maximum", "webhooks.delay_max", seconds(stats.delay_max_seconds))
        + _metric_row(
            "Stored, not yet delivered to their workflow", "webhooks.undelivered", number(snapshot.webhook_undelivered)
        )
        + "<tr><td>Duplicate deliveries (this API process, since it started)</td>"
        f"<td class=n>{_metric('webhooks.duplicates', number(stats.duplicates_in_process))} of "
        f"{_metric('webhooks.verified', number(stats.verified_in_process))} verified</td></tr>"
        + _metric_row(
            "Duplicate rate (this API process)", "webhooks.duplicate_rate", percent(stats.duplicate_rate_percent)
        )
        + "</table>"
        "<p class=muted>The inbox keeps one row per event id, so repeated deliveries are counted in the API "
        "process that received them (<code>penny_webhook_duplicates_total</code>); sum them across API "
        "processes in Prometheus.</p>"
    )


def render_dashboard(dashboard: data.DashboardData, viewer: ApiKey) -> str:
    snapshot = dashboard.snapshot
    window = dashboard.payments
    ledger_ok = snapshot.ledger is not None and snapshot.ledger.ok
    body = (
        "<header><div><h1>Penny ops</h1>"
        f"<p class=muted>Snapshot {escape(iso(snapshot.taken_at))}. Signed in as {escape(viewer.name)} "
        f"({escape(viewer.id)}).</p></div>"
        '<form class=inline method=post action="/ops/logout"><button type=submit>Sign out</button></form></header>'
        '<div class=tiles id="summary">'
        + _tile(
            "success_rate",
            percent(window.success_rate_percent),
            f"success rate, last {data.PAYMENT_WINDOW_HOURS} h",
        )
        + _tile("succeeded", number(window.succeeded), "succeeded in the window")
        + _tile("failed", number(window.failed), "failed in the window")
        + _tile("stuck", number(sum(snapshot.stuck_by_status.values())), "payments stuck (CREATED/PROCESSING)")
        + _tile("reviews.open_total", number(sum(snapshot.review_open_by_kind.values())), "open review items")
        + _tile("outbox.undelivered", number(snapshot.outbox_undelivered), "outbox events undelivered")
        + _tile("outbox.dead", number(snapshot.outbox_dead), "outbox deliveries dead")
        + _tile("ledger.verdict", "OK" if ledger_ok else "CHECK", "ledger verify", "ok" if ledger_ok else "bad")
        + "</div>"
        + _payments_section(window)
        + "<h2>Payments by current status (all time)</h2>"
        '<table id="payments-by-status"><tr><th>Status</th><th class=n>Payments</th></tr>'
        f"{_count_rows(snapshot.payments_by_status, 'payments')}</table>"
        '<table id="stuck"><tr><th>Stuck in</th><th class=n>Payments</th></tr>'
        f"{_count_rows(snapshot.stuck_by_status, 'stuck')}</table>"
        + _reviews_section(snapshot.review_open_by_kind, dashboard.open_reviews)
        + _runs_section(dashboard.runs)
        + _ledger_section(snapshot)
        + _webhooks_section(dashboard.webhooks, snapshot)
    )
    return _document("Penny ops", body)


def render_review(review: Review) -> str:
    actions = "".join(f"<li>{escape(action.model_dump_json())}</li>" for action in review.actions)
    fields = review.model_dump(mode="json", exclude={"actions", "details"})
    rows = "".join(
        f"<tr><th>{escape(name)}</th><td>{escape('-' if value is None else str(value))}</td></tr>"
        for name, value in fields.items()
    )
    return _document(
        f"Penny ops: {review.id}",
        f'<p><a href="/ops">&larr; Dashboard</a></p><h1>Review item {escape(review.id)}</h1>'
        f'<table id="review">{rows}</table><h2>Details</h2>'
        f"<pre>{escape(json.dumps(review.details, indent=2, sort_keys=True))}</pre>"
        f"<h2>Actions</h2>{'<ul>' + actions + '</ul>' if actions else '<p class=muted>None yet.</p>'}"
        f"<p class=muted>Resolve it with <code>POST /v1/reviews/{escape(review.id)}/resolve</code> or "
        f"<code>penny reviews resolve {escape(review.id)}</code>.</p>",
    )


# ----------------------------------------------------------------------------------- routes


def _ledger_checks(request: Request) -> data.LedgerCheckCache:
    cache: data.LedgerCheckCache | None = getattr(request.app.state, "ops_ledger_checks", None)
    if cache is None:
        cache = request.app.state.ops_ledger_checks = data.LedgerCheckCache()
    return cache


@router.get("/ops")
async def dashboard(request: Request, viewer: OpsViewer) -> Response:
    if viewer is None:
        return _sign_in_required()
    dashboard_data = await data.dashboard_data(
        request.app.state.engine, request.app.state.settings, _ledger_checks(request)
    )
    return _page(render_dashboard(dashboard_data, viewer))


@router.get("/ops/login")
async def login_form() -> Response:
    return _page(render_login())


def _session_cookie_secure(request: Request) -> bool:
    return request.url.scheme == "https" or request.app.state.settings.env == "production"


@router.post("/ops/login")
async def login(request: Request) -> Response:
    if not _same_origin(request):
        return _page(render_login("Refused: the form was posted from another site."), 403)
    body = await request.body()
    if len(body) > LOGIN_BODY_BYTES_MAX:
        return _page(render_login("The form is too large."), 413)
    keys = parse_qs(body.decode("utf-8", errors="replace"), max_num_fields=4).get("key", [])
    key = keys[0].strip() if len(keys) == 1 else ""
    api_key: ApiKey | None = None
    if 0 < len(key) <= KEY_LENGTH_MAX:
        async with request.app.state.engine.connect() as connection:
            api_key = await find_api_key(connection, request.app.state.settings.api_key_pepper, key)
    if api_key is None:
        return _page(render_login("Invalid API key."), 401)
    if api_key.role != "ops":
        return _page(render_login(f"A {api_key.role} key cannot open the dashboard: it needs an ops key."), 403)
    response = RedirectResponse("/ops", status_code=303, headers=SECURITY_HEADERS)
    response.set_cookie(
        SESSION_COOKIE,
        issue_session(request.app.state.settings, api_key.id, int(time.time())),
        max_age=SESSION_SECONDS,
        path="/ops",
        httponly=True,
        samesite="strict",
        secure=_session_cookie_secure(request),
    )
    return response


@router.post("/ops/logout")
async def logout(request: Request) -> Response:
    if not _same_origin(request):
        return _page(render_login("Refused: the form was posted from another site."), 403)
    response = RedirectResponse("/ops/login", status_code=303, headers=SECURITY_HEADERS)
    response.delete_cookie(
        SESSION_COOKIE, path="/ops", httponly=True, samesite="strict", secure=_session_cookie_secure(request)
    )
    return response


ReviewId = Annotated[str, Path(max_length=REVIEW_ID_LENGTH_MAX, pattern=REVIEW_ID_PATTERN)]
RunId = Annotated[str, Path(max_length=30, pattern=reports.RUN_ID_PATTERN)]


@router.get("/ops/reviews/{review_id}")
async def review_page(request: Request, review_id: ReviewId, viewer: OpsViewer) -> Response:
    if viewer is None:
        return _sign_in_required()
    number_of_item = review_queue.review_number(review_id)
    if number_of_item is None:
        return _page(_document("Not found", "<h1>No such review item</h1>"), 404)
    try:
        review = await review_queue.get_review(request.app.state.engine, number_of_item)
    except ApiError as error:
        if error.status_code != 404:
            raise
        return _page(_document("Not found", "<h1>No such review item</h1>"), 404)
    return _page(render_review(review))


@router.get("/ops/reconciliation/runs/{run_id}/report")
async def run_report(request: Request, run_id: RunId, viewer: OpsViewer) -> Response:
    if viewer is None:
        return _sign_in_required()
    engine = request.app.state.engine
    run = await reports.get_run(engine, run_id)
    if run is None:
        return _page(_document("Not found", "<h1>No such reconciliation run</h1>"), 404)
    items = await reports.run_items(engine, run_id)
    recent = await reports.list_runs(engine, reports.CHART_RUNS_MAX)
    return HTMLResponse(
        reports.render_html(run, items, recent),
        headers={**SECURITY_HEADERS, "Content-Security-Policy": REPORT_CONTENT_SECURITY_POLICY},
    )


@router.get("/ops/reconciliation/runs/{run_id}/items.csv")
async def run_items_csv(request: Request, run_id: RunId, viewer: OpsViewer) -> Response:
    if viewer is None:
        return _sign_in_required()
    items = await reports.run_items(request.app.state.engine, run_id)
    return Response(
        reports.render_csv(items),
        media_type="text/csv; charset=utf-8",
        headers={**SECURITY_HEADERS, "Content-Disposition": f'attachment; filename="{run_id}.csv"'},
    )


@router.get("/ops/static/ops.css")
async def stylesheet() -> Response:
    return Response(STYLESHEET, media_type="text/css; charset=utf-8", headers={"X-Content-Type-Options": "nosniff"})


@router.get("/ops/static/favicon.svg")
async def favicon() -> Response:
    return Response(FAVICON, media_type="image/svg+xml", headers={"X-Content-Type-Options": "nosniff"})
