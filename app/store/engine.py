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
- SQLite, transactions: the sqlite3 module opens a transaction only before an INSERT or
  UPDATE and commits on its own before DDL, so a migration cut short (a crash, the
  start's timeout) would leave half a schema behind ("table calls already exists" at
  every start after). SQLAlchemy's documented pysqlite recipe turns that off (the
  driver's `isolation_level = None`) and emits BEGIN itself, so DDL is in the
  transaction and rolls back with it. `writing()` asks for BEGIN IMMEDIATE, taking the
  write lock at once: what such a transaction reads first can't be changed by another
  writer before it writes (the writer classifies its rows from such a read).
- JSON (both): orjson reads and writes the record column, several times faster than the
  standard library on the event loop that carries the live calls (a page of 200 large
  records for `GET /calls`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from app.store.urls import dialect_of

POOL_SIZE = 5
SQLITE_BUSY_TIMEOUT_S = 5.0
"""How long a SQLite connection waits for another one's lock before "database is locked"."""
SQLITE_BUSY_TIMEOUT_MS = int(SQLITE_BUSY_TIMEOUT_S * 1000)
APPLICATION_NAME = "twilio-realtime-bridge"
_BEGIN_IMMEDIATE = "store_begin_immediate"
"""Execution option of `writing()`: the SQLite "begin" hook emits BEGIN IMMEDIATE."""


def json_dumps(value: Any) -> str:
    """The record column's JSON text, by orjson (what orjson can't write, an integer
    outside 64 bits or a lone surrogate, records.py refuses at submit)."""
    return orjson.dumps(value).decode()


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
        json_serializer=json_dumps,
        json_deserializer=orjson.loads,
        connect_args={
            "timeout": connect_timeout_s,
            "command_timeout": 2 * connect_timeout_s,
            "server_settings": {"application_name": APPLICATION_NAME},
        },
    )


@asynccontextmanager
async def writing(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """`engine.begin()` for a transaction that writes: on SQLite it holds the write lock
    from its first statement (BEGIN IMMEDIATE, waiting up to the busy timeout for it)."""
    async with engine.connect() as conn:
        await conn.execution_options(**{_BEGIN_IMMEDIATE: True})
        async with conn.begin():
            yield conn


def _sqlite_engine(url: str) -> AsyncEngine:
    quiet = logging.getLogger("aiosqlite")
    if quiet.level < logging.INFO:  # NOTSET too: it would inherit the root's DEBUG
        quiet.setLevel(logging.INFO)
    engine = create_async_engine(
        url,
        pool_pre_ping=True,
        json_serializer=json_dumps,
        json_deserializer=orjson.loads,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S},
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # The driver begins and commits nothing by itself (the recipe; `_on_begin` does
        # it). aiosqlite's adapted connection passes this to the sqlite3 connection, in
        # the connection's own thread.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get(_BEGIN_IMMEDIATE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine
