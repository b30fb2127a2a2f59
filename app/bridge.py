"""The asyncio layer around one `CallSession`: two sockets, timers, nothing else.

Everything that happens on a call goes through one inbox and is handled by one task,
in arrival order: Twilio frames (read by one task), Realtime events (read by another),
timer expiries and socket lifecycle events. That task feeds each input to the core and
carries out the actions it returns, in order, before taking the next input. So the call
is handled exactly as a replay of its recording would handle it, and nothing needs a
lock. Frames are parsed with `json.loads` once; audio stays base64 text throughout.

Teardown is total: whichever way a call ends, both sockets are closed, every task of the
call is cancelled and awaited, every timer is cancelled, and one `call.summary` line is
logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from starlette.websockets import WebSocket, WebSocketState
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from app.call.actions import (
    Action,
    CancelTimer,
    CloseRealtime,
    CloseTwilio,
    ConnectRealtime,
    RestRequest,
    SetTimer,
    ToRealtime,
    ToTwilio,
)
from app.call.session import CallSession
from app.observability import bind_call, log_event
from app.protocol import realtime as rt
from app.protocol import twilio as tw
from app.protocol.twilio import MAX_INBOUND_CHARS
from app.realtime_socket import RealtimeEndpoint, RealtimeUnavailable, open_realtime
from app.recording import CallRecorder
from app.telephony import RestOutcome, Telephony

logger = logging.getLogger("app.bridge")

_loads = json.loads


class Bridge:
    """Pairs one Twilio media stream with one Realtime socket for the length of a call."""

    def __init__(
        self,
        twilio: WebSocket,
        session: CallSession,
        endpoint: RealtimeEndpoint,
        *,
        telephony: Telephony | None = None,
        verify_start: Callable[[dict[str, Any]], str | None] | None = None,
        recorder: CallRecorder | None = None,
        log_transcripts: bool = True,
    ) -> None:
        self.twilio = twilio
        self.session = session
        self.endpoint = endpoint
        self.telephony = telephony
        self.verify_start = verify_start
        self.recorder = recorder
        self.log_transcripts = log_transcripts
        self.realtime: ClientConnection | None = None
        self._loop = asyncio.get_running_loop()
        self._t0 = self._loop.time()
        self._inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        # name -> (handle, token): an expiry whose token is no longer current is stale.
        self._timers: dict[str, tuple[asyncio.TimerHandle, int]] = {}
        self._timer_tokens = 0
        self._twilio_open = True

    def shutdown(self) -> None:
        """The server is going away: end this call (Twilio plays the fallback TwiML)."""
        self._inbox.put_nowait(("shutdown", None))

    def now(self) -> float:
        """Call time in ms since the media stream opened."""
        return (self._loop.time() - self._t0) * 1000.0

    async def run(self) -> None:
        """Handle the call until it is over; never raises for the call's own failures."""
        self._spawn(self._read_twilio())
        try:
            await self._execute(self.session.opened(self.now()))
            while not self.session.done:
                kind, data = await self._inbox.get()
                now = self.now()
                actions = self._dispatch(kind, data, now)
                if self.recorder is not None:
                    self.recorder.record_actions(now, actions)
                await self._execute(actions)
        except Exception:
            logger.exception("bridge.crashed")
            self.session.end_reason = self.session.end_reason or "bridge_error"
        finally:
            await self._teardown()

    # -- inputs ---------------------------------------------------------------------------

    def _dispatch(self, kind: str, data: Any, now: float) -> list[Action]:
        """Turn one inbox entry into the recorded form of an input and feed it to the core."""
        s = self.session
        if kind == "timer":
            name, token = data
            current = self._timers.get(name)
            if current is None or current[1] != token:
                return []  # cancelled or re-armed after it had already expired
            del self._timers[name]
            return s.timer(now, name)
        if kind == "shutdown":
            return s.shutdown(now)
        if kind == "twilio":
            if self.verify_start is not None and data.get("event") == "start":
                refused = self.verify_start(data)
                if refused is not None:
                    fields = tw.start_fields(data)
                    if fields is not None:
                        bind_call(call_sid=fields[1], stream_sid=fields[0])
                    log_event(logger, logging.WARNING, "stream.refused", reason=refused)
                    if self.recorder is not None:
                        self.recorder.discard()  # not a call: nothing to replay
                        self.recorder = None
                    return s.refuse(now, refused)
            direction, msg = "from_twilio", data
        elif kind == "realtime":
            direction, msg = "from_openai", data
        elif kind == "twilio_bad":
            direction, msg = "from_twilio", {"_frame_error": data}
        elif kind == "realtime_bad":
            direction, msg = "from_openai", {"_frame_error": data}
        elif kind == "twilio_closed":
            self._twilio_open = False
            direction, msg = "from_twilio", {"_socket": "closed"}
        elif kind == "realtime_open":
            if s.done:
                self._spawn(data.close())
                return []
            self.realtime = data
            self._spawn(self._read_realtime(data))
            direction, msg = "from_openai", {"_socket": "open"}
        elif kind == "realtime_failed":
            direction, msg = "from_openai", {"_socket": "failed", "reason": data}
        elif kind == "realtime_closed":
            self.realtime = None
            code, reason = data
            direction, msg = "from_openai", {"_socket": "closed", "code": code, "reason": reason}
        elif kind == "rest_result":
            response = {"status": data.status, "code": data.code, "error": data.error}
            direction, msg = "rest", {"response": response}
        else:
            raise AssertionError(f"unknown inbox kind {kind}")
        if self.recorder is not None:
            self.recorder.record(now, direction, msg)
        actions = s.feed(now, direction, msg)
        if kind == "twilio" and data.get("event") == "start" and s.call_sid:
            bind_call(call_sid=s.call_sid, stream_sid=s.stream_sid)
        return actions

    async def _read_twilio(self) -> None:
        put = self._inbox.put_nowait
        try:
            while True:
                message = await self.twilio.receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                if text is None:
                    put(("twilio_bad", "binary_frame"))
                elif len(text) > MAX_INBOUND_CHARS:
                    put(("twilio_bad", "oversized_frame"))
                else:
                    try:
                        msg = _loads(text)
                    except ValueError:
                        put(("twilio_bad", "not_json"))
                        continue
                    if isinstance(msg, dict):
                        put(("twilio", msg))
                    else:
                        put(("twilio_bad", "not_an_object"))
        except Exception:  # a broken transport is a hang-up like any other
            pass
        put(("twilio_closed", None))

    async def _read_realtime(self, conn: ClientConnection) -> None:
        put = self._inbox.put_nowait
        code: int | None = None
        reason = ""
        try:
            async for frame in conn:
                if isinstance(frame, bytes):
                    put(("realtime_bad", "binary_frame"))
                    continue
                try:
                    event = _loads(frame)
                except ValueError:
                    put(("realtime_bad", "not_json"))
                    continue
                if isinstance(event, dict):
                    put(("realtime", event))
                else:
                    put(("realtime_bad", "not_an_object"))
        except ConnectionClosed:
            pass
        if conn.close_code is not None:
            code, reason = conn.close_code, conn.close_reason or ""
        put(("realtime_closed", (code, reason)))

    async def _connect_realtime(self) -> None:
        timeout_s = self.session.config.realtime_ready_timeout_ms / 1000.0
        try:
            conn = await open_realtime(self.endpoint, timeout_s)
        except RealtimeUnavailable as exc:
            self._inbox.put_nowait(("realtime_failed", str(exc)))
        else:
            self._inbox.put_nowait(("realtime_open", conn))

    async def _rest(self, request: RestRequest) -> None:
        if self.telephony is None:
            outcome = RestOutcome(0, None, "no_rest_credentials")
        else:
            outcome = await self.telephony.update_call(self.session.call_sid, request.params)
        self._inbox.put_nowait(("rest_result", outcome))

    # -- outputs --------------------------------------------------------------------------

    async def _execute(self, actions: list[Action]) -> None:
        for action in actions:
            if type(action) is ToTwilio:
                await self._send_twilio(action.msg)
            elif type(action) is ToRealtime:
                await self._send_realtime(action.msg)
            elif type(action) is SetTimer:
                self._set_timer(action.name, action.at_ms)
            elif type(action) is CancelTimer:
                entry = self._timers.pop(action.name, None)
                if entry is not None:
                    entry[0].cancel()
            elif type(action) is ConnectRealtime:
                self._spawn(self._connect_realtime())
            elif type(action) is CloseTwilio:
                await self._close_twilio(action.reason)
            elif type(action) is CloseRealtime:
                await self._close_realtime()
            elif type(action) is RestRequest:
                self._spawn(self._rest(action))

    async def _send_twilio(self, msg: dict[str, Any]) -> None:
        if not self._twilio_open:
            return
        try:
            await self.twilio.send_text(tw.encode(msg))
        except Exception:
            self._twilio_open = False  # the reader reports the close

    async def _send_realtime(self, msg: dict[str, Any]) -> None:
        conn = self.realtime
        if conn is None:
            return
        with contextlib.suppress(ConnectionClosed):  # the reader reports the close
            await conn.send(rt.encode(msg))

    def _set_timer(self, name: str, at_ms: float) -> None:
        old = self._timers.pop(name, None)
        if old is not None:
            old[0].cancel()
        self._timer_tokens += 1
        token = self._timer_tokens
        when = self._t0 + at_ms / 1000.0
        handle = self._loop.call_at(when, self._inbox.put_nowait, ("timer", (name, token)))
        self._timers[name] = (handle, token)

    async def _close_twilio(self, reason: str) -> None:
        if not self._twilio_open:
            return
        self._twilio_open = False
        log_event(logger, logging.INFO, "twilio.closing", reason=reason)
        try:
            if self.twilio.application_state == WebSocketState.CONNECTED:
                await self.twilio.close(code=1000)
        except Exception:
            pass

    async def _close_realtime(self) -> None:
        conn, self.realtime = self.realtime, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=1.5)

    # -- lifecycle ------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _teardown(self) -> None:
        for handle, _ in self._timers.values():
            handle.cancel()
        self._timers.clear()
        await self._close_twilio(self.session.end_reason or "teardown")
        await self._close_realtime()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # A connection that opened while the call was ending would otherwise leak.
        while not self._inbox.empty():
            kind, data = self._inbox.get_nowait()
            if kind == "realtime_open":
                await data.close()
        if not self.session.ended_ms:
            self.session.ended_ms = self.now()
        log_event(
            logger, logging.INFO, "call.summary", **self.session.summary(self.log_transcripts)
        )
        if self.recorder is not None:
            self.recorder.close()
