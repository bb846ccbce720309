"""Optional persistence: the whole state as one JSON snapshot in a SQLite file.

The snapshot is written when the state changed, at most every `persist_interval_seconds`,
and on shutdown. One row, replaced atomically in a transaction, so a reader never sees half
a snapshot.

A snapshot's cost grows with the state, so the pause after one is at least
`1 / PERSIST_BUSY_SHARE_MAX` times what it took: snapshots use at most that share of the
emulator's time, however many objects it holds (at the fixed interval, a long `penny dev`
session or benchmark spent more and more of its CPU re-serialising the same objects: #16). A
crash loses at most the longer of the two pauses.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

# Snapshots take at most this share of the emulator's time (the pause after one is its cost
# divided by this share, and never less than the configured interval).
PERSIST_BUSY_SHARE_MAX = 0.05


def persist_pause_seconds(interval_seconds: float, snapshot_seconds: float) -> float:
    """How long to wait before the next snapshot, after one that took `snapshot_seconds`."""
    return max(interval_seconds, snapshot_seconds / PERSIST_BUSY_SHARE_MAX)


class SnapshotStore:
    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as connection:
            connection.execute(
                "CREATE TABLE IF NOT EXISTS emulator_snapshot "
                "(id INTEGER PRIMARY KEY CHECK (id = 1), saved_at REAL NOT NULL, body TEXT NOT NULL)"
            )

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=10)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    def load(self) -> dict[str, Any] | None:
        with self._connect() as connection:
            row = connection.execute("SELECT body FROM emulator_snapshot WHERE id = 1").fetchone()
        return None if row is None else json.loads(row[0])

    def save(self, body: str) -> None:
        connection = self._connect()
        try:
            with connection:
                connection.execute(
                    "INSERT INTO emulator_snapshot (id, saved_at, body) VALUES (1, ?, ?) "
                    "ON CONFLICT (id) DO UPDATE SET saved_at = excluded.saved_at, body = excluded.body",
                    (time.time(), body),
                )
        finally:
            connection.close()
