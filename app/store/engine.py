"""The SQLAlchemy async engine for the call store, set up so a database outage stays small.

Why each setting:
- PostgreSQL (asyncpg): `pool_pre_ping` drops pooled connections a server restart killed,
  so the first write after a restart doesn't fail on a dead socket; the connect timeout
  makes an unreachable host fail in seconds instead of the kernel's minutes, and the
  command timeout bounds a statement on a host that stopped answering mid-way. The pool
  is small: one writer, a few API queries.
- SQLite (aiosqlite, a thread per connection, so the event loop never waits on the disk):
  WAL journal, so API reads don't block the writer and the other way round, and a busy
  timeout, so two connections wait for each other's lock instead of failing at once.
  aiosqlite logs every statement with its parameters (whole call records) at DEBUG, so
  its logger is held at INFO even under LOG_LEVEL=DEBUG, as SQLAlchemy holds its own.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.store.urls import dialect_of

POOL_SIZE = 5
SQLITE_BUSY_TIMEOUT_MS = 5000
APPLICATION_NAME = "twilio-realtime-bridge"


def make_engine(url: str, *, connect_timeout_s: float) -> AsyncEngine:
    """An engine for `url` (as `database_url()` returned it); connects lazily."""
    if dialect_of(url) == "sqlite":
        return _sqlite_engine(url)
    return create_async_engine(
        url,
        pool_pre_ping=True,
        pool_size=POOL_SIZE,
        max_overflow=POOL_SIZE,
        pool_timeout=connect_timeout_s,
        connect_args={
            "timeout": connect_timeout_s,
            "command_timeout": 2 * connect_timeout_s,
            "server_settings": {"application_name": APPLICATION_NAME},
        },
    )


def _sqlite_engine(url: str) -> AsyncEngine:
    quiet = logging.getLogger("aiosqlite")
    if quiet.level < logging.INFO:  # NOTSET too: it would inherit the root's DEBUG
        quiet.setLevel(logging.INFO)
    engine = create_async_engine(
        url,
        pool_pre_ping=True,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        finally:
            cursor.close()

    return engine
