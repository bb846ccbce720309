"""Optional persistence: the whole state as one JSON snapshot in a SQLite file.

The snapshot is written when the state changed, at most every `persist_interval_seconds`,
and on shutdown; a crash loses at most that interval. One row, replaced atomically in a
transaction, so a reader never sees half a snapshot.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any


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
