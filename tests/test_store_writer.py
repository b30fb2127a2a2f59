"""The call store's writer: bounded, stored once, retried while the database is away.

The outage tests stop and restart a PostgreSQL server of their own (`own_pg`, not the
session's), so "the database is down" is a real refused connection and "it is back" a
real restart with stale pooled connections; the rest run on SQLite and PostgreSQL both.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import app.store.writer as writer_module
from app.store import CallStore, StoreStats, StoreUnavailable, migrate
from app.store.engine import make_engine
from app.store.records import Row
from app.store.urls import database_url
from app.store.writer import BACKOFF_MAX_S, BACKOFF_START_S, Outcome, Writer, next_backoff
from tests.pg import PgServer
from tests.store_support import (
    BASE_TIME,
    PRIVATE_TEXT,
    StoreLog,
    eventually,
    make_record,
)


def powers_of_two(attempts: list[Any]) -> bool:
    return all(isinstance(n, int) and n > 0 and n & (n - 1) == 0 for n in attempts)


class FakeClock:
    """The writer's `time`: records' ages (their retry windows) move only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """A fake clock for record ages, and the shortest backoffs (those run on the loop)."""
    fake = FakeClock()
    monkeypatch.setattr(writer_module, "time", fake)
    monkeypatch.setattr(writer_module, "BACKOFF_START_S", 0.001)
    monkeypatch.setattr(writer_module, "BACKOFF_MAX_S", 0.002)
    return fake


def poison(monkeypatch: pytest.MonkeyPatch, *call_sids: str) -> None:
    """The rows of `call_sids` fail to insert for a reason the writer doesn't know (the
    driver can't bind a list): not "database away", not "refused for its content"."""
    real_to_row = writer_module.to_row

    def to_row(record: object) -> Row:
        row = real_to_row(record)
        if row.call_sid in call_sids:
            row.values["direction"] = ["not", "text"]
        return row

    monkeypatch.setattr(writer_module, "to_row", to_row)


# --- Intake ------------------------------------------------------------------------------


def test_backoff_doubles_from_a_fifth_of_a_second_to_five() -> None:
    delays = [BACKOFF_START_S]
    for _ in range(7):
        delays.append(next_backoff(delays[-1]))
    assert delays == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0])
    assert BACKOFF_MAX_S == 5.0


async def test_a_full_queue_drops_and_counts(db_url: str, store_log: StoreLog) -> None:
    store = CallStore(db_url, queue_max=2)
    assert not inspect.iscoroutinefunction(store.submit)  # nothing to await: never blocks
    try:
        assert store.submit(make_record("CA-1")) is True  # before start(): records wait
        assert store.submit(make_record("CA-2")) is True
        assert store.submit(make_record("CA-3")) is False
        assert store.stats == StoreStats(dropped_full=1, pending=2)
        dropped = store_log.events("store.record_dropped")
        assert [(line.call_sid, line.level) for line in dropped] == [("CA-3", logging.WARNING)]

        assert await store.start(timeout_s=10)
        await eventually(lambda: store.stats.written == 2)
        assert store.submit(make_record("CA-3")) is True  # room again
        await eventually(lambda: store.stats.written == 3)
        assert store.stats == StoreStats(written=3, dropped_full=1)
    finally:
        await store.close()


class Unserialisable:
    pass


async def test_records_that_can_never_be_written_are_lost_at_once(
    db_url: str, store_log: StoreLog
) -> None:
    store = CallStore(db_url)
    bad: list[Any] = [
        make_record("CA-object", usage={"x": Unserialisable()}),
        make_record("CA-nan", duration_s=math.nan),
        make_record("CA-when", started_at="yesterday"),
        make_record("CA-nul", turns=[{"text": "a\x00b"}]),
        make_record(""),
        {"direction": "inbound"},
        None,
        "CA-not-a-dict",
    ]
    try:
        assert await store.start(timeout_s=10)
        assert [store.submit(record) for record in bad] == [False] * len(bad)
        assert store.submit(make_record("CA-good"))
        await eventually(lambda: store.stats.written == 1)
        assert store.stats == StoreStats(written=1, lost=len(bad))
    finally:
        await store.close()
    lost = store_log.events("store.record_lost")
    assert [line.call_sid for line in lost] == ["CA-object", "CA-nan", "CA-when", "CA-nul"] + [
        None
    ] * 4
    assert {line.fields["reason"] for line in lost} == {"invalid"}
    assert {line.level for line in lost} == {logging.ERROR}
    assert store_log.events("store.write_failed") == []


async def test_a_row_the_database_refuses_is_lost_alone(
    db_url: str, store_log: StoreLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch refused for its content is retried row by row: the others get in."""
    real_to_row = writer_module.to_row

    def to_row(record: object) -> Row:
        row = real_to_row(record)
        if row.call_sid == "CA-bad":
            row.values["started_at"] = None  # NOT NULL: the database itself says no
        return row

    monkeypatch.setattr(writer_module, "to_row", to_row)
    store = CallStore(db_url)
    for sid in ("CA-good-1", "CA-bad", "CA-good-2"):
        assert store.submit(make_record(sid))  # queued together: one batch
    try:
        assert await store.start(timeout_s=10)
        await eventually(lambda: store.stats.written == 2 and store.stats.lost == 1)
        assert await store.get("CA-good-2") is not None
        assert await store.get("CA-bad") is None
        assert store.stats == StoreStats(written=2, lost=1)
    finally:
        await store.close()
    lost = store_log.events("store.record_lost")
    assert [(line.call_sid, line.fields["reason"]) for line in lost] == [("CA-bad", "rejected")]
    assert lost[0].fields["error"] == "IntegrityError"
    assert lost[0].fields["attempts"] == 0


async def test_failed_writes_are_retried_and_logged_at_powers_of_two(
    db_url: str, store_log: StoreLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty failed attempts in a row: five log lines (1, 2, 4, 8, 16), one recovery."""
    monkeypatch.setattr(writer_module, "BACKOFF_START_S", 0.001)
    monkeypatch.setattr(writer_module, "BACKOFF_MAX_S", 0.002)
    real_insert = Writer._insert_rows
    failures = 20
    calls = 0

    async def flaky_insert(self: Writer, batch: list[Any]) -> Outcome:
        nonlocal calls
        calls += 1
        if calls <= failures:
            raise ConnectionRefusedError(111, "Connect call failed (simulated)")
        return await real_insert(self, batch)

    monkeypatch.setattr(Writer, "_insert_rows", flaky_insert)
    store = CallStore(db_url)
    try:
        assert await store.start(timeout_s=10)
        assert store.submit(make_record("CA-flaky"))
        await eventually(lambda: store.stats.written == 1)
        assert store.stats == StoreStats(written=1, write_errors=failures)
        assert store.available
    finally:
        await store.close()
    failed = store_log.events("store.write_failed")
    assert [line.fields["attempt"] for line in failed] == [1, 2, 4, 8, 16]
    assert {line.fields["error"] for line in failed} == {"ConnectionRefusedError"}
    assert "simulated" in str(failed[0].fields["detail"])
    recovered = store_log.events("store.recovered")
    assert [line.fields["failed_attempts"] for line in recovered] == [failures]
    written = store_log.events("store.written")
    assert [(line.call_sid, line.fields["attempts"]) for line in written] == [
        ("CA-flaky", failures)
    ]


async def test_a_poison_record_fails_alone_and_holds_up_no_other(
    db_url: str, store_log: StoreLog, monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    """Its batch fails, the next attempt goes row by row: the others are written at once,
    later ones too while it keeps failing on its own, and it is given up (once) when its
    retry time is over."""
    poison(monkeypatch, "CA-poison")
    store = CallStore(db_url, retry_seconds=60)
    for sid in ("CA-good-1", "CA-poison", "CA-good-2"):
        assert store.submit(make_record(sid))  # queued together: one batch
    try:
        assert await store.start(timeout_s=10)
        await eventually(lambda: store.stats.written == 2, what="the others, next attempt")
        assert await store.get("CA-good-1") == make_record("CA-good-1")
        assert await store.get("CA-good-2") == make_record("CA-good-2")
        assert store.stats.pending == 1 and store.stats.lost == 0

        errors = store.stats.write_errors
        await eventually(lambda: store.stats.write_errors >= errors + 3, what="it, alone")
        assert store.submit(make_record("CA-good-3"))  # not held up behind it
        await eventually(lambda: store.stats.written == 3)
        assert store.stats.pending == 1 and store.stats.lost == 0

        clock.now += 60  # its time is over: given up at its next failure
        await eventually(lambda: store.stats.lost == 1, what="given up")
        assert store.stats.pending == 0
        assert await store.get("CA-poison") is None
        assert store.available
    finally:
        await store.close()
    lost = store_log.events("store.record_lost")
    assert [(line.call_sid, line.fields["reason"]) for line in lost] == [
        ("CA-poison", "retry_time_over")
    ]
    assert lost[0].fields["error"] in ("ProgrammingError", "DBAPIError")
    alone = [line for line in store_log.events("store.write_failed") if line.fields.get("alone")]
    assert alone and {line.call_sid for line in alone} == {"CA-poison"}
    assert powers_of_two([line.fields["attempt"] for line in alone])
    written = store_log.events("store.written")
    assert sorted(line.call_sid or "" for line in written) == [
        "CA-good-1",
        "CA-good-2",
        "CA-good-3",
    ]
    assert PRIVATE_TEXT not in store_log.text()


async def test_giving_a_record_up_gives_up_no_other_whose_time_is_not_over(
    db_url: str, store_log: StoreLog, monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    """Two records failing, submitted 50 s apart with 60 s each: at 61 s only the first
    is given up, the second only at its own 60 s."""
    poison(monkeypatch, "CA-old", "CA-young")
    store = CallStore(db_url, retry_seconds=60)
    try:
        assert await store.start(timeout_s=10)
        assert store.submit(make_record("CA-old"))
        clock.now += 50
        assert store.submit(make_record("CA-young"))
        errors = store.stats.write_errors
        await eventually(lambda: store.stats.write_errors >= errors + 2, what="both failing")

        clock.now += 11
        await eventually(lambda: store.stats.lost == 1, what="the old one given up")
        errors = store.stats.write_errors
        await eventually(lambda: store.stats.write_errors >= errors + 3, what="young, failing")
        assert store.stats.lost == 1 and store.stats.pending == 1

        clock.now += 49
        await eventually(lambda: store.stats.lost == 2, what="the young one, in its turn")
        assert store.stats.pending == 0
    finally:
        await store.close()
    lost = store_log.events("store.record_lost")
    assert [(line.call_sid, line.fields["reason"]) for line in lost] == [
        ("CA-old", "retry_time_over"),
        ("CA-young", "retry_time_over"),
    ]
    assert [line.fields["age_s"] for line in lost] == [61, 60]


# --- Shutdown ----------------------------------------------------------------------------


async def test_close_flushes_what_is_pending(db_url: str) -> None:
    store = CallStore(db_url)
    assert await store.start(timeout_s=10)
    for n in range(30):
        assert store.submit(make_record(f"CA-{n:02d}"))
    assert await store.close() == 0
    assert store.stats.written == 30 and store.stats.pending == 0
    assert store.submit(make_record("CA-late")) is False  # closed: taken no more

    never_started = CallStore(db_url)
    assert never_started.submit(make_record("CA-unstarted"))
    assert await never_started.close() == 0
    assert never_started.stats.written == 1

    reader = CallStore(db_url)
    try:
        assert await reader.start(timeout_s=10)
        page, _ = await reader.list_calls(limit=100)
        assert sorted(r["call_sid"] for r in page) == sorted(
            [f"CA-{n:02d}" for n in range(30)] + ["CA-unstarted"]
        )
    finally:
        await reader.close()


async def test_no_record_content_reaches_any_log(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Transcripts are private: not at DEBUG, not from a driver, not in an error."""
    caplog.set_level(logging.DEBUG)
    store = CallStore(db_url)
    try:
        assert await store.start(timeout_s=10)
        assert store.submit(make_record("CA-private"))
        assert store.submit(make_record("CA-private"))
        await eventually(lambda: store.stats.written + store.stats.duplicates == 2)
        assert await store.get("CA-private") is not None
        await store.list_calls(number="+15550001111")
    finally:
        await store.close()
    assert "store.written" in caplog.text  # the capture did see the store's lines
    assert PRIVATE_TEXT not in caplog.text
    assert "4111" not in caplog.text


# --- Migrations from several replicas ----------------------------------------------------


async def test_replicas_migrating_at_once_all_come_up(pg_url: str) -> None:
    """Without the advisory lock two of these would both create the tables, and fail."""
    url = database_url(pg_url)
    engines = [make_engine(url, connect_timeout_s=5) for _ in range(4)]
    try:
        await asyncio.gather(*(migrate.upgrade(engine) for engine in engines))
        assert await migrate.current_revision(engines[0]) == migrate.head_revision()
    finally:
        for engine in engines:
            await engine.dispose()

    stores = [CallStore(pg_url) for _ in range(2)]
    try:
        assert await asyncio.gather(*(store.start(timeout_s=10) for store in stores)) == [
            True,
            True,
        ]
    finally:
        for store in stores:
            await store.close()


async def test_stores_starting_at_once_on_a_fresh_database_both_come_up(pg_url: str) -> None:
    stores = [CallStore(pg_url) for _ in range(3)]
    try:
        results = await asyncio.gather(*(store.start(timeout_s=10) for store in stores))
        assert results == [True, True, True]
        assert stores[0].submit(make_record("CA-r1"))
        assert stores[1].submit(make_record("CA-r1"))
        await eventually(lambda: sum(s.stats.written + s.stats.duplicates for s in stores) == 2)
        assert sum(s.stats.written for s in stores) == 1  # stored once across replicas
    finally:
        for store in stores:
            await store.close()


async def test_a_replayed_start_written_first_on_another_replica_loses(
    pg_url: str, store_log: StoreLog
) -> None:
    """Replica B wrote a replayed `start` of a call live on replica A (it ended first);
    A's record of the real call, started earlier, replaces it, whichever replica asks."""
    replica_a, replica_b = CallStore(pg_url), CallStore(pg_url)
    replayed_start = BASE_TIME + timedelta(seconds=20)
    replayed = make_record("CA-live", started=replayed_start, outcome="replayed")
    real = make_record("CA-live", outcome="completed")
    try:
        assert await replica_a.start(timeout_s=10) and await replica_b.start(timeout_s=10)
        assert replica_b.submit(replayed)
        await eventually(lambda: replica_b.stats.written == 1)
        assert replica_a.submit(real)
        await eventually(lambda: replica_a.stats.written == 1)
        assert await replica_b.get("CA-live") == real
        assert replica_b.submit(replayed)  # replayed again, later: skipped
        await eventually(lambda: replica_b.stats.duplicates == 1)
        assert await replica_a.get("CA-live") == real
        assert replica_a.stats == StoreStats(written=1)
        assert replica_b.stats == StoreStats(written=1, duplicates=1)
    finally:
        await replica_a.close()
        await replica_b.close()
    replaced = store_log.events("store.replaced")
    assert [(line.call_sid, line.level) for line in replaced] == [("CA-live", logging.WARNING)]
    assert replaced[0].fields["replaced_started_at"] == replayed_start.isoformat()
    duplicate = store_log.events("store.duplicate")
    assert [(line.level, line.fields["stored_started_at"]) for line in duplicate] == [
        (logging.WARNING, BASE_TIME.isoformat())
    ]


# --- PostgreSQL down, then back ----------------------------------------------------------


async def test_a_write_while_the_server_is_down_arrives_when_it_is_back(
    own_pg: PgServer, store_log: StoreLog
) -> None:
    store = CallStore(own_pg.create_database())
    try:
        assert await store.start(timeout_s=10)
        own_pg.stop()
        record = make_record("CA-outage")
        assert store.submit(record) is True  # synchronous: queued, whatever the database
        assert store.stats.pending == 1
        await eventually(lambda: store.stats.write_errors >= 2, what="failed attempts")
        assert not store.available
        assert store.stats.written == 0

        own_pg.start()
        await eventually(lambda: store.stats.written == 1, what="written after restart")
        assert store.available
        assert await store.get("CA-outage") == record
        page, _ = await store.list_calls()
        assert [r["call_sid"] for r in page] == ["CA-outage"]  # stored once
        assert store.stats.lost == 0 and store.stats.pending == 0
    finally:
        await store.close()
    failed = store_log.events("store.write_failed")
    attempts = [line.fields["attempt"] for line in failed]
    assert attempts and powers_of_two(attempts) and attempts == sorted(set(attempts))
    assert {line.level for line in failed} == {logging.WARNING}
    assert len(store_log.events("store.recovered")) == 1
    assert store_log.events("store.record_lost") == []
    assert PRIVATE_TEXT not in store_log.text()


async def test_a_record_is_given_up_once_after_retry_seconds(
    own_pg: PgServer, store_log: StoreLog
) -> None:
    store = CallStore(own_pg.create_database(), retry_seconds=0.5)
    try:
        assert await store.start(timeout_s=10)
        own_pg.stop()
        assert store.submit(make_record("CA-doomed"))
        await eventually(lambda: store.stats.lost == 1, what="given up")
        assert store.stats.pending == 0 and store.stats.written == 0
        assert store.stats.write_errors >= 1

        own_pg.start()  # too late for it: it was given up, and stays so
        assert await store.get("CA-doomed") is None
        assert store.stats == StoreStats(lost=1, write_errors=store.stats.write_errors)
    finally:
        assert await store.close() == 0
    lost = store_log.events("store.record_lost")
    assert len(lost) == 1
    assert lost[0].call_sid == "CA-doomed" and lost[0].level == logging.ERROR
    assert lost[0].fields["reason"] == "retry_time_over"
    assert lost[0].fields["attempts"] >= 1
    assert lost[0].fields["error"]  # the error's class, e.g. ConnectionRefusedError
    assert "CA-doomed" in lost[0].rendered  # the line carries `call_sid=CA-doomed`


async def test_start_against_a_stopped_server_returns_false_and_catches_up(
    own_pg: PgServer, store_log: StoreLog
) -> None:
    url = own_pg.create_database()
    own_pg.stop()
    store = CallStore(url)
    try:
        assert await store.start(timeout_s=0.5) is False  # no raise
        assert not store.available
        unavailable = store_log.events("store.unavailable")
        assert len(unavailable) == 1 and unavailable[0].level == logging.WARNING
        assert unavailable[0].fields["url"] == database_url(url)  # no password to hide
        assert unavailable[0].fields["error"] == "ConnectionRefusedError"
        assert store.submit(make_record("CA-early"))

        own_pg.start()  # the writer migrates first, then writes
        await eventually(lambda: store.stats.written == 1, what="written once it is up")
        assert await store.get("CA-early") == make_record("CA-early")
        assert store.available
    finally:
        await store.close()


async def test_queries_raise_store_unavailable_while_the_server_is_down(
    own_pg: PgServer, store_log: StoreLog
) -> None:
    url = own_pg.create_database()
    old = make_record("CA-old", started=datetime.now(UTC) - timedelta(days=31))
    first = CallStore(url)
    try:
        assert await first.start(timeout_s=10)
        assert first.submit(old)
        await eventually(lambda: first.stats.written == 1)
    finally:
        await first.close()

    store = CallStore(url, retention_days=30)
    try:
        assert await store.start(timeout_s=10)
        await eventually(lambda: store.stats.pruned == 1, what="the pruner's first run")
        assert store.submit(make_record("CA-q"))
        await eventually(lambda: store.stats.written == 1)
        own_pg.stop()
        with pytest.raises(StoreUnavailable):
            await store.get("CA-q")
        with pytest.raises(StoreUnavailable):
            await store.list_calls()
        with pytest.raises(StoreUnavailable):
            await store.prune()
        assert not store.available
        failed = store_log.events("store.query_failed")
        assert [line.fields["failures"] for line in failed] == [1, 2]  # the 3rd: not logged

        own_pg.start()  # stale pooled connections are dropped, new ones made
        assert await store.get("CA-q") == make_record("CA-q")
        assert store.available
    finally:
        await store.close()


async def test_close_while_the_server_is_down_reports_each_lost_record_once(
    own_pg: PgServer, store_log: StoreLog
) -> None:
    store = CallStore(own_pg.create_database())
    assert await store.start(timeout_s=10)
    own_pg.stop()
    assert store.submit(make_record("CA-x1"))
    assert store.submit(make_record("CA-x2"))
    assert await store.close(flush_timeout_s=0.5) == 2
    assert store.stats == StoreStats(lost=2, write_errors=store.stats.write_errors)
    lost = store_log.events("store.record_lost")
    assert sorted(line.call_sid or "" for line in lost) == ["CA-x1", "CA-x2"]
    assert {line.fields["reason"] for line in lost} == {"shutdown"}
