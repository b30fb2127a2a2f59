"""The Realtime link over a real loopback websocket (the `websockets` server as the peer).

Frames the link writes itself must be exactly what the library would write; messages
arrive by callback, in order, whole (fragments joined), including those the service sent
before the bridge started the link; the end is reported once.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.asyncio.server import ServerConnection, serve
from websockets.frames import Opcode
from websockets.http11 import Response
from websockets.protocol import Protocol, Side, State

from app import realtime_socket
from app.realtime_socket import (
    AUDIO_BACKLOG_BYTES,
    PING_INTERVAL_S,
    PING_TIMEOUT_S,
    RealtimeEndpoint,
    RealtimeUnavailable,
    WebsocketTransport,
    client_text_frame,
)


@given(
    payload=st.one_of(
        st.binary(max_size=300),
        st.sampled_from([b"x" * 125, b"x" * 126, b"x" * 65535, b"x" * 65536]),
    ),
    mask=st.binary(min_size=4, max_size=4),
)
def test_our_client_frames_are_what_the_library_reads(payload: bytes, mask: bytes) -> None:
    server = Protocol(Side.SERVER, state=State.OPEN, max_size=None)  # past the handshake
    server.receive_data(client_text_frame(payload, mask))
    (frame,) = server.events_received()
    assert frame.opcode is Opcode.TEXT and frame.fin and bytes(frame.data) == payload
    assert server.parser_exc is None


class Receiver:
    def __init__(self) -> None:
        self.frames: list[tuple[bytes, bool]] = []
        self.ends: list[tuple[int | None, str]] = []
        self.changed = asyncio.Event()

    def frame(self, data: bytes, text: bool) -> None:
        self.frames.append((data, text))
        self.changed.set()

    def closed(self, code: int | None, reason: str) -> None:
        self.ends.append((code, reason))
        self.changed.set()

    async def until(self, check: Any) -> None:
        async with asyncio.timeout(5):
            while not check():
                self.changed.clear()
                await self.changed.wait()


async def test_messages_arrive_whole_in_order_from_the_first_one_and_sends_go_through() -> None:
    got: list[str] = []
    early_sent = asyncio.Event()
    done = asyncio.Event()

    async def service(ws: ServerConnection) -> None:
        await ws.send('{"type":"session.created"}')  # before the bridge starts the link
        await ws.send(['{"type":', '"frag', 'mented"}'])  # one message in three frames
        await ws.send(b"\x00binary")
        await (await ws.ping())  # the pong: the client has read all of the above
        early_sent.set()
        async for message in ws:
            got.append(str(message))
            if len(got) == 1101:
                await ws.close(1000, "bye")
        done.set()

    async with serve(service, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        transport = WebsocketTransport(RealtimeEndpoint(f"ws://127.0.0.1:{port}/v1/realtime", "k"))
        link = await transport.open(timeout_s=3)
        await asyncio.wait_for(early_sent.wait(), 5)
        receiver = Receiver()
        link.start(receiver)  # what came before is delivered first, in order
        assert receiver.frames == [
            (b'{"type":"session.created"}', True),
            (b'{"type":"fragmented"}', True),
            (b"\x00binary", False),
        ]
        for i in range(1100):  # more masking keys than one pool holds
            link.send(b'{"n":%d}' % i)
        assert link.send_audio(b'{"type":"b","audio":"' + b"A" * 70_000 + b'"}')
        await receiver.until(lambda: receiver.ends)
        assert got[:1100] == [f'{{"n":{i}}}' for i in range(1100)] and len(got[1100]) > 70_000
        assert receiver.ends == [(1000, "bye")]
        link.send(b"{}")  # after the end: dropped, no error
        await link.aclose()
        await asyncio.wait_for(done.wait(), 5)


async def test_closing_is_reported_once() -> None:
    async def service(ws: ServerConnection) -> None:
        await ws.wait_closed()

    async with serve(service, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        link = await WebsocketTransport(RealtimeEndpoint(f"ws://127.0.0.1:{port}/", "k")).open(3)
        receiver = Receiver()
        link.start(receiver)
        link.close()
        link.close()
        await link.aclose()
        await receiver.until(lambda: receiver.ends)
        assert len(receiver.ends) == 1


async def test_a_refused_key_fails_at_once_and_nothing_listening_fails_within_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    status = HTTPStatus.UNAUTHORIZED
    asked: list[HTTPStatus] = []

    def answer(ws: ServerConnection, _: Any) -> Response:
        asked.append(status)
        return ws.respond(status, "no\n")

    async with serve(lambda ws: ws.wait_closed(), "127.0.0.1", 0, process_request=answer) as s:
        endpoint = RealtimeEndpoint(f"ws://127.0.0.1:{s.sockets[0].getsockname()[1]}/", "k")
        with pytest.raises(RealtimeUnavailable, match="http_401"):
            await WebsocketTransport(endpoint).open(3)
        assert asked == [HTTPStatus.UNAUTHORIZED]  # final: asked once, no retry
        status = HTTPStatus.SERVICE_UNAVAILABLE
        with pytest.raises(RealtimeUnavailable, match="http_503"):
            await WebsocketTransport(endpoint).open(3)
        assert asked.count(HTTPStatus.SERVICE_UNAVAILABLE) == 4  # transient: retried
    # Nothing listening: retried, but the backoff never waits past the deadline (the
    # waits it asks for are seen, not timed: the uncapped backoff, 0.15 + 0.4 + 0.8 s,
    # would be past 0.8 s).
    backoff: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float) -> None:
        backoff.append(delay)
        await real_sleep(delay)

    monkeypatch.setattr(
        realtime_socket, "asyncio", SimpleNamespace(**{**vars(asyncio), "sleep": sleep})
    )
    with socket_nobody_listens() as port:
        endpoint = RealtimeEndpoint(f"ws://127.0.0.1:{port}/", "k")
        with pytest.raises(RealtimeUnavailable):
            await asyncio.wait_for(WebsocketTransport(endpoint).open(0.8), 10)  # "at all"
    assert backoff and sum(backoff) <= 0.8


class socket_nobody_listens:
    """A loopback port with nothing listening on it (bound, so nobody else takes it)."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return int(self.sock.getsockname()[1])

    def __exit__(self, *_: object) -> None:
        self.sock.close()


async def test_a_stalled_peer_is_closed_by_the_keepalive_once_audio_is_dropped() -> None:
    """While the write buffer is over the bound (caller audio being dropped), the
    keepalive's ping must still go out: the library's own writes wait for the buffer to
    drain unless `_Connection.drain` says otherwise, and a stalled link would stay open for
    good (found in review)."""
    release = asyncio.Event()

    async def service(ws: ServerConnection) -> None:
        ws.transport.pause_reading()  # the service stops reading (and so answering pings)
        await release.wait()

    async with serve(service, "127.0.0.1", 0, close_timeout=0.1) as server:
        port = server.sockets[0].getsockname()[1]
        transport = WebsocketTransport(RealtimeEndpoint(f"ws://127.0.0.1:{port}/", "k"))
        link = await transport.open(timeout_s=3)
        receiver = Receiver()
        link.start(receiver)
        # Control events are always written; a burst of them (a long session.update, a few
        # response.create carrying long instructions) fills the buffer past the bound.
        chunk = b'{"type":"x","pad":"' + b"A" * 60_000 + b'"}'
        for _ in range(1000):
            if not link.send_audio(b"{}"):
                break  # paused: caller audio is now being dropped
            link.send(chunk)
            await asyncio.sleep(0)
        assert not link.send_audio(b"{}"), f"buffer never went over {AUDIO_BACKLOG_BYTES}"
        try:
            within = PING_INTERVAL_S + PING_TIMEOUT_S + 3.0
            await asyncio.wait_for(_ended(receiver), within)
        finally:
            release.set()
            await link.aclose()
        assert receiver.ends


async def _ended(receiver: Receiver) -> None:
    while not receiver.ends:
        receiver.changed.clear()
        await receiver.changed.wait()
