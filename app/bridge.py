"""The live driver around one `CallSession`: two sockets, a clock, REST calls, nothing else.

Every input is handed to the core the moment it is read, and the actions it returns are
carried out before anything else runs: Twilio frames in the media stream's own ASGI task,
Realtime messages in the link's read callback, timer wake-ups, REST answers and shutdown
in loop callbacks. Nothing here awaits between an input and its actions (writes never
block: `TwilioSocket` and `RealtimeLink` queue or drop), so on one event loop inputs are
handled strictly one at a time, in arrival order, with no queue hop per frame and no
lock: exactly as a replay of the recording handles them.

**One clock.** The core is fed the call time in ms, rounded to the microsecond, never
going back, and the recorder writes down exactly that number; timers fire at their own
deadlines (the contract in `app.call.outbox`). So a recording made here always replays.

**The audio path** bypasses the generic action list: a Twilio `media` frame is parsed once
with orjson, the core decides (`caller_audio`) and the append is serialised straight to
the link; a `response.output_audio.delta` goes the same way to `media` + `mark` frames
whose constant parts are built once per call. Server events the core ignores are dropped
by their first bytes, unparsed, unless the call is being recorded.

**Slow legs.** Caller audio for a Realtime peer that isn't reading is dropped (counted,
logged once per episode); a Twilio peer that doesn't take its frames past a bound ends the
call (`twilio_stalled`). Neither ever stalls the other leg.

Teardown is total: whichever way a call ends, both sockets are closed, every task of the
call is cancelled and awaited, and one `call.summary` line is logged.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import orjson

from app.call.actions import (
    Action,
    CancelTool,
    CheckVoice,
    CloseRealtime,
    CloseTwilio,
    ConnectRealtime,
    FindPause,
    Measure,
    Metric,
    RestRequest,
    RunTool,
    ToRealtime,
    ToTwilio,
)
from app.call.config import CallConfig
from app.call.session import IGNORED_EVENTS, CallSession
from app.limits import power_of_two
from app.observability import bind_call, log_event
from app.pauses import resume_point
from app.protocol import realtime as rt
from app.protocol import twilio as tw
from app.realtime_socket import RealtimeLink, RealtimeTransport, RealtimeUnavailable
from app.recording import CallRecorder
from app.records import iso
from app.security import OUTBOUND_PARAMETER
from app.settings import Settings
from app.telephony import RestOutcome, Telephony
from app.tools.defs import ToolContext, ToolOutcome
from app.tools.runner import ToolRunner
from app.twilio_socket import TwilioSocket
from app.voice import VoiceDetector, VoiceRing

logger = logging.getLogger("app.bridge")

_loads = orjson.loads
_IGNORED_PREFIXES: Final = tuple(b'{"type":"' + t.encode() + b'"' for t in sorted(IGNORED_EVENTS))
#: ... and, for a call with no MCP server, the item events the core reads only for MCP.
_IGNORED_WITHOUT_MCP: Final = (*_IGNORED_PREFIXES, b'{"type":"conversation.item.done"')
_DELTA: Final = "response.output_audio.delta"
#: Caller audio the local speech detector can look back on (`CheckVoice` asks for less).
_VOICE_RING_MS: Final = 1600
#: `start` parameters a tool never sees (`app.security`'s stream token).
_PRIVATE_PARAMETERS: Final = frozenset({"streamtoken"})
_TOOL_CRASHED: Final = ToolOutcome("error", '{"error": "the tool failed"}', "bridge_error")


#: How a media stream ends when nothing went wrong (1005: no code given).
_NORMAL_CLOSE_CODES: Final = frozenset({None, 1000, 1001, 1005})

#: Caller audio arrives at 8000 bytes a second, as base64 (its padding included: a 20 ms
#: frame is 216 characters), with 5 % to spare for the two ends' clocks.
_AUDIO_CHARS_PER_S: Final = 50 * 216 * 1.05


@dataclass(frozen=True, slots=True)
class BridgeLimits:
    """What one call takes from its peers: the settings of the same names, whose defaults
    are the only ones (`app.settings`)."""

    #: TWILIO_MAX_FRAME_BYTES: a longer Twilio frame is skipped (the server refuses it
    #: first when it is uvicorn, `app.server_guard`).
    max_frame_chars: int
    #: STREAM_IDLE_SECONDS: Twilio sends audio all call long, silence included; a stream
    #: that sends nothing this long is dead, and the call ends (`twilio_idle`).
    idle_s: float
    #: CALLER_AUDIO_BURST_SECONDS: how far ahead of real time (since the stream opened)
    #: caller audio may run; beyond it frames are dropped (and counted), not forwarded.
    audio_burst_s: float

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> BridgeLimits:
        """The limits `settings` set (default: every setting at its default)."""
        if settings is None:
            settings = Settings.model_construct()
        return cls(
            max_frame_chars=settings.twilio_max_frame_bytes,
            idle_s=settings.stream_idle_seconds,
            audio_burst_s=settings.caller_audio_burst_seconds,
        )


def _parse(data: str | bytes) -> dict[str, Any] | str:
    """The JSON object a frame holds, or why it holds none (`not_json`, `not_an_object`)."""
    try:
        msg = _loads(data)
    except orjson.JSONDecodeError:
        return "not_json"
    return msg if type(msg) is dict else "not_an_object"


class OutboundHook(Protocol):
    """What an outbound call's stream asks of `app.outbound.OutboundCalls`."""

    async def config_for(self, call_sid: str, parameters: dict[str, str]) -> CallConfig | str:
        """Its configuration, or why its `start` is refused."""
        ...

    async def answered_by(self, outbound_id: str, limit_s: float) -> str | None:
        """Twilio's answering-machine verdict, waited for up to `limit_s`."""
        ...


class Bridge:
    """Pairs one Twilio media stream with one Realtime link for the length of a call."""

    def __init__(
        self,
        twilio: TwilioSocket,
        session: CallSession,
        transport: RealtimeTransport,
        *,
        telephony: Telephony | None = None,
        verify_start: Callable[[dict[str, Any]], str | None] | None = None,
        recorder: CallRecorder | None = None,
        log_transcripts: bool = True,
        limits: BridgeLimits | None = None,
        meter: Callable[[Measure], None] | None = None,
        call_facts: dict[str, object] | None = None,
        clock: Callable[[], float] | None = None,
        configure: Callable[[dict[str, str]], CallConfig] | None = None,
        tools: ToolRunner | None = None,
        outgoing: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        outbound: OutboundHook | None = None,
    ) -> None:
        """`meter` takes the core's metric observations (`app.metrics`); `call_facts`
        (the model, the agent) go into the call's summary line. `clock` (seconds,
        default the event loop's) is a seam for tests; timers are always armed on the
        event loop. `configure` gives the call its agent's configuration from its
        `start` parameters (`app.agents`); `tools` runs its business tools;
        `outgoing` completes the `session.update` as it is sent (the MCP servers'
        `${ENV}` header values: never recorded, never in the core). `outbound` gives
        an outbound call's stream its settings and its answering-machine verdict
        (`app.outbound`)."""
        self.twilio = twilio
        self.session = session
        self.transport = transport
        self.telephony = telephony
        self.verify_start = verify_start
        self.recorder = recorder
        self.log_transcripts = log_transcripts
        self.meter = meter
        self.call_facts = call_facts or {}
        self.configure = configure
        self.tools = tools
        self.outgoing = outgoing
        self.outbound = outbound
        #: An outbound call's `start`, waiting for its settings (looked up once, awaited).
        self._outbound_start: dict[str, Any] | None = None
        #: Why the stream's `start` was refused (None: it wasn't).
        self.refused: str | None = None
        self._tool_tasks: dict[str, asyncio.Task[Any]] = {}
        self._ignored = self._ignored_prefixes()
        #: Resume mode's local speech detector: the last caller frames (appended as they
        #: pass, never decoded there) and the detector run over them on `CheckVoice`.
        self._ring: VoiceRing | None = None
        self._ring_append: Callable[[str], None] | None = None
        self._detector: VoiceDetector | None = None
        #: The core's questions about audio (`CheckVoice`, `FindPause`), answered as inputs
        #: once the actions of the input that asked them are done.
        self._questions: list[CheckVoice | FindPause] = []
        self._voice_setup()
        #: The end-of-call summary (`call.summary`), once the call is over.
        self.summary: dict[str, Any] | None = None
        self.link: RealtimeLink | None = None
        self.limits = limits = limits or BridgeLimits.from_settings()
        #: Caller audio frames dropped because the Realtime peer wasn't reading.
        self.audio_dropped = 0
        self._dropping = False
        #: Caller audio frames dropped for running ahead of real time.
        self.audio_flooded = 0
        self._loop = asyncio.get_running_loop()
        self._clock = clock or self._loop.time
        self._t0 = self._clock()
        #: Wall-clock time of call time 0 (the stream opening), for the call's record.
        self.opened_at = datetime.now(UTC)
        #: When the last Twilio frame arrived (clock seconds).
        self._heard = self._t0
        self._idle: asyncio.TimerHandle | None = None
        #: Caller audio allowance (base64 characters): starts at the burst, refills at the
        #: real-time rate, each frame spends its length. It may save up to the burst plus a
        #: quiet stream's worth (STREAM_IDLE_SECONDS; longer, the call is over anyway), so
        #: real speech held back by a network stall still passes when it arrives at once.
        self._allowance = limits.audio_burst_s * _AUDIO_CHARS_PER_S
        self._most = (limits.audio_burst_s + limits.idle_s) * _AUDIO_CHARS_PER_S
        self._spent_at = self._t0
        self._last = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake: asyncio.TimerHandle | None = None
        self._wake_at: float | None = None
        #: `_wake_at` on the clock (seconds): inputs before it need no timer check.
        self._due = float("inf")
        self._encoder: tw.StreamEncoder | None = None
        self._stall = False
        self._finished = False
        self._task: asyncio.Task[Any] | None = None
        self._receiving = False
        self._unblocked = False
        #: The call's log context (its SIDs, once bound), for inputs from outside the call.
        self._context = contextvars.copy_context()

    # -- the clock ------------------------------------------------------------------------

    def now(self) -> float:
        """Call time in ms since the media stream opened, as the core and the recording see
        it: rounded to the microsecond, never going back."""
        now = round((self._clock() - self._t0) * 1000.0, 3)
        if now < self._last:
            return self._last
        self._last = now
        return now

    def _time_for_input(self) -> float:
        """The time of an input about to be handled; timers due by then fire first."""
        now = self.now()
        deadline = self._wake_at
        if deadline is not None and deadline <= now:
            self._actions(now, self.session.advance(now))
        return now

    def _rearm(self) -> None:
        """Wake the core at its next deadline (the driver contract, `app.call.outbox`)."""
        deadline = self.session.deadline
        if deadline == self._wake_at:
            return
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None
        self._wake_at = deadline
        self._due = float("inf")
        if deadline is not None and not self._finished:
            self._due = self._t0 + deadline / 1000.0
            delay = self._due - self._clock()
            self._wake = self._loop.call_later(max(0.0, delay), self._on_wake)

    def _on_wake(self) -> None:
        self._wake = None
        deadline = self._wake_at
        self._wake_at = None
        self._due = float("inf")
        if deadline is not None and not self._finished:
            self._guarded(self._wake_up, deadline)

    def _wake_up(self, deadline: float) -> None:
        # A loop timer may fire a fraction of a ms early: the wake-up is at its deadline.
        now = max(self.now(), deadline)
        self._last = now
        self._actions(now, self.session.advance(now))

    # -- the call -------------------------------------------------------------------------

    def shutdown(self) -> None:
        """The server is going away: end this call (Twilio plays the fallback TwiML).
        Called from the drain's task: handled in the call's own context (its log lines
        carry its SIDs)."""
        if not self._finished:
            self._context.run(self._guarded, self._shutdown)

    def _shutdown(self) -> None:
        now = self._time_for_input()
        self._actions(now, self.session.shutdown(now))

    async def run(self) -> None:
        """Handle the call until it is over; never raises for the call's own failures."""
        session, twilio = self.session, self.twilio
        self._task = task = asyncio.current_task()
        assert task is not None
        try:
            now = self.now()
            self._actions(now, session.opened(now))
            self._idle = self._loop.call_later(self.limits.idle_s, self._check_idle)
            while not session.done:
                self._receiving = True
                try:
                    data = await twilio.receive()
                except asyncio.CancelledError:
                    if not self._unblocked or task.cancelling() > 1:
                        raise  # the server's (too), not only ours
                    task.uncancel()
                    break
                finally:
                    self._receiving = False
                if data is None:
                    if not session.done:
                        self._twilio_closed(twilio.close_code)
                    break
                if type(data) is str:
                    self._twilio_frame(data)
                    if self._outbound_start is not None:
                        await self._start_outbound()
                else:
                    self._input("from_twilio", {"_frame_error": "binary_frame"})
        except Exception:
            self._crash()
        finally:
            await self._teardown()

    def _guarded(self, handle: Callable[..., None], *args: Any) -> None:
        """Run one input's handling outside the media stream's task (a callback)."""
        try:
            handle(*args)
        except Exception:
            self._crash()

    def _crash(self) -> None:
        """An error of ours while handling an input: this call ends, never the process."""
        logger.exception("bridge.crashed")
        self.session.crashed(self.now())
        self._over()
        if self.link is not None:
            self.link.close()

    # -- Twilio in --------------------------------------------------------------------------

    def _check_idle(self) -> None:
        """Twilio sends a frame every 20 ms all call long: a quiet stream is a dead one."""
        self._idle = None
        if self._finished:
            return
        quiet = self._clock() - self._heard
        if quiet < self.limits.idle_s:
            self._idle = self._loop.call_later(self.limits.idle_s - quiet, self._check_idle)
        elif not self.session.done:
            log_event(logger, logging.ERROR, "twilio.idle", quiet_s=round(quiet, 1))
            self._guarded(self._input, "from_twilio", {"_socket": "idle"})
            if not self._finished:  # not live yet: the call ends once it is, if still quiet
                self._idle = self._loop.call_later(self.limits.idle_s, self._check_idle)

    def _twilio_frame(self, text: str) -> None:
        self._heard = t = self._clock()
        if len(text) > self.limits.max_frame_chars:
            self._input("from_twilio", {"_frame_error": "oversized_frame"})
            return
        msg = _parse(text)
        if isinstance(msg, str):
            self._input("from_twilio", {"_frame_error": msg})
            return
        if msg.get("event") != "media":
            self._twilio_message(msg)
            return
        # The audio path: 50 frames a second per call. Its time matters only to a timer due
        # first or to the recording (caller audio itself is timeless to the core).
        media = msg.get("media")
        payload = media.get("payload") if type(media) is dict else None
        if type(payload) is str:
            allowance = self._allowance + (t - self._spent_at) * _AUDIO_CHARS_PER_S
            if allowance > self._most:
                allowance = self._most
            self._spent_at = t
            size = len(payload)
            if allowance < size:
                self._allowance = allowance
                self._flooded()
                return
            self._allowance = allowance - size
        recorder = self.recorder
        if recorder is not None:
            now = self._time_for_input()
            recorder.record(now, "from_twilio", msg)
        elif t >= self._due:
            self._time_for_input()
        if self.session.caller_audio(payload):
            if recorder is not None:
                recorder.record(now, "to_openai", rt.input_audio_append(payload))  # type: ignore[arg-type]
            self._append(rt.encode_append(payload))  # type: ignore[arg-type]
            ring = self._ring_append
            if ring is not None:
                ring(payload)  # type: ignore[arg-type]

    def _twilio_closed(self, code: int | None) -> None:
        if code not in _NORMAL_CLOSE_CODES:  # 1009: a frame over TWILIO_MAX_FRAME_BYTES
            log_event(logger, logging.WARNING, "twilio.closed_abnormally", code=code)
        self._input("from_twilio", {"_socket": "closed"})

    def _flooded(self) -> None:
        """Caller audio faster than real time past the burst: a broken or hostile peer
        (it would bill the Realtime session for audio nobody spoke). Dropped, unrecorded
        (so a recording replays as the call ran), counted; logged at the 1st, 2nd, 4th,
        8th... frame, so a sustained flood costs a handful of lines."""
        self.audio_flooded = count = self.audio_flooded + 1
        if power_of_two(count):
            burst_s = self.limits.audio_burst_s
            log_event(logger, logging.WARNING, "twilio.audio_flood", dropped=count, burst_s=burst_s)

    def _twilio_message(self, msg: dict[str, Any]) -> None:
        session = self.session
        if msg.get("event") != "start" or session.call_sid:
            self._input("from_twilio", msg)
            return
        fields = tw.start_fields(msg)
        if fields is not None:  # bound first: the tasks the start spawns inherit the SIDs
            bind_call(call_sid=fields[1], stream_sid=fields[0])
            self._context = contextvars.copy_context()
        refused = self.verify_start(msg) if self.verify_start is not None else None
        if refused is not None:
            self._refuse(refused, msg)
            return
        if fields is not None and self.outbound is not None and OUTBOUND_PARAMETER in fields[3]:
            self._outbound_start = msg  # its settings are looked up first (`run` awaits it)
            return
        if fields is not None and self.configure is not None:
            self._configure(fields[3])
        self._feed_start(msg)

    def _feed_start(self, msg: dict[str, Any]) -> None:
        """The accepted `start`, fed (recorded) once the call is configured; a call that
        went live gets its `media` encoder."""
        self._input("from_twilio", msg)
        if self.session.call_sid:
            self._encoder = tw.StreamEncoder(self.session.stream_sid)

    def _configure(self, parameters: dict[str, str]) -> None:
        """The call's agent, from its `start`: before the `start` is recorded and fed."""
        assert self.configure is not None
        try:
            config = self.configure(parameters)
        except Exception:  # a bug of ours must not cost the call: it keeps the defaults
            logger.exception("agents.configure_failed")
            return
        self._configured(config)

    async def _start_outbound(self) -> None:
        """An outbound call's `start`: its settings from the call store (any replica's
        `POST /calls` stored them), then the `start` is fed like any; a call with
        detection waits for its verdict in a task of its own."""
        msg, self._outbound_start = self._outbound_start, None
        assert msg is not None and self.outbound is not None
        fields = tw.start_fields(msg)
        assert fields is not None
        _, call_sid, _, parameters = fields
        try:
            found = await self.outbound.config_for(call_sid, parameters)
        except Exception:
            logger.exception("outbound.configure_failed")
            found = "outbound_error"
        if self._finished or self.session.done:
            return
        if isinstance(found, str):
            self._refuse(found, msg)
            return
        self._configured(found)
        self._feed_start(msg)
        if found.machine_detection != "off":
            limit_s = found.amd_limit_ms / 1000
            verdict = self._watch_verdict(parameters[OUTBOUND_PARAMETER], limit_s)
            task = self._loop.create_task(verdict, context=self._context.copy())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _watch_verdict(self, outbound_id: str, limit_s: float) -> None:
        """Twilio's answering-machine verdict, fed as an input (recorded) when it comes."""
        assert self.outbound is not None
        try:
            answered_by = await self.outbound.answered_by(outbound_id, limit_s)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("outbound.verdict_failed")
            return
        if answered_by is not None and not self._finished:
            self._guarded(self._input, "rest", {"answered_by": answered_by})

    def _configured(self, config: CallConfig) -> None:
        self.session.configure(config)
        self._ignored = self._ignored_prefixes()
        self._voice_setup()
        if self.recorder is not None:
            self.recorder.configure(config)
        self.call_facts["agent"] = config.agent

    def _voice_setup(self) -> None:
        """A ring and a detector when this call's config asks for the local detector."""
        mode = self.session.config.local_vad
        if mode is None or self.session.false_turns is None:
            self._ring = self._ring_append = self._detector = None
            return
        self._ring = VoiceRing(_VOICE_RING_MS)
        self._ring_append = self._ring.append
        self._detector = VoiceDetector(mode)

    def _answer_questions(self) -> None:
        """Answer the core's questions about audio, each with an input (recorded, so a
        replay needs no audio): the detector's report, or where a resume starts."""
        questions, self._questions = self._questions, []
        for question in questions:
            if self._finished:
                return
            if type(question) is FindPause:
                at = resume_point(question.chunks, question.heard, question.rewind_ms)
                self._input("rest", {"pause": {"item_id": question.item_id, "resume_at": at}})
            elif self._ring is not None and self._detector is not None:
                check: CheckVoice = question  # type: ignore[assignment]
                report: dict[str, Any] = self._detector.check(self._ring, check.window_ms).to_dict()
                report["at_decision"] = check.at_decision
                self._input("rest", {"voice": report})

    def _ignored_prefixes(self) -> tuple[bytes, ...]:
        """The first bytes of the server events dropped unparsed for this call."""
        return _IGNORED_PREFIXES if self.session.config.mcp_servers else _IGNORED_WITHOUT_MCP

    def _refuse(self, reason: str, start: dict[str, Any]) -> None:
        log_event(logger, logging.WARNING, "stream.refused", reason=reason)
        self.refused = reason
        if self.recorder is not None:
            self.recorder.discard()  # not a call: nothing to replay
            self.recorder = None
        now = self._time_for_input()
        self._actions(now, self.session.refuse(now, reason, start))

    def _input(self, direction: str, msg: dict[str, Any]) -> None:
        """Any input but the audio path's: recorded, fed to the core, its actions done."""
        now = self._time_for_input()
        if self.recorder is not None:
            self.recorder.record(now, direction, msg)
        self._actions(now, self.session.feed(now, direction, msg))

    # -- Realtime in (the link's Receiver) -----------------------------------------------

    def frame(self, data: bytes, text: bool) -> None:
        """One message from the Realtime link."""
        if not self._finished:
            self._guarded(self._realtime_frame, data, text)

    def _realtime_frame(self, data: bytes, text: bool) -> None:
        if not text:
            self._input("from_openai", {"_frame_error": "binary_frame"})
            return
        if self.recorder is None and data.startswith(self._ignored):
            return  # an event the core ignores: not even parsed
        ev = _parse(data)
        if isinstance(ev, str):
            self._input("from_openai", {"_frame_error": ev})
            return
        if ev.get("type") != _DELTA:
            self._input("from_openai", ev)
            return
        # The audio path: each delta becomes `media` + `mark`.
        now = self._time_for_input()
        recorder = self.recorder
        if recorder is not None:
            recorder.record(now, "from_openai", ev)
        name = self.session.bot_audio(now, ev)
        encoder = self._encoder
        if name is not None and encoder is not None:
            delta = ev["delta"]
            parts = tw.media_parts(delta)
            if recorder is not None:
                sid = self.session.stream_sid
                for part in parts:
                    recorder.record(now, "to_twilio", tw.media(sid, part))
                recorder.record(now, "to_twilio", tw.mark(sid, name))
            for part in parts:
                self._to_twilio(encoder.media(part))
            self._to_twilio(encoder.mark(name))
        self._rearm()  # playing audio disarms the silence timer
        if self._stall:
            self._twilio_stalled()

    def closed(self, code: int | None, reason: str) -> None:
        """The Realtime link closed."""
        if not self._finished:
            msg = {"_socket": "closed", "code": code, "reason": reason}
            self._guarded(self._input, "from_openai", msg)

    async def _connect(self) -> None:
        timeout_s = self.session.config.realtime_ready_timeout_ms / 1000.0
        try:
            link = await self.transport.open(timeout_s)
        except RealtimeUnavailable as exc:
            if not self._finished:
                self._guarded(self._input, "from_openai", {"_socket": "failed", "reason": str(exc)})
            return
        if self._finished or self.session.done:
            await link.aclose()
            return
        self.link = link
        self._guarded(self._input, "from_openai", {"_socket": "open"})
        link.start(self)  # what the service sent meanwhile (session.created) comes next

    # -- REST -----------------------------------------------------------------------------

    async def _rest(self, request: RestRequest) -> None:
        if self.telephony is None:
            outcome = RestOutcome(0, None, "no_rest_credentials")
        else:
            outcome = await self.telephony.update_call(self.session.call_sid, request.params)
        if not self._finished:
            answer = {"status": outcome.status, "code": outcome.code, "error": outcome.error}
            self._guarded(self._input, "rest", {"response": answer})

    # -- business tools -------------------------------------------------------------------

    def _start_tool(self, action: RunTool) -> None:
        """Run a tool in its own task, in the call's log context (its lines carry the
        SIDs); its outcome comes back as a `tool_result` input."""
        task = self._loop.create_task(self._run_tool(action), context=self._context.copy())
        self._tool_tasks[action.call_id] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_tool(self, action: RunTool) -> None:
        started = self._clock()
        try:
            if self.tools is None:
                outcome = ToolOutcome("error", '{"error": "tools are not available"}', "no_runner")
            else:
                context = self._tool_context()
                timeout_s = action.timeout_ms / 1000
                outcome = await self.tools.run(action.name, action.arguments, context, timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("tool.crashed")
            outcome = _TOOL_CRASHED
        finally:
            self._tool_tasks.pop(action.call_id, None)
        if not self._finished:
            result = {
                "call_id": action.call_id,
                "name": action.name,
                "result": outcome.result,
                "output": outcome.output,
                "detail": outcome.detail,
                "ms": round((self._clock() - started) * 1000),
            }
            self._guarded(self._input, "rest", {"tool_result": result})

    def _tool_context(self) -> ToolContext:
        session = self.session
        params = {
            k: v for k, v in session.parameters.items() if k.lower() not in _PRIVATE_PARAMETERS
        }
        return ToolContext(
            call_sid=session.call_sid,
            agent=session.config.agent,
            from_number=params.get("From", ""),
            to_number=params.get("To", ""),
            parameters=params,
        )

    def _cancel_tool(self, call_id: str) -> None:
        task = self._tool_tasks.pop(call_id, None)
        if task is not None:
            task.cancel()

    # -- outputs --------------------------------------------------------------------------

    def _actions(self, now: float, actions: list[Action]) -> None:
        """Carry out the core's actions, in order, without awaiting anything."""
        if actions:
            if self.recorder is not None:
                self.recorder.record_actions(now, actions)
            for action in actions:
                kind = type(action)
                if kind is ToTwilio:
                    self._to_twilio(tw.encode(action.msg))  # type: ignore[union-attr]
                elif kind is ToRealtime:
                    if self.link is not None:
                        msg = action.msg  # type: ignore[union-attr]
                        if self.outgoing is not None and msg["type"] == "session.update":
                            msg = self.outgoing(msg)
                        self.link.send(rt.encode(msg))
                elif kind is ConnectRealtime:
                    self._spawn(self._connect())
                elif kind is CloseTwilio:
                    log_event(logger, logging.INFO, "twilio.closing", reason=action.reason)  # type: ignore[union-attr]
                    self.twilio.close()
                elif kind is CloseRealtime:
                    if self.link is not None:
                        self.link.close()
                elif kind is RestRequest:
                    self._spawn(self._rest(action))  # type: ignore[arg-type]
                elif kind is RunTool:
                    self._start_tool(action)  # type: ignore[arg-type]
                elif kind is CancelTool:
                    self._cancel_tool(action.call_id)  # type: ignore[union-attr]
                elif kind is CheckVoice or kind is FindPause:
                    self._questions.append(action)  # type: ignore[arg-type]
                elif kind is Measure and self.meter is not None:
                    self._measure(now, action)  # type: ignore[arg-type]
            if self._questions:
                self._answer_questions()  # after this input's actions: the next inputs
            if self.session.done:
                self._over()
        self._rearm()
        if self._stall:
            self._twilio_stalled()

    def _measure(self, now: float, measure: Measure) -> None:
        """Hand an observation to the metrics. A barge-in's reaction is the core's (call
        time from `speech_started` to the `clear`) plus this input's handling so far, off
        the clock: the `clear` has just been handed to the media stream."""
        assert self.meter is not None
        if measure.metric is Metric.BARGE_IN:
            spent_s = max(0.0, self._clock() - self._t0 - now / 1000.0)
            measure = Measure(Metric.BARGE_IN, measure.value + spent_s)
        self.meter(measure)

    def _over(self) -> None:
        """The call is over: close the media stream (after what is queued) and make sure
        its task stops reading, even if a stuck caller side never acknowledges the close."""
        self.twilio.close()
        if self._receiving and not self._unblocked and self._task is not None:
            self._unblocked = True
            self._task.cancel()

    def _to_twilio(self, text: str) -> None:
        if not self.twilio.send(text):
            self._stall = True  # handled once the current input's actions are done

    def _twilio_stalled(self) -> None:
        """The caller's side stopped taking frames: end the call rather than wedge it."""
        self._stall = False
        if self.session.done:
            return
        log_event(logger, logging.ERROR, "twilio.stalled", backlog_chars=self.twilio.backlog_chars)
        self._input("from_twilio", {"_socket": "stalled"})

    def _append(self, frame: bytes) -> None:
        link = self.link
        if link is None:
            return
        if link.send_audio(frame):
            if self._dropping:
                self._dropping = False
                log_event(
                    logger, logging.INFO, "realtime.audio_resumed", dropped=self.audio_dropped
                )
            return
        self.audio_dropped += 1
        if not self._dropping:
            self._dropping = True
            log_event(logger, logging.WARNING, "realtime.audio_dropped", reason="peer_not_reading")

    # -- lifecycle ------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _teardown(self) -> None:
        self._finished = True
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        await self.twilio.aclose()
        link, self.link = self.link, None
        if link is not None:
            await link.aclose()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        session = self.session
        if not session.ended_ms:
            session.ended_ms = self.now()
        params = session.parameters
        started = self.opened_at.timestamp() + session.started_ms / 1000
        summary: dict[str, Any] = {
            "from": params.get("From") or None,
            "to": params.get("To") or None,
            "started_at": iso(datetime.fromtimestamp(started, UTC)),
            **self.call_facts,
        }
        summary.update(session.summary(self.log_transcripts))
        summary["audio_dropped"] = self.audio_dropped
        summary["audio_flooded"] = self.audio_flooded
        if self.recorder is not None:
            summary.update(self.recorder.summary())
        self.summary = summary
        log_event(logger, logging.INFO, "call.summary", **summary)
        if self.recorder is not None:
            self.recorder.close()
