"""The call store on SQLite and on a real PostgreSQL: URLs, schema, records in and out.

Every store test runs on both databases (`db_url` is parametrised); the writer's
behaviour under outages is in test_store_writer.py.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import json
import logging
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext

from app.observability import scrub
from app.store import (
    DEFAULT_DATABASE_URL,
    BadCursor,
    CallStore,
    StoreStats,
    database_url,
    migrate,
    redacted,
)
from app.store.engine import SQLITE_BUSY_TIMEOUT_S, make_engine, writing
from app.store.schema import calls, metadata
from app.store.store import SQLITE_MIGRATE_WAIT_S
from tests.store_support import (
    BASE_TIME,
    OpenStore,
    StoreLog,
    eventually,
    make_record,
    sqlite_url,
)


async def submit_all(store: CallStore, records: list[dict[str, Any]]) -> None:
    """Submit `records` and wait until the writer has stored them all."""
    before = store.stats.written
    for record in records:
        assert store.submit(record)
    await eventually(lambda: store.stats.written == before + len(records), what="written")


async def read_columns(url: str, call_sid: str) -> dict[str, Any]:
    """The query columns of one stored row, read past the store."""
    engine = make_engine(database_url(url), connect_timeout_s=5)
    try:
        async with engine.connect() as conn:
            query = sa.select(calls).where(calls.c.call_sid == call_sid)
            return dict((await conn.execute(query)).mappings().one())
    finally:
        await engine.dispose()


def as_stored(record: dict[str, Any]) -> dict[str, Any]:
    """What a record reads back as: its JSON round trip."""
    result: dict[str, Any] = json.loads(json.dumps(record))
    return result


# --- DATABASE_URL ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            "postgresql://u:pw@db.example:5432/calls",
            "postgresql+asyncpg://u:pw@db.example:5432/calls",
        ),
        ("postgres://u:pw@db.example/calls", "postgresql+asyncpg://u:pw@db.example/calls"),
        ("postgresql+asyncpg://u@db.example/calls", "postgresql+asyncpg://u@db.example/calls"),
        (
            "postgres://u@db.example/calls?sslmode=require",
            "postgresql+asyncpg://u@db.example/calls?ssl=require",
        ),
    ],
)
def test_database_url_postgres_forms(raw: str, expected: str) -> None:
    assert database_url(raw) == expected


def test_database_url_sqlite_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert database_url(None) == DEFAULT_DATABASE_URL == "sqlite+aiosqlite:///./data/calls.db"
    assert (tmp_path / "data").is_dir()  # created, relative to the working directory
    assert database_url("  ") == DEFAULT_DATABASE_URL
    absolute = tmp_path / "a" / "b" / "calls.db"
    assert database_url(f"sqlite:///{absolute}") == f"sqlite+aiosqlite:///{absolute}"
    assert absolute.parent.is_dir()
    assert database_url("sqlite+aiosqlite:///rel/x.db") == "sqlite+aiosqlite:///rel/x.db"
    assert (tmp_path / "rel").is_dir()
    assert list((tmp_path / "rel").iterdir()) == []  # the write probe is gone again


@pytest.mark.parametrize(
    "raw",
    [
        "mysql://root:hunter2-secret@db/calls",
        "mongodb://db/calls",
        "calls.db",
        "sqlite://",
        "sqlite:///:memory:",
        "postgresql:///calls",
    ],
)
def test_database_url_refuses(raw: str) -> None:
    with pytest.raises(ValueError, match="DATABASE_URL") as refused:
        database_url(raw)
    assert "hunter2-secret" not in str(refused.value)


def test_database_url_refuses_a_path_under_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(
        ValueError, match=r"DATABASE_URL: the SQLite directory .*file' exists but is not a dir"
    ):
        database_url(f"sqlite:///{tmp_path}/file/calls.db")
    with pytest.raises(
        ValueError, match=r"DATABASE_URL: the SQLite directory .* cannot be created \(Not a dir"
    ):
        database_url(f"sqlite:///{tmp_path}/file/sub/calls.db")


def test_database_url_refuses_a_directory_it_cannot_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WAL needs to create files beside the database: a directory that takes none is a
    start-up error, not a store that fails every write. (Refused as the kernel refuses
    it: the tests run as root, whom a read-only mode doesn't stop.)"""
    real_open = os.open
    tried: list[str] = []

    def read_only(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if Path(path).parent == tmp_path and flags & os.O_CREAT:
            tried.append(str(path))
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(ValueError, match="DATABASE_URL") as refused:
        database_url(f"sqlite:///{tmp_path}/calls.db")
    assert str(refused.value) == (
        f"DATABASE_URL: the SQLite directory {str(tmp_path)!r} is not writable (Permission denied)"
    )
    assert len(tried) == 1 and list(tmp_path.iterdir()) == []


def test_redacted_hides_the_password() -> None:
    url = database_url("postgres://bridge:hunter2-secret@db.example:5432/calls")
    shown = redacted(url)
    assert shown == "postgresql+asyncpg://bridge:***@db.example:5432/calls"
    assert redacted("sqlite+aiosqlite:///./data/calls.db") == "sqlite+aiosqlite:///./data/calls.db"
    assert "hunter2" not in redacted("::::hunter2-secret")
    # database_url() also registered the password with the log scrubber.
    assert scrub("error: hunter2-secret refused") == "error: *** refused"


# --- Schema ------------------------------------------------------------------------------


def _schema_report(
    conn: sa.Connection,
) -> tuple[dict[str, list[str]], dict[str, set[str]], list[Any]]:
    inspector = sa.inspect(conn)
    columns: dict[str, list[str]] = {}
    indexes: dict[str, set[str]] = {}
    for table in metadata.tables:
        columns[table] = [column["name"] for column in inspector.get_columns(table)]
        indexes[table] = {index["name"] for index in inspector.get_indexes(table) if index["name"]}
    context = MigrationContext.configure(conn, opts={"compare_type": True})
    diff = [d for d in compare_metadata(context, metadata) if "alembic_version" not in str(d)]
    return columns, indexes, diff


async def test_migrations_create_the_schema_and_are_idempotent(
    db_url: str, open_store: OpenStore
) -> None:
    store = await open_store()
    await submit_all(store, [make_record("CA-before-restart")])
    await store.close()
    again = await open_store()  # a restart: migrating at head is a no-op
    assert await again.get("CA-before-restart") == as_stored(make_record("CA-before-restart"))

    engine = make_engine(database_url(db_url), connect_timeout_s=5)
    try:
        assert await migrate.current_revision(engine) == migrate.head_revision() == "0002"
        await migrate.upgrade(engine)  # and once more, directly
        async with engine.connect() as conn:
            columns, indexes, diff = await conn.run_sync(_schema_report)
    finally:
        await engine.dispose()
    assert set(metadata.tables) == {"calls", "outbound_calls"}
    for name, table in metadata.tables.items():
        assert columns[name] == [column.name for column in table.c]
    assert {
        "ix_calls_started_at_call_sid",
        "ix_calls_outcome",
        "ix_calls_from_number",
        "ix_calls_to_number",
        "ix_calls_direction",
        "ix_calls_agent",
    } <= indexes["calls"]
    assert {"ix_outbound_calls_call_sid", "ix_outbound_calls_open"} <= indexes["outbound_calls"]
    assert diff == []  # the migrations build exactly what schema.py describes


async def test_ddl_rolls_back_with_its_transaction(db_url: str) -> None:
    """On SQLite too (the driver's own transaction handling would commit before DDL)."""
    engine = make_engine(database_url(db_url), connect_timeout_s=5)
    try:
        with pytest.raises(RuntimeError, match="cut short"):
            async with engine.begin() as conn:
                await conn.execute(sa.text("CREATE TABLE half_made (x INTEGER)"))
                raise RuntimeError("cut short")
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names())
        assert "half_made" not in tables
    finally:
        await engine.dispose()


async def test_a_migration_cut_short_leaves_nothing_half_made(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash (here: an error) after the table and before its indexes: the next start
    migrates from scratch instead of failing on "table calls already exists" forever."""
    engine = make_engine(database_url(db_url), connect_timeout_s=5)
    real_create_index = Operations.create_index
    made: list[str] = []

    def create_index(self: Operations, name: str, *args: Any, **kwargs: Any) -> Any:
        if len(made) == 2:
            raise RuntimeError("the process died here")
        made.append(name)
        return real_create_index(self, name, *args, **kwargs)

    try:
        monkeypatch.setattr(Operations, "create_index", create_index)
        with pytest.raises(RuntimeError, match="died"):
            await migrate.upgrade(engine)
        assert len(made) == 2  # the table and two indexes were made, in the transaction
        monkeypatch.undo()
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names())
        assert "calls" not in tables
        assert await migrate.current_revision(engine) is None
    finally:
        await engine.dispose()
    store = CallStore(db_url)
    try:
        assert await store.start(timeout_s=10)
        await submit_all(store, [make_record("CA-after-the-crash")])
    finally:
        await store.close()


async def test_writing_takes_the_sqlite_write_lock_at_begin(tmp_path: Path) -> None:
    """What the writer reads before it writes can't be changed by another writer."""
    url = database_url(sqlite_url(tmp_path))
    engine = make_engine(url, connect_timeout_s=5)
    other = sqlite3.connect(tmp_path / "calls.db", timeout=0, isolation_level=None)
    try:
        async with writing(engine):
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        other.execute("BEGIN IMMEDIATE")  # released with the transaction
        other.execute("ROLLBACK")
    finally:
        other.close()
        await engine.dispose()


async def test_the_start_waits_for_a_busy_sqlite_at_least_its_busy_timeout(
    tmp_path: Path, store_log: StoreLog
) -> None:
    """Another process holds the write lock for longer than the start was asked to wait:
    the migration waits for it (as SQLite's busy timeout does) and the store comes up."""
    assert SQLITE_MIGRATE_WAIT_S > SQLITE_BUSY_TIMEOUT_S
    other = sqlite3.connect(tmp_path / "calls.db", isolation_level=None)
    other.execute("PRAGMA journal_mode=WAL")
    other.execute("BEGIN IMMEDIATE")
    store = CallStore(sqlite_url(tmp_path))
    try:
        starting = asyncio.create_task(store.start(timeout_s=0.05))
        done, _ = await asyncio.wait({starting}, timeout=0.5)  # held 10x the asked wait
        assert not done
        other.execute("ROLLBACK")
        assert await starting is True
        assert store_log.events("store.unavailable") == []
    finally:
        other.close()
        await store.close()


async def test_a_database_migrated_by_a_newer_release_is_used_as_it_is(
    db_url: str, store_log: StoreLog
) -> None:
    """A rollback to this release after a newer one migrated: records are still written
    and read (the columns this code uses are there), and the mismatch is logged once."""
    first = CallStore(db_url)
    try:
        assert await first.start(timeout_s=10)
    finally:
        await first.close()
    engine = make_engine(database_url(db_url), connect_timeout_s=5)
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text("UPDATE alembic_version SET version_num = '0099_future'"))
    finally:
        await engine.dispose()

    store = CallStore(db_url)
    try:
        assert await store.start(timeout_s=10)
        assert store.available
        await submit_all(store, [make_record("CA-after-rollback")])
        assert await store.get("CA-after-rollback") == make_record("CA-after-rollback")
        assert [r["call_sid"] for r in (await store.list_calls())[0]] == ["CA-after-rollback"]
    finally:
        await store.close()
    newer = store_log.events("store.schema_newer")
    assert [(line.level, line.fields) for line in newer] == [
        (logging.WARNING, {"database_revision": "0099_future", "code_revision": "0002"})
    ]
    assert store_log.events("store.ready")[-1].fields["revision"] == "0099_future"
    engine = make_engine(database_url(db_url), connect_timeout_s=5)
    try:
        assert await migrate.current_revision(engine) == "0099_future"  # left as it was
    finally:
        await engine.dispose()


# --- Records in and out ------------------------------------------------------------------


async def test_submit_get_round_trip(
    db_url: str, open_store: OpenStore, store_log: StoreLog
) -> None:
    store = await open_store()
    record = make_record("CA-round-trip", recording="RE123", extra={"nested": [1, 2.5, None]})
    await submit_all(store, [record])

    assert await store.get("CA-round-trip") == as_stored(record)
    assert await store.get("CA-unknown") is None
    columns = await read_columns(db_url, "CA-round-trip")
    started = columns.pop("started_at")
    ended = columns.pop("ended_at")
    assert started == BASE_TIME and started.tzinfo is UTC
    assert ended == BASE_TIME + timedelta(seconds=42.5)
    assert columns.pop("record") == as_stored(record)
    assert columns == {
        "call_sid": "CA-round-trip",
        "direction": "inbound",
        "from_number": "+15550001111",
        "to_number": "+15550002222",
        "agent": "default",
        "duration_s": 42.5,
        "outcome": "completed",
        "barge_ins": 2,
        "heard_latency_ms": 710,
        "recording": "RE123",
    }
    written = store_log.events("store.written")
    assert [line.call_sid for line in written] == ["CA-round-trip"]
    assert store.stats == StoreStats(written=1)


async def test_records_are_read_without_the_standard_json_module(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page of 200 large records is decoded by orjson, on the event loop of the live
    calls, and reads back equal to what was submitted."""
    real_loads = json.loads
    decoded: list[int] = []

    def counting_loads(text: Any, *args: Any, **kwargs: Any) -> Any:
        decoded.append(len(text))
        return real_loads(text, *args, **kwargs)

    # Before the engine exists: SQLAlchemy looks the decoder up when it sets one up.
    monkeypatch.setattr(json, "loads", counting_loads)
    turns = [{"role": "user", "text": f"turn {n} " + "ü✓ " * 60, "at_ms": n} for n in range(100)]
    records = [
        make_record(f"CA-big-{n:03d}", started=BASE_TIME + timedelta(seconds=n), turns=turns)
        for n in range(200)
    ]
    store = CallStore(db_url, queue_max=200)
    try:
        assert await store.start(timeout_s=10)
        await submit_all(store, records)
        expected = [as_stored(record) for record in reversed(records)]
        decoded.clear()  # submit's snapshot is the standard library's: not the read path
        page, cursor = await store.list_calls(limit=200)
        one = await store.get("CA-big-007")
        assert decoded == []
        assert cursor is None
        assert page == expected
        assert one == expected[-8]
    finally:
        await store.close()


async def test_what_orjson_cannot_hold_is_refused_at_submit(open_store: OpenStore) -> None:
    """Integers past 64 bits (orjson would refuse them at the write, and read them back as
    floats) and lone surrogates: refused at once; the 64-bit edges round-trip exactly."""
    store = await open_store()
    assert store.submit(make_record("CA-huge", usage={"n": 2**64})) is False
    assert store.submit(make_record("CA-tiny", usage={"n": -(2**63) - 1})) is False
    assert store.submit(make_record("CA-half", turns=[{"text": "half \ud800 a pair"}])) is False
    edges = make_record("CA-edges", usage={"max": 2**64 - 1, "min": -(2**63), "f": 1e-320})
    await submit_all(store, [edges])
    assert await store.get("CA-edges") == edges
    assert store.stats == StoreStats(written=1, lost=3)


async def test_odd_secondary_fields_leave_columns_empty(db_url: str, open_store: OpenStore) -> None:
    """Only the key and the start time are strict: the record is kept whole regardless."""
    store = await open_store()
    record = make_record(
        "CA-odd",
        direction=None,
        agent=["not", "text"],
        duration_s="long",
        barge_ins=True,
        heard_latency_ms=None,
        ended_at=None,
    )
    record["from"] = "x" * 400
    odd_end = make_record("CA-odd-end", ended_at="when it was over")
    await submit_all(store, [record, odd_end])
    assert await store.get("CA-odd") == record
    assert await store.get("CA-odd-end") == odd_end
    columns = await read_columns(db_url, "CA-odd")
    assert columns["from_number"] == "x" * 255  # cut for the index; the record has it all
    assert [columns[k] for k in ("direction", "agent", "duration_s", "barge_ins")] == [None] * 4
    assert columns["heard_latency_ms"] is None and columns["ended_at"] is None
    assert (await read_columns(db_url, "CA-odd-end"))["ended_at"] is None


async def test_a_duplicate_of_the_same_start_is_stored_once_first_wins(
    open_store: OpenStore, store_log: StoreLog
) -> None:
    """The same call's record twice (an import run twice): the first stays, noted at INFO."""
    store = await open_store()
    first = make_record("CA-dup", outcome="completed")
    await submit_all(store, [first])
    assert store.submit(make_record("CA-dup", outcome="failed"))
    await eventually(lambda: store.stats.duplicates == 1)

    assert await store.get("CA-dup") == first
    assert store.stats == StoreStats(written=1, duplicates=1)
    duplicate = store_log.events("store.duplicate")
    started = BASE_TIME.isoformat()
    assert [(line.call_sid, line.level, line.fields) for line in duplicate] == [
        ("CA-dup", logging.INFO, {"started_at": started, "stored_started_at": started})
    ]
    assert store_log.events("store.write_failed") == []  # not an error, not retried
    assert store_log.events("store.replaced") == []


async def test_the_earliest_started_record_of_a_call_sid_wins(
    db_url: str, open_store: OpenStore, store_log: StoreLog
) -> None:
    """A replayed `start` that ended and was written first is replaced by the real call's
    record, which started earlier; a later one again is skipped. Both logged at WARNING."""
    store = await open_store()
    later = BASE_TIME + timedelta(seconds=30)
    replayed = make_record("CA-race", started=later, outcome="replayed", agent="replay")
    real = make_record("CA-race", outcome="completed")
    await submit_all(store, [replayed])
    await submit_all(store, [real])  # written: it replaced the replayed one
    assert await store.get("CA-race") == real
    columns = await read_columns(db_url, "CA-race")
    assert (columns["started_at"], columns["outcome"], columns["agent"]) == (
        BASE_TIME,
        "completed",
        "default",
    )
    assert store.stats == StoreStats(written=2)

    assert store.submit(make_record("CA-race", started=later, outcome="replayed again"))
    await eventually(lambda: store.stats.duplicates == 1)
    assert await store.get("CA-race") == real
    assert store.stats == StoreStats(written=2, duplicates=1)
    (page, _) = await store.list_calls()
    assert page == [real]  # one row, whatever the order the records came in

    replaced = store_log.events("store.replaced")
    assert [(line.call_sid, line.level, line.fields) for line in replaced] == [
        (
            "CA-race",
            logging.WARNING,
            {
                "started_at": BASE_TIME.isoformat(),
                "replaced_started_at": later.isoformat(),
                "attempts": 0,
            },
        )
    ]
    duplicate = store_log.events("store.duplicate")
    assert [(line.level, line.fields) for line in duplicate] == [
        (
            logging.WARNING,
            {"started_at": later.isoformat(), "stored_started_at": BASE_TIME.isoformat()},
        )
    ]
    written = store_log.events("store.written")
    assert [line.call_sid for line in written] == ["CA-race"]  # the replayed one, first


async def test_duplicates_queued_together_the_earliest_start_wins(db_url: str) -> None:
    """Records of one CallSid waiting in the same queue: the earliest start wins, and of
    the same start the first submitted."""
    store = CallStore(db_url)
    later = BASE_TIME + timedelta(seconds=1)
    assert store.submit(make_record("CA-twice", outcome="first"))
    assert store.submit(make_record("CA-other"))
    assert store.submit(make_record("CA-twice", outcome="second"))
    assert store.submit(make_record("CA-late", started=later, outcome="replayed"))
    assert store.submit(make_record("CA-late", outcome="real"))
    try:
        assert await store.start(timeout_s=10)
        await eventually(lambda: store.stats.written + store.stats.duplicates == 5)
        assert await store.get("CA-twice") == make_record("CA-twice", outcome="first")
        assert await store.get("CA-late") == make_record("CA-late", outcome="real")
        assert store.stats == StoreStats(written=4, duplicates=1)
    finally:
        await store.close()


# --- Listing -----------------------------------------------------------------------------


async def test_list_pages_newest_first_without_duplicates_or_gaps(open_store: OpenStore) -> None:
    store = await open_store()
    records = []
    for n in range(23):
        # Groups of three share a start time (the CallSid breaks the tie); 1 ms apart.
        started = BASE_TIME + timedelta(milliseconds=n // 3)
        records.append(make_record(f"CA{n:03d}", started=started))
    await submit_all(store, records)
    expected = [
        r["call_sid"] for r in sorted(records, key=lambda r: (r["started_at"], r["call_sid"]))
    ][::-1]

    seen: list[str] = []
    pages = 0
    cursor: str | None = None
    while True:
        page, cursor = await store.list_calls(limit=5, before=cursor)
        pages += 1
        seen += [record["call_sid"] for record in page]
        if pages == 1:  # a call ending meanwhile lands on top, not in the pages to come
            await submit_all(store, [make_record("CA-new", started=BASE_TIME + timedelta(1))])
        if cursor is None:
            break
    assert seen == expected
    assert pages == 5
    assert (await store.list_calls(limit=1))[0][0]["call_sid"] == "CA-new"

    everything, end = await store.list_calls(limit=500)
    assert [r["call_sid"] for r in everything] == ["CA-new", *expected] and end is None
    assert everything[1] == as_stored(records[-1])

    # A last page that is exactly full says so (no cursor to an empty page).
    page, cursor = await store.list_calls(limit=12)
    assert cursor is not None
    page, cursor = await store.list_calls(limit=12, before=cursor)
    assert len(page) == 12 and cursor is None


def _filter_records() -> dict[str, dict[str, Any]]:
    hour = timedelta(hours=1)
    specs = {
        "CA-A": ("inbound", "+1", "+9", "sales", "completed", 0),
        "CA-B": ("outbound", "+9", "+2", "support", "no_answer", 1),
        "CA-C": ("inbound", "+3", "+9", "sales", "failed", 2),
        "CA-D": ("outbound", "+9", "+1", "support", "completed", 3),
    }
    records = {}
    for sid, (direction, from_number, to_number, agent, outcome, hours) in specs.items():
        record = make_record(
            sid,
            started=BASE_TIME + hours * hour,
            direction=direction,
            agent=agent,
            outcome=outcome,
        )
        record.update({"from": from_number, "to": to_number})
        records[sid] = record
    return records


async def test_list_filters(open_store: OpenStore) -> None:
    store = await open_store()
    records = _filter_records()
    await submit_all(store, list(records.values()))
    hour = timedelta(hours=1)

    async def sids(**filters: Any) -> list[str]:
        page, cursor = await store.list_calls(**filters)
        assert cursor is None
        return [record["call_sid"] for record in page]

    assert await sids() == ["CA-D", "CA-C", "CA-B", "CA-A"]
    assert await sids(outcome="completed") == ["CA-D", "CA-A"]
    assert await sids(number="+1") == ["CA-D", "CA-A"]  # to +1, from +1
    assert await sids(number="+9") == ["CA-D", "CA-C", "CA-B", "CA-A"]
    assert await sids(from_number="+9") == ["CA-D", "CA-B"]
    assert await sids(to_number="+9") == ["CA-C", "CA-A"]
    assert await sids(from_number="+9", to_number="+1") == ["CA-D"]
    assert await sids(since=BASE_TIME + hour) == ["CA-D", "CA-C", "CA-B"]  # inclusive
    assert await sids(until=BASE_TIME + 2 * hour) == ["CA-B", "CA-A"]  # exclusive
    assert await sids(since=BASE_TIME + hour, until=BASE_TIME + 3 * hour) == ["CA-C", "CA-B"]
    # Another zone, or none (taken as UTC), names the same instant.
    plus_two = timezone(timedelta(hours=2))
    assert await sids(since=(BASE_TIME + 3 * hour).astimezone(plus_two)) == ["CA-D"]
    assert await sids(until=(BASE_TIME + hour).replace(tzinfo=None)) == ["CA-A"]
    assert await sids(direction="outbound") == ["CA-D", "CA-B"]
    assert await sids(agent="sales") == ["CA-C", "CA-A"]
    assert await sids(direction="inbound", agent="sales", outcome="failed") == ["CA-C"]
    assert await sids(outcome="busy") == []

    first, cursor = await store.list_calls(limit=1, outcome="completed")
    assert [r["call_sid"] for r in first] == ["CA-D"] and cursor is not None
    second, cursor = await store.list_calls(limit=1, outcome="completed", before=cursor)
    assert second == [as_stored(records["CA-A"])] and cursor is None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


async def test_list_refuses_a_bad_cursor_or_limit(open_store: OpenStore) -> None:
    store = await open_store()
    bad_cursors = [
        "",
        "not a cursor!",
        _b64(b"\xff\xfe"),
        _b64(b"{}"),
        _b64(b'["2026-12-02T01:21:17+00:00"]'),
        _b64(b'["yesterday", "CA1"]'),
        _b64(b'["2026-12-02T01:21:17", "CA1"]'),  # no zone: not one of ours
        _b64(b'["2026-12-02T01:21:17+00:00", ""]'),
        _b64(b'{"2026-12-02T01:21:17+00:00": 1, "CA1": 2}'),
    ]
    for cursor in bad_cursors:
        with pytest.raises(BadCursor):
            await store.list_calls(before=cursor)
    assert issubclass(BadCursor, ValueError)
    bad_limits: list[Any] = [0, -1, 501, True, 2.5, "10"]
    for limit in bad_limits:
        with pytest.raises(ValueError, match="limit"):
            await store.list_calls(limit=limit)
    assert (await store.list_calls(limit=500)) == ([], None)
    assert (await store.list_calls(limit=1)) == ([], None)


# --- Retention ---------------------------------------------------------------------------


async def test_prune_deletes_only_what_is_older_than_the_retention(
    open_store: OpenStore, store_log: StoreLog
) -> None:
    now = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
    store = await open_store(retention_days=30)
    ages = {"CA-40d": 40, "CA-31d": 31, "CA-29d": 29, "CA-1d": 1}
    await submit_all(
        store, [make_record(sid, started=now - timedelta(days=d)) for sid, d in ages.items()]
    )
    assert await store.prune(now=now) == 2
    assert await store.prune(now=now) == 0
    left, _ = await store.list_calls()
    assert [r["call_sid"] for r in left] == ["CA-1d", "CA-29d"]
    assert store.stats.pruned == 2
    assert [line.fields["count"] for line in store_log.events("store.pruned")] == [2]


async def test_retention_zero_keeps_everything(open_store: OpenStore) -> None:
    store = await open_store(retention_days=0)
    ancient = make_record("CA-ancient", started=datetime(2001, 1, 1, tzinfo=UTC))
    await submit_all(store, [ancient])
    assert await store.prune(now=datetime(2100, 1, 1, tzinfo=UTC)) == 0
    assert await store.get("CA-ancient") == as_stored(ancient)
    assert store.stats.pruned == 0


async def test_the_pruner_runs_at_start(open_store: OpenStore) -> None:
    now = datetime.now(UTC)
    keeper = await open_store()
    await submit_all(
        keeper,
        [
            make_record("CA-old", started=now - timedelta(days=8)),
            make_record("CA-recent", started=now - timedelta(days=6)),
        ],
    )
    pruning = await open_store(retention_days=7, prune_interval_s=3600)
    await eventually(lambda: pruning.stats.pruned == 1, what="pruned at start")
    assert await pruning.get("CA-old") is None
    assert await pruning.get("CA-recent") is not None


# --- Secrets -----------------------------------------------------------------------------


async def test_the_password_never_reaches_a_log_line(pg_url: str, store_log: StoreLog) -> None:
    """Trust auth takes any password: the URL can carry one the logs must hide."""
    with_password = pg_url.replace("postgres@", "postgres:hunter2-secret-pw@")
    assert with_password != pg_url
    store = CallStore(with_password)
    try:
        assert await store.start(timeout_s=10)
        await submit_all(store, [make_record("CA-pw")])
    finally:
        await store.close()
    ready = store_log.events("store.ready")
    assert len(ready) == 1 and "***" in str(ready[0].fields["url"])
    assert "hunter2-secret-pw" not in store_log.text()


# --- Layering ----------------------------------------------------------------------------


def test_the_store_imports_nothing_of_the_call_layer() -> None:
    """Checked in a fresh interpreter, so modules imported by other tests don't count."""
    probe = (
        "import sys, app.store; "
        "print(sorted(m for m in sys.modules if m.split('.')[:2] in "
        "(['app', 'call'], ['app', 'bridge'], ['app', 'main'])))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "[]"
