"""Bring the database's schema to the newest revision, safely from several replicas at once.

Why programmatic Alembic: the app migrates itself at start-up (no separate deploy step to
forget), with the migration scripts shipped inside the package (`migrations/`), and over
the store's own async engine: the async connection runs Alembic's synchronous API through
`run_sync`, in one transaction.

On PostgreSQL that transaction first takes a transaction-scoped advisory lock: two
replicas starting together would otherwise both see an empty database and both try to
create the tables; with the lock the second waits for the first to commit, then finds the
schema at head and does nothing. SQLite is one file on one host: its transaction takes
the write lock at BEGIN (engine.py's `writing()`), which serialises the migrations alike;
and on SQLite too the DDL is inside the transaction (engine.py), so a migration cut short
leaves nothing half-made.

A database newer than the code (a rollback to an older release, after a newer one
migrated) is at a revision these scripts don't know. Alembic would refuse to run at all;
`upgrade()` instead leaves it as it is and says so, and the store carries on: every
migration we ship only adds, so the columns this code writes and reads are still there.
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

from app.store.engine import writing

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


def _upgrade(connection: Connection) -> str | None:
    config = alembic_config(connection)
    known = {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}
    current = MigrationContext.configure(connection).get_current_heads()
    unknown = [revision for revision in current if revision not in known]
    if unknown:  # newer than this code: nothing here to apply, and nothing to undo
        return ",".join(unknown)
    command.upgrade(config, "head")
    return None


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def upgrade(engine: AsyncEngine) -> str | None:
    """Apply every migration not yet applied (a no-op at head), in one transaction.

    None once the database is at head; the database's revision when it is one this code
    doesn't know (a newer release's: nothing is applied)."""
    async with writing(engine) as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(
                sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY}
            )
        return await conn.run_sync(_upgrade)


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at (None before the first migration)."""
    async with engine.connect() as conn:
        return await conn.run_sync(_current)
