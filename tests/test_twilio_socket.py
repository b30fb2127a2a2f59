"""TwilioSocket: frames out at once while the peer reads, in order and bounded when it doesn't."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.twilio_socket import TwilioSocket
from tests.fakes.realtime_transport import AsgiWebsocket


async def accepted(limit: int = 1000) -> tuple[TwilioSocket, AsgiWebsocket]:
    ws = AsgiWebsocket()
    sock = TwilioSocket(ws.receive, ws.send, max_backlog_chars=limit)
    await sock.accept()
    return sock, ws


def texts(ws: AsgiWebsocket) -> list[str]:
    return [m["text"] for m in ws.outgoing if m["type"] == "websocket.send"]


async def test_a_frame_is_written_before_send_returns_while_the_peer_reads() -> None:
    sock, ws = await accepted()
    assert sock.send("one") and sock.send("two")
    assert texts(ws) == ["one", "two"]  # no await in between: written synchronously


async def test_a_stuck_peer_gets_its_frames_in_order_once_it_reads_and_the_backlog_is_bounded() -> (
    None
):
    sock, ws = await accepted(limit=10)
    ws.writable.clear()
    assert sock.send("a" * 4)  # the server's send suspends: taken over by a writer
    assert sock.send("b" * 4)
    assert sock.send("c" * 2)
    assert not sock.send("d")  # 11 characters would be over the bound: refused
    assert sock.backlog_chars == 10
    sock.close()
    ws.writable.set()
    await sock.aclose()
    assert texts(ws) == ["aaaa", "bbbb", "cc"]
    assert ws.outgoing[-1] == {"type": "websocket.close", "code": 1000}  # after the backlog
    assert sock.backlog_chars == 0
    assert sock.send("late")  # accepted and dropped: the socket is closed
    assert texts(ws) == ["aaaa", "bbbb", "cc"]


async def test_once_the_backlog_is_written_frames_go_out_at_once_again() -> None:
    sock, ws = await accepted()
    ws.writable.clear()
    sock.send("held")
    ws.writable.set()
    await sock.drained()
    assert texts(ws) == ["held"]
    sock.send("direct")
    assert texts(ws) == ["held", "direct"]


async def test_a_peer_that_is_gone_makes_sends_no_ops() -> None:
    sock, ws = await accepted()
    ws.gone = True  # the server's send now fails, as uvicorn's does once disconnected
    assert sock.send("x") and not sock.open
    assert sock.send("y")  # nothing raised, nothing sent


async def test_closing_with_a_peer_stuck_forever_is_bounded() -> None:
    sock, ws = await accepted()
    ws.writable.clear()
    sock.send("never taken")
    # Returns although the peer never takes the frame (10 s: only an "at all" bound).
    await asyncio.wait_for(sock.aclose(timeout_s=0.2), 10)
    assert not sock.open and texts(ws) == []
    # The stuck write was given up, not left pending: a peer that reads later gets nothing.
    ws.writable.set()
    for _ in range(5):
        await asyncio.sleep(0)  # room for a write still pending to go out (none may)
    assert ws.outgoing == [{"type": "websocket.accept"}]


async def test_a_peer_that_reads_again_after_a_while_gets_the_frame(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A shut TCP window that stays shut while the writer takes over (the server's send
    waits on a future still pending then) is a slow peer, not a gone one."""
    sock, ws = await accepted()
    ws.writable.clear()
    assert sock.send("held up")
    for _ in range(3):
        await asyncio.sleep(0)  # the scenario: the peer reads nothing for a few loop turns
    ws.writable.set()
    await asyncio.wait_for(sock.drained(), 10)
    assert [r.getMessage() for r in caplog.records if r.name == "app.twilio_socket"] == []
    assert texts(ws) == ["held up"] and sock.open


@pytest.mark.parametrize("fails", [False, True])
async def test_a_suspended_send_is_finished_exactly_as_a_task_would(fails: bool) -> None:
    """The writer resumes the server's coroutine where it stopped: through bare yields and
    futures, and with the future's exception raised inside it."""
    steps: list[str] = []
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def server_send(message: dict[str, Any]) -> None:
        steps.append("start")
        await asyncio.sleep(0)  # a bare yield
        try:
            await gate
        except RuntimeError:
            steps.append("raised inside")
            raise
        steps.append("sent " + message.get("text", message["type"]))

    ws = AsgiWebsocket()
    sock = TwilioSocket(ws.receive, server_send)
    sock.open = True
    sock.send("x")
    sock.send("y")  # queued behind the suspended one
    assert steps == ["start"]
    if fails:
        gate.set_exception(RuntimeError("peer gone"))
    else:
        gate.set_result(None)
    await sock.aclose()
    if fails:
        assert steps == ["start", "raised inside"]
    else:
        assert steps == ["start", "sent x", "start", "sent y", "start", "sent websocket.close"]
