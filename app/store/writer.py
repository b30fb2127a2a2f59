"""The writer: one background task that gets every submitted call record into the database.

Why a queue and one task: a call ends on the event loop that carries every other live
call's audio, so handing over its record must cost nothing (no await, no I/O, no raise),
and the database, which may be slow or away, is then only ever waited on by this task.

Rules:
1. Bounded: at most `queue_max` records wait (queued or being written); past that
   `submit` refuses the record, logs it and counts it, instead of growing without end
   while the database is down.
2. Stored once per CallSid, the earliest-started call's record: a record whose call
   started before the stored one's replaces it (`ON CONFLICT DO UPDATE ... WHERE
   excluded.started_at < calls.started_at`), one that started at the same time or later
   is skipped as a duplicate, not retried. Why not "first written wins": replicas share
   PostgreSQL, and a replayed `start` on replica B for a call live on replica A can end,
   and be written, first; the real call's record must still win. A replacement, and a
   duplicate of another start time, are logged at WARNING (a replayed stream is worth a
   look); a duplicate of the same start time (an import run twice) at INFO.
3. A failed write (database away, refused, timed out) is retried with backoff (0.2 s,
   doubling, at most 5 s) while its record is younger than `retry_seconds`, counted
   from its submission; after that the record is given up, logged once with its CallSid.
   Each record has its own window: giving one up gives up no other whose window is open.
   Failures are logged at the 1st, 2nd, 4th, 8th... attempt in a row, and the return of
   the database once.
4. One bad record can't block the others: a batch the database refuses for its content
   is retried row by row, and the row it refuses is given up at once. A batch of several
   that fails for a reason not recognised as "database away" is written row by row at
   the next attempt: the others get in, and a record that keeps failing alone is retried
   on a backoff of its own (the others don't wait for it) until its time is up. A record
   that could never be written (see records.py) doesn't even enter the queue.
5. Log lines name the CallSid only: never the record, never a statement's parameters.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.limits import power_of_two
from app.observability import log_event
from app.store.engine import writing
from app.store.errors import describe, is_connection_error, is_permanent, log_for_call, logger
from app.store.records import InvalidRecord, Row, call_sid_of, to_row
from app.store.schema import calls
from app.store.stats import StoreStats

BATCH_MAX = 100
"""Records written in one transaction at most (13 parameters each, far below any limit)."""
BACKOFF_START_S = 0.2
BACKOFF_MAX_S = 5.0


def next_backoff(delay: float) -> float:
    """The wait after a failed attempt that followed a wait of `delay`: twice, capped."""
    return min(delay * 2, BACKOFF_MAX_S)


@dataclass(slots=True)
class Pending:
    """A submitted record waiting to be written."""

    row: Row
    submitted: float
    """time.monotonic() at submission: the record's age decides when it is given up."""
    attempts: int = 0
    """Failed writes that included this record."""
    alone: bool = False
    """Written in a transaction of its own: a batch with it failed for a reason unknown."""
    retry_at: float = 0.0
    """Loop time before which it isn't tried again (after it failed alone)."""
    delay: float = 0.0
    """Its own backoff: the wait after its last failure alone (0 before the first)."""


Entry = tuple[int, Pending]
"""A pending record and its key in the queue."""


@dataclass(slots=True)
class Outcome:
    """What one insert did: the CallSids it wrote, and the start times stored before it."""

    written: set[str]
    """Inserted, or replacing the record of a call that started later."""
    stored: dict[str, datetime]
    """For each CallSid of the batch that was stored already: that record's start time."""


class Writer:
    """The queue of records and the loop that writes them (run it as one task)."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        stats: StoreStats,
        queue_max: int,
        retry_seconds: float,
        prepare: Callable[[], Awaitable[None]],
        report: Callable[[bool], None],
    ) -> None:
        """`prepare` runs before every write (it brings the schema to head, once);
        `report` is told whether each attempt reached the database."""
        if queue_max < 1:
            raise ValueError(f"queue_max must be at least 1, not {queue_max}")
        self._engine = engine
        postgres = engine.dialect.name == "postgresql"
        self._insert_for_dialect = pg_insert if postgres else sqlite_insert
        self._stats = stats
        self._queue_max = queue_max
        self._retry_seconds = retry_seconds
        self._prepare = prepare
        self._report = report
        self._pending: dict[int, Pending] = {}  # in submission order
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._closing = False
        self._failures = 0  # failed attempts in a row

    @property
    def pending(self) -> int:
        return len(self._pending)

    # --- Intake (synchronous, never raises) ----------------------------------------------

    def submit(self, record: object) -> bool:
        """Queue `record` for writing; False (logged, counted) if it won't be written."""
        try:
            return self._submit(record)
        except Exception as exc:  # a record must never break the call that ends
            self._stats.lost += 1
            log_for_call(
                logging.ERROR,
                "store.record_lost",
                call_sid_of(record),
                reason="submit_failed",
                attempts=0,
                **describe(exc),
            )
            return False

    def _submit(self, record: object) -> bool:
        call_sid = call_sid_of(record)
        if self._closing:
            self._stats.lost += 1
            log_for_call(logging.ERROR, "store.record_lost", call_sid, reason="closed", attempts=0)
            return False
        if len(self._pending) >= self._queue_max:
            self._stats.dropped_full += 1
            log_for_call(
                logging.WARNING,
                "store.record_dropped",
                call_sid,
                reason="queue_full",
                queue_max=self._queue_max,
                dropped=self._stats.dropped_full,
            )
            return False
        try:
            row = to_row(record)
        except InvalidRecord as exc:
            self._stats.lost += 1
            log_for_call(
                logging.ERROR,
                "store.record_lost",
                call_sid,
                reason="invalid",
                attempts=0,
                detail=str(exc),
            )
            return False
        self._pending[next(self._seq)] = Pending(row=row, submitted=time.monotonic())
        self._wakeup.set()
        return True

    def close_intake(self) -> None:
        """Take no more records; `run` returns once the queue is empty."""
        self._closing = True
        self._wakeup.set()

    def abandon(self, reason: str) -> int:
        """Give up every record still waiting (shutdown); the number given up."""
        lost = 0
        for key in list(self._pending):
            self._lose(key, reason)
            lost += 1
        return lost

    # --- The loop ------------------------------------------------------------------------

    async def run(self) -> None:
        """Write records as they come, until `close_intake()` and an empty queue."""
        loop = asyncio.get_running_loop()
        backoff = BACKOFF_START_S
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            now = loop.time()
            batch = self._next_batch(now)
            if not batch:  # all in a backoff of their own: wait for its end, or a new record
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(self._next_retry(now)):
                        await self._wakeup.wait()
                continue
            try:
                await self._prepare()
                stuck = await self._write(batch)
            except Exception as exc:  # database away, or anything unforeseen: retry
                self._failed(batch, exc)
                await asyncio.sleep(backoff)
                backoff = next_backoff(backoff)
                continue
            self._report(True)  # the database answered (a record failing alone: its own)
            self._failed_alone(stuck, loop.time())
            if self._failures:
                log_event(
                    logger,
                    logging.INFO,
                    "store.recovered",
                    failed_attempts=self._failures,
                    pending=len(self._pending),
                )
                self._failures = 0
            backoff = BACKOFF_START_S

    def _next_batch(self, now: float) -> list[Entry]:
        """The oldest records not in a backoff of their own, one per CallSid: a later
        duplicate waits for a next batch (behind one in its backoff too), where the
        conflict with the stored one decides it."""
        batch: list[Entry] = []
        seen: set[str] = set()
        for key, item in self._pending.items():
            if item.row.call_sid in seen:
                continue
            seen.add(item.row.call_sid)
            if item.retry_at <= now:
                batch.append((key, item))
                if len(batch) == BATCH_MAX:
                    break
        return batch

    def _next_retry(self, now: float) -> float:
        """The loop time the first backoff of a record ends (some record is in one)."""
        return min(item.retry_at for item in self._pending.values() if item.retry_at > now)

    async def _write(self, batch: list[Entry]) -> list[tuple[int, Exception]]:
        """Insert `batch`: together, but those under suspicion (`alone`) one by one, and
        all row by row on a refusal for content. Raises if the database can't be reached,
        or if the batch of several failed for another reason (its records are then
        marked to go alone next time); the records stay pending. Returns the records that
        failed alone for a reason other than those two, with their errors."""
        together = [entry for entry in batch if not entry[1].alone]
        if len(together) > 1:
            try:
                self._settle(together, await self._insert_rows(together))
                together = []
            except Exception as exc:
                if is_connection_error(exc):
                    raise
                if not is_permanent(exc):  # unknown: the next attempt finds the culprit
                    for _, item in together:
                        item.alone = True
                    raise
        # Refused for its content, or the ones already suspect: one bad record can't
        # hold back the rest.
        stuck: list[tuple[int, Exception]] = []
        for entry in together + [entry for entry in batch if entry[1].alone]:
            try:
                outcome = await self._insert_rows([entry])
            except Exception as exc:
                if is_connection_error(exc):
                    raise
                if is_permanent(exc):
                    self._lose(entry[0], "rejected", exc)
                else:
                    entry[1].alone = True
                    stuck.append((entry[0], exc))
            else:
                self._settle([entry], outcome)
        return stuck

    async def _insert_rows(self, batch: list[Entry]) -> Outcome:
        """Insert in one transaction, the earliest-started record winning a conflict.

        The start times stored before come from a read in the same transaction (on SQLite
        under the write lock, taken at BEGIN): they tell an insert from a replacement,
        and a duplicate of the same start from a different one, for the log. (A row
        another replica inserts between the two statements on PostgreSQL is settled
        right all the same: only its replacement is logged as a plain write.)"""
        call_sids = [item.row.call_sid for _, item in batch]
        insert = self._insert_for_dialect(calls).values([item.row.values for _, item in batch])
        statement = insert.on_conflict_do_update(
            index_elements=[calls.c.call_sid],
            set_={
                column.name: insert.excluded[column.name]
                for column in calls.c
                if column.name != "call_sid"
            },
            where=insert.excluded.started_at < calls.c.started_at,
        ).returning(calls.c.call_sid)
        async with writing(self._engine) as conn:
            stored = await _stored_starts(conn, call_sids)
            result = await conn.execute(statement)
            written = {str(sid) for sid in result.scalars()}
            missed = [sid for sid in call_sids if sid not in written and sid not in stored]
            if missed:  # stored meanwhile by another replica: what is there now
                stored.update(await _stored_starts(conn, missed))
        return Outcome(written=written, stored=stored)

    def _settle(self, batch: list[Entry], outcome: Outcome) -> None:
        for key, item in batch:
            del self._pending[key]
            call_sid = item.row.call_sid
            started: datetime = item.row.values["started_at"]
            before = outcome.stored.get(call_sid)
            if call_sid in outcome.written:
                self._stats.written += 1
                if before is None:
                    log_for_call(logging.DEBUG, "store.written", call_sid, attempts=item.attempts)
                else:
                    log_for_call(
                        logging.WARNING,
                        "store.replaced",
                        call_sid,
                        started_at=started.isoformat(),
                        replaced_started_at=before.isoformat(),
                        attempts=item.attempts,
                    )
            else:
                self._stats.duplicates += 1
                log_for_call(
                    logging.INFO if before == started else logging.WARNING,
                    "store.duplicate",
                    call_sid,
                    started_at=started.isoformat(),
                    stored_started_at=before.isoformat() if before is not None else None,
                )

    # --- Failures ------------------------------------------------------------------------

    def _failed(self, batch: list[Entry], exc: Exception) -> None:
        """Count a failed attempt, log it (1st, 2nd, 4th... in a row), give up on the
        records whose retry time is over."""
        self._report(False)
        self._failures += 1
        self._stats.write_errors += 1
        for _, item in batch:
            item.attempts += 1
        if power_of_two(self._failures):
            log_event(
                logger,
                logging.WARNING,
                "store.write_failed",
                attempt=self._failures,
                pending=len(self._pending),
                **describe(exc),
            )
        now = time.monotonic()
        for key, item in list(self._pending.items()):
            if now - item.submitted >= self._retry_seconds:
                self._lose(key, "retry_time_over", exc)

    def _failed_alone(self, stuck: list[tuple[int, Exception]], loop_now: float) -> None:
        """Each record that failed in a transaction of its own, the others written: count
        it, give it up if its own retry time is over, else log it (its 1st, 2nd, 4th...
        failure) and hold it back for its own backoff. Nothing else is touched."""
        now = time.monotonic()
        for key, exc in stuck:
            item = self._pending[key]
            item.attempts += 1
            self._stats.write_errors += 1
            if now - item.submitted >= self._retry_seconds:
                self._lose(key, "retry_time_over", exc)
                continue
            if power_of_two(item.attempts):
                log_for_call(
                    logging.WARNING,
                    "store.write_failed",
                    item.row.call_sid,
                    attempt=item.attempts,
                    alone=True,
                    **describe(exc),
                )
            item.delay = next_backoff(item.delay) if item.delay else BACKOFF_START_S
            item.retry_at = loop_now + item.delay

    def _lose(self, key: int, reason: str, exc: BaseException | None = None) -> None:
        item = self._pending.pop(key)
        self._stats.lost += 1
        fields = describe(exc) if exc is not None else {}
        log_for_call(
            logging.ERROR,
            "store.record_lost",
            item.row.call_sid,
            reason=reason,
            attempts=item.attempts,
            age_s=round(time.monotonic() - item.submitted, 3),
            **fields,
        )


async def _stored_starts(conn: AsyncConnection, call_sids: list[str]) -> dict[str, datetime]:
    """The start time of each of `call_sids` already stored, by CallSid."""
    query = sa.select(calls.c.call_sid, calls.c.started_at).where(calls.c.call_sid.in_(call_sids))
    return {str(row.call_sid): row.started_at for row in await conn.execute(query)}
