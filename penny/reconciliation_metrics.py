"""Reconciliation metrics (Prometheus; the worker exposes them). Labels are bounded: `class` is one
of workflows.reconciliation_models.ALL_CLASSES, never an id."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# New mismatches (an item seen for the first time; a re-run of the same window adds none).
MISMATCHES = Counter(
    "penny_reconciliation_mismatches_total", "Reconciliation mismatches found for the first time, by class.", ["class"]
)
# What the latest finished run counted, matched included (a re-run of a window sets the same values).
LAST_RUN_COUNTS = Gauge(
    "penny_reconciliation_last_run_items", "Counts of the latest finished reconciliation run, by class.", ["class"]
)
RUN_SECONDS = Histogram(
    "penny_reconciliation_run_duration_seconds",
    "Wall time of a reconciliation run, from its start to its report.",
    buckets=(1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0),
)
RUNS = Counter("penny_reconciliation_runs_total", "Reconciliation runs finished, by trigger.", ["trigger"])
REPAIRS = Counter(
    "penny_reconciliation_repairs_total", "Payment workflows signalled by reconciliation (missed webhooks)."
)
