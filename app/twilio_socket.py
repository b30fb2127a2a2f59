"""The Twilio media stream over raw ASGI: frames in as they come, frames out without blocking.

The media-stream route is served by uvicorn directly as an ASGI websocket (no framework
object per message): `receive` hands back each frame's text, and `send` never blocks the
call, nor hops through a task while the socket is writable.

**Sending.** The ASGI server's `send` is a coroutine that completes without suspending
while its socket is writable (uvicorn's waits only on its "writable" flag). So `send` runs
it right here, step by step, and in the common case the frame is written before `send`
returns: no task wake-up per frame, and a barge-in's `clear` leaves at once. If it does
suspend (the peer's TCP window is shut), a writer task takes over that send where it
stopped and then the frames queued behind it, in order; `send` queues until the backlog
is written. Past `max_backlog_chars` it refuses (False): Twilio reads its stream at once
and buffers minutes of audio itself, so a backlog that size means the peer is stuck, and
the call ends rather than wedge (`Bridge`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final

from app.observability import log_event

logger = logging.getLogger("app.twilio_socket")

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Coroutine[Any, Any, None]]

#: About 45 s of the bot's audio (base64 plus marks), far more than a healthy peer holds.
MAX_BACKLOG_CHARS: Final = 512 * 1024


class TwilioSocket:
    """One media-stream websocket, accepted or refused by its handler."""

    def __init__(self, receive: Receive, send: Send, max_backlog_chars: int = MAX_BACKLOG_CHARS):
        self._receive = receive
        self._send = send
        self._limit = max_backlog_chars
        #: The server messages waiting behind a suspended send, with their sizes.
        self._out: deque[tuple[Message, int]] = deque()
        self._chars = 0
        #: Writes what a suspended send left behind; None while sends complete at once.
        self._writer: asyncio.Task[None] | None = None
        #: Accepted, and closed by neither side yet.
        self.open = False
        #: The close code once disconnected (1009: a frame over the server's limit).
        self.close_code: int | None = None

    async def accept(self) -> None:
        """Complete the upgrade (after the `websocket.connect` message)."""
        await self._receive()
        await self._send({"type": "websocket.accept"})
        self.open = True

    async def refuse(self) -> None:
        """Refuse the upgrade (the client gets 403)."""
        await self._receive()
        await self._send({"type": "websocket.close", "code": 1008})

    async def receive(self) -> str | bytes | None:
        """The next frame (text, or bytes for a binary frame); None once disconnected."""
        message = await self._receive()
        if message["type"] == "websocket.receive":
            text = message.get("text")
            return text if text is not None else (message.get("bytes") or b"")
        self.open = False  # websocket.disconnect
        self.close_code = message.get("code")
        return None

    def send(self, text: str) -> bool:
        """Send a text frame now, or queue it behind the backlog; False when the backlog
        is full (nothing was queued)."""
        if not self.open:
            return True  # the call is ending, or the peer is gone: late frames are moot
        return self._put({"type": "websocket.send", "text": text}, len(text))

    @property
    def backlog_chars(self) -> int:
        return self._chars

    def close(self, code: int = 1000) -> None:
        """Close after the frames already sent or queued."""
        if self.open:
            self._put({"type": "websocket.close", "code": code}, 0)
            self.open = False

    async def drained(self) -> None:
        """Wait until the backlog, if any, is written (or given up)."""
        writer = self._writer
        if writer is not None:
            await asyncio.shield(writer)

    async def aclose(self, timeout_s: float = 2.0) -> None:
        """Close and wait (bounded) for the backlog to be written."""
        self.close()
        try:
            await asyncio.wait_for(self.drained(), timeout_s)
        except TimeoutError:
            writer = self._writer
            if writer is not None:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer

    def _put(self, message: Message, size: int) -> bool:
        """Run the server's `send(message)` until it completes or first suspends, or queue
        it behind a suspended one."""
        if self._writer is not None:
            if self._chars + size > self._limit:
                return False
            self._chars += size
            self._out.append((message, size))
            return True
        step = self._send(message)
        try:
            yielded = step.send(None)
        except StopIteration:
            return True  # written
        except Exception as exc:  # the peer is gone: the receive side reports the disconnect
            self._gone(exc)
            return True
        self._chars += size
        self._writer = asyncio.ensure_future(self._drain(step, yielded, size))
        return True

    async def _drain(self, step: Coroutine[Any, Any, None], yielded: Any, size: int) -> None:
        out = self._out
        try:
            await _finish(step, yielded)
            self._chars -= size
            while out:
                message, size = out.popleft()
                self._chars -= size
                await self._send(message)
        except Exception as exc:  # the peer is gone: the receive side reports the disconnect
            out.clear()
            self._chars = 0
            self._gone(exc)
        finally:
            self._writer = None

    def _gone(self, exc: Exception) -> None:
        self.open = False
        if not isinstance(exc, OSError):  # uvicorn's "client disconnected" is an OSError
            log_event(logger, logging.WARNING, "twilio.send_failed", error=type(exc).__name__)


async def _finish(step: Coroutine[Any, Any, None], yielded: Any) -> None:
    """Drive `step`, a coroutine that already ran until it yielded `yielded` to its first
    caller, to its end: what a task would have done had it awaited `step` from the start
    (`yielded` is a future to wait for, or None for a bare yield)."""
    while True:
        try:
            if yielded is None:
                await asyncio.sleep(0)
            else:
                # The future comes marked as awaited by `step` (its `__await__` set the flag
                # a task clears on receipt); cleared here as a task would, or awaiting it
                # again is refused while it is pending ("await wasn't used with future").
                yielded._asyncio_future_blocking = False
                await yielded
        except BaseException as exc:  # cancelled, or the future failed: tell the coroutine
            try:
                yielded = step.throw(exc)
            except StopIteration:
                return
            continue
        try:
            yielded = step.send(None)
        except StopIteration:
            return
