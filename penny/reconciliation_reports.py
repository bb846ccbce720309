"""Reconciliation runs and items, read from Postgres and rendered: JSON-ready dicts, the terminal
report (`penny reconcile report RUN`), CSV and the HTML report with its inline SVG chart.

Shared by the API (`api/reconciliation.py`) and the CLI, so both show the same thing. Rendering
is pure (rows in, text out); every value that reaches HTML is escaped, and a CSV cell that a
spreadsheet would read as a formula is prefixed with a quote.
"""

from __future__ import annotations

import csv
import html
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from workflows.reconciliation_models import ALL_CLASSES, MATCHED, MISMATCH_CLASSES

RUN_ID_PATTERN = r"^recon_[a-z]{24}$"
RUNS_LISTED_MAX = 100
ITEMS_LISTED_MAX = 10_000
CHART_RUNS_MAX = 14
CSV_COLUMNS = (
    "run_id",
    "window_start",
    "window_end",
    "class",
    "item_key",
    "payment_id",
    "order_id",
    "stripe_id",
    "reason",
    "stripe_values",
    "penny_values",
    "review_id",
    "repair",
)
# One colour per class in the chart (matched first); mismatches in warm tones.
CLASS_COLOURS = {
    MATCHED: "#2e7d32",
    **{
        name: colour
        for name, colour in zip(
            MISMATCH_CLASSES,
            (
                "#c62828", "#ad1457", "#6a1b9a", "#4527a0", "#283593", "#1565c0", "#00838f", "#00695c",
                "#9e9d24", "#f9a825", "#ff8f00", "#ef6c00", "#d84315", "#4e342e", "#37474f",
            ),
            strict=True,
        )
    },
}  # fmt: skip


@dataclass(frozen=True)
class RunView:
    id: str
    window_start: int
    window_end: int
    trigger: str
    requested_by: str
    status: str
    counts: dict[str, int]
    fetched: dict[str, int]
    tolerances: dict[str, int]
    repaired: int
    started_at: int
    finished_at: int | None
    workflow_id: str

    @property
    def mismatches(self) -> int:
        return sum(count for name, count in self.counts.items() if name != MATCHED)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "reconciliation_run",
            "window_start": self.window_start,
            "window_end": self.window_end,
            "trigger": self.trigger,
            "requested_by": self.requested_by,
            "status": self.status,
            "counts": {name: self.counts.get(name, 0) for name in ALL_CLASSES} if self.counts else {},
            "mismatches": self.mismatches,
            "fetched": self.fetched,
            "tolerances": self.tolerances,
            "repaired": self.repaired,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "workflow_id": self.workflow_id,
        }


@dataclass(frozen=True)
class ItemView:
    id: int
    run_id: str
    window_start: int
    window_end: int
    item_class: str
    item_key: str
    payment_id: str | None
    order_id: str | None
    stripe_id: str | None
    reason: str
    stripe_values: dict[str, Any]
    penny_values: dict[str, Any]
    review_id: str | None
    repair: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "reconciliation_item",
            "class": self.item_class,
            "item_key": self.item_key,
            "payment_id": self.payment_id,
            "order_id": self.order_id,
            "stripe_id": self.stripe_id,
            "reason": self.reason,
            "stripe": self.stripe_values,
            "penny": self.penny_values,
            "review_id": self.review_id,
            "repair": self.repair,
        }


def _unix(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


def _run_view(row: Any) -> RunView:
    return RunView(
        id=row.id,
        window_start=int(row.window_start.timestamp()),
        window_end=int(row.window_end.timestamp()),
        trigger=row.trigger,
        requested_by=row.requested_by,
        status=row.status,
        counts={str(name): int(count) for name, count in dict(row.counts).items()},
        fetched={str(name): int(count) for name, count in dict(row.fetched).items()},
        tolerances=dict(row.tolerances),
        repaired=int(row.repaired),
        started_at=int(row.started_at.timestamp()),
        finished_at=_unix(row.finished_at),
        workflow_id=row.workflow_id,
    )


async def list_runs(engine: AsyncEngine, limit: int = 20) -> list[RunView]:
    """The newest runs first."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT * FROM reconciliation_runs ORDER BY started_at DESC, id DESC LIMIT :limit"),
            {"limit": max(1, min(limit, RUNS_LISTED_MAX))},
        )
        return [_run_view(row) for row in rows]


async def get_run(engine: AsyncEngine, run_id: str) -> RunView | None:
    async with engine.connect() as connection:
        row = (
            await connection.execute(text("SELECT * FROM reconciliation_runs WHERE id = :id"), {"id": run_id})
        ).first()
    return _run_view(row) if row is not None else None


async def run_items(engine: AsyncEngine, run_id: str) -> list[ItemView]:
    """The items a run found, by class then key (at most ITEMS_LISTED_MAX)."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                """
                SELECT i.id, ri.run_id, i.window_start, i.window_end, i.class AS item_class, i.item_key,
                       i.payment_id, i.order_id, i.stripe_id, i.reason, i.stripe_values, i.penny_values,
                       i.review_item_id, i.repair
                  FROM reconciliation_run_items ri
                  JOIN reconciliation_items i ON i.id = ri.item_id
                 WHERE ri.run_id = :run_id
                 ORDER BY i.class, i.item_key
                 LIMIT :limit
                """
            ),
            {"run_id": run_id, "limit": ITEMS_LISTED_MAX},
        )
        return [
            ItemView(
                id=row.id,
                run_id=row.run_id,
                window_start=int(row.window_start.timestamp()),
                window_end=int(row.window_end.timestamp()),
                item_class=row.item_class,
                item_key=row.item_key,
                payment_id=row.payment_id,
                order_id=row.order_id,
                stripe_id=row.stripe_id,
                reason=row.reason,
                stripe_values=dict(row.stripe_values),
                penny_values=dict(row.penny_values),
                review_id=f"rev_{row.review_item_id}" if row.review_item_id is not None else None,
                repair=row.repair,
            )
            for row in rows
        ]


# ------------------------------------------------------------------------------------- rendering


def _iso(unix: int | None) -> str:
    if unix is None:
        return "-"
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="seconds")


def _values(values: dict[str, Any]) -> str:
    return json.dumps(values, sort_keys=True, separators=(", ", ": ")) if values else "-"


def render_text(run: RunView, items: Sequence[ItemView]) -> str:
    """The terminal report: the run, its counts per class, then each item with both sides."""
    lines = [
        f"Reconciliation run {run.id} ({run.status}, {run.trigger}"
        + (f" by {run.requested_by}" if run.requested_by else "")
        + ")",
        f"Window  {_iso(run.window_start)} .. {_iso(run.window_end)} (end excluded)",
        f"Started {_iso(run.started_at)}  finished {_iso(run.finished_at)}  repaired {run.repaired}",
        "Fetched " + (", ".join(f"{name} {count}" for name, count in sorted(run.fetched.items())) or "-"),
        "",
        f"{'CLASS':<32} {'COUNT':>7}",
    ]
    lines += [f"{name:<32} {run.counts.get(name, 0):>7}" for name in ALL_CLASSES]
    lines += [f"{'mismatches':<32} {run.mismatches:>7}", ""]
    if not items:
        lines.append("No mismatches.")
    for item in items:
        lines.append(f"[{item.item_class}] {item.item_key}  review {item.review_id or '-'}")
        lines.append(f"    {item.reason}")
        lines.append(f"    stripe: {_values(item.stripe_values)}")
        lines.append(f"    penny:  {_values(item.penny_values)}")
        if item.repair:
            lines.append(f"    repair: {item.repair}")
    return "\n".join(lines) + "\n"


def _csv_cell(value: Any) -> str:
    cell = "" if value is None else str(value)
    # A cell starting like a formula is not evaluated by spreadsheets once quoted.
    return "'" + cell if cell[:1] in ("=", "+", "-", "@", "\t", "\r") else cell


def render_csv(items: Sequence[ItemView]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for item in items:
        writer.writerow(
            [
                _csv_cell(value)
                for value in (
                    item.run_id,
                    item.window_start,
                    item.window_end,
                    item.item_class,
                    item.item_key,
                    item.payment_id,
                    item.order_id,
                    item.stripe_id,
                    item.reason,
                    json.dumps(item.stripe_values, sort_keys=True),
                    json.dumps(item.penny_values, sort_keys=True),
                    item.review_id,
                    item.repair,
                )
            ]
        )
    return buffer.getvalue()


CHART_WIDTH = 720
CHART_HEIGHT = 260
CHART_MARGIN = 40


def render_chart(runs: Sequence[RunView]) -> str:
    """Inline SVG: one stacked bar per run (oldest left), matched and each mismatch class."""
    shown = [run for run in runs if run.counts][-CHART_RUNS_MAX:]
    escape = html.escape
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{CHART_WIDTH}" height="{CHART_HEIGHT}" role="img" '
        f'aria-label="Matched and mismatched by class over recent runs">'
    ]
    if not shown:
        parts.append(f'<text x="{CHART_MARGIN}" y="{CHART_HEIGHT // 2}">No finished runs yet.</text></svg>')
        return "".join(parts)
    tallest = max(1, *(sum(run.counts.values()) for run in shown))
    plot_height = CHART_HEIGHT - 2 * CHART_MARGIN
    slot = (CHART_WIDTH - 2 * CHART_MARGIN) // len(shown)
    bar = max(4, slot * 2 // 3)
    parts.append(
        f'<line x1="{CHART_MARGIN}" y1="{CHART_HEIGHT - CHART_MARGIN}" x2="{CHART_WIDTH - CHART_MARGIN}" '
        f'y2="{CHART_HEIGHT - CHART_MARGIN}" stroke="#555"/>'
        f'<text x="4" y="{CHART_MARGIN}" font-size="11">{tallest}</text>'
    )
    for index, run in enumerate(shown):
        x = CHART_MARGIN + index * slot
        y = CHART_HEIGHT - CHART_MARGIN
        for name in ALL_CLASSES:
            count = run.counts.get(name, 0)
            if count <= 0:
                continue
            height = max(1, count * plot_height // tallest)
            y -= height
            parts.append(
                f'<rect x="{x}" y="{y}" width="{bar}" height="{height}" fill="{CLASS_COLOURS[name]}">'
                f"<title>{escape(run.id)} {escape(name)}: {count}</title></rect>"
            )
        label = datetime.fromtimestamp(run.window_start, UTC).strftime("%m-%d")
        parts.append(f'<text x="{x}" y="{CHART_HEIGHT - CHART_MARGIN + 14}" font-size="10">{escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(run: RunView, items: Sequence[ItemView], recent: Sequence[RunView]) -> str:
    """A self-contained page (no script, no external resource): the run, the chart, the items."""
    escape = html.escape
    legend = "".join(
        f'<span style="display:inline-block;margin-right:12px"><span style="display:inline-block;width:10px;'
        f'height:10px;background:{colour}"></span> {escape(name)}</span>'
        for name, colour in CLASS_COLOURS.items()
    )
    counts = "".join(
        f"<tr><td>{escape(name)}</td><td class=n>{run.counts.get(name, 0)}</td></tr>" for name in ALL_CLASSES
    )
    rows = "".join(
        "<tr>"
        f"<td>{escape(item.item_class)}</td><td>{escape(item.item_key)}</td>"
        f"<td>{escape(item.payment_id or '-')}</td><td>{escape(item.reason)}</td>"
        f"<td><code>{escape(_values(item.stripe_values))}</code></td>"
        f"<td><code>{escape(_values(item.penny_values))}</code></td>"
        f"<td>{escape(item.review_id or '-')}</td><td>{escape(item.repair or '-')}</td>"
        "</tr>"
        for item in items
    )
    chronological = sorted(recent, key=lambda candidate: (candidate.started_at, candidate.id))
    return (
        "<!doctype html><html><head><meta charset=utf-8>"
        f"<title>Reconciliation {escape(run.id)}</title>"
        "<style>body{font-family:sans-serif;margin:24px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}"
        "td.n{text-align:right}code{white-space:pre-wrap;font-size:12px}</style></head><body>"
        f"<h1>Reconciliation run {escape(run.id)}</h1>"
        f"<p>Window {escape(_iso(run.window_start))} to {escape(_iso(run.window_end))} (end excluded); "
        f"{escape(run.status)}, {escape(run.trigger)}; started {escape(_iso(run.started_at))}, finished "
        f"{escape(_iso(run.finished_at))}; repaired automatically: {run.repaired}. "
        '<a href="items.csv">CSV</a></p>'
        "<h2>Recent runs</h2>"
        f"{render_chart(chronological)}<p>{legend}</p>"
        "<h2>Counts</h2><table><tr><th>Class</th><th>Count</th></tr>"
        f"{counts}<tr><th>mismatches</th><th class=n>{run.mismatches}</th></tr></table>"
        f"<h2>Items ({len(items)})</h2>"
        + (
            "<table><tr><th>Class</th><th>Key</th><th>Payment</th><th>Reason</th><th>Stripe</th><th>Penny</th>"
            f"<th>Review</th><th>Repair</th></tr>{rows}</table>"
            if items
            else "<p>No mismatches.</p>"
        )
        + "</body></html>"
    )


async def record_requested_run(
    engine: AsyncEngine,
    *,
    run_id: str,
    window_start_unix: int,
    window_end_unix: int,
    trigger: str,
    requested_by: str,
    workflow_id: str,
) -> RunView:
    """The run's row as soon as its workflow is started (the workflow's first activity writes the
    same row, ON CONFLICT DO NOTHING, whichever comes first), so a read right after a start finds it."""
    async with engine.begin() as connection:
        await connection.execute(
            text(
                """
                INSERT INTO reconciliation_runs (id, window_start, window_end, trigger, requested_by, workflow_id)
                VALUES (:id, to_timestamp(:start), to_timestamp(:end), :trigger, :requested_by, :workflow_id)
                ON CONFLICT (id) DO NOTHING
                """
            ),
            {
                "id": run_id,
                "start": window_start_unix,
                "end": window_end_unix,
                "trigger": trigger,
                "requested_by": requested_by[:200],
                "workflow_id": workflow_id,
            },
        )
    run = await get_run(engine, run_id)
    assert run is not None, run_id
    return run
