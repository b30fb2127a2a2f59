"""Call records across processes: replicas on one PostgreSQL, and a rolling deploy.

Real server processes (`uvicorn app.main:app`, as in production) on a real PostgreSQL
server: two replicas list each other's calls, and SIGTERM while a record is still pending
(the database briefly away) flushes it before the process exits.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.store import CallStore, database_url
from tests.fakes.realtime_server import FakeRealtime
from tests.pg import PgServer
from tests.test_e2e_shutdown import ServerProcess, server

pytestmark = pytest.mark.e2e

KEY = "operator-key-0123456789abcdef"
BEARER = {"Authorization": f"Bearer {KEY}"}


async def one_call(srv: ServerProcess, realtime: FakeRealtime) -> str:
    """A short call to `srv`; its CallSid once the process has logged its summary."""
    async with srv.live_call(realtime) as (call, _conn):
        await call.hangup()
    await srv.wait_event("call.summary")
    return call.call_sid


async def stored_by(srv: ServerProcess, call_sid: str) -> None:
    """Wait for `srv` to log that it wrote `call_sid`'s record (at DEBUG)."""
    await srv.wait_for(
        lambda e: e.get("event") == "store.written" and e.get("call_sid") == call_sid
    )


async def calls_listed(port: int) -> list[str]:
    async with httpx.AsyncClient() as client:
        reply = await client.get(f"http://127.0.0.1:{port}/calls", headers=BEARER)
    assert reply.status_code == 200, reply.text
    return [c["call_sid"] for c in reply.json()["calls"]]


async def stored(url: str, call_sid: str) -> dict[str, Any] | None:
    store = CallStore(database_url(url))
    assert await store.start()
    try:
        return await store.get(call_sid)
    finally:
        await store.close()


async def test_two_replicas_on_one_postgres_list_each_others_calls(
    realtime: FakeRealtime, tmp_path: Path, pg_url: str
) -> None:
    env = {"DATABASE_URL": pg_url, "OPERATOR_API_KEY": KEY, "LOG_LEVEL": "DEBUG"}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with (
        server(realtime, tmp_path / "a", **env) as a,
        server(realtime, tmp_path / "b", **env) as b,
    ):
        # Both migrate the same empty database at once (the advisory lock keeps them apart).
        await a.wait_event("startup.ready")
        await b.wait_event("startup.ready")
        on_a = await one_call(a, realtime)
        await stored_by(a, on_a)
        on_b = await one_call(b, realtime)
        await stored_by(b, on_b)
        assert await calls_listed(a.port) == [on_b, on_a]  # newest first, whoever took it
        assert await calls_listed(b.port) == [on_b, on_a]
        for srv in (a, b):
            srv.proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(srv.proc.wait(), 20) == 0


async def test_sigterm_flushes_a_record_still_pending_before_the_process_exits(
    realtime: FakeRealtime, tmp_path: Path
) -> None:
    pg = PgServer()
    await asyncio.to_thread(pg.start)
    try:
        env = {"DATABASE_URL": pg.url, "OPERATOR_API_KEY": KEY, "SHUTDOWN_DRAIN_SECONDS": "30"}
        async with server(realtime, tmp_path, **env) as srv:
            await srv.wait_event("startup.ready")
            await asyncio.to_thread(pg.stop)  # the record can't be written: it waits
            call_sid = await one_call(srv, realtime)
            await srv.wait_event("store.write_failed")
            srv.proc.send_signal(signal.SIGTERM)
            await srv.wait_event("shutdown.drained")  # the calls are over, the record is not
            await asyncio.to_thread(pg.start)
            assert await asyncio.wait_for(srv.proc.wait(), 30) == 0
        names = srv.names()
        assert "store.record_lost" not in names
        assert names.index("shutdown.drained") < names.index("store.recovered")
        record = await stored(pg.url, call_sid)
        assert record is not None and record["call_sid"] == call_sid
    finally:
        await asyncio.to_thread(pg.close)
