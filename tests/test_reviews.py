"""The review queue on the real stack: GET/POST /v1/reviews and `penny reviews ...`.

Payments reach NEEDS_REVIEW through emulator faults (Stripe down after the capture), items
without a payment through a signed webhook that matches none, items of a closed payment through
a contradicting webhook. Each test checks what an operator would notice: the API's answers, the
payment's status and audit trail, the review item, the `review_actions` audit rows, and what
the CLI prints.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from temporalio.client import WorkflowHandle

from api.webhook_signature import sign
from penny.keys import find_api_key
from penny.settings import Settings
from tests.payment_fixtures import FAST_TIMINGS, PaymentStack
from tests.test_api_support import api_client, auth, error_of, new_key, payment_body, run_cli
from tests.test_fault_paths import transfers_for
from tests.test_payment_workflow import audit_trail, payment_row, settle, wait_for_status
from tests.test_webhooks import encode, signed_event
from workflows.payment_models import PaymentState

WEBHOOK_SECRET = "whsec_penny_test_reviews_" + "b" * 16
REVIEW_ID = re.compile(r"rev_[1-9][0-9]*")
CHARGES = "/v1/charges/*"
PAYMENT_INTENTS = "/v1/payment_intents/*"


@dataclass
class Key:
    secret: str
    id: str
    name: str


@pytest.fixture
def settings(payment_stack: PaymentStack) -> Settings:
    # Events that match no payment become review items at once (no relay runs beside these tests).
    return payment_stack.settings.model_copy(
        update={"stripe_webhook_secrets": WEBHOOK_SECRET, "webhook_unrouted_attempts_max": 1}
    )


@pytest_asyncio.fixture(loop_scope="session")
async def http(settings: Settings, payment_stack: PaymentStack) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(settings, payment_stack.client, FAST_TIMINGS) as client:
        yield client


async def key_with_role(payment_stack: PaymentStack, role: str) -> Key:
    secret = await new_key(payment_stack.engine, payment_stack.settings, role)
    async with payment_stack.engine.connect() as connection:
        found = await find_api_key(connection, payment_stack.settings.api_key_pepper, secret)
    assert found is not None
    return Key(secret, found.id, found.name)


@pytest_asyncio.fixture(loop_scope="session")
async def ops(payment_stack: PaymentStack) -> Key:
    return await key_with_role(payment_stack, "ops")


@pytest_asyncio.fixture(loop_scope="session")
async def merchant(payment_stack: PaymentStack) -> Key:
    return await key_with_role(payment_stack, "merchant")


def operator(key: Key) -> str:
    return f"operator:{key.name} ({key.id})"


async def resolve(
    http: httpx.AsyncClient, key: Key, review: str, action: str, note: str, idempotency_key: str | None = None
) -> httpx.Response:
    return await http.post(
        f"/v1/reviews/{review}/resolve",
        json={"action": action, "note": note},
        headers=auth(key.secret, idempotency_key or uuid.uuid4().hex),
    )


async def payment_in_review(
    http: httpx.AsyncClient, merchant: Key, payment_stack: PaymentStack
) -> tuple[dict[str, Any], WorkflowHandle[Any, Any], str]:
    """A payment captured at Stripe whose next step (reading the charge's fee) keeps failing:
    NEEDS_REVIEW from CAPTURED. Returns the payment, its workflow and the fault's id."""
    down = payment_stack.emulator.control.add_fault("GET", CHARGES, "error_500_before")
    created = await http.post("/v1/payments", json=payment_body(), headers=auth(merchant.secret, uuid.uuid4().hex))
    assert created.status_code == 200, created.text
    payment = created.json()
    assert payment["status"] == "captured"
    handle = payment_stack.client.get_workflow_handle(f"payment-{payment['order_id']}", result_type=PaymentState)
    await wait_for_status(handle, "NEEDS_REVIEW")
    return payment, handle, down


async def open_item_of(http: httpx.AsyncClient, ops: Key, payment_id: str) -> dict[str, Any]:
    listed = await http.get("/v1/reviews", params={"payment": payment_id}, headers=auth(ops.secret))
    assert listed.status_code == 200, listed.text
    [item] = listed.json()["data"]
    return item  # type: ignore[no-any-return]


async def action_rows(payment_stack: PaymentStack, review: str) -> list[Any]:
    async with payment_stack.engine.connect() as connection:
        return list(
            await connection.execute(
                text("SELECT * FROM review_actions WHERE review_id = :id ORDER BY id"),
                {"id": int(review.removeprefix("rev_"))},
            )
        )


async def unrouted_item(http: httpx.AsyncClient, ops: Key) -> dict[str, Any]:
    """A verified Stripe event that matches no payment: kept, with a review item of no payment."""
    event = signed_event("charge.refunded", {"id": f"ch_stray_{uuid.uuid4().hex[:12]}", "object": "charge"})
    body = encode(event)
    delivered = await http.post(
        "/webhooks/stripe",
        content=body,
        headers={
            "Content-Type": "application/json",
            "Stripe-Signature": sign(body, [WEBHOOK_SECRET], int(time.time())),
        },
    )
    assert delivered.status_code == 200 and delivered.json()["status"] == "unrouted", delivered.text
    listed = await http.get(
        "/v1/reviews", params={"kind": "webhook_unrouted", "status": "open", "limit": 100}, headers=auth(ops.secret)
    )
    assert listed.status_code == 200, listed.text
    [item] = [item for item in listed.json()["data"] if item["details"].get("event_id") == event["id"]]
    return item  # type: ignore[no-any-return]


# ----------------------------------------------------------------------------- through the API


async def test_retry_resolves_a_payment_in_review_through_its_workflow_and_is_audited(
    http: httpx.AsyncClient, ops: Key, merchant: Key, payment_stack: PaymentStack
) -> None:
    control = payment_stack.emulator.control
    payment, handle, charges_down = await payment_in_review(http, merchant, payment_stack)
    item = await open_item_of(http, ops, payment["id"])
    assert REVIEW_ID.fullmatch(item["id"]) and item["object"] == "review"
    # The issue's `payment_needs_review` names every such item, whatever step failed.
    grouped = await http.get(
        "/v1/reviews", params={"kind": "payment_needs_review", "payment": payment["id"]}, headers=auth(ops.secret)
    )
    assert [found["id"] for found in grouped.json()["data"]] == [item["id"]]
    unrouted = await unrouted_item(http, ops)
    grouped_all = await http.get(
        "/v1/reviews", params={"kind": "payment_needs_review", "limit": 100}, headers=auth(ops.secret)
    )
    assert unrouted["id"] not in {found["id"] for found in grouped_all.json()["data"]}
    assert (item["kind"], item["status"], item["payment"], item["actions"]) == (
        "step_failed",
        "open",
        payment["id"],
        [],
    )
    assert (item["resolution"], item["resolved_by"], item["resolved_at"], item["resolution_note"]) == (None,) * 4
    assert (item["details"]["step"], item["details"]["status_before"]) == ("stripe_charge_balance", "CAPTURED")
    trail_before = await audit_trail(payment_stack, payment["id"])

    # Stripe captured the money: "failed" contradicts it. Refused, and nothing changed.
    refused = await resolve(http, ops, item["id"], "failed", "the customer says it failed")
    assert refused.status_code == 409
    assert error_of(refused)["code"] == "resolution_refused" and error_of(refused)["param"] == "action"
    assert "Stripe says succeeded" in error_of(refused)["message"]
    # An item of a payment in review is the workflow's to resolve: no bare acknowledgement.
    not_allowed = await resolve(http, ops, item["id"], "acknowledged", "seen")
    assert not_allowed.status_code == 400
    assert (error_of(not_allowed)["code"], error_of(not_allowed)["param"]) == ("action_not_allowed", "action")
    # Stripe cannot be read: nothing is decided (503, not saved under the key: retry it).
    note = "Stripe is back; the capture is there"
    intents_down = control.add_fault("GET", PAYMENT_INTENTS, "error_500_before")
    unavailable = await resolve(http, ops, item["id"], "retry", note, idempotency_key="resolve-retry-1")
    assert unavailable.status_code == 503
    assert error_of(unavailable)["code"] == "stripe_unavailable"
    assert "nothing changed" in error_of(unavailable)["message"]
    assert (await payment_row(payment_stack, payment["id"])).status == "NEEDS_REVIEW"
    assert await audit_trail(payment_stack, payment["id"]) == trail_before
    unchanged = await http.get(f"/v1/reviews/{item['id']}", headers=auth(ops.secret))
    assert unchanged.json() == item
    assert await action_rows(payment_stack, item["id"]) == []

    control.remove_fault(intents_down)
    control.remove_fault(charges_down)
    resolved = await resolve(http, ops, item["id"], "retry", note, idempotency_key="resolve-retry-1")
    assert resolved.status_code == 200, resolved.text
    review = resolved.json()
    assert (review["id"], review["status"], review["resolution"], review["resolved_by"], review["resolution_note"]) == (
        item["id"],
        "resolved",
        "retry",
        operator(ops),
        note,
    )
    assert review["resolved_at"] >= review["created"]
    [action] = review["actions"]
    assert {name: value for name, value in action.items() if name not in ("id", "created", "request_id")} == {
        "object": "review_action",
        "action": "retry",
        "note": note,
        "actor": operator(ops),
        "api_key": ops.id,
        "via": "api",
        "payment_status_before": "needs_review",
        "payment_status_after": "captured",
        "effect": f"retry: the payment workflow checked it against Stripe and moved payment {payment['id']} "
        f"from needs_review to captured; resolved {item['id']}",
    }
    assert action["request_id"].startswith("req_")

    # The resolution is the payment's own audited transition, by the key's operator.
    async with payment_stack.engine.connect() as connection:
        [transition] = (
            await connection.execute(
                text(
                    "SELECT from_status, to_status, event, actor FROM payment_events "
                    "WHERE payment_id = :id AND from_status = 'NEEDS_REVIEW'"
                ),
                {"id": payment["id"]},
            )
        ).all()
    assert tuple(transition) == ("NEEDS_REVIEW", "CAPTURED", "resolve_captured", operator(ops))
    [row] = await action_rows(payment_stack, item["id"])
    assert (row.actor, row.api_key_id, row.via, row.payment_id, row.payment_status_after) == (
        operator(ops),
        ops.id,
        "api",
        payment["id"],
        "CAPTURED",
    )

    # The same request again is answered as the first time; another one finds it resolved.
    replayed = await resolve(http, ops, item["id"], "retry", note, idempotency_key="resolve-retry-1")
    assert replayed.status_code == 200 and replayed.headers["Idempotent-Replayed"] == "true"
    assert replayed.json() == review
    again = await resolve(http, ops, item["id"], "retry", "once more")
    assert again.status_code == 409 and error_of(again)["code"] == "review_already_resolved"
    assert len(await action_rows(payment_stack, item["id"])) == 1

    # Resumed, the payment pays its seller once and settles.
    final = await settle(payment_stack, handle)
    assert final.status == "SETTLED"
    assert len(transfers_for(payment_stack, payment["order_id"])) == 1


async def test_an_item_of_no_payment_is_acknowledged_in_the_database(
    http: httpx.AsyncClient, ops: Key, payment_stack: PaymentStack
) -> None:
    item = await unrouted_item(http, ops)
    assert (item["payment"], item["status"], item["actions"]) == (None, "open", [])
    not_allowed = await resolve(http, ops, item["id"], "retry", "retry it")
    assert not_allowed.status_code == 400 and error_of(not_allowed)["code"] == "action_not_allowed"
    assert "concerns no payment" in error_of(not_allowed)["message"]

    note = "a test event sent from the Stripe dashboard"
    acknowledged = await resolve(http, ops, item["id"], "acknowledged", note, idempotency_key="ack-1")
    assert acknowledged.status_code == 200, acknowledged.text
    review = acknowledged.json()
    assert (review["status"], review["resolution"], review["resolved_by"], review["resolution_note"]) == (
        "resolved",
        "acknowledged",
        operator(ops),
        note,
    )
    [action] = review["actions"]
    assert (action["action"], action["actor"], action["api_key"], action["via"]) == (
        "acknowledged",
        operator(ops),
        ops.id,
        "api",
    )
    assert (action["payment_status_before"], action["payment_status_after"]) == (None, None)
    assert action["effect"] == f"acknowledged {item['id']}: the item is resolved"
    retrieved = await http.get(f"/v1/reviews/{item['id']}", headers=auth(ops.secret))
    assert retrieved.status_code == 200 and retrieved.json() == review

    again = await resolve(http, ops, item["id"], "dismissed", "twice")
    assert again.status_code == 409 and error_of(again)["code"] == "review_already_resolved"
    replayed = await resolve(http, ops, item["id"], "acknowledged", note, idempotency_key="ack-1")
    assert replayed.status_code == 200 and replayed.json() == review
    assert len(await action_rows(payment_stack, item["id"])) == 1

    # The database keeps both for good: the audit row cannot change, the item cannot go.
    number = int(item["id"].removeprefix("rev_"))
    for statement, refusal in (
        ("UPDATE review_actions SET note = 'rewritten' WHERE review_id = :id", "review_actions is append-only"),
        ("DELETE FROM review_actions WHERE review_id = :id", "review_actions is append-only"),
        ("DELETE FROM review_items WHERE id = :id", "review_items are never deleted"),
        ("UPDATE review_items SET status = 'open' WHERE id = :id", f"review item {number} is resolved"),
    ):
        with pytest.raises(DBAPIError, match=refusal):
            async with payment_stack.engine.begin() as connection:
                await connection.execute(text(statement), {"id": number})


async def test_an_item_of_a_payment_not_in_review_is_acknowledged_and_the_payment_stays(
    http: httpx.AsyncClient, ops: Key, merchant: Key, payment_stack: PaymentStack
) -> None:
    created = await http.post(
        "/v1/payments",
        json=payment_body(payment_method="pm_card_chargeDeclined"),
        headers=auth(merchant.secret, uuid.uuid4().hex),
    )
    payment = created.json()
    assert payment["status"] == "failed"
    handle = payment_stack.client.get_workflow_handle(f"payment-{payment['order_id']}")
    await asyncio.wait_for(handle.result(), 30)
    # Stripe says "succeeded" for a payment Penny closed as failed: never applied, reviewed.
    event = signed_event(
        "payment_intent.succeeded",
        {
            "id": payment["stripe_payment_intent_id"],
            "object": "payment_intent",
            "status": "succeeded",
            "metadata": {"order_id": payment["order_id"]},
        },
    )
    body = encode(event)
    delivered = await http.post(
        "/webhooks/stripe",
        content=body,
        headers={
            "Content-Type": "application/json",
            "Stripe-Signature": sign(body, [WEBHOOK_SECRET], int(time.time())),
        },
    )
    assert delivered.status_code == 200, delivered.text
    item = await open_item_of(http, ops, payment["id"])
    assert (item["kind"], item["payment"]) == ("webhook_contradiction", payment["id"])

    retry = await resolve(http, ops, item["id"], "retry", "charge it")
    assert retry.status_code == 400 and error_of(retry)["code"] == "action_not_allowed"
    assert f"its payment {payment['id']} is failed, not in review" in error_of(retry)["message"]
    note = "checked at Stripe: the intent was canceled, the event was a test"
    dismissed = await resolve(http, ops, item["id"], "dismissed", note)
    assert dismissed.status_code == 200, dismissed.text
    [action] = dismissed.json()["actions"]
    assert (action["payment_status_before"], action["payment_status_after"]) == ("failed", "failed")
    assert (
        action["effect"] == f"dismissed {item['id']}: the item is resolved; payment {payment['id']} unchanged (failed)"
    )
    assert (await payment_row(payment_stack, payment["id"])).status == "FAILED"


async def test_reviews_list_pages_newest_first_and_filters(
    http: httpx.AsyncClient, ops: Key, payment_stack: PaymentStack
) -> None:
    first, second, third = [await unrouted_item(http, ops) for _ in range(3)]
    page = await http.get(
        "/v1/reviews", params={"kind": "webhook_unrouted", "status": "open", "limit": 2}, headers=auth(ops.secret)
    )
    assert page.status_code == 200
    assert page.json()["has_more"] is True
    assert [review["id"] for review in page.json()["data"]] == [third["id"], second["id"]]
    after = await http.get(
        "/v1/reviews",
        params={"kind": "webhook_unrouted", "status": "open", "limit": 1, "starting_after": second["id"]},
        headers=auth(ops.secret),
    )
    assert [review["id"] for review in after.json()["data"]] == [first["id"]]
    # Back again: the page just before `first`, still newest first; nothing newer than `third`.
    before = await http.get(
        "/v1/reviews",
        params={"kind": "webhook_unrouted", "status": "open", "limit": 2, "ending_before": first["id"]},
        headers=auth(ops.secret),
    )
    assert [review["id"] for review in before.json()["data"]] == [third["id"], second["id"]]
    assert before.json()["has_more"] is False
    both = await http.get(
        "/v1/reviews", params={"starting_after": first["id"], "ending_before": third["id"]}, headers=auth(ops.secret)
    )
    assert both.status_code == 400 and error_of(both)["code"] == "parameters_exclusive"
    missing = await http.get("/v1/reviews/rev_999999999", headers=auth(ops.secret))
    assert missing.status_code == 404 and error_of(missing)["code"] == "resource_missing"
    malformed = await http.get("/v1/reviews/rev_01", headers=auth(ops.secret))
    assert malformed.status_code == 400 and error_of(malformed)["param"] == "review_id"
    unknown = await resolve(http, ops, "rev_999999999", "acknowledged", "nothing there")
    assert unknown.status_code == 404 and error_of(unknown)["code"] == "resource_missing"
    unknown_action = await resolve(http, ops, first["id"], "approve", "no such action")
    assert unknown_action.status_code == 400 and error_of(unknown_action)["param"] == "action"
    empty_note = await resolve(http, ops, first["id"], "acknowledged", "")
    assert empty_note.status_code == 400 and error_of(empty_note)["param"] == "note"
    assert (await http.get(f"/v1/reviews/{first['id']}", headers=auth(ops.secret))).json()["status"] == "open"


# ----------------------------------------------------------------------------- through the CLI


async def test_cli_lists_shows_and_resolves_an_item(
    http: httpx.AsyncClient, ops: Key, payment_stack: PaymentStack, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = payment_stack.settings
    item = await unrouted_item(http, ops)
    capsys.readouterr()

    assert await run_cli(settings, "reviews", "list", "--kind", "webhook_unrouted", "--status", "open") == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].split() == ["ID", "CREATED", "STATUS", "KIND", "PAYMENT", "REASON"]
    [line] = [line for line in listed if line.split()[0] == item["id"]]
    assert line.split()[3:6] == ["open", "webhook_unrouted", "-"]
    assert re.fullmatch(r"\d+ item\(s\), newest first", listed[-1])

    assert await run_cli(settings, "reviews", "show", item["id"]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert shown[0] == f"{item['id']}  open  webhook_unrouted"
    assert f"reason:      {item['reason']}" in shown
    assert f"  event_id: {item['details']['event_id']}" in shown
    assert shown[-1] == "actions:     none"

    number = item["id"].removeprefix("rev_")
    note = "forwarded from another account's endpoint"
    refused = ("reviews", "resolve", number, "--action", "retry", "--note", note, "--operator", "olga")
    assert await run_cli(settings, *refused) == 1
    assert capsys.readouterr().err.startswith("penny: action_not_allowed: ")
    dismiss = ("reviews", "resolve", number, "--action", "dismissed", "--note", note, "--operator", "olga")
    assert await run_cli(settings, *dismiss) == 0
    resolved = capsys.readouterr().out.splitlines()
    assert resolved[0] == f"{item['id']}  resolved  webhook_unrouted"
    assert any(re.fullmatch(r"resolved: .* by operator:olga \(cli\): dismissed", line) for line in resolved)
    assert f"note:        {note}" in resolved
    assert f"  effect: dismissed {item['id']}: the item is resolved" in resolved
    [row] = await action_rows(payment_stack, item["id"])
    assert (row.action, row.actor, row.api_key_id, row.via, row.note) == (
        "dismissed",
        "operator:olga (cli)",
        None,
        "cli",
        note,
    )
    assert await run_cli(settings, *dismiss) == 1
    assert capsys.readouterr().err.startswith("penny: review_already_resolved: ")

    # The API shows what the CLI did.
    review = (await http.get(f"/v1/reviews/{item['id']}", headers=auth(ops.secret))).json()
    assert (review["status"], review["resolved_by"], review["actions"][0]["via"]) == (
        "resolved",
        "operator:olga (cli)",
        "cli",
    )


async def test_cli_resolves_a_payment_in_review_through_its_workflow(
    http: httpx.AsyncClient, ops: Key, merchant: Key, payment_stack: PaymentStack, capsys: pytest.CaptureFixture[str]
) -> None:
    payment, handle, charges_down = await payment_in_review(http, merchant, payment_stack)
    item = await open_item_of(http, ops, payment["id"])
    capsys.readouterr()
    failed = ("reviews", "resolve", item["id"], "--action", "failed", "--note", "no", "--operator", "olga")
    assert await run_cli(payment_stack.settings, *failed) == 1
    error = capsys.readouterr().err
    assert error.startswith("penny: resolution_refused: ") and "Stripe says succeeded" in error
    assert (await payment_row(payment_stack, payment["id"])).status == "NEEDS_REVIEW"

    payment_stack.emulator.control.remove_fault(charges_down)
    retry = ("reviews", "resolve", item["id"], "--action", "retry", "--note", "fee lookup works", "--operator", "olga")
    assert await run_cli(payment_stack.settings, *retry) == 0
    shown = capsys.readouterr().out
    assert f"{item['id']}  resolved  step_failed" in shown
    async with payment_stack.engine.connect() as connection:
        actor = (
            await connection.execute(
                text("SELECT actor FROM payment_events WHERE payment_id = :id AND from_status = 'NEEDS_REVIEW'"),
                {"id": payment["id"]},
            )
        ).scalar_one()
    assert actor == "operator:olga (cli)"
    assert (await settle(payment_stack, handle)).status == "SETTLED"
