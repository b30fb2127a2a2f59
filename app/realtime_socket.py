"""The Realtime socket: a transport seam, and the websocket it is in production.

The bridge never opens a socket itself: it asks a `RealtimeTransport` for a
`RealtimeLink` (after httpx's `BaseTransport`), so it can be driven in-process by a test
double as well as over real sockets. A link delivers each message to a `Receiver` by
callback, in order, as it is read (no queue, no task per message), and sends without ever
blocking: a slow peer never stalls the call's other leg.

`WebsocketTransport` is the production link: the `websockets` client (TLS, proxies,
redirects, keepalive) with the GA handshake: `Authorization: Bearer <key>` and nothing else
(an `OpenAI-Beta` header now gets the session closed). Transient failures (refused
connections, timeouts, 5xx, 429) are retried with a short backoff, but never past the
deadline: the caller is listening to silence meanwhile, and the contract allows them at
most 5 s of it. Authentication and "not found" answers are final at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.protocol import State

try:  # the library's C masking (its pure-Python fallback otherwise)
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask

#: Server events can be large (a full session, a long transcript); audio deltas are small.
#: The default of REALTIME_MAX_FRAME_BYTES; a bigger message closes the link (1009).
MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024
_BACKOFF_S: Final = (0.15, 0.4, 0.8)
_FINAL_STATUSES: Final = frozenset({400, 401, 403, 404})

#: A Realtime peer that stops answering (half-open TCP, a black-holed route) is noticed
#: by keepalive pings: no pong within PING_TIMEOUT_S of a ping sent every PING_INTERVAL_S
#: closes the socket (after at most CLOSE_TIMEOUT_S of closing handshake), and the call's
#: media stream with it: about 3.3 s in the worst case, inside the contract's 5 s of
#: silence. The library defaults (20 s + 20 s + 10 s) would leave ~50 s of silence.
PING_INTERVAL_S: Final = 1.0
PING_TIMEOUT_S: Final = 2.0
CLOSE_TIMEOUT_S: Final = 0.25

#: Caller audio is dropped (never queued) while this much is waiting to be written to a
#: peer that doesn't read: about 20 s of appends. Control events are always written; a
#: peer that stays stalled doesn't answer the keepalive's pings and is closed by it (the
#: library's own writes never wait for the buffer to drain: `_Connection.drain`).
AUDIO_BACKLOG_BYTES: Final = 256 * 1024

#: No permessage-deflate: base64 mu-law barely compresses, and deflate cost 15-25 % more
#: CPU and twice the memory per call.

#: The websockets library logs the upgrade request's headers at DEBUG, bearer token
#: included. Its logger for our connections never goes below INFO, whatever LOG_LEVEL is.
_WS_LOGGER = logging.getLogger("app.realtime_socket.websockets")
_WS_LOGGER.setLevel(logging.INFO)


class RealtimeUnavailable(Exception):
    """The Realtime socket could not be opened in time; the message says why (no secrets)."""


class Receiver(Protocol):
    """Who gets a link's messages (the bridge)."""

    def frame(self, data: bytes, text: bool) -> None:
        """One whole message: UTF-8 JSON when `text`, else a binary frame."""

    def closed(self, code: int | None, reason: str) -> None:
        """The link is closed (whoever closed it); nothing follows."""


class RealtimeLink(Protocol):
    """An open Realtime connection, as the bridge uses it."""

    def start(self, receiver: Receiver) -> None:
        """Deliver messages to `receiver` from now on (those that arrived since the link
        opened first, in order)."""

    def send(self, data: bytes) -> None:
        """Send one text frame; never blocks (dropped silently once the link is closing)."""

    def send_audio(self, data: bytes) -> bool:
        """Like `send`, but dropped (False) while the peer is not reading its backlog."""

    def close(self) -> None:
        """Start the closing handshake; `Receiver.closed` follows."""

    async def aclose(self) -> None:
        """Close, and wait (briefly: a stalled peer is aborted) until it is closed."""


class RealtimeTransport(Protocol):
    """Opens links: the seam between the bridge and the Realtime service."""

    def open(self, timeout_s: float) -> Awaitable[RealtimeLink]:
        """A link within `timeout_s`, or raise `RealtimeUnavailable`."""


@dataclass(frozen=True, slots=True)
class RealtimeEndpoint:
    """Where and how to connect. The key never appears in repr or logs."""

    url: str
    api_key: str = field(repr=False)
    #: The largest message accepted from the service (checked by the websocket library
    #: as frames arrive, before a message is assembled).
    max_message_bytes: int = MAX_MESSAGE_BYTES


class _Connection(ClientConnection):
    """A websockets client connection that hands each message to a receiver callback
    instead of queueing it for `recv()`. (`create_connection` is the library's documented
    hook for such subclasses; `process_event` and `connection_lost` are where frames and
    the end arrive.)"""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.receiver: Receiver | None = None
        self.early: list[tuple[bytes, bool]] = []
        self.gone: tuple[int | None, str] | None = None
        self._parts: list[bytes] = []
        self._text = True

    def process_event(self, event: Any) -> None:
        if self.response is None or not isinstance(event, Frame):
            super().process_event(event)  # the handshake response
            return
        opcode = event.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            self._text = opcode is Opcode.TEXT
            if event.fin:
                self._deliver(bytes(event.data), self._text)
            else:
                self._parts = [bytes(event.data)]
        elif opcode is Opcode.CONT:
            self._parts.append(bytes(event.data))
            if event.fin:
                data, self._parts = b"".join(self._parts), []
                self._deliver(data, self._text)
        else:
            super().process_event(event)  # pongs acknowledge the keepalive's pings

    async def drain(self) -> None:
        """Never wait for the write buffer (the library awaits this after each of its own
        writes: pings, pongs, the closing handshake). Waiting would hold the keepalive's
        ping back exactly when the peer has stopped reading, so its pong timeout would
        never start and a stalled link would never close; our data frames bound themselves
        (`send_audio`)."""
        return

    def _deliver(self, data: bytes, text: bool) -> None:
        receiver = self.receiver
        if receiver is None:
            self.early.append((data, text))  # before `start`: kept, in order
        else:
            receiver.frame(data, text)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.gone = (self.close_code, self.close_reason or "")
        if self.receiver is not None:
            self.receiver.closed(*self.gone)


def client_text_frame(payload: bytes, mask: bytes) -> bytes:
    """One unfragmented, masked text frame (RFC 6455 5.2: a client masks every frame).

    The library's `send_text` costs about 5.5 us a frame (a frame object, a system call
    for each masking key, the output buffer); this is 1 us, and caller audio is 50 frames
    a second per call. A test checks every length class against the library's own parser.
    """
    n = len(payload)
    if n < 126:
        head = bytes((0x81, 0x80 | n))
    elif n < 65536:
        head = b"\x81\xfe" + n.to_bytes(2, "big")
    else:
        head = b"\x81\xff" + n.to_bytes(8, "big")
    return head + mask + apply_mask(payload, mask)


#: Masking keys are drawn from the OS's strong random source, this many bytes at a time.
_MASK_POOL_BYTES: Final = 4096


class _WebsocketLink:
    """`RealtimeLink` over one `_Connection`: data frames are framed here and written
    straight to its transport; pings, pongs and the closing handshake stay the library's."""

    __slots__ = ("_closing", "_conn", "_masks", "_next_mask", "_protocol", "_transport")

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self._protocol = conn.protocol
        self._transport = conn.transport
        self._closing: asyncio.Task[None] | None = None
        self._masks = os.urandom(_MASK_POOL_BYTES)
        self._next_mask = 0

    def start(self, receiver: Receiver) -> None:
        conn = self._conn
        conn.receiver = receiver
        early, conn.early = conn.early, []
        for data, text in early:
            receiver.frame(data, text)
        if conn.gone is not None:
            receiver.closed(*conn.gone)

    def send(self, data: bytes) -> None:
        if self._protocol.state is not State.OPEN:
            return  # closing: the receiver hears of the close
        i = self._next_mask
        if i == _MASK_POOL_BYTES:
            self._masks, i = os.urandom(_MASK_POOL_BYTES), 0
        self._next_mask = i + 4
        self._transport.write(client_text_frame(data, self._masks[i : i + 4]))

    def send_audio(self, data: bytes) -> bool:
        if self._conn.paused:  # the write buffer is over AUDIO_BACKLOG_BYTES
            return False
        self.send(data)
        return True

    def close(self) -> None:
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())

    async def aclose(self) -> None:
        self.close()
        assert self._closing is not None
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        try:
            await asyncio.wait_for(self._conn.close(), timeout=1.5)
        except Exception:  # the transport is gone either way
            self._transport.abort()


class WebsocketTransport:
    """Links over the `websockets` client to `endpoint`."""

    def __init__(self, endpoint: RealtimeEndpoint) -> None:
        self.endpoint = endpoint

    def __repr__(self) -> str:
        return f"WebsocketTransport({self.endpoint.url!r})"

    async def open(self, timeout_s: float) -> RealtimeLink:
        """Connect, retrying transient failures, and give up after `timeout_s` in all."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        headers = {"Authorization": f"Bearer {self.endpoint.api_key}"}
        make: Callable[..., ClientConnection] = _Connection
        reason = "timeout"
        for attempt in range(len(_BACKOFF_S) + 1):
            remaining = deadline - loop.time()
            if remaining <= 0.05:
                break
            try:
                async with asyncio.timeout(remaining):
                    conn = await connect(
                        self.endpoint.url,
                        additional_headers=headers,
                        open_timeout=None,
                        ping_interval=PING_INTERVAL_S,
                        ping_timeout=PING_TIMEOUT_S,
                        close_timeout=CLOSE_TIMEOUT_S,
                        compression=None,
                        max_size=self.endpoint.max_message_bytes,
                        write_limit=AUDIO_BACKLOG_BYTES,
                        user_agent_header="twilio-realtime-bridge",
                        logger=_WS_LOGGER,
                        create_connection=make,  # type: ignore[arg-type]
                    )
                    assert isinstance(conn, _Connection)
                    return _WebsocketLink(conn)
            except InvalidStatus as exc:
                status = exc.response.status_code
                reason = f"http_{status}"
                if status in _FINAL_STATUSES:
                    raise RealtimeUnavailable(reason) from None
            except TimeoutError:
                reason = "timeout"
            except (OSError, InvalidHandshake) as exc:
                reason = type(exc).__name__
            if attempt < len(_BACKOFF_S):
                await asyncio.sleep(min(_BACKOFF_S[attempt], max(0.0, deadline - loop.time())))
        raise RealtimeUnavailable(reason)
