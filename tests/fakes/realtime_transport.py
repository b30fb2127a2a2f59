"""In-process doubles for the bridge's two sockets (after httpx's `MockTransport`).

* `MockTransport` / `ScriptedLink`: the Realtime seam (`app.realtime_socket`). What the
  bridge sends is parsed and kept; the test pushes server events, which reach the bridge
  exactly as a real link delivers them (serialised, by callback, in order).
* `AsgiWebsocket`: the Twilio side as the ASGI server hands it to the media-stream
  handler (`receive` / `send` callables), with the frames the bridge sent kept.

No sockets, no threads: a whole call runs on the test's own event loop.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import orjson

from app.realtime_socket import RealtimeLink, RealtimeUnavailable, Receiver


class ScriptedLink:
    """A `RealtimeLink` whose far end is the test."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.receiver: Receiver | None = None
        self.closed = False
        #: While True, audio is refused as by a peer that doesn't read its backlog.
        self.paused = False
        self.started = asyncio.Event()
        self._changed = asyncio.Event()

    # -- RealtimeLink -----------------------------------------------------------------

    def start(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.started.set()

    def send(self, data: bytes) -> None:
        if not self.closed:
            self.sent.append(orjson.loads(data))
            self._changed.set()

    def send_audio(self, data: bytes) -> bool:
        if self.paused:
            return False
        self.send(data)
        return True

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._changed.set()
        receiver = self.receiver
        if receiver is not None:  # as a real link does: from the loop, not from the caller
            asyncio.get_running_loop().call_soon(receiver.closed, 1000, "")

    async def aclose(self) -> None:
        self.close()

    # -- the test's side ------------------------------------------------------------------

    def push(self, event: dict[str, Any]) -> None:
        """The service sends `event`."""
        assert self.receiver is not None, "the bridge hasn't started the link yet"
        self.receiver.frame(orjson.dumps(event), True)

    def push_raw(self, data: bytes, text: bool = True) -> None:
        assert self.receiver is not None
        self.receiver.frame(data, text)

    def drop(self, code: int = 1006) -> None:
        """The service goes away."""
        self.closed = True
        assert self.receiver is not None
        self.receiver.closed(code, "")

    def types(self) -> list[str]:
        return [e["type"] for e in self.sent]

    async def wait_for(self, kind: str, count: int = 1, within: float = 5.0) -> dict[str, Any]:
        """The `count`-th client event of type `kind` (waits for it)."""
        async with asyncio.timeout(within):
            while True:
                found = [e for e in self.sent if e["type"] == kind]
                if len(found) >= count:
                    return found[count - 1]
                self._changed.clear()
                await self._changed.wait()


class MockTransport:
    """Opens `ScriptedLink`s at once, or fails with `fail` (a RealtimeUnavailable reason)."""

    def __init__(self, fail: str | None = None) -> None:
        self.fail = fail
        self.links: list[ScriptedLink] = []
        self._opened = asyncio.Event()

    async def open(self, timeout_s: float) -> RealtimeLink:
        if self.fail is not None:
            raise RealtimeUnavailable(self.fail)
        link = ScriptedLink()
        self.links.append(link)
        self._opened.set()
        return link

    async def link(self, within: float = 5.0) -> ScriptedLink:
        """The first link the bridge opened, once it is started."""
        async with asyncio.timeout(within):
            await self._opened.wait()
            await self.links[0].started.wait()
        return self.links[0]


class AsgiWebsocket:
    """The ASGI server's side of one media-stream websocket, driven by the test."""

    def __init__(self, headers: dict[str, str] | None = None) -> None:
        self.incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.outgoing: list[dict[str, Any]] = []
        self.incoming.put_nowait({"type": "websocket.connect"})
        self.headers = {"host": "bridge.example.com", **(headers or {})}
        #: While cleared, `send` blocks, as for a peer whose TCP window is shut.
        self.writable = asyncio.Event()
        self.writable.set()
        #: Once True, `send` raises as the server's does for a client that has gone.
        self.gone = False
        self._changed = asyncio.Event()
        self._waiting = asyncio.Event()

    @property
    def scope(self) -> dict[str, Any]:
        return {
            "type": "websocket",
            "path": "/media-stream",
            "scheme": "wss",
            "headers": [(k.lower().encode(), v.encode()) for k, v in self.headers.items()],
        }

    async def receive(self) -> dict[str, Any]:
        if self.incoming.empty():
            self._waiting.set()  # the handler has dealt with everything sent so far
        message = await self.incoming.get()
        self._waiting.clear()
        return message

    async def send(self, message: dict[str, Any]) -> None:
        if self.gone:
            raise OSError("client disconnected")
        await self.writable.wait()
        self.outgoing.append(message)
        if message["type"] == "websocket.close":
            self.incoming.put_nowait({"type": "websocket.disconnect", "code": 1000})
        self._changed.set()

    # -- the test's side ------------------------------------------------------------------

    def client_send(self, msg: dict[str, Any] | str | bytes) -> None:
        if isinstance(msg, bytes):
            self.incoming.put_nowait({"type": "websocket.receive", "bytes": msg})
            return
        text = msg if isinstance(msg, str) else json.dumps(msg)
        self.incoming.put_nowait({"type": "websocket.receive", "text": text})

    def client_close(self) -> None:
        self.incoming.put_nowait({"type": "websocket.disconnect", "code": 1005})

    async def handled(self, within: float = 5.0) -> None:
        """Wait until the handler has read (and so dealt with) every frame sent so far."""
        async with asyncio.timeout(within):
            while not (self.incoming.empty() and self._waiting.is_set()):
                self._waiting.clear()
                await self._waiting.wait()

    def frames(self) -> list[dict[str, Any]]:
        """The text frames the bridge sent, parsed."""
        return [json.loads(m["text"]) for m in self.outgoing if m["type"] == "websocket.send"]

    @property
    def accepted(self) -> bool:
        return any(m["type"] == "websocket.accept" for m in self.outgoing)

    @property
    def closed(self) -> bool:
        return any(m["type"] == "websocket.close" for m in self.outgoing)

    async def wait_until(self, check: Any, within: float = 5.0) -> None:
        async with asyncio.timeout(within):
            while not check():
                self._changed.clear()
                await self._changed.wait()
