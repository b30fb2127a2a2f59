"""`app.telephony.Telephony.create_call` against real loopback sockets: what an answer, or
the lack of one, says about whether a call may exist (so a retry is known to be safe)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from app.telephony import Telephony

ACCOUNT = "AC" + "1" * 32
PARAMS: dict[str, str | list[str]] = {
    "To": "+15550100",
    "From": "+15550111",
    "Twiml": "<Response><Hangup/></Response>",
    "StatusCallbackEvent": ["initiated", "ringing", "answered", "completed"],
}

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


@contextlib.asynccontextmanager
async def _serve(handler: Handler) -> AsyncIterator[tuple[str, list[bytes]]]:
    seen: list[bytes] = []

    async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await _read_request(reader))
        await handler(reader, writer)

    server = await asyncio.start_server(wrapped, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        server.close()
        await server.wait_closed()


def _answer(status: int, body: bytes) -> Handler:
    async def handler(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
        head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        writer.write(head.encode() + body)
        await writer.drain()
        writer.close()

    return handler


async def _drop(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()  # read the request, then hang up without an answer


@pytest.fixture
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # closed again: connecting is refused


async def test_a_refused_connection_never_reached_twilio(free_port: int) -> None:
    telephony = Telephony(ACCOUNT, "token", f"http://127.0.0.1:{free_port}", timeout_s=2)
    created = await telephony.create_call(PARAMS)
    assert (created.status, created.call_sid, created.reached) == (0, None, False)


async def test_a_request_read_and_then_dropped_may_have_created_the_call() -> None:
    async with _serve(_drop) as (url, seen):
        created = await Telephony(ACCOUNT, "token", url, timeout_s=2).create_call(PARAMS)
        assert seen and b"/Calls.json" in seen[0]  # it went out
        assert (created.status, created.call_sid, created.reached) == (0, None, True)


async def test_a_created_call_answers_its_sid_and_an_error_its_code() -> None:
    ok = b'{"sid": "CA' + b"9" * 32 + b'", "status": "queued"}'
    async with _serve(_answer(201, ok)) as (url, seen):
        created = await Telephony(ACCOUNT, "token", url, timeout_s=2).create_call(PARAMS)
        assert (created.status, created.call_sid) == (201, "CA" + "9" * 32)
        form = seen[0].split(b"\r\n\r\n", 1)[1].decode()
        assert "To=%2B15550100" in form and "Twiml=" in form
        assert form.count("StatusCallbackEvent=") == 4  # one field per event, as Twilio wants
    refused = b'{"code": 21211, "message": "Invalid \'To\' Phone Number", "status": 400}'
    async with _serve(_answer(400, refused)) as (url, _):
        created = await Telephony(ACCOUNT, "token", url, timeout_s=2).create_call(PARAMS)
        assert (created.status, created.code, created.reached) == (400, 21211, True)
        assert "Invalid" in created.error
