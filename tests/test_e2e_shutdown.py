"""SIGTERM drains live calls: the real server as a process, `uvicorn app.main:app`.

The listening socket is made here and handed to uvicorn (`--fd`), so its port is known
without a race; the server's JSON log lines are read as events to wait on.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import connect

from app.security import stream_token
from tests.conftest import API_KEY, AUTH_TOKEN
from tests.core import start_msg
from tests.fakes.audio import speech, tone
from tests.fakes.realtime_server import FakeRealtime, RealtimeConnection, ScriptedResponse
from tests.fakes.twilio_caller import FakeTwilioCall
from tests.fakes.watch import Watch

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
PUBLIC = "https://bridge.example.com"
#: The upgrade's headers, as Twilio signs them (the same for every call).
SIGNED = {
    "X-Twilio-Signature": RequestValidator(AUTH_TOKEN).compute_signature(
        PUBLIC.replace("https", "wss") + "/media-stream", {}
    )
}


class ServerProcess:
    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port
        self.events: list[dict[str, Any]] = []
        self._watch = Watch()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            self.events.append(line)
            self._watch.notify()

    async def wait_event(self, name: str, within: float = 15.0) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            return next((e for e in self.events if e.get("event") == name), None)

        return await self._watch.wait(find, within, f"log event {name}")  # type: ignore[no-any-return]

    async def wait_for(
        self, match: Callable[[dict[str, Any]], bool], within: float = 15.0
    ) -> dict[str, Any]:
        """The first log line `match` accepts, once it has been written."""

        def find() -> dict[str, Any] | None:
            return next((e for e in self.events if match(e)), None)

        return await self._watch.wait(find, within, "a matching log line")  # type: ignore[no-any-return]

    def names(self) -> list[str]:
        return [e.get("event", "") for e in self.events]

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/media-stream"

    def call(self) -> FakeTwilioCall:
        call_sid = "CA" + secrets.token_hex(16)
        return FakeTwilioCall(
            self.ws_url,
            headers=SIGNED,
            call_sid=call_sid,
            custom_parameters={"StreamToken": stream_token(AUTH_TOKEN, call_sid)},
        )

    @asynccontextmanager
    async def live_call(
        self, realtime: FakeRealtime
    ) -> AsyncIterator[tuple[FakeTwilioCall, RealtimeConnection]]:
        """A call whose Realtime session the bridge has configured."""
        async with self.call() as call:
            await call.start()
            conn = await realtime.wait_connection(timeout=15)
            await conn.wait_for("session.update", timeout=10)
            yield call, conn


@asynccontextmanager
async def server(
    realtime: FakeRealtime, tmp_path: Path, **env: str
) -> AsyncIterator[ServerProcess]:
    """`uvicorn app.main:app` on a new loopback socket of ours."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    async with server_on(sock, realtime, tmp_path, env) as running:
        yield running


@asynccontextmanager
async def server_on(
    sock: socket.socket, realtime: FakeRealtime, tmp_path: Path, env: dict[str, str]
) -> AsyncIterator[ServerProcess]:
    """`uvicorn app.main:app` on `sock` (bound, not yet listening), settings over `env`."""
    sock.listen(64)
    sock.set_inheritable(True)
    settings = {
        "OPENAI_API_KEY": API_KEY,
        "OPENAI_REALTIME_URL": realtime.url,
        "PUBLIC_BASE_URL": PUBLIC,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "BOT_GREETING": "",
        "LOG_FORMAT": "json",
        **env,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "uvicorn",
        "app.main:app",
        "--fd",
        str(sock.fileno()),
        pass_fds=(sock.fileno(),),
        cwd=tmp_path,  # no developer's .env is read
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), **settings},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    port = sock.getsockname()[1]
    sock.close()
    running = ServerProcess(proc, port)
    try:
        yield running
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        running._reader.cancel()


async def readyz(port: int) -> int:
    async with httpx.AsyncClient() as client:
        return (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code


async def test_sigterm_lets_live_calls_finish_then_exits_0(
    realtime: FakeRealtime, tmp_path: Path
) -> None:
    async with server(realtime, tmp_path, SHUTDOWN_DRAIN_SECONDS="60") as srv:
        async with srv.live_call(realtime) as (call, conn):
            assert await readyz(srv.port) == 200

            srv.proc.send_signal(signal.SIGTERM)
            await srv.wait_event("shutdown.draining")
            assert await readyz(srv.port) == 503  # the load balancer moves on
            # ...but the live call goes on: the caller is still heard, nothing is closed.
            before = len(conn.appended_audio)
            await call.say(speech("I am still talking to you."))
            await conn.wait_until(lambda: len(conn.appended_audio) > before + 8000)
            assert not call.closed.is_set() and srv.proc.returncode is None

            await call.hangup()
        assert await asyncio.wait_for(srv.proc.wait(), 20) == 0
    names = srv.names()
    assert names.index("call.summary") < names.index("shutdown.drained")
    assert "shutdown.ending_calls" not in names


async def test_calls_still_open_after_the_drain_time_are_ended_cleanly(
    realtime: FakeRealtime, tmp_path: Path
) -> None:
    async with server(realtime, tmp_path, SHUTDOWN_DRAIN_SECONDS="1") as srv:
        async with srv.live_call(realtime) as (call, conn):
            srv.proc.send_signal(signal.SIGTERM)
            # The bridge closes the media stream itself (Twilio then plays the fallback).
            await call.wait_closed(timeout=15)
            assert call.close_code == 1000
            await conn.wait_closed(timeout=10)
        assert await asyncio.wait_for(srv.proc.wait(), 20) == 0
    summary = next(e for e in srv.events if e.get("event") == "call.summary")
    assert summary["ended"] == "shutdown"
    assert "shutdown.ending_calls" in srv.names()


async def test_a_caller_side_that_neither_reads_nor_closes_cannot_hold_the_exit(
    realtime: FakeRealtime, tmp_path: Path
) -> None:
    """The drain ends within SHUTDOWN_DRAIN_SECONDS plus a bounded teardown, whatever the
    peers do: here a Twilio side that stops reading (a tiny receive buffer, nothing read)
    while the bot talks, and so never answers the close either."""
    realtime.add_responses(ScriptedResponse(audio=tone(30_000), transcript="A long story."))
    env = {"SHUTDOWN_DRAIN_SECONDS": "1", "BOT_GREETING": "Tell a long story."}
    async with server(realtime, tmp_path, **env) as srv:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before the handshake
        sock.connect(("127.0.0.1", srv.port))
        call_sid = "CA" + secrets.token_hex(16)
        ws = await connect(
            srv.ws_url,
            sock=sock,
            additional_headers=SIGNED,
            max_queue=1,  # past one unread message, the client stops reading its socket
            ping_interval=None,
        )
        token = stream_token(AUTH_TOKEN, call_sid, {"From": "+15550001111"})  # as start_msg
        await ws.send(json.dumps(start_msg(call_sid, StreamToken=token)))
        conn = await realtime.wait_connection(timeout=15)
        await conn.wait_for("response.create", timeout=10)
        # The bot talks (the fake paces its audio in real time) into a socket nobody reads.
        await conn.wait_until(
            lambda: conn.sent_types().count("response.output_audio.delta") >= 10, timeout=10
        )
        srv.proc.send_signal(signal.SIGTERM)
        await srv.wait_event("shutdown.draining")
        # 1 s of drain, 5 s for the calls' teardown, 5 s for the server's own: 30 s is ample.
        assert await asyncio.wait_for(srv.proc.wait(), 30) == 0
        ws.transport.abort()
    summary = next(e for e in srv.events if e.get("event") == "call.summary")
    assert summary["call_sid"] == call_sid


async def test_a_second_sigterm_ends_the_remaining_calls_at_once(
    realtime: FakeRealtime, tmp_path: Path
) -> None:
    async with server(realtime, tmp_path, SHUTDOWN_DRAIN_SECONDS="600") as srv:
        async with srv.live_call(realtime) as (call, _):
            srv.proc.send_signal(signal.SIGTERM)
            await srv.wait_event("shutdown.draining")
            srv.proc.send_signal(signal.SIGTERM)
            await call.wait_closed(timeout=15)
        assert await asyncio.wait_for(srv.proc.wait(), 20) == 0
    assert "shutdown.hurry" in srv.names()
