"""The Twilio side of a ``<Connect><Stream>`` bidirectional Media Stream, as a WebSocket client.

``FakeTwilioCall`` connects to the bridge's ``/media-stream`` over a real loopback socket and
behaves like Twilio's media server (PROTOCOL.md section 1):

* sends ``connected`` then ``start`` in Twilio's exact shape, then a ``media`` frame every
  20 ms in real time (drift-corrected), carrying silence unless the test queued speech with
  ``say()``;
* plays the bridge's outbound audio at 8 bytes/ms in real time (``heard``), echoes ``mark``s
  only once all audio before them has played (at once when nothing is queued), and on
  ``clear`` drops queued audio and echoes every pending mark at once;
* validates every message from the bridge against Twilio's rules (JSON text only, known event,
  exact fields, matching ``streamSid``, valid non-empty base64 payload) and records breaches in
  ``violations`` instead of failing, since Twilio only logs a warning and ignores the message;
* keeps a timeline ``events`` of ``(loop_time, kind, details)`` and offers awaitable
  conditions so tests never sleep to synchronise.
"""

# Waiting helpers take ``timeout=`` on purpose: tests read better as ``wait_for_x(timeout=5)``.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.fakes.audio import BYTES_PER_MS, FRAME_BYTES, FRAME_MS, MULAW_SILENCE
from tests.fakes.watch import Watch

OUTBOUND_FIELDS: dict[str, tuple[set[str], str | None, set[str]]] = {
    # event: (top-level keys, nested object key, nested keys)
    "media": ({"event", "streamSid", "media"}, "media", {"payload"}),
    "mark": ({"event", "streamSid", "mark"}, "mark", {"name"}),
    "clear": ({"event", "streamSid"}, None, set()),
}
"""The only messages a server may send on a bidirectional stream, with their exact fields."""

Event = tuple[float, str, dict[str, Any]]

_WS_LOGGER = logging.getLogger("tests.fakes.twilio_caller.websockets")
# websockets logs every frame and header at DEBUG; keep the fake's own traffic out of the
# logs that tests capture (the timeline in ``events`` is the record of what happened).
_WS_LOGGER.setLevel(logging.WARNING)


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


@dataclass
class _Mark:
    name: str


class FakeTwilioCall:
    """One phone call's media stream, as Twilio would run it against the bridge.

    ``async with FakeTwilioCall(url) as call: await call.start(); await call.say(audio)``.
    Exiting the context closes the socket without ``stop`` if still open (use ``hangup()``
    for a caller hang-up).
    """

    def __init__(
        self,
        url: str,
        *,
        call_sid: str | None = None,
        account_sid: str | None = None,
        stream_sid: str | None = None,
        custom_parameters: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        open_timeout: float = 5.0,
        compression: str | None = "deflate",
        keep_sent_media: bool = True,
    ) -> None:
        self.url = url
        self.call_sid = call_sid or _sid("CA")
        self.account_sid = account_sid or _sid("AC")
        self.stream_sid = stream_sid or _sid("MZ")
        self.custom_parameters = dict(custom_parameters or {})
        self.headers = dict(headers or {})
        self.open_timeout = open_timeout
        self.compression = compression
        """Offered to the server (``"deflate"``, like a default client), or None."""
        self.keep_sent_media = keep_sent_media
        """False: ``sent_messages`` omits media frames (long load runs send 50 a second)."""
        self.ws: ClientConnection | None = None

        self.sent_messages: list[dict[str, Any]] = []
        """Every JSON message sent to the bridge (media payloads included)."""
        self.sent_audio = bytearray()
        """All caller audio sent in ``media`` messages (silence and speech)."""
        self.received_messages: list[Any] = []
        """Every frame from the bridge, JSON-decoded when possible."""
        self.received_audio = bytearray()
        """All outbound audio the bridge sent, whether or not it was played."""
        self.heard = bytearray()
        """Audio actually played to the caller (cleared audio never gets here)."""
        self.marks_received: list[str] = []
        self.marks_echoed: list[tuple[str, str]] = []
        """``(name, how)`` for each echo, ``how`` in ``played|immediate|cleared``."""
        self.marks_cleared: list[str] = []
        self.clears = 0
        self.heard_bytes_at_clear: list[int] = []
        self.cleared_bytes: list[int] = []
        """Queued-but-unplayed bytes dropped by each clear."""
        self.violations: list[str] = []
        self.events: list[Event] = []
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.closed = asyncio.Event()
        self.started = False
        self.discarded_at_close = 0
        self.hold_clear_echoes = False
        """When true, the echoes of the next ``clear`` wait for ``release_clear_echoes()``."""
        self.held_clear_echoes: list[str] = []
        """Queued outbound audio that was never played because the stream closed."""

        self._seq = 0
        self._chunk = 0
        self._queue: deque[bytearray | _Mark] = deque()
        self._queued_bytes = 0
        self._audio_ready = asyncio.Event()
        self._say_queue: deque[tuple[memoryview, asyncio.Future[None]]] = deque()
        self._tasks: list[asyncio.Task[None]] = []
        self._send_lock = asyncio.Lock()
        self._watch = Watch()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._hung_up = False

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> FakeTwilioCall:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the WebSocket (Twilio's upgrade request, with the configured headers)."""
        self._loop = asyncio.get_running_loop()
        self.ws = await connect(
            self.url,
            additional_headers=self.headers,
            open_timeout=self.open_timeout,
            max_size=None,
            compression=self.compression,
            logger=_WS_LOGGER,
        )
        self._record("connected", url=self.url)
        self._spawn(self._receive_loop(), "receive")
        self._spawn(self._playout_loop(), "playout")

    async def start(self, *, stream_audio: bool = True) -> None:
        """Send ``connected`` and ``start``; then stream caller audio every 20 ms."""
        await self._send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await self._send(
            {
                "event": "start",
                "sequenceNumber": self._next_seq(),
                "streamSid": self.stream_sid,
                "start": {
                    "accountSid": self.account_sid,
                    "streamSid": self.stream_sid,
                    "callSid": self.call_sid,
                    "tracks": ["inbound"],
                    "customParameters": dict(self.custom_parameters),
                    "mediaFormat": {
                        "encoding": "audio/x-mulaw",
                        "sampleRate": 8000,
                        "channels": 1,
                    },
                },
            }
        )
        self.started = True
        if stream_audio:
            self._spawn(self._media_loop(), "media")

    async def say(self, audio: bytes) -> None:
        """Queue caller audio; returns once all of it has been sent in real-time frames."""
        if not self.started:
            raise RuntimeError("call.say() before call.start()")
        if self.closed.is_set():
            raise ConnectionError("call.say() on a closed media stream")
        if not any(t.get_name() == "twilio-call-media" and not t.done() for t in self._tasks):
            raise RuntimeError("call.say() needs start(stream_audio=True)")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._say_queue.append((memoryview(bytes(audio)), fut))
        self._record("say", bytes=len(audio))
        await fut

    async def send_dtmf(self, digit: str) -> None:
        """Send a ``dtmf`` key press (bidirectional streams only)."""
        await self._send(
            {
                "event": "dtmf",
                "streamSid": self.stream_sid,
                "sequenceNumber": self._next_seq(),
                "dtmf": {"track": "inbound_track", "digit": digit},
            }
        )

    async def send_raw(self, data: str | bytes) -> None:
        """Send an arbitrary frame (for bad-input tests)."""
        assert self.ws is not None
        await self.ws.send(data)
        self._record("sent_raw", data=data)

    async def hangup(self) -> None:
        """The caller hangs up: Twilio sends ``stop`` and closes the socket."""
        self._hung_up = True
        await self._stop_media()
        with contextlib.suppress(ConnectionClosed):
            await self._send(
                {
                    "event": "stop",
                    "sequenceNumber": self._next_seq(),
                    "streamSid": self.stream_sid,
                    "stop": {"accountSid": self.account_sid, "callSid": self.call_sid},
                }
            )
        await self.close()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the socket without ``stop`` and stop all background tasks."""
        await self._stop_media()
        if self.ws is not None:
            await self.ws.close(code, reason)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._fail_pending_says()
        if not self.closed.is_set() and self.ws is not None:
            self._on_closed()

    # ------------------------------------------------------------------ waiting helpers

    async def wait_for_heard(self, n_bytes: int, timeout: float = 5.0) -> int:
        """Wait until at least ``n_bytes`` of bridge audio have been played; return heard."""
        return await self._watch.wait(
            lambda: len(self.heard) if len(self.heard) >= n_bytes else None,
            timeout,
            f"{n_bytes} bytes heard (have {len(self.heard)})",
        )

    async def wait_for_received(self, n_bytes: int, timeout: float = 5.0) -> int:
        """Wait until at least ``n_bytes`` of outbound audio have arrived from the bridge."""
        return await self._watch.wait(
            lambda: len(self.received_audio) if len(self.received_audio) >= n_bytes else None,
            timeout,
            f"{n_bytes} bytes received",
        )

    async def wait_for_event(
        self,
        kind: str,
        timeout: float = 5.0,
        *,
        predicate: Callable[[dict[str, Any]], bool] | None = None,
        count: int = 1,
    ) -> Event:
        """Return the ``count``-th timeline event of ``kind`` (matching ``predicate``)."""

        def check() -> Event | None:
            n = 0
            for ev in self.events:
                if ev[1] == kind and (predicate is None or predicate(ev[2])):
                    n += 1
                    if n == count:
                        return ev
            return None

        return await self._watch.wait(check, timeout, f"call event {kind!r} #{count}")

    async def wait_for_clear(self, timeout: float = 5.0, count: int = 1) -> Event:
        """Wait for the ``count``-th ``clear`` from the bridge."""
        return await self.wait_for_event("clear", timeout, count=count)

    async def wait_for_mark_echo(self, name: str, timeout: float = 5.0) -> Event:
        """Wait until the mark ``name`` has been echoed (played, immediate or cleared)."""
        return await self.wait_for_event(
            "mark_echoed", timeout, predicate=lambda d: d["name"] == name
        )

    async def wait_for_playout_idle(self, timeout: float = 5.0) -> int:
        """Wait until nothing is queued for playout; return the heard byte count."""
        return await self._watch.wait(
            lambda: len(self.heard) if not self._queue else None, timeout, "playout idle"
        )

    async def wait_until(self, pred: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Wait until ``pred()`` is not None/False; re-checked on every timeline event."""
        return await self._watch.wait(pred, timeout, "condition")

    async def wait_closed(self, timeout: float = 5.0) -> int | None:
        """Wait until the socket is closed (by either side); return the close code."""
        try:
            await asyncio.wait_for(self.closed.wait(), timeout)
        except TimeoutError:
            raise TimeoutError(f"media stream not closed after {timeout}s") from None
        return self.close_code

    @property
    def queued_bytes(self) -> int:
        """Audio received from the bridge and not yet played."""
        return self._queued_bytes

    def events_of(self, kind: str) -> list[Event]:
        """Timeline events of one kind."""
        return [e for e in self.events if e[1] == kind]

    # ------------------------------------------------------------------ internals

    def _spawn(self, coro: Any, name: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=f"twilio-call-{name}"))

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _record(self, kind: str, **details: Any) -> None:
        self.events.append((self._now(), kind, details))
        self._watch.notify()

    def _next_seq(self) -> str:
        self._seq += 1
        return str(self._seq)

    async def _send(self, msg: dict[str, Any]) -> None:
        assert self.ws is not None
        async with self._send_lock:
            await self.ws.send(json.dumps(msg))
        if msg["event"] != "media":
            self.sent_messages.append(msg)
            self._record("sent", event=msg["event"], msg=msg)
        elif self.keep_sent_media:
            self.sent_messages.append(msg)

    async def _stop_media(self) -> None:
        media = [t for t in self._tasks if t.get_name() == "twilio-call-media"]
        for task in media:
            task.cancel()
        await asyncio.gather(*media, return_exceptions=True)

    def _fail_pending_says(self) -> None:
        while self._say_queue:
            _, fut = self._say_queue.popleft()
            if not fut.done():
                fut.set_exception(ConnectionError("call ended before the audio was sent"))

    async def _media_loop(self) -> None:
        """Send one 160-byte frame every 20 ms, frame n due at t0 + n * 20 ms."""
        t0 = self._now()
        n = 0
        try:
            while True:
                delay = t0 + n * FRAME_MS / 1000 - self._now()
                if delay > 0:
                    await asyncio.sleep(delay)
                frame, finished = self._next_frame()
                self._chunk += 1
                await self._send(
                    {
                        "event": "media",
                        "sequenceNumber": self._next_seq(),
                        "streamSid": self.stream_sid,
                        "media": {
                            "track": "inbound",
                            "chunk": str(self._chunk),
                            "timestamp": str(n * FRAME_MS),
                            "payload": base64.b64encode(frame).decode(),
                        },
                    }
                )
                self.sent_audio.extend(frame)
                for fut in finished:
                    if not fut.done():
                        fut.set_result(None)
                        self._record("say_done", sent_bytes=len(self.sent_audio))
                n += 1
        except ConnectionClosed:
            self._fail_pending_says()

    def _next_frame(self) -> tuple[bytes, list[asyncio.Future[None]]]:
        """Next 160 bytes from the say() queue, padded with silence; futures now complete."""
        frame = bytearray()
        finished: list[asyncio.Future[None]] = []
        while len(frame) < FRAME_BYTES and self._say_queue:
            view, fut = self._say_queue[0]
            take = FRAME_BYTES - len(frame)
            frame.extend(view[:take])
            if len(view) <= take:
                self._say_queue.popleft()
                finished.append(fut)
            else:
                self._say_queue[0] = (view[take:], fut)
        frame.extend(bytes([MULAW_SILENCE]) * (FRAME_BYTES - len(frame)))
        return bytes(frame), finished

    async def _receive_loop(self) -> None:
        assert self.ws is not None
        try:
            async for message in self.ws:
                await self._on_message(message)
        except ConnectionClosed:
            pass
        finally:
            self._on_closed()

    def _on_closed(self) -> None:
        if self.closed.is_set():
            return
        assert self.ws is not None
        self.close_code = self.ws.close_code
        self.close_reason = self.ws.close_reason
        self.closed.set()
        self._fail_pending_says()
        # The stream is over: Twilio moves on to the next TwiML and plays nothing more.
        self.discarded_at_close = self._queued_bytes
        self._queue.clear()
        self._queued_bytes = 0
        self._record(
            "closed",
            code=self.close_code,
            reason=self.close_reason,
            by="caller" if self._hung_up else "unknown",
        )

    def _violation(self, text: str) -> None:
        self.violations.append(text)
        self._record("violation", text=text)

    async def _on_message(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            self.received_messages.append(message)
            self._violation(f"binary frame of {len(message)} bytes (Twilio 31950)")
            return
        try:
            msg = json.loads(message)
        except ValueError:
            self.received_messages.append(message)
            self._violation(f"non-JSON text frame {message[:80]!r} (Twilio 31951)")
            return
        self.received_messages.append(msg)
        problem = self._check(msg)
        if problem is not None:
            self._violation(f"{problem}: {message[:200]} (Twilio 31951)")
            return
        event = msg["event"]
        if event == "media":
            audio = base64.b64decode(msg["media"]["payload"])
            self.received_audio.extend(audio)
            if self._queue and isinstance(self._queue[-1], bytearray):
                self._queue[-1].extend(audio)
            else:
                self._queue.append(bytearray(audio))
            self._queued_bytes += len(audio)
            self._audio_ready.set()
            self._record("media", bytes=len(audio), queued=self._queued_bytes)
        elif event == "mark":
            name = msg["mark"]["name"]
            self.marks_received.append(name)
            self._record("mark", name=name, queued=self._queued_bytes)
            if not self._queue:
                await self._echo_mark(name, "immediate")
            else:
                self._queue.append(_Mark(name))
        elif event == "clear":
            await self._clear()

    def _check(self, msg: Any) -> str | None:
        """Twilio's validation of a server message; the reason it is invalid, or None."""
        if not isinstance(msg, dict):
            return "message is not a JSON object"
        event = msg.get("event")
        if event not in OUTBOUND_FIELDS:
            return f"unknown event {event!r}"
        top, nested, nested_keys = OUTBOUND_FIELDS[event]
        if set(msg) != top:
            return f"{event}: fields {sorted(msg)} != {sorted(top)}"
        if not self.started:
            return f"{event} before the stream started"
        if msg["streamSid"] != self.stream_sid:
            return f"{event}: wrong streamSid {msg['streamSid']!r}"
        if nested is not None:
            inner = msg[nested]
            if not isinstance(inner, dict) or set(inner) != nested_keys:
                return f"{event}.{nested}: expected exactly {sorted(nested_keys)}"
        if event == "media":
            payload = msg["media"]["payload"]
            if not isinstance(payload, str):
                return "media.payload is not a string"
            try:
                audio = base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError):
                return "media.payload is not valid base64"
            if not audio:
                return "media.payload is empty"
        if event == "mark":
            name = msg["mark"]["name"]
            if not isinstance(name, str) or not name:
                return "mark.name must be a non-empty string"
        return None

    async def _echo_mark(self, name: str, how: str) -> None:
        self.marks_echoed.append((name, how))
        if how == "cleared":
            self.marks_cleared.append(name)
        self._record("mark_echoed", name=name, how=how, heard=len(self.heard))
        with contextlib.suppress(ConnectionClosed):
            await self._send(
                {
                    "event": "mark",
                    "sequenceNumber": self._next_seq(),
                    "streamSid": self.stream_sid,
                    "mark": {"name": name},
                }
            )

    async def _clear(self) -> None:
        dropped = self._queued_bytes
        pending = [m.name for m in self._queue if isinstance(m, _Mark)]
        self._queue.clear()
        self._queued_bytes = 0
        self._audio_ready.clear()
        self.clears += 1
        self.heard_bytes_at_clear.append(len(self.heard))
        self.cleared_bytes.append(dropped)
        self._record("clear", heard=len(self.heard), dropped=dropped, pending_marks=pending)
        if self.hold_clear_echoes:
            # The echoes this clear causes arrive late: when the test releases them.
            self.held_clear_echoes.extend(pending)
            return
        for name in pending:
            await self._echo_mark(name, "cleared")

    async def release_clear_echoes(self) -> list[str]:
        """Send the echoes held back by ``hold_clear_echoes`` (in order); returns their names."""
        names, self.held_clear_echoes = self.held_clear_echoes, []
        self.hold_clear_echoes = False
        for name in names:
            await self._echo_mark(name, "cleared")
        return names

    async def _playout_loop(self) -> None:
        """Play queued audio in real time: 160 bytes complete every 20 ms while busy.

        The clock starts when audio arrives in an empty queue; a frame counts as heard once
        its 20 ms have elapsed, and marks are echoed as soon as everything before them is heard.
        """
        while True:
            await self._audio_ready.wait()
            t0 = self._now()
            n = 0
            while self._queue:
                n += 1
                delay = t0 + n * FRAME_MS / 1000 - self._now()
                if delay > 0:
                    await asyncio.sleep(delay)
                budget = FRAME_BYTES
                played = 0
                while self._queue:
                    head = self._queue[0]
                    if isinstance(head, _Mark):
                        # Everything before this mark has now been heard.
                        self._queue.popleft()
                        if played:
                            self._record("played", bytes=played, heard=len(self.heard))
                            played = 0
                        await self._echo_mark(head.name, "played")
                        continue
                    if budget == 0:
                        break
                    take = min(budget, len(head))
                    self.heard.extend(head[:take])
                    del head[:take]
                    budget -= take
                    played += take
                    self._queued_bytes -= take
                    if not head:
                        self._queue.popleft()
                if played:
                    self._record("played", bytes=played, heard=len(self.heard))
            self._audio_ready.clear()
            self._watch.notify()


__all__ = ["BYTES_PER_MS", "FakeTwilioCall"]
