"""Alembic's entry point for the call store: migrate over the connection it is handed.

Why no URL or engine here: `app.store.migrate.upgrade` runs the migrations inside a
transaction it opened itself (on PostgreSQL, after taking the advisory lock that keeps two
replicas from migrating at once), so this file only configures Alembic on that connection
(`config.attributes["connection"]`). Alembic sees the transaction already open and leaves
committing to its owner. Offline (SQL script) mode is not supported.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from app.store.schema import metadata


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite can't ALTER much
        compare_type=True,
        transactional_ddl=True,  # SQLite's too, with the engine's BEGIN (engine.py)
    )
    with context.begin_transaction():
        context.run_migrations()


_connection = context.config.attributes.get("connection")
if context.is_offline_mode() or not isinstance(_connection, Connection):
    raise RuntimeError("call store migrations run through app.store.migrate.upgrade()")
run_migrations(_connection)
