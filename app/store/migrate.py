"""Bring the database's schema to the newest revision, safely from several replicas at once.

Why programmatic Alembic: the app migrates itself at start-up (no separate deploy step to
forget), with the migration scripts shipped inside the package (`migrations/`), and over
the store's own async engine: the async connection runs Alembic's synchronous API through
`run_sync`, in one transaction.

On PostgreSQL that transaction first takes a transaction-scoped advisory lock: two
replicas starting together would otherwise both see an empty database and both try to
create the tables; with the lock the second waits for the first to commit, then finds the
schema at head and does nothing. SQLite is one file on one host, and its write lock
already serialises the transactions.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: `pg_advisory_xact_lock` key of the store's migrations ("calls" in ASCII, as an int).
ADVISORY_LOCK_KEY = int.from_bytes(b"calls", "big")


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config for the packaged migrations (no alembic.ini involved)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    """The newest revision the package ships."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _upgrade(connection: Connection) -> None:
    command.upgrade(alembic_config(connection), "head")


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def upgrade(engine: AsyncEngine) -> None:
    """Apply every migration not yet applied (a no-op at head), in one transaction."""
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(
                sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY}
            )
        await conn.run_sync(_upgrade)


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at (None before the first migration)."""
    async with engine.connect() as conn:
        return await conn.run_sync(_current)
