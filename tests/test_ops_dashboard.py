"""The ops dashboard (`/ops`, api/ops_dashboard.py) on the real stack.

- Over HTTP: who may open it (401 without a key, with the sign-in form; 403 for a merchant key;
  200 for an ops key, by Bearer header or by the session cookie of the sign-in form), the
  cookie's flags, a forged, cross-site or revoked session refused, and the security headers.
- In a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright, no browser
  download): the API under uvicorn on a free port, numbers seeded through the real API, worker,
  emulator and webhook intake (a settled payment, a declined one, one in NEEDS_REVIEW, an
  unrouted Stripe event delivered twice, a reconciliation run), then the page signed in through
  its form shows exactly what the database and this process's counters say, with the seeded
  review items as links; no console error, no failed request; a full-page screenshot is saved
  under test-artifacts/. Without Chromium or Playwright that test is skipped and says why.

Every module has its own database (tests/conftest.py), but expected values are still read from
the database in the same test rather than assumed, and read again after the page: if the worker
moved something in between, the page is read once more (a bounded number of times).
"""

from __future__ import annotations

import html
import json
import math
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from api import ops_dashboard
from api.models import Review
from api.webhook_signature import sign
from penny import webhook_metrics
from penny.keys import ApiKey, revoke_api_key
from penny.ops_dashboard_data import (
    FAILED_STATUSES,
    PAYMENT_WINDOW_HOURS,
    SUCCEEDED_STATUSES,
    DashboardData,
    HourBucket,
    PaymentWindow,
    WebhookStats,
    counter_total,
    window_start,
)
from penny.ops_monitor import LedgerCheck, OpsSnapshot, take_snapshot
from penny.reconciliation_reports import RunView
from penny.reconciliation_schedule import new_run_id
from penny.settings import Settings
from tests.payment_fixtures import FAST_TIMINGS, PaymentStack
from tests.test_api_support import api_client, auth, error_of, payment_body, served_api_url
from tests.test_payment_workflow import settle, wait_for_status
from tests.test_reviews import Key, key_with_role, payment_in_review
from tests.test_webhooks import encode, signed_event
from workflows.payment_models import PaymentState

WEBHOOK_SECRET = "whsec_penny_test_dashboard_" + "c" * 16
CHROMIUM_PATH = Path(os.environ.get("PENNY_CHROMIUM", "/usr/bin/chromium"))
# Debian's Chromium, headless, with nothing that reaches the network on its own.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
PAGE_TIMEOUT_MS = 30_000
PAGE_READS_MAX = 5
# How late the seeded Stripe event reaches us: its `created` is this far in the past.
SEEDED_EVENT_AGE_SECONDS = 90
SEEDED_RUN_COUNTS = {"matched": 3, "amount_mismatch": 2, "fee_mismatch": 1}


@pytest.fixture
def settings(payment_stack: PaymentStack) -> Settings:
    # An event that matches no payment becomes a review item at once (no relay runs here).
    return payment_stack.settings.model_copy(
        update={"stripe_webhook_secrets": WEBHOOK_SECRET, "webhook_unrouted_attempts_max": 1}
    )


@pytest_asyncio.fixture(loop_scope="session")
async def ops(payment_stack: PaymentStack) -> Key:
    return await key_with_role(payment_stack, "ops")


@pytest_asyncio.fixture(loop_scope="session")
async def merchant(payment_stack: PaymentStack) -> Key:
    return await key_with_role(payment_stack, "merchant")


@pytest_asyncio.fixture(loop_scope="session")
async def served_api(settings: Settings, payment_stack: PaymentStack) -> AsyncIterator[str]:
    """The API under uvicorn on a free port, in this test's loop (Chromium needs a real socket)."""
    async with served_api_url(settings, payment_stack.client, FAST_TIMINGS) as url:
        yield url


# ----------------------------------------------------------------------------- over HTTP


def _session_cookie(response: httpx.Response) -> str:
    [cookie] = [value for value in response.headers.get_list("set-cookie") if value.startswith("penny_ops_session=")]
    return cookie


def _cookie_value(set_cookie: str) -> str:
    return set_cookie.split(";", 1)[0].split("=", 1)[1]


def _is_secure_page(response: httpx.Response) -> None:
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == ops_dashboard.CONTENT_SECURITY_POLICY
    assert "'unsafe-inline'" not in response.headers["content-security-policy"]
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "same-origin"


async def test_the_dashboard_needs_an_ops_key_and_answers_with_a_strict_csp(
    settings: Settings, payment_stack: PaymentStack, ops: Key, merchant: Key
) -> None:
    async with api_client(settings, payment_stack.client) as http:
        anonymous = await http.get("/ops")
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"] == "Bearer"
        assert '<form method=post action="/ops/login">' in anonymous.text and "Penny ops" in anonymous.text
        _is_secure_page(anonymous)

        unknown = await http.get("/ops", headers=auth("sk_penny_" + "x" * 43))
        assert unknown.status_code == 401 and error_of(unknown)["code"] == "api_key_invalid"
        as_merchant = await http.get("/ops", headers=auth(merchant.secret))
        assert as_merchant.status_code == 403 and error_of(as_merchant)["code"] == "insufficient_role"

        as_ops = await http.get("/ops", headers=auth(ops.secret))
        assert as_ops.status_code == 200, as_ops.text
        _is_secure_page(as_ops)
        assert f"Signed in as {ops.name} ({ops.id})" in as_ops.text
        assert "<script" not in as_ops.text and "http://" not in as_ops.text.replace('xmlns="http://www.w3.org', "")

        # The sign-in form: a merchant key gets no session, an ops key gets a short, HttpOnly, strict one.
        refused = await http.post("/ops/login", data={"key": merchant.secret})
        assert refused.status_code == 403 and "needs an ops key" in refused.text
        assert "set-cookie" not in refused.headers
        wrong = await http.post("/ops/login", data={"key": "sk_penny_" + "y" * 43})
        assert wrong.status_code == 401 and "Invalid API key." in wrong.text
        cross_site = await http.post(
            "/ops/login", data={"key": ops.secret}, headers={"Origin": "https://attacker.example"}
        )
        assert cross_site.status_code == 403 and "set-cookie" not in cross_site.headers

        signed_in = await http.post("/ops/login", data={"key": ops.secret}, headers={"Origin": "http://test"})
        assert (signed_in.status_code, signed_in.headers["location"]) == (303, "/ops")
        cookie = _session_cookie(signed_in)
        flags = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "path=/ops", "samesite=strict", f"max-age={ops_dashboard.SESSION_SECONDS}"} <= flags
        assert "secure" not in flags  # plain HTTP in a test deployment; Secure over HTTPS and in production
        session = _cookie_value(cookie)
        assert ops.secret not in cookie and session.startswith(f"{ops.id}.")

        with_session = await http.get("/ops", headers={"Cookie": f"penny_ops_session={session}"})
        assert with_session.status_code == 200 and f"({ops.id})" in with_session.text
        key_id, expires, signature = session.split(".")
        for forged in (
            f"{key_id}.{int(expires) + 60}.{signature}",  # a longer session, same signature
            f"{merchant.id}.{expires}.{signature}",  # someone else's key
            f"{key_id}.{expires}.{'0' * len(signature)}",
        ):
            refused_session = await http.get("/ops", headers={"Cookie": f"penny_ops_session={forged}"})
            assert refused_session.status_code == 401, forged

        signed_out = await http.post("/ops/logout", headers={"Cookie": f"penny_ops_session={session}"})
        assert (signed_out.status_code, signed_out.headers["location"]) == (303, "/ops/login")
        assert _session_cookie(signed_out).startswith('penny_ops_session="";') or "max-age=0" in (
            _session_cookie(signed_out).lower()
        )

        # Revoking the key ends its sessions at once: the cookie is checked against the key every time.
        async with payment_stack.engine.begin() as connection:
            assert await revoke_api_key(connection, ops.id)
        revoked = await http.get("/ops", headers={"Cookie": f"penny_ops_session={session}"})
        assert revoked.status_code == 401

        for static in ("/ops/static/ops.css", "/ops/static/favicon.svg"):
            assert (await http.get(static)).status_code == 200


# ----------------------------------------------------------------------------- seeding


async def _seed_payments(http: httpx.AsyncClient, merchant: Key, payment_stack: PaymentStack) -> dict[str, str]:
    """A settled payment, a declined one and one in NEEDS_REVIEW; returns their ids by outcome."""
    settled = await http.post("/v1/payments", json=payment_body(), headers=auth(merchant.secret, uuid.uuid4().hex))
    assert settled.status_code == 200 and settled.json()["status"] == "captured", settled.text
    handle = payment_stack.client.get_workflow_handle(f"payment-{settled.json()['order_id']}", result_type=PaymentState)
    assert (await settle(payment_stack, handle)).status == "SETTLED"

    declined = await http.post(
        "/v1/payments",
        json=payment_body(payment_method="pm_card_chargeDeclined"),
        headers=auth(merchant.secret, uuid.uuid4().hex),
    )
    assert declined.status_code == 200 and declined.json()["status"] == "failed", declined.text

    in_review, review_handle, charges_down = await payment_in_review(http, merchant, payment_stack)
    payment_stack.emulator.control.remove_fault(charges_down)
    await wait_for_status(review_handle, "NEEDS_REVIEW")
    return {"settled": settled.json()["id"], "failed": declined.json()["id"], "review": in_review["id"]}


async def _deliver(http: httpx.AsyncClient, body: bytes) -> httpx.Response:
    return await http.post(
        "/webhooks/stripe",
        content=body,
        headers={
            "Content-Type": "application/json",
            "Stripe-Signature": sign(body, [WEBHOOK_SECRET], int(time.time())),
        },
    )


async def _seed_unrouted_event_twice(http: httpx.AsyncClient) -> str:
    """A Stripe event created SEEDED_EVENT_AGE_SECONDS ago that matches no payment, delivered twice:
    stored once (with a review item), counted once as a duplicate. Returns the event id."""
    event = signed_event("charge.refunded", {"id": f"ch_stray_{uuid.uuid4().hex[:12]}", "object": "charge"})
    event["created"] = int(time.time()) - SEEDED_EVENT_AGE_SECONDS
    body = encode(event)
    first = await _deliver(http, body)
    assert first.status_code == 200 and first.json()["status"] == "unrouted", first.text
    repeated = await _deliver(http, body)
    assert repeated.status_code == 200, repeated.text
    return str(event["id"])


async def _seed_reconciliation_run(engine: AsyncEngine) -> str:
    run_id = new_run_id()
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO reconciliation_runs (id, window_start, window_end, trigger, requested_by, workflow_id, "
                "status, counts, finished_at) VALUES (:id, now() - interval '1 day', now(), 'api', 'dashboard test', "
                ":workflow_id, 'completed', CAST(:counts AS jsonb), now())"
            ),
            {"id": run_id, "workflow_id": f"reconciliation-{run_id}", "counts": json.dumps(SEEDED_RUN_COUNTS)},
        )
    return run_id


async def _open_review_ids(engine: AsyncEngine, where: str, values: dict[str, Any]) -> list[str]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(f"SELECT id FROM review_items WHERE status = 'open' AND {where} ORDER BY id"), values
        )
        return [f"rev_{row.id}" for row in rows]


# ----------------------------------------------------------------------------- what the page must show


def _percentile_disc(values: list[float], fraction: float) -> float:
    """PostgreSQL's percentile_disc: the first value whose cumulative share reaches `fraction`."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


async def expected_metrics(engine: AsyncEngine, settings: Settings) -> dict[str, str]:
    """Every number the page shows, as it must print it, read from the database (its own queries,
    not the dashboard's) and from this process's webhook counters."""
    snapshot = await take_snapshot(engine, settings, with_ledger=True)
    assert snapshot.ledger is not None
    async with engine.connect() as connection:
        start = (
            await connection.execute(text("SELECT date_trunc('hour', now() AT TIME ZONE 'UTC') - interval '23 hours'"))
        ).scalar_one()
        window_rows = (
            await connection.execute(
                text(
                    "SELECT status, count(*) FROM payments "
                    "WHERE created_at AT TIME ZONE 'UTC' >= :start GROUP BY status"
                ),
                {"start": start},
            )
        ).all()
        delays = [
            float(row[0])
            for row in await connection.execute(
                text(
                    "SELECT extract(epoch FROM received_at - event_created_at) FROM webhook_events "
                    "WHERE received_at AT TIME ZONE 'UTC' >= :start"
                ),
                {"start": start},
            )
        ]
    window = {str(status): int(count) for status, count in window_rows}
    succeeded = sum(window.get(status, 0) for status in SUCCEEDED_STATUSES)
    failed = sum(window.get(status, 0) for status in FAILED_STATUSES)
    verified = counter_total(webhook_metrics.VERIFIED)
    duplicates = counter_total(webhook_metrics.DUPLICATES)
    metrics = {
        "success_rate": f"{100 * succeeded / (succeeded + failed):.1f}%" if succeeded + failed else "n/a",
        "succeeded": str(succeeded),
        "failed": str(failed),
        "stuck": str(sum(snapshot.stuck_by_status.values())),
        "reviews.open_total": str(sum(snapshot.review_open_by_kind.values())),
        "outbox.undelivered": str(snapshot.outbox_undelivered),
        "outbox.dead": str(snapshot.outbox_dead),
        "ledger.verdict": "OK" if snapshot.ledger.ok else "CHECK",
        "ledger.status": "consistent" if snapshot.ledger.ok else "FINDINGS",
        "ledger.findings": str(sum(snapshot.ledger.findings_by_code.values())),
        "webhooks.stored": str(len(delays)),
        "webhooks.delay_median": f"{_percentile_disc(delays, 0.5):.1f} s" if delays else "n/a",
        "webhooks.delay_p95": f"{_percentile_disc(delays, 0.95):.1f} s" if delays else "n/a",
        "webhooks.delay_max": f"{max(delays):.1f} s" if delays else "n/a",
        "webhooks.undelivered": str(snapshot.webhook_undelivered),
        "webhooks.duplicates": str(duplicates),
        "webhooks.verified": str(verified),
        "webhooks.duplicate_rate": f"{100 * duplicates / verified:.1f}%" if verified else "n/a",
    }
    metrics |= {f"window.{status}": str(count) for status, count in window.items()}
    metrics |= {f"payments.{status}": str(count) for status, count in snapshot.payments_by_status.items()}
    metrics |= {f"stuck.{status}": str(count) for status, count in snapshot.stuck_by_status.items()}
    metrics |= {f"reviews.open.{kind}": str(count) for kind, count in snapshot.review_open_by_kind.items()}
    return metrics


# ----------------------------------------------------------------------------- in headless Chromium


def _chromium_or_skip() -> Any:
    if not CHROMIUM_PATH.exists() or shutil.which(str(CHROMIUM_PATH)) is None:
        pytest.skip(
            f"no Chromium at {CHROMIUM_PATH}: install Debian's `chromium` (.ci/run does it with apt-get) "
            "or point PENNY_CHROMIUM at one"
        )
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip("the playwright Python package is not installed: pip install -e '.[dev]'")
    return async_playwright


def _console_error(problems: list[str], message: Any) -> None:
    if message.type == "error":
        problems.append(f"console: {message.text}")


def _http_error(problems: list[str], response: Any) -> None:
    if response.status >= 400:
        problems.append(f"{response.status} {response.url}")


async def test_the_dashboard_in_headless_chromium_shows_the_seeded_numbers(
    served_api: str, settings: Settings, payment_stack: PaymentStack, ops: Key, merchant: Key, tmp_path: Path
) -> None:
    async_playwright = _chromium_or_skip()
    engine = payment_stack.engine
    duplicates_before = counter_total(webhook_metrics.DUPLICATES)
    async with httpx.AsyncClient(base_url=served_api, timeout=60) as http:
        payments = await _seed_payments(http, merchant, payment_stack)
        event_id = await _seed_unrouted_event_twice(http)
    assert counter_total(webhook_metrics.DUPLICATES) == duplicates_before + 1
    run_id = await _seed_reconciliation_run(engine)
    [unrouted_review] = await _open_review_ids(engine, "details->>'event_id' = :event", {"event": event_id})
    payment_reviews = await _open_review_ids(engine, "payment_id = :payment", {"payment": payments["review"]})
    assert payment_reviews, "the payment in NEEDS_REVIEW has an open review item"

    problems: list[str] = []
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM_PATH),
            headless=True,
            args=CHROMIUM_ARGS,
        )
        try:
            page = await context.new_page()
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            page.on("console", lambda message: _console_error(problems, message))
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on("requestfailed", lambda request: problems.append(f"request failed: {request.url}"))
            page.on("response", lambda response: _http_error(problems, response))

            # Signed in the way a person is: the form, then the session cookie.
            await page.goto(f"{served_api}/ops/login")
            await page.fill("#key", ops.secret)
            await page.click("#sign-in")
            await page.wait_for_url(f"{served_api}/ops")
            assert await page.title() == "Penny ops"
            cookies = await context.cookies()
            [session] = [cookie for cookie in cookies if cookie["name"] == "penny_ops_session"]
            assert session["httpOnly"] and session["sameSite"] == "Strict" and ops.secret not in session["value"]

            shown: dict[str, str] = {}
            expected: dict[str, str] = {}
            for _ in range(PAGE_READS_MAX):
                before = await expected_metrics(engine, settings)
                await page.reload()
                shown = {
                    str(await element.get_attribute("data-metric")): (await element.inner_text()).strip()
                    for element in await page.query_selector_all("[data-metric]")
                }
                expected = await expected_metrics(engine, settings)
                if before == expected:
                    break
            assert {name: shown.get(name) for name in expected} == expected
            run_metrics = {name: value for name, value in shown.items() if name.startswith("run.")}
            assert set(shown) == set(expected) | set(run_metrics), "the page shows a number this test does not check"
            assert run_metrics == {
                f"run.{run_id}.matched": "3",
                f"run.{run_id}.mismatches": "3",
            }
            # What was seeded is visible in those numbers.
            assert int(shown["failed"]) >= 1 and int(shown["succeeded"]) >= 1
            assert int(shown["payments.NEEDS_REVIEW"]) >= 1 and int(shown["reviews.open.webhook_unrouted"]) >= 1
            assert shown["webhooks.duplicates"] == str(duplicates_before + 1)
            assert float(shown["webhooks.delay_max"].removesuffix(" s")) >= SEEDED_EVENT_AGE_SECONDS
            assert shown["ledger.verdict"] == "OK"

            # The seeded review items are links, each exactly once, to a page that shows them.
            for review in (unrouted_review, *payment_reviews):
                assert await page.locator(f'#review-items a[href="/ops/reviews/{review}"]').count() == 1, review
            await page.screenshot(path=str(tmp_path / "ops-dashboard.png"), full_page=True)
            ARTIFACTS.mkdir(exist_ok=True)
            screenshot = ARTIFACTS / "ops-dashboard.png"
            shutil.copyfile(tmp_path / "ops-dashboard.png", screenshot)
            print(f"ops dashboard screenshot: {screenshot}")

            await page.click(f'#review-items a[href="/ops/reviews/{payment_reviews[0]}"]')
            await page.wait_for_url(f"{served_api}/ops/reviews/{payment_reviews[0]}")
            review_page = await page.inner_text("#review")
            assert payment_reviews[0] in review_page and payments["review"] in review_page

            await page.goto(f"{served_api}/ops/reconciliation/runs/{run_id}/report")
            assert await page.inner_text("h1") == f"Reconciliation run {run_id}"
        finally:
            await context.close()
    assert problems == [], problems


# ----------------------------------------------------------------------------- rendering, pure


HOSTILE = '"><script>alert(1)</script><img src=x onerror=alert(2)>'


def test_every_value_on_the_page_is_escaped() -> None:
    taken_at = datetime(2026, 11, 22, 7, 30, tzinfo=UTC)
    start = window_start(taken_at)
    snapshot = OpsSnapshot(
        taken_at=taken_at,
        payments_by_status={HOSTILE: 1, "FAILED": 2},
        stuck_by_status={},
        review_open_by_kind={HOSTILE: 3},
        webhook_undelivered=0,
        outbox_undelivered=0,
        outbox_dead=0,
        ledger=LedgerCheck({"balance_mismatch": 1}, [f"balance_mismatch: {HOSTILE}"], taken_at, 0.25),
    )
    hours = [HourBucket(start + timedelta(hours=index), {}) for index in range(PAYMENT_WINDOW_HOURS - 1)]
    hours.append(HourBucket(start + timedelta(hours=PAYMENT_WINDOW_HOURS - 1), {HOSTILE: 1, "FAILED": 2}))
    review = Review(
        id="rev_7", kind=HOSTILE, reason=HOSTILE, details={}, status="open", payment=HOSTILE, created=0, actions=[]
    )
    run = RunView(
        id=HOSTILE,
        window_start=0,
        window_end=86_400,
        trigger=HOSTILE,
        requested_by=HOSTILE,
        status=HOSTILE,
        counts={"matched": 1, "amount_mismatch": 2},
        fetched={},
        tolerances={},
        repaired=0,
        started_at=0,
        finished_at=None,
        workflow_id=HOSTILE,
    )
    dashboard = DashboardData(
        snapshot=snapshot,
        payments=PaymentWindow(start, hours, succeeded=0, failed=2),
        open_reviews=[review],
        runs=[run],
        webhooks=WebhookStats(0, None, None, None, 4, 1),
    )
    page = ops_dashboard.render_dashboard(dashboard, ApiKey("key_1", HOSTILE, "ops"))
    assert "<script" not in page and "<img" not in page
    assert html.escape(HOSTILE) in page
    assert 'data-metric="success_rate">0.0%<' in page and 'data-metric="webhooks.duplicate_rate">25.0%<' in page
    assert 'data-metric="ledger.verdict">CHECK<' in page and 'data-metric="ledger.findings">1<' in page
    assert '<a href="/ops/reviews/rev_7" data-review="rev_7">rev_7</a>' in page
    review_page = ops_dashboard.render_review(review)
    assert "<script" not in review_page and html.escape(HOSTILE) in review_page
    assert "<script" not in ops_dashboard.render_login(HOSTILE)


def test_a_session_token_is_refused_when_forged_expired_or_too_long() -> None:
    settings = Settings(env="test")
    now = 1_800_000_000
    token = ops_dashboard.issue_session(settings, "key_abc", now)
    assert ops_dashboard.session_key_id(settings, token, now) == "key_abc"
    assert ops_dashboard.session_key_id(settings, token, now + ops_dashboard.SESSION_SECONDS - 1) == "key_abc"
    assert ops_dashboard.session_key_id(settings, token, now + ops_dashboard.SESSION_SECONDS) is None  # expired
    key_id, expires, signature = token.split(".")
    other_pepper = settings.model_copy(update={"api_key_pepper": "another-deployment-pepper-" + "z" * 20})
    assert ops_dashboard.session_key_id(other_pepper, token, now) is None
    for forged in (
        f"key_other.{expires}.{signature}",
        f"{key_id}.{int(expires) + 1}.{signature}",
        f"{key_id}.{expires}",
        f"{key_id}.{expires}.{signature}.x",
        "",
    ):
        assert ops_dashboard.session_key_id(settings, forged, now) is None, forged
    # Validly signed but longer than a session lasts: not minted here.
    long_lived = f"{key_id}.{now + 10 * ops_dashboard.SESSION_SECONDS}"
    signed = f"{long_lived}.{ops_dashboard._session_signature(settings, long_lived)}"
    assert ops_dashboard.session_key_id(settings, signed, now) is None
