"""Units of reconciliation's pure functions: the scheduled window, staging rows, CLI times, CSV and HTML.

The comparison itself is tested on the real stack (tests/test_reconciliation.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from activities.reconciliation import STAGE_COLUMNS, scheduled_window, stage_rows
from penny.reconcile_cli import parse_moment
from penny.reconciliation_reports import ItemView, RunView, render_chart, render_csv, render_html, render_text


def unix(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp())


def test_a_scheduled_run_reconciles_the_whole_previous_local_day() -> None:
    assert scheduled_window(unix("2026-11-22T03:00:00+00:00"), "UTC", 1) == (
        unix("2026-11-21T00:00:00+00:00"),
        unix("2026-11-22T00:00:00+00:00"),
    )
    # Paris at 04:30 on the day after the clocks went back: a 25-hour local day.
    start, end = scheduled_window(unix("2026-10-26T04:30:00+01:00"), "Europe/Paris", 1)
    assert (start, end) == (unix("2026-10-25T00:00:00+02:00"), unix("2026-10-26T00:00:00+01:00"))
    assert end - start == 25 * 3600
    assert scheduled_window(unix("2026-11-22T03:00:00+00:00"), "UTC", 7)[0] == unix("2026-11-15T00:00:00+00:00")
    with pytest.raises(ValueError):
        scheduled_window(0, "UTC", 0)


def test_a_transfer_is_staged_with_one_row_per_reversal() -> None:
    transfer = {
        "id": "tr_a",
        "object": "transfer",
        "amount": 9000,
        "amount_reversed": 250,
        "created": 1_763_700_000,
        "currency": "usd",
        "destination": "acct_seller",
        "source_transaction": "ch_a",
        "transfer_group": "order_a",
        "metadata": {"payment_id": "pay_a"},
        "reversals": {"data": [{"id": "trr_a", "amount": 250, "created": 1_763_700_100, "currency": "usd"}]},
    }
    rows = [dict(zip(STAGE_COLUMNS, row, strict=True)) for row in stage_rows("recon_x", "transfer", transfer)]
    assert [(row["object_type"], row["stripe_id"], row["amount"]) for row in rows] == [
        ("transfer", "tr_a", 9000),
        ("transfer_reversal", "trr_a", 250),
    ]
    assert (rows[0]["amount_reversed"], rows[0]["charge"], rows[0]["destination"], rows[0]["payment_id"]) == (
        250,
        "ch_a",
        "acct_seller",
        "pay_a",
    )
    assert rows[1]["transfer"] == "tr_a" and rows[0]["created_at"] == datetime.fromtimestamp(1_763_700_000, UTC)
    with pytest.raises(ValueError):
        stage_rows("recon_x", "charge", {"id": "ch_b"})


def test_cli_times_are_unix_seconds_dates_or_iso_times() -> None:
    assert parse_moment("1763683200") == 1_763_683_200
    assert parse_moment("2026-11-21") == unix("2026-11-21T00:00:00+00:00")
    assert parse_moment("2026-11-21T10:00:00+01:00") == unix("2026-11-21T09:00:00+00:00")
    assert parse_moment("2026-11-21T10:00:00") == unix("2026-11-21T10:00:00+00:00")


def run_view(**counts: int) -> RunView:
    return RunView(
        id="recon_" + "a" * 24,
        window_start=unix("2026-11-21T00:00:00+00:00"),
        window_end=unix("2026-11-22T00:00:00+00:00"),
        trigger="schedule",
        requested_by="",
        status="completed",
        counts=counts,
        fetched={"payment_intent": 3},
        tolerances={},
        repaired=0,
        started_at=unix("2026-11-22T03:00:00+00:00"),
        finished_at=unix("2026-11-22T03:00:09+00:00"),
        workflow_id="reconciliation-scheduled-penny",
    )


def item_view(reason: str) -> ItemView:
    return ItemView(
        id=1,
        run_id="recon_" + "a" * 24,
        window_start=0,
        window_end=86_400,
        item_class="amount_mismatch",
        item_key="pi_a",
        payment_id="pay_a",
        order_id="order_a",
        stripe_id="pi_a",
        reason=reason,
        stripe_values={"amount_received": 9998},
        penny_values={"amount_captured": 9999},
        review_id="rev_7",
        repair=None,
    )


def test_csv_cells_a_spreadsheet_would_evaluate_are_quoted() -> None:
    lines = render_csv([item_view("=HYPERLINK(evil)")]).splitlines()
    assert lines[0].startswith("run_id,window_start,window_end,class,item_key")
    assert ",'=HYPERLINK(evil)," in lines[1]


def test_html_escapes_values_and_the_chart_stacks_each_class() -> None:
    page = render_html(run_view(matched=3, amount_mismatch=1), [item_view("<b>x</b>")], [run_view(matched=3)])
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page
    chart = render_chart([run_view(matched=3, amount_mismatch=1)])
    assert chart.count("<rect") == 2 and "amount_mismatch: 1" in chart
    assert "No finished runs yet." in render_chart([])
    text = render_text(run_view(matched=3, amount_mismatch=1), [item_view("differs")])
    assert "amount_mismatch                        1" in text and "[amount_mismatch] pi_a  review rev_7" in text
