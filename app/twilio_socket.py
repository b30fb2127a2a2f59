"""The Twilio media stream over raw ASGI: frames in as they come, frames out without blocking.

The media-stream route is served by uvicorn directly as an ASGI websocket (no framework
object per message): `receive` hands back each frame's text, and `send` never blocks the
call. Outgoing frames go to a bounded queue written by one writer task, in order; the
ASGI server's `send` completes at once while the socket is writable, and the queue holds
what a slow peer hasn't taken yet. Past `max_backlog_chars` `send` refuses (False): Twilio
reads its stream at once and buffers minutes of audio itself, so a backlog that size means
the peer is stuck, and the call ends rather than wedge (`Bridge`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: About 45 s of the bot's audio (base64 plus marks), far more than a healthy peer holds.
MAX_BACKLOG_CHARS: Final = 512 * 1024
_CLOSE: Final = object()


class TwilioSocket:
    """One media-stream websocket, accepted or refused by its handler."""

    def __init__(self, receive: Receive, send: Send, max_backlog_chars: int = MAX_BACKLOG_CHARS):
        self._receive = receive
        self._send = send
        self._limit = max_backlog_chars
        self._out: deque[Any] = deque()
        self._chars = 0
        self._wake: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._close_code = 1000
        #: Accepted and not yet closed by either side.
        self.open = False
        self.closing = False

    async def accept(self) -> None:
        """Complete the upgrade (after the `websocket.connect` message) and start writing."""
        await self._receive()
        await self._send({"type": "websocket.accept"})
        self.open = True
        self._writer = asyncio.ensure_future(self._write())

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
        return None

    def send(self, text: str) -> bool:
        """Queue a text frame; False when the peer's backlog is full (nothing was queued)."""
        if self.closing:
            return True  # the call is ending: late frames are moot
        size = len(text)
        if self._chars + size > self._limit:
            return False
        self._chars += size
        self._out.append(text)
        wake = self._wake
        if wake is not None:
            self._wake = None
            wake.set_result(None)
        return True

    @property
    def backlog_chars(self) -> int:
        return self._chars

    def close(self, code: int = 1000) -> None:
        """Close after the frames already queued."""
        if self.closing:
            return
        self.closing = True
        self._close_code = code
        self._out.append(_CLOSE)
        wake = self._wake
        if wake is not None:
            self._wake = None
            wake.set_result(None)

    async def aclose(self, timeout_s: float = 2.0) -> None:
        """Close and wait (bounded) for the writer to finish."""
        self.close()
        writer = self._writer
        if writer is not None:
            try:
                await asyncio.wait_for(asyncio.shield(writer), timeout_s)
            except TimeoutError:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer

    async def _write(self) -> None:
        out, send = self._out, self._send
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not out:
                    self._wake = loop.create_future()
                    await self._wake
                    continue
                item = out.popleft()
                if item is _CLOSE:
                    if self.open:
                        await send({"type": "websocket.close", "code": self._close_code})
                    return
                self._chars -= len(item)
                await send({"type": "websocket.send", "text": item})
        except Exception:  # the peer is gone: the receive side reports the disconnect
            out.clear()
            self._chars = 0
        finally:
            self.open = False
