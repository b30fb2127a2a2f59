"""The call store's `outbound_calls` table on SQLite and on a real PostgreSQL.

Every test runs on both databases (`db_url` is parametrised), but the outage one, which
stops a PostgreSQL server of its own (as test_store_writer.py's do).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command

from app.store import CallStore, StoreConflict, StoreUnavailable, database_url, migrate
from app.store.engine import make_engine, writing
from app.store.records import to_row
from app.store.schema import calls
from tests.pg import PgServer
from tests.store_support import BASE_TIME, OpenStore, StoreLog, eventually, make_record

TO, FROM = "+15550009876", "+15550001234"
SECRET_CONTEXT = "account 4111 1111 1111 1111"
"""In every test row's settings: it must never reach a log line."""


def make_row(outbound_id: str, *, created: datetime = BASE_TIME, **overrides: Any) -> dict:
    """An outbound call's row as `app.outbound` writes it before Twilio is asked."""
    row: dict[str, Any] = {
        "outbound_id": outbound_id,
        "call_sid": None,
        "created_at": created,
        "to_number": TO,
        "from_number": FROM,
        "agent": "sales",
        "settings": {
            "instructions": "Confirm the appointment. ✓ Ünïcødé",
            "greeting": "Hello {name}",
            "context": {"name": "Ada", "note": SECRET_CONTEXT},
            "machine_detection": "DetectMessageEnd",
            "voicemail_message": "",
            "agent": None,
            "retries": [1, 2.5, None, True],
        },
        "status": "creating",
    }
    row.update(overrides)
    return row


def full(row: dict[str, Any]) -> dict[str, Any]:
    """`row` as it reads back: every column, those not given None, times in UTC."""
    names = [
        "outbound_id",
        "call_sid",
        "created_at",
        "to_number",
        "from_number",
        "agent",
        "settings",
        "status",
        "answered_by",
        "answered_at",
        "stream_at",
        "ended_at",
    ]
    out = {name: row.get(name) for name in names}
    for name in ("created_at", "answered_at", "stream_at", "ended_at"):
        if out[name] is not None:
            out[name] = out[name].astimezone(UTC)
    return out


# --- Rows in and out ---------------------------------------------------------------------


async def test_add_get_round_trip(open_store: OpenStore) -> None:
    store = await open_store()
    plus_two = timezone(timedelta(hours=2))
    created = BASE_TIME.astimezone(plus_two)  # another zone: the same instant comes back
    row = make_row("OB-round-trip", created=created)
    await store.add_outbound(row)

    got = await store.outbound("OB-round-trip")
    assert got == full(row)
    assert got is not None
    assert got["created_at"] == BASE_TIME and got["created_at"].tzinfo is UTC
    assert got["settings"] == row["settings"]
    assert await store.outbound("OB-unknown") is None

    answered = datetime(2026, 12, 2, 1, 22, 0, 456789)  # naive: taken as UTC
    stream = BASE_TIME + timedelta(seconds=50)
    ended = BASE_TIME + timedelta(seconds=90)
    every = make_row(
        "OB-every-column",
        call_sid="CA-every",
        status="completed",
        answered_by="human",
        answered_at=answered,
        stream_at=stream.astimezone(plus_two),
        ended_at=ended,
        agent=None,
        settings={},
    )
    await store.add_outbound(every)
    got = await store.outbound("OB-every-column")
    assert got == {**full(every), "answered_at": answered.replace(tzinfo=UTC)}
    assert got is not None
    assert all(got[k].tzinfo is UTC for k in ("answered_at", "stream_at", "ended_at"))


async def test_lookup_by_call_sid(open_store: OpenStore) -> None:
    store = await open_store()
    # Rows wait for their CallSid (Twilio names the call after the row is written):
    # several without one at once are no conflict.
    await store.add_outbound(make_row("OB-1"))
    await store.add_outbound(make_row("OB-2"))
    await store.add_outbound(make_row("OB-3", call_sid="CA-three"))
    assert await store.outbound_by_call_sid("CA-one") is None

    assert await store.update_outbound("OB-1", {"call_sid": "CA-one", "status": "queued"})
    found = await store.outbound_by_call_sid("CA-one")
    assert found == full(make_row("OB-1", call_sid="CA-one", status="queued"))
    assert (await store.outbound_by_call_sid("CA-three") or {})["outbound_id"] == "OB-3"
    assert await store.outbound_by_call_sid("CA-unknown") is None


async def test_update_with_and_without_only_if_open(open_store: OpenStore) -> None:
    store = await open_store()
    await store.add_outbound(make_row("OB-up", call_sid="CA-up"))
    answered = BASE_TIME + timedelta(seconds=20)
    assert await store.update_outbound(
        "OB-up", {"status": "in-progress", "answered_at": answered}, only_if_open=True
    )
    assert await store.update_outbound("OB-up", {"status": "ringing"}) is True
    assert await store.update_outbound("OB-unknown", {"status": "ringing"}) is False
    assert await store.update_outbound("OB-unknown", {"status": "x"}, only_if_open=True) is False

    ended = BASE_TIME + timedelta(seconds=60)
    assert await store.update_outbound(
        "OB-up", {"status": "completed", "ended_at": ended}, only_if_open=True
    )
    closed = full(
        make_row(
            "OB-up", call_sid="CA-up", status="completed", answered_at=answered, ended_at=ended
        )
    )
    assert await store.outbound("OB-up") == closed

    # Ended: a late callback changes nothing when it asks for an open row...
    late = {"status": "busy", "ended_at": ended + timedelta(seconds=5)}
    assert await store.update_outbound("OB-up", late, only_if_open=True) is False
    assert await store.outbound("OB-up") == closed
    # ...and what is written regardless still is.
    assert await store.update_outbound("OB-up", {"answered_by": "machine_start"}) is True
    assert await store.outbound("OB-up") == {**closed, "answered_by": "machine_start"}


async def test_in_flight_counts_open_rows_created_since(open_store: OpenStore) -> None:
    store = await open_store()
    since = BASE_TIME
    rows = [
        make_row("OB-open-new", created=since + timedelta(minutes=5)),
        make_row("OB-open-at-since", created=since),  # inclusive
        make_row("OB-open-old", created=since - timedelta(microseconds=1)),
        make_row("OB-ended-new", created=since + timedelta(minutes=1), ended_at=since),
        make_row("OB-ended-later", created=since + timedelta(minutes=2)),
    ]
    for row in rows:
        await store.add_outbound(row)
    assert await store.outbound_in_flight(since) == 3
    assert await store.update_outbound(
        "OB-ended-later", {"status": "no-answer", "ended_at": since + timedelta(minutes=3)}
    )
    assert await store.outbound_in_flight(since) == 2
    # Another zone, or none (taken as UTC), names the same instant.
    assert await store.outbound_in_flight(since.astimezone(timezone(timedelta(hours=-5)))) == 2
    assert await store.outbound_in_flight(since.replace(tzinfo=None)) == 2
    assert await store.outbound_in_flight(since + timedelta(microseconds=1)) == 1
    assert await store.outbound_in_flight(since - timedelta(days=1)) == 3
    assert await store.outbound_in_flight(since + timedelta(hours=1)) == 0


# --- Refusals ----------------------------------------------------------------------------


async def test_unknown_columns_are_a_value_error_before_any_database(
    open_store: OpenStore,
) -> None:
    """A bug of ours, not an outage: raised by a store whose database isn't even there."""
    nowhere = CallStore("postgresql://postgres@127.0.0.1:1/nowhere", connect_timeout_s=0.2)
    store = await open_store()
    try:
        for target in (nowhere, store):
            with pytest.raises(ValueError, match=r"not columns of outbound_calls: bogus, x"):
                await target.add_outbound({**make_row("OB-bad"), "x": 1, "bogus": 2})
            with pytest.raises(ValueError, match=r"not columns of outbound_calls: CallStatus"):
                await target.update_outbound("OB-bad", {"status": "ok", "CallStatus": "x"})
            with pytest.raises(ValueError, match="no columns"):
                await target.update_outbound("OB-bad", {}, only_if_open=True)
            with pytest.raises(ValueError, match=r"needs: created_at, settings"):
                await target.add_outbound(make_row("OB-bad", created_at=None, settings=None))
            with pytest.raises(ValueError, match=r"needs: outbound_id, status"):
                incomplete = make_row("OB-bad")
                del incomplete["outbound_id"], incomplete["status"]
                await target.add_outbound(incomplete)
    finally:
        await nowhere.close()
    assert await store.outbound("OB-bad") is None
    assert store.available


async def test_a_taken_call_sid_or_id_is_a_conflict_not_an_outage(
    open_store: OpenStore, store_log: StoreLog
) -> None:
    """The database answered: StoreConflict (a StoreUnavailable to callers that handle
    only that), the store still available, the first row as it was, nothing logged of
    the rows' contents."""
    store = await open_store()
    first = make_row("OB-first", call_sid="CA-taken")
    await store.add_outbound(first)
    await store.add_outbound(make_row("OB-second"))

    with pytest.raises(StoreConflict):
        await store.add_outbound(make_row("OB-dup-sid", call_sid="CA-taken"))
    assert store.available
    with pytest.raises(StoreConflict):
        await store.add_outbound(make_row("OB-first", status="queued"))
    with pytest.raises(StoreConflict):
        await store.update_outbound("OB-second", {"call_sid": "CA-taken", "status": "queued"})
    assert issubclass(StoreConflict, StoreUnavailable)
    assert store.available

    assert await store.outbound("OB-first") == full(first)
    assert await store.outbound("OB-dup-sid") is None
    assert await store.outbound("OB-second") == full(make_row("OB-second"))  # rolled back
    assert (await store.outbound_by_call_sid("CA-taken") or {})["outbound_id"] == "OB-first"
    conflicts = store_log.events("store.conflict")
    assert [(line.level, line.fields["error"]) for line in conflicts] == [
        (logging.WARNING, "IntegrityError")
    ] * 3
    assert store_log.events("store.query_failed") == []
    for private in (TO, FROM, SECRET_CONTEXT, "CA-taken"):
        assert private not in store_log.text()


async def test_outbound_queries_raise_store_unavailable_while_the_server_is_down(
    own_pg: PgServer, store_log: StoreLog
) -> None:
    store = CallStore(own_pg.create_database())
    try:
        assert await store.start(timeout_s=10)
        await store.add_outbound(make_row("OB-before", call_sid="CA-before"))
        own_pg.stop()
        attempts: list[Callable[[], Awaitable[Any]]] = [
            lambda: store.add_outbound(make_row("OB-during")),
            lambda: store.outbound("OB-before"),
            lambda: store.outbound_by_call_sid("CA-before"),
            lambda: store.update_outbound("OB-before", {"status": "ringing"}),
            lambda: store.outbound_in_flight(BASE_TIME),
        ]
        for attempt in attempts:
            with pytest.raises(StoreUnavailable) as raised:
                await attempt()
            assert not isinstance(raised.value, StoreConflict)
        assert not store.available
        failed = store_log.events("store.query_failed")
        assert [line.fields["failures"] for line in failed] == [1, 2, 4]

        own_pg.start()
        before = full(make_row("OB-before", call_sid="CA-before"))
        assert await store.outbound("OB-before") == before
        assert await store.outbound("OB-during") is None
        assert store.available
    finally:
        await store.close()
    assert SECRET_CONTEXT not in store_log.text()


# --- Migration ---------------------------------------------------------------------------


async def test_a_database_at_0001_is_upgraded_at_start_and_keeps_its_calls(
    db_url: str, store_log: StoreLog
) -> None:
    """A database the previous release made (revision 0001, the calls table only, with
    a call in it): the start brings it to 0002 and both tables work."""
    record = make_record("CA-from-0001")
    engine = make_engine(database_url(db_url), connect_timeout_s=5)
    try:
        async with writing(engine) as conn:
            await conn.run_sync(lambda sync: command.upgrade(migrate.alembic_config(sync), "0001"))
            await conn.execute(sa.insert(calls).values(**to_row(record).values))
        assert await migrate.current_revision(engine) == "0001"
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names())
        assert "calls" in tables and "outbound_calls" not in tables
    finally:
        await engine.dispose()

    store = CallStore(db_url)
    try:
        assert await store.start(timeout_s=10)
        assert store_log.events("store.ready")[-1].fields["revision"] == "0002"
        assert await store.get("CA-from-0001") == record
        assert [r["call_sid"] for r in (await store.list_calls())[0]] == ["CA-from-0001"]
        await store.add_outbound(make_row("OB-after-upgrade"))
        assert await store.outbound_in_flight(BASE_TIME) == 1
        assert store.submit(make_record("CA-after-upgrade"))
        await eventually(lambda: store.stats.written == 1, what="written after the upgrade")
    finally:
        await store.close()
    engine = make_engine(database_url(db_url), connect_timeout_s=5)
    try:
        assert await migrate.current_revision(engine) == migrate.head_revision() == "0002"
    finally:
        await engine.dispose()


async def test_retention_prunes_old_outbound_rows_with_the_records(
    open_store: OpenStore,
) -> None:
    """The rows hold the callee's number and the call's context: kept no longer than the
    call records (`CALL_RECORDS_RETENTION_DAYS`)."""
    store = await open_store(retention_days=30, prune_interval_s=3600)
    now = BASE_TIME + timedelta(days=400)
    await store.add_outbound(make_row("OB-old", created=BASE_TIME))
    await store.add_outbound(make_row("OB-recent", created=now - timedelta(days=1)))
    await store.prune(now)
    assert await store.outbound("OB-old") is None
    assert await store.outbound("OB-recent") is not None
