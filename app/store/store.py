"""CallStore: the call records of finished calls, kept in SQLite or PostgreSQL.

Why it looks like this: the store sits beside live calls, so nothing it does may hold one
up or take the process down. `submit()` is synchronous and only queues (writer.py does
the writing); a database that is down at start-up is a warning, not a crash, and the
records wait (and are retried) until it is back or their time is up; queries raise
`StoreUnavailable`, which the operator API answers with 503 (`StoreConflict`, one of
them, for a write the database refused: a duplicate key, not an outage).

The pieces, one module each: urls.py (DATABASE_URL), engine.py (driver settings),
migrate.py (schema to head, under an advisory lock on PostgreSQL), records.py (record to
row), writer.py (the queue and its task), queries.py (get, list, prune), outbound.py (the
outbound calls' rows: `app.outbound`'s settings and status, written and read directly).

Life cycle: `CallStore(url)` connects to nothing; `await start()` migrates (waiting up to
`timeout_s` for the database, on SQLite at least its busy timeout and a second) and starts
the writer and the pruner; `await close()` flushes what is pending for up to
`flush_timeout_s`, then gives up the rest, each logged. A database migrated by a newer
release is used as it is (`store.schema_newer`, see migrate.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection

import app.store.migrate as migrate
import app.store.outbound as outbound
import app.store.queries as queries
from app.limits import power_of_two
from app.observability import log_event
from app.store.engine import SQLITE_BUSY_TIMEOUT_S, make_engine, writing
from app.store.errors import DATABASE_ERRORS, StoreConflict, StoreUnavailable, describe, logger
from app.store.queries import CallFilter
from app.store.stats import StoreStats
from app.store.urls import database_url, dialect_of, redacted
from app.store.writer import BACKOFF_START_S, Writer, next_backoff

T = TypeVar("T")

SQLITE_MIGRATE_WAIT_S = SQLITE_BUSY_TIMEOUT_S + 1.0
"""The shortest wait for the migration at start on SQLite: another process holding the
write lock (migrating too, or writing) is waited for up to the busy timeout, and a start
that gave up sooner would cut a migration off while it waits, only to report the database
"unavailable" when it is merely busy; the second more is for the migration itself."""


class CallStore:
    """Stores each call record once, by CallSid, and answers the operator API's queries."""

    def __init__(
        self,
        url: str,
        *,
        queue_max: int = 1000,
        retry_seconds: float = 120.0,
        retention_days: int = 0,
        prune_interval_s: float = 3600.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        """`url` as DATABASE_URL gives it (normalised here again: ValueError if bad).

        `retry_seconds`: how long a record's failed write is retried, from its submission.
        `retention_days`: records older than this are pruned every `prune_interval_s`
        (0 keeps everything)."""
        if retention_days < 0:
            raise ValueError(f"retention_days must be 0 or more, not {retention_days}")
        if prune_interval_s <= 0 or connect_timeout_s <= 0 or retry_seconds < 0:
            raise ValueError(
                "prune_interval_s and connect_timeout_s must be positive, retry_seconds 0 or more"
            )
        self.url = database_url(url)
        self.dialect = dialect_of(self.url)
        self._retention_days = retention_days
        self._prune_interval_s = prune_interval_s
        self._engine = make_engine(self.url, connect_timeout_s=connect_timeout_s)
        self._stats = StoreStats()
        self._writer = Writer(
            self._engine,
            stats=self._stats,
            queue_max=queue_max,
            retry_seconds=retry_seconds,
            prepare=self._ensure_schema,
            report=self._report,
        )
        self._schema_ready = False
        self._revision: str | None = None
        self._schema_lock = asyncio.Lock()
        self._available = False
        self._query_failures = 0
        self._started = False
        self._closed = False
        self._writer_task: asyncio.Task[None] | None = None
        self._pruner_task: asyncio.Task[None] | None = None

    # --- State ---------------------------------------------------------------------------

    @property
    def stats(self) -> StoreStats:
        """A snapshot of the counters (plain ints), `pending` as of now."""
        return replace(self._stats, pending=self._writer.pending)

    @property
    def available(self) -> bool:
        """Whether the last operation against the database succeeded."""
        return self._available

    def _report(self, ok: bool) -> None:
        self._available = ok

    # --- Life cycle ----------------------------------------------------------------------

    async def start(self, timeout_s: float = 15.0) -> bool:
        """Migrate and start the background tasks; False if the database could not be
        reached within `timeout_s` (logged; the writer keeps trying). Never raises for a
        database that is down. On SQLite the wait is at least `SQLITE_MIGRATE_WAIT_S`."""
        if self._started or self._closed:
            return self._available
        self._started = True
        if self.dialect == "sqlite":
            timeout_s = max(timeout_s, SQLITE_MIGRATE_WAIT_S)
        ready = await self._migrate_within(timeout_s)
        self._writer_task = asyncio.create_task(self._writer.run(), name="store.writer")
        if self._retention_days > 0:
            self._pruner_task = asyncio.create_task(self._run_pruner(), name="store.pruner")
        return ready

    async def _migrate_within(self, timeout_s: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        backoff = BACKOFF_START_S
        error: BaseException = TimeoutError()
        while (remaining := deadline - loop.time()) > 0:
            try:
                async with asyncio.timeout(remaining):
                    await self._ensure_schema()
            except Exception as exc:  # down, refused, timed out: wait and try again
                error = exc
            else:
                log_event(
                    logger,
                    logging.INFO,
                    "store.ready",
                    url=redacted(self.url),
                    revision=self._revision,
                )
                return True
            await asyncio.sleep(max(0.0, min(backoff, deadline - loop.time())))
            backoff = next_backoff(backoff)
        log_event(
            logger,
            logging.WARNING,
            "store.unavailable",
            url=redacted(self.url),
            waited_s=timeout_s,
            **describe(error),
        )
        return False

    async def _ensure_schema(self) -> None:
        """Migrate to head, once per store (concurrent callers wait for the one running).

        A database at a revision this code doesn't know (a newer release migrated it) is
        ready as it is, logged once: refusing it would turn every query into an error and
        lose every record, while the columns this code uses are still there."""
        if self._schema_ready:
            return
        async with self._schema_lock:
            if self._schema_ready:
                return
            try:
                unknown = await migrate.upgrade(self._engine)
            except BaseException:
                self._available = False
                raise
            code_revision = migrate.head_revision()
            if unknown is not None:
                log_event(
                    logger,
                    logging.WARNING,
                    "store.schema_newer",
                    database_revision=unknown,
                    code_revision=code_revision,
                )
            self._revision = unknown if unknown is not None else code_revision
            self._schema_ready = True
            self._available = True

    async def close(self, flush_timeout_s: float = 10.0) -> int:
        """Stop taking records, write the pending ones for up to `flush_timeout_s`, stop
        the tasks and the engine. The number of records lost meanwhile (each logged)."""
        if self._closed:
            return 0
        self._closed = True
        lost_before = self._stats.lost
        self._writer.close_intake()
        writer = self._writer_task
        if writer is None and self._writer.pending:  # never started: flush all the same
            writer = asyncio.create_task(self._writer.run(), name="store.writer")
        if writer is not None:
            _, running = await asyncio.wait({writer}, timeout=flush_timeout_s)
            for task in running:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        self._writer.abandon("shutdown")
        if self._pruner_task is not None:
            self._pruner_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pruner_task
        await self._engine.dispose()
        lost = self._stats.lost - lost_before
        log_event(
            logger,
            logging.INFO,
            "store.closed",
            written=self._stats.written,
            lost=lost,
        )
        return lost

    # --- Writing -------------------------------------------------------------------------

    def submit(self, record: dict[str, Any]) -> bool:
        """Queue a finished call's record; never blocks or raises. False when it won't be
        written (queue full, invalid record, store closed), each case logged and counted."""
        return self._writer.submit(record)

    # --- Queries -------------------------------------------------------------------------

    async def get(self, call_sid: str) -> dict[str, Any] | None:
        """The record stored for `call_sid`, as submitted; None if there is none."""
        return await self._query(lambda conn: queries.get_call(conn, call_sid))

    async def list_calls(
        self,
        *,
        limit: int = 50,
        before: str | None = None,
        outcome: str | None = None,
        number: str | None = None,
        from_number: str | None = None,
        to_number: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        direction: str | None = None,
        agent: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Records newest first (started_at, then CallSid, descending) and the cursor of
        the next page, None on the last. `number` matches the caller or the called number;
        `since` is inclusive, `until` exclusive. ValueError for a limit outside 1..500,
        BadCursor for a `before` this store did not hand out."""
        checked = queries.check_limit(limit)
        position = queries.decode_cursor(before) if before is not None else None
        where = CallFilter(
            outcome=outcome,
            number=number,
            from_number=from_number,
            to_number=to_number,
            since=since,
            until=until,
            direction=direction,
            agent=agent,
        )
        return await self._query(
            lambda conn: queries.list_calls(conn, limit=checked, before=position, where=where)
        )

    # --- Outbound calls (`app.outbound`) --------------------------------------------------

    async def add_outbound(self, row: dict[str, Any]) -> None:
        """Insert an outbound call's row (keys: `outbound_calls`' columns; ValueError for
        another key or a required one left out). StoreConflict when its `outbound_id` or
        `call_sid` is taken."""
        values = outbound.checked(row, whole=True)
        await self._query(lambda conn: outbound.add(conn, values), write=True)

    async def outbound(self, outbound_id: str) -> dict[str, Any] | None:
        """The outbound call's row (column name to value), or None."""
        return await self._query(lambda conn: outbound.get(conn, "outbound_id", outbound_id))

    async def outbound_by_call_sid(self, call_sid: str) -> dict[str, Any] | None:
        """The row of the outbound call Twilio named `call_sid`, or None."""
        return await self._query(lambda conn: outbound.get(conn, "call_sid", call_sid))

    async def update_outbound(
        self, outbound_id: str, values: dict[str, Any], *, only_if_open: bool = False
    ) -> bool:
        """Set `values` on an outbound call's row (`only_if_open`: only while its
        `ended_at` is unset); True when a row was updated. ValueError for a key that is
        not a column, or none; StoreConflict for a `call_sid` another row has."""
        checked = outbound.checked(values)
        return await self._query(
            lambda conn: outbound.update(conn, outbound_id, checked, only_if_open), write=True
        )

    async def outbound_in_flight(self, since: datetime) -> int:
        """Outbound calls created at or after `since` without a final status yet."""
        return await self._query(lambda conn: outbound.in_flight(conn, since))

    async def prune(self, now: datetime | None = None) -> int:
        """Delete the records that started more than `retention_days` before `now`, and
        the outbound calls' rows created before then (0 days: keep all, a no-op); the
        number of records deleted."""
        if self._retention_days <= 0:
            return 0
        cutoff = queries.retention_cutoff(now or datetime.now(UTC), self._retention_days)
        count = await self._query(lambda conn: queries.prune(conn, cutoff=cutoff), write=True)
        placed = await self._query(lambda conn: outbound.prune(conn, cutoff=cutoff), write=True)
        if count or placed:
            self._stats.pruned += count
            log_event(
                logger, logging.INFO, "store.pruned", count=count, outbound=placed, before=cutoff
            )
        return count

    async def _run_pruner(self) -> None:
        while True:
            try:
                await self.prune()
            except Exception as exc:  # down now, or unforeseen: try again next time
                log_event(logger, logging.WARNING, "store.prune_failed", **describe(exc))
            await asyncio.sleep(self._prune_interval_s)

    async def _query(
        self, run: Callable[[AsyncConnection], Awaitable[T]], *, write: bool = False
    ) -> T:
        """Run `run` on a connection (in a transaction if `write`); database trouble of
        any kind becomes StoreUnavailable, logged at the 1st, 2nd, 4th... in a row. A
        write the database refused (a key taken: it answered, so it is not down) becomes
        StoreConflict, logged each time, the store still available."""
        try:
            await self._ensure_schema()
            if write:
                async with writing(self._engine) as conn:
                    result = await run(conn)
            else:
                async with self._engine.connect() as conn:
                    result = await run(conn)
        except sa_exc.IntegrityError as exc:
            self._available = True
            self._query_failures = 0
            fields = describe(exc)
            log_event(logger, logging.WARNING, "store.conflict", **fields)
            raise StoreConflict(f"call store refused the write ({fields['error']})") from exc
        except DATABASE_ERRORS as exc:
            self._available = False
            self._query_failures += 1
            fields = describe(exc)
            if power_of_two(self._query_failures):
                log_event(
                    logger,
                    logging.WARNING,
                    "store.query_failed",
                    failures=self._query_failures,
                    **fields,
                )
            raise StoreUnavailable(f"call store unavailable ({fields['error']})") from exc
        self._available = True
        self._query_failures = 0
        return result
