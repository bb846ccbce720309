"""Database engine and migrations."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

MIGRATIONS_DIR = Path(__file__).parent.parent / "ledger" / "migrations"

POOL_SIZE = 20
POOL_OVERFLOW_MAX = 10
POOL_RECYCLE_SECONDS = 1800


def create_engine(database_url: str, *, pool_size: int = POOL_SIZE, pre_ping: bool = True) -> AsyncEngine:
    """`pre_ping` costs a round trip per checkout; the worker turns it off because a stale
    connection there only fails one activity attempt, which Temporal retries."""
    return create_async_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=POOL_OVERFLOW_MAX,
        pool_pre_ping=pre_ping,
        pool_recycle=POOL_RECYCLE_SECONDS,
    )


def session_factory(engine: AsyncEngine) -> async_sessionmaker:  # type: ignore[type-arg]
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(database_url: str):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def migrate(database_url: str, revision: str = "head") -> None:
    """Bring the database schema to `revision` (blocking; run it outside an event loop)."""
    from alembic import command

    command.upgrade(alembic_config(database_url), revision)
