"""Connection-level limits over loopback: the real app served by uvicorn, raw sockets.

What an attacker (or a broken peer) can do before any signature is checked: send a huge
or endless webhook body, open sockets that never send a request, trickle headers byte by
byte (slowloris), open more connections than the process can serve, send huge websocket
frames. Each is bounded (README "Security"); these tests fail without the bound.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import AppFactory, RunningApp
from tests.fakes.realtime_server import FakeRealtime, RealtimeConnection
from tests.fakes.twilio_caller import FakeTwilioCall

pytestmark = pytest.mark.e2e


def _address(app: RunningApp) -> tuple[str, int]:
    host, port = app.http_url.removeprefix("http://").split(":")
    return host, int(port)


async def _raw(app: RunningApp) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(*_address(app))


async def _closed_by_server(reader: asyncio.StreamReader, within: float) -> bytes:
    """Everything the server sent until it closed the connection (fails if it doesn't)."""
    received = b""
    async with asyncio.timeout(within):
        while chunk := await reader.read(65536):
            received += chunk
    return received


async def _status(reader: asyncio.StreamReader, within: float = 10.0) -> int:
    async with asyncio.timeout(within):
        line = await reader.readline()
    return int(line.split()[1])


async def _live(call: FakeTwilioCall, realtime: FakeRealtime) -> RealtimeConnection:
    """Start `call`; its Realtime link, once the bridge has configured the session."""
    await call.start()
    conn = await realtime.wait_connection()
    await conn.wait_for("session.update")
    return conn


def _webhook_head(framing: bytes) -> bytes:
    """A webhook POST's request line and headers; `framing` says how its body is sent."""
    return (
        b"POST /incoming-call HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n" + framing + b"\r\n\r\n"
    )


async def test_a_declared_huge_webhook_body_is_refused_before_it_is_sent(
    app_with: AppFactory,
) -> None:
    app = await app_with()
    reader, writer = await _raw(app)
    writer.write(_webhook_head(b"Content-Length: 1000000000"))
    await writer.drain()
    assert await _status(reader) == 413  # answered with not one byte of the body sent
    writer.close()
    assert app.state.hits.counts["webhook_body"] == 1


async def test_a_chunked_webhook_body_is_cut_off_at_the_limit(app_with: AppFactory) -> None:
    app = await app_with(webhook_max_body_bytes=8192)
    reader, writer = await _raw(app)
    writer.write(_webhook_head(b"Transfer-Encoding: chunked"))
    chunk = b"%x\r\n%s\r\n" % (1024, b"a=1&" * 256)  # 1 KiB a chunk
    sent, total = 0, 64 * 1024 * 1024

    async def stream() -> None:  # up to 64 MB, as fast as the server takes it
        nonlocal sent
        while sent < total:
            writer.write(chunk)
            await writer.drain()
            sent += 1024

    sender = asyncio.ensure_future(stream())
    assert await _status(reader) == 413
    # Answered mid-stream (without the limit: 403, once all 64 MB were read and parsed).
    assert sent < total
    sender.cancel()
    await asyncio.gather(sender, return_exceptions=True)
    writer.close()


async def test_a_webhook_body_that_trickles_in_times_out(app_with: AppFactory) -> None:
    app = await app_with(request_timeout_seconds=1)
    reader, writer = await _raw(app)
    writer.write(_webhook_head(b"Content-Length: 100") + b"Call")
    await writer.drain()
    assert await _status(reader) == 408
    writer.close()


async def test_a_trailing_slash_is_not_redirected_to_a_host_header_location(
    app_with: AppFactory,
) -> None:
    app = await app_with()
    async with httpx.AsyncClient() as client:
        resp = await client.post(
            app.http_url + "/incoming-call/", headers={"Host": "evil.example.net"}
        )
    assert resp.status_code == 404
    assert "location" not in resp.headers


async def test_sockets_that_never_send_a_request_are_closed(app_with: AppFactory) -> None:
    app = await app_with(request_timeout_seconds=1)
    idle = [await _raw(app) for _ in range(20)]
    for reader, _ in idle:
        assert await _closed_by_server(reader, within=10) == b""
    assert app.state.hits.counts["request_timeout"] == 20


async def test_a_quiet_keep_alive_connection_is_uvicorns_to_close_not_a_timeout(
    app_with: AppFactory,
) -> None:
    """Between requests, a load balancer's pooled connection is idle, not trickling: it
    lives for uvicorn's keep-alive time (5 s), past the progress timeout, and serves."""
    app = await app_with(request_timeout_seconds=1)
    reader, writer = await _raw(app)
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    for _ in range(2):
        writer.write(request)
        await writer.drain()
        assert await _status(reader) == 200
        await reader.readuntil(b'{"status":"ok"}')
        await asyncio.sleep(2.5)  # idle in the pool, longer than two progress checks
    assert app.state.hits.counts["request_timeout"] == 0
    writer.close()


async def test_headers_trickled_byte_by_byte_do_not_keep_a_connection(
    app_with: AppFactory,
) -> None:
    """Slowloris: each byte arrives before any per-read timeout, the request never ends."""
    app = await app_with(request_timeout_seconds=1)
    reader, writer = await _raw(app)
    closed = asyncio.ensure_future(_closed_by_server(reader, within=10))
    request = b"POST /incoming-call HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 10_000
    for byte in request:
        if closed.done():
            break
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except ConnectionError:
            break
        await asyncio.wait([closed], timeout=0.05)  # the attacker's pace, not a sync
    assert await closed == b""
    assert not request.endswith(b"\r\n\r\n")


async def test_connections_past_the_limit_get_503_and_are_closed(app_with: AppFactory) -> None:
    app = await app_with(max_connections=5, request_timeout_seconds=3)
    held = [await _raw(app) for _ in range(5)]
    reader, _ = await _raw(app)
    answer = await _closed_by_server(reader, within=10)
    assert answer.startswith(b"HTTP/1.1 503 ")
    assert app.state.hits.counts["connections"] == 1
    # The held ones time out; the server forgets a connection before its socket closes,
    # so once they are seen closed here, their slots are free again.
    for held_reader, _ in held:
        assert await _closed_by_server(held_reader, within=10) == b""
    async with httpx.AsyncClient() as client:
        assert (await client.get(app.http_url + "/healthz")).status_code == 200


async def test_a_websocket_frame_over_the_limit_is_refused_by_the_protocol(
    app_with: AppFactory, realtime: FakeRealtime, caplog: pytest.LogCaptureFixture
) -> None:
    app = await app_with(twilio_max_frame_bytes=8192, bot_greeting="")
    async with app.call() as call:
        await _live(call, realtime)
        await call.send_raw('{"event":"media","pad":"' + "A" * 20_000 + '"}')
        assert await call.wait_closed(timeout=10) == 1009  # message too big
    await app.wait_idle()  # the call was torn down and logged
    closed = [r for r in caplog.records if r.getMessage() == "twilio.closed_abnormally"]
    assert [r.fields["code"] for r in closed] == [1009]  # type: ignore[attr-defined]
    assert closed[0].call_sid == call.call_sid  # type: ignore[attr-defined]
    assert app.state.hits.counts["twilio_frame"] == 1


async def test_an_oversized_frame_on_one_call_leaves_another_untouched(
    app_with: AppFactory, realtime: FakeRealtime
) -> None:
    app = await app_with(twilio_max_frame_bytes=8192, bot_greeting="")
    async with app.call() as good:
        good_conn = await _live(good, realtime)
        async with connect(app.ws_url, additional_headers=app.sign_ws()) as bad:
            await bad.send("x" * 20_000)
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(bad.recv(), 10)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1009
        before = len(good_conn.appended_audio)
        await good_conn.wait_until(lambda: len(good_conn.appended_audio) > before + 1600)
        await good.hangup()


async def test_a_realtime_message_over_the_limit_closes_the_link_and_the_call_falls_back(
    app_with: AppFactory, realtime: FakeRealtime, caplog: pytest.LogCaptureFixture
) -> None:
    app = await app_with(realtime_max_frame_bytes=65536, bot_greeting="")
    async with app.call() as call:
        conn = await _live(call, realtime)
        await conn.send_raw('{"type":"response.text.delta","pad":"' + "x" * 100_000 + '"}')
        # The link refuses the message (1009); the bridge closes the media stream, so
        # Twilio runs the fallback TwiML.
        assert await conn.wait_closed(timeout=10) == 1009
        assert await call.wait_closed(timeout=10) == 1000
    await app.wait_idle()
    (summary,) = [r for r in caplog.records if r.getMessage() == "call.summary"]
    assert summary.fields["end_detail"] == "realtime_lost"  # type: ignore[attr-defined]


async def test_a_full_process_is_not_ready_so_the_balancer_sends_calls_elsewhere(
    app_with: AppFactory, realtime: FakeRealtime
) -> None:
    app = await app_with(max_concurrent_calls=1, bot_greeting="")
    async with httpx.AsyncClient() as client:
        assert (await client.get(app.http_url + "/readyz")).status_code == 200
        async with app.call() as call:
            await _live(call, realtime)
            ready = await client.get(app.http_url + "/readyz")
            assert (ready.status_code, ready.json()["status"]) == (503, "full")
            await call.hangup()
        await app.wait_idle()
        ready = await client.get(app.http_url + "/readyz")
        assert (ready.status_code, ready.json()["status"]) == (200, "ready")
