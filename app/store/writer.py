"""The writer: one background task that gets every submitted call record into the database.

Why a queue and one task: a call ends on the event loop that carries every other live
call's audio, so handing over its record must cost nothing (no await, no I/O, no raise),
and the database, which may be slow or away, is then only ever waited on by this task.

Rules:
1. Bounded: at most `queue_max` records wait (queued or being written); past that
   `submit` refuses the record, logs it and counts it, instead of growing without end
   while the database is down.
2. Stored once: a CallSid already in the table is skipped (`ON CONFLICT DO NOTHING`),
   logged as a duplicate, not retried: the first record wins.
3. A failed write (database away, refused, timed out) is retried with backoff (0.2 s,
   doubling, at most 5 s) while its record is younger than `retry_seconds`, counted
   from its submission; after that the record is given up, logged once with its CallSid.
   Failures are logged at the 1st, 2nd, 4th, 8th... attempt in a row, and the return of
   the database once.
4. One bad record can't block the others: a batch the database refuses for its content
   is retried row by row, and the row it refuses is given up at once. A record that could
   never be written (see records.py) doesn't even enter the queue.
5. Log lines name the CallSid only: never the record, never a statement's parameters.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from app.limits import power_of_two
from app.observability import log_event
from app.store.errors import describe, is_permanent, log_for_call, logger
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
        backoff = BACKOFF_START_S
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = self._next_batch()
            try:
                await self._prepare()
                await self._write(batch)
            except Exception as exc:  # database away, or anything unforeseen: retry
                self._failed(batch, exc)
                await asyncio.sleep(backoff)
                backoff = next_backoff(backoff)
                continue
            self._report(True)
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

    def _next_batch(self) -> list[tuple[int, Pending]]:
        """The oldest records, one per CallSid (a later duplicate waits for the next
        batch, where the conflict with the stored one makes it a duplicate)."""
        batch: list[tuple[int, Pending]] = []
        seen: set[str] = set()
        for key, item in self._pending.items():
            if item.row.call_sid not in seen:
                seen.add(item.row.call_sid)
                batch.append((key, item))
                if len(batch) == BATCH_MAX:
                    break
        return batch

    async def _write(self, batch: list[tuple[int, Pending]]) -> None:
        """Insert `batch`; on a refusal for content, row by row. Raises if the database
        can't be reached (the records stay pending)."""
        try:
            self._settle(batch, await self._insert_rows(batch))
            return
        except Exception as exc:
            if not is_permanent(exc):
                raise
            if len(batch) == 1:
                self._lose(batch[0][0], "rejected", exc)
                return
        for entry in batch:  # one bad record can't hold back the rest
            try:
                inserted = await self._insert_rows([entry])
            except Exception as exc:
                if not is_permanent(exc):
                    raise
                self._lose(entry[0], "rejected", exc)
            else:
                self._settle([entry], inserted)

    async def _insert_rows(self, batch: list[tuple[int, Pending]]) -> set[str]:
        """Insert in one transaction; the CallSids actually inserted (not duplicates)."""
        statement = (
            self._insert_for_dialect(calls)
            .values([item.row.values for _, item in batch])
            .on_conflict_do_nothing(index_elements=[calls.c.call_sid])
            .returning(calls.c.call_sid)
        )
        async with self._engine.begin() as conn:
            result = await conn.execute(statement)
            return {str(sid) for sid in result.scalars()}

    def _settle(self, batch: list[tuple[int, Pending]], inserted: set[str]) -> None:
        for key, item in batch:
            del self._pending[key]
            call_sid = item.row.call_sid
            if call_sid in inserted:
                self._stats.written += 1
                log_for_call(logging.DEBUG, "store.written", call_sid, attempts=item.attempts)
            else:
                self._stats.duplicates += 1
                log_for_call(logging.INFO, "store.duplicate", call_sid)

    # --- Failures ------------------------------------------------------------------------

    def _failed(self, batch: list[tuple[int, Pending]], exc: Exception) -> None:
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
