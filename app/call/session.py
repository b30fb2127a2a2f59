"""CallSession: the whole decision logic of one phone call, without I/O.

Inputs are the messages of the two sockets (already JSON-parsed dicts), timer expiries
and socket lifecycle events, each stamped with the call time in ms. Each input returns
the list of `app.call.actions` to carry out, in order. Nothing here reads a clock,
sleeps or touches a socket, so a recorded call replays deterministically.

Life of a call::

    waiting_start --start--> connecting --realtime_open--> live --stop/close--> ended
                                  |                           |
                                  +--failed / not ready in time / dropped--> ended
                                     (media stream closed: Twilio plays the fallback)

Audio passes straight through: Twilio's base64 payload becomes `input_audio_buffer.append`
as the same string; each `response.output_audio.delta` becomes a Twilio `media` message
with the same string, followed by a uniquely named `mark` so that `PlaybackTracker` knows
what the caller has really heard. Payload validity is checked with a regex, never decoded.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

from app.call.actions import (
    Action,
    CancelTimer,
    CloseRealtime,
    CloseTwilio,
    ConnectRealtime,
    SetTimer,
    ToRealtime,
    ToTwilio,
)
from app.call.bargein import CONFIRM_TIMER, BargeIn
from app.call.config import CallConfig
from app.call.ending import PLAYOUT_TIMER, RETRY_TIMER, STOP_GRACE_TIMER, Ending
from app.call.nudges import MAX_DURATION_TIMER, SILENCE_TIMER, Nudges
from app.call.playback import Echo, PlaybackTracker
from app.call.responses import Responses
from app.call.transcript import Transcript
from app.call.turns import TurnPolicy
from app.observability import log_event
from app.protocol import realtime as rt
from app.protocol import twilio as tw
from app.protocol.b64 import decoded_len, is_b64

logger = logging.getLogger("app.call")

READY_TIMER = "realtime_ready"
START_TIMER = "twilio_start"
#: A media stream that never sends `start` is closed after this long.
START_TIMEOUT_MS = 10_000
_ENDING_TIMERS = (PLAYOUT_TIMER, RETRY_TIMER, STOP_GRACE_TIMER)
_NUDGE_TIMERS = (SILENCE_TIMER, MAX_DURATION_TIMER)
ALL_TIMERS = (START_TIMER, READY_TIMER, CONFIRM_TIMER, *_ENDING_TIMERS, *_NUDGE_TIMERS)

#: Per kind of bad input, log the first few in full, then one in this many.
_BAD_LOG_FIRST = 5
_BAD_LOG_EVERY = 100

_DEBUG = logging.DEBUG
_INFO = logging.INFO
_WARNING = logging.WARNING
_ERROR = logging.ERROR


class CallSession:
    """One call, from Twilio's `start` to the end of both sockets."""

    def __init__(self, config: CallConfig) -> None:
        self.config = config
        self.phase = "waiting_start"
        self.stream_sid = ""
        self.call_sid = ""
        self.parameters: dict[str, str] = {}
        self.started_ms = 0.0
        self.ended_ms = 0.0
        self.end_reason = ""
        self.end_detail = ""
        #: The bridge ended the call itself (REST hang-up/transfer succeeded): the `stop`
        #: and closes that follow are the expected end, not failures.
        self.deliberate = False
        self.realtime_ready = False
        self.playback = PlaybackTracker()
        self.turns = TurnPolicy(
            config.interrupt_min_speech_ms,
            config.vad_prefix_padding_ms,
            config.vad_silence_duration_ms if config.turn_detection == "server_vad" else 500,
        )
        self.transcript = Transcript()
        self.responses = Responses(self)
        self.barge_in = BargeIn(self)
        self.ending = Ending(self)
        self.nudges = Nudges(self)
        self.usage: dict[str, int] = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
        self.bad_input: dict[str, int] = {}
        self.caller_audio_bytes = 0
        self._out: list[Action] = []
        #: Client events decided before the Realtime socket is open (the caller's first
        #: words, a key press): sent right after `session.update`, in order. Of the caller's
        #: audio only the most recent `connect_buffer_ms` is kept.
        self._before_open: deque[ToRealtime] = deque()
        self._before_open_audio = 0

    @property
    def responding(self) -> bool:
        """A response is being generated, or has been asked for."""
        return self.responses.responding

    @property
    def barge_ins(self) -> int:
        return self.barge_in.count

    @property
    def done(self) -> bool:
        """The call is over; the I/O layer can tear down."""
        return self.phase == "ended"

    def opened(self, now: float) -> list[Action]:
        """The media stream socket was accepted: `start` must follow soon."""
        return [SetTimer(START_TIMER, now + START_TIMEOUT_MS)]

    # -- one entry point for recorded and live inputs -------------------------------------

    def feed(self, now: float, direction: str, msg: dict[str, Any]) -> list[Action]:
        """Any input, in the form a call fixture records it (see `app.recording`).

        `direction` is `from_twilio`, `from_openai` or `rest`. Besides protocol messages,
        `{"_socket": ...}` records a socket event, `{"_frame_error": reason}` a frame that
        could not be parsed, and `{"response": {...}}` (direction `rest`) a REST answer.
        The bridge feeds live inputs through here and the replayer feeds recorded ones,
        so both run the very same code.
        """
        if direction == "from_twilio":
            if "_socket" in msg:
                return self.twilio_closed(now)
            if "_frame_error" in msg:
                return self.bad_twilio_frame(str(msg["_frame_error"]))
            return self.twilio_message(now, msg)
        if direction == "from_openai":
            socket = msg.get("_socket")
            if socket == "open":
                return self.realtime_open(now)
            if socket == "failed":
                return self.realtime_failed(now, str(msg.get("reason", "")))
            if socket == "closed":
                return self.realtime_closed(now, msg.get("code"), str(msg.get("reason", "")))
            if "_frame_error" in msg:
                return self.bad_realtime_frame(str(msg["_frame_error"]))
            return self.realtime_message(now, msg)
        if direction == "rest" and isinstance(msg.get("response"), dict):
            r = msg["response"]
            return self.rest_result(now, int(r.get("status", 0)), r.get("code"), r.get("error", ""))
        raise ValueError(f"not an input: {direction}")

    # -- inputs: Twilio -------------------------------------------------------------------

    def twilio_message(self, now: float, msg: dict[str, Any]) -> list[Action]:
        """A JSON object from the media stream."""
        event = msg.get("event")
        if event == "media":
            self._on_media(msg)
        elif event == "mark":
            self._on_mark(now, msg)
        elif event == "start":
            self._on_start(now, msg)
        elif event == "stop":
            self._twilio_gone(now)
        elif event == "connected":
            log_event(logger, _DEBUG, "twilio.connected", protocol=msg.get("protocol"))
        elif event == "dtmf":
            dtmf = msg.get("dtmf")
            self.nudges.dtmf(now, dtmf.get("digit") if isinstance(dtmf, dict) else None)
        else:
            self._bad("twilio", "unknown_event", event=str(event)[:40])
        return self._flush()

    def twilio_closed(self, now: float) -> list[Action]:
        """The media stream socket closed (with or without a `stop` first)."""
        self._twilio_gone(now)
        return self._flush()

    def _twilio_gone(self, now: float) -> None:
        if self.phase == "ended":
            return
        if self.deliberate:  # Twilio ending the stream after our own REST update
            self._end(now, self.end_reason, close_twilio=False)
        elif self.ending.committed:
            # Twilio's `stop` for our own update can overtake the REST answer: it is the
            # deliberate end, not a hang-up (peers lose transfers to exactly this race).
            self.deliberate = True
            self._end(now, self.ending.intended_reason(), close_twilio=False)
        else:
            self._end(now, "caller_hung_up", close_twilio=False)

    def bad_twilio_frame(self, reason: str) -> list[Action]:
        """A frame the socket layer could not turn into a message (binary, not JSON...)."""
        self._bad("twilio", reason)
        return self._flush()

    def _on_start(self, now: float, msg: dict[str, Any]) -> None:
        if self.phase != "waiting_start":
            self._bad("twilio", "duplicate_start")
            return
        fields = tw.start_fields(msg)
        if fields is None:
            self._bad("twilio", "malformed_start")
            return
        self.stream_sid, self.call_sid, _, self.parameters = fields
        self.started_ms = now
        self._emit(CancelTimer(START_TIMER))
        self.phase = "connecting"
        claimed = self.parameters.get("CallSid")
        if claimed and claimed != self.call_sid:
            log_event(logger, _WARNING, "twilio.call_sid_mismatch", claimed=claimed)
        log_event(logger, _INFO, "call.started", caller=self.parameters.get("From"))
        self._emit(ConnectRealtime())
        self._emit(SetTimer(READY_TIMER, now + self.config.realtime_ready_timeout_ms))
        self.nudges.call_started(now)

    def _on_media(self, msg: dict[str, Any]) -> None:
        if self.phase == "waiting_start":
            self._bad("twilio", "media_before_start")
            return
        if self.phase == "ended":
            return
        media = msg.get("media")
        payload = media.get("payload") if isinstance(media, dict) else None
        if not is_b64(payload):
            self._bad("twilio", "invalid_audio_payload")
            return
        assert isinstance(payload, str)
        self.caller_audio_bytes += decoded_len(payload)
        self._emit(ToRealtime(rt.input_audio_append(payload)))

    def _on_mark(self, now: float, msg: dict[str, Any]) -> None:
        mark = msg.get("mark")
        name = mark.get("name") if isinstance(mark, dict) else None
        if not isinstance(name, str):
            self._bad("twilio", "malformed_mark")
            return
        result = self.playback.echo(now, name)
        if result is Echo.PLAYED and not self.playback.playing:
            self.ending.played_out(now)
            self.nudges.maybe_arm(now)
        elif result is Echo.UNKNOWN:
            self._bad("twilio", "unknown_mark")
        elif result is Echo.CLEARED:
            log_event(logger, _DEBUG, "playback.cleared_echo", mark=name)

    # -- inputs: Realtime -----------------------------------------------------------------

    def realtime_open(self, now: float) -> list[Action]:
        """The Realtime socket is open: configure the session, flush audio, greet."""
        if self.phase != "connecting":
            return self._flush()
        self.phase = "live"
        self._emit(ToRealtime(rt.session_update(self.config)))
        self._out.extend(self._before_open)
        self._before_open.clear()
        self._before_open_audio = 0
        if self.config.greeting and not self.responding:
            instructions = self._instructions(self.config.greeting)
            self.responses.request(instructions, droppable=True)
        return self._flush()

    def realtime_failed(self, now: float, reason: str) -> list[Action]:
        """The Realtime socket could not be opened (after the bridge's bounded retries)."""
        if self.phase in ("connecting", "waiting_start"):
            log_event(logger, _ERROR, "realtime.unavailable", reason=reason)
            self._end(now, "failure", detail="realtime_unavailable", close_realtime=False)
        return self._flush()

    def realtime_closed(self, now: float, code: int | None, reason: str) -> list[Action]:
        """The Realtime socket closed under us."""
        if self.deliberate:
            log_event(logger, _DEBUG, "realtime.closed_after_ending", code=code)
        elif self.phase != "ended":
            log_event(logger, _ERROR, "realtime.lost", code=code, reason=reason)
            self._end(now, "failure", detail="realtime_lost", close_realtime=False)
        return self._flush()

    def bad_realtime_frame(self, reason: str) -> list[Action]:
        self._bad("realtime", reason)
        return self._flush()

    def realtime_message(self, now: float, ev: dict[str, Any]) -> list[Action]:
        """A server event from the Realtime socket."""
        kind = ev.get("type")
        if kind == "response.output_audio.delta":
            self._on_audio_delta(now, ev)
        elif kind == "input_audio_buffer.speech_started":
            self.barge_in.speech_started(now, ev)
        elif kind == "input_audio_buffer.speech_stopped":
            self.barge_in.speech_stopped(now, ev)
        elif kind == "input_audio_buffer.committed":
            self.barge_in.committed(now, ev)
        elif kind == "response.created":
            response = ev.get("response")
            if isinstance(response, dict) and isinstance(response.get("id"), str):
                self.responses.created(response)
                self.nudges.disarm()
        elif kind == "response.output_item.done":
            item = ev.get("item")
            if isinstance(item, dict) and item.get("type") == "function_call":
                self.ending.tool_call(now, item, ev.get("response_id"))
        elif kind == "response.done":
            self._on_response_done(now, ev)
        elif kind == "response.output_audio_transcript.done":
            item_id, text = ev.get("item_id"), ev.get("transcript")
            if isinstance(item_id, str) and isinstance(text, str):
                self.transcript.assistant(item_id).text = text
        elif kind == "conversation.item.input_audio_transcription.completed":
            item_id, text = ev.get("item_id"), ev.get("transcript")
            noise = item_id in self.turns.noise_items
            if isinstance(item_id, str) and isinstance(text, str) and not noise:
                self.transcript.caller(item_id, text)
        elif kind == "session.updated":
            if not self.realtime_ready:
                self.realtime_ready = True
                self._emit(CancelTimer(READY_TIMER))
                log_event(logger, _INFO, "realtime.ready")
        elif kind == "error":
            self._on_error(now, ev)
        elif not isinstance(kind, str):
            self._bad("realtime", "event_without_type")
        return self._flush()

    def _on_audio_delta(self, now: float, ev: dict[str, Any]) -> None:
        delta, item_id = ev.get("delta"), ev.get("item_id")
        if not is_b64(delta) or not isinstance(item_id, str):
            self._bad("realtime", "invalid_audio_delta")
            return
        if self.phase != "live" or not self.responses.audio(ev.get("response_id"), item_id):
            return  # audio of a response the caller cut off is never played
        assert isinstance(delta, str)
        if item_id not in self.playback.items:
            self.transcript.assistant(item_id)  # the bot's turn starts with its first audio
        self.nudges.disarm()
        name = self.playback.sent(now, item_id, decoded_len(delta))
        self._emit(ToTwilio(tw.media(self.stream_sid, delta)))
        self._emit(ToTwilio(tw.mark(self.stream_sid, name)))

    def _on_response_done(self, now: float, ev: dict[str, Any]) -> None:
        response = ev.get("response")
        if not isinstance(response, dict):
            self._bad("realtime", "malformed_response_done")
            return
        usage = response.get("usage")
        if isinstance(usage, dict):
            for key in self.usage:
                value = usage.get(key)
                if isinstance(value, int):
                    self.usage[key] += value
        log_event(
            logger,
            _DEBUG,
            "realtime.response_done",
            response_id=response.get("id"),
            status=response.get("status"),
        )
        self.responses.done(now, response)
        if self.done:
            return
        self.nudges.maybe_arm(now)

    def _on_error(self, now: float, ev: dict[str, Any]) -> None:
        err = ev.get("error")
        err = err if isinstance(err, dict) else {}
        if self.responses.refused(now, err):
            log_event(logger, _WARNING, "realtime.response_refused", code=err.get("code"))
            return
        code = err.get("code")
        level = _DEBUG if code in rt.BENIGN_ERROR_CODES else _WARNING
        log_event(
            logger,
            level,
            "realtime.error",
            code=code,
            error_type=err.get("type"),
            message=str(err.get("message", ""))[:300],
            param=err.get("param"),
        )

    def timer(self, now: float, name: str) -> list[Action]:
        """A timer set by a `SetTimer` action expired."""
        if self.phase == "ended":
            return self._flush()  # every timer was cancelled with the call
        if name == START_TIMER:
            if self.phase == "waiting_start":
                log_event(logger, _WARNING, "twilio.no_start")
                self._end(now, "failure", detail="no_start", close_realtime=False)
        elif name == READY_TIMER:
            if not self.realtime_ready and self.phase in ("connecting", "live"):
                log_event(logger, _ERROR, "realtime.not_ready_in_time")
                self._end(now, "failure", detail="realtime_unavailable")
        elif name == CONFIRM_TIMER:
            self.barge_in.confirm_timer(now)
        elif name in _ENDING_TIMERS:
            self.ending.timer(now, name)
        elif name in _NUDGE_TIMERS:
            self.nudges.timer(now, name)
        return self._flush()

    def refuse(self, now: float, reason: str) -> list[Action]:
        """The stream's `start` failed the I/O layer's checks (a stream token or account
        that doesn't match): close it before anything is opened for it."""
        if self.phase == "waiting_start":
            self._end(now, "failure", detail=reason, close_realtime=False)
        return self._flush()

    def shutdown(self, now: float) -> list[Action]:
        """The server is shutting down and the drain time is over: end the call through the
        media stream, so Twilio runs the fallback TwiML (which may dial a human)."""
        if self.phase != "ended":
            log_event(logger, _WARNING, "call.ended_by_shutdown")
            self._end(now, "shutdown")
        return self._flush()

    def rest_result(self, now: float, status: int, code: int | None, error: str) -> list[Action]:
        """The answer to a `RestRequest` (status 0: no answer at all)."""
        self.ending.rest_result(now, status, code, error)
        return self._flush()

    # -- ending ---------------------------------------------------------------------------

    def _end(
        self,
        now: float,
        reason: str,
        *,
        detail: str = "",
        close_twilio: bool = True,
        close_realtime: bool = True,
    ) -> None:
        """The call is over: `reason` is caller_hung_up, bot_hung_up, transferred, failure
        or max_duration; `detail` says more (realtime_lost, rest_hangup_failed, ...)."""
        self.phase = "ended"
        self.end_reason = reason
        self.end_detail = detail
        self.ended_ms = now
        for name in ALL_TIMERS:
            self._emit(CancelTimer(name))
        # The caller first: closing the stream lets Twilio run the fallback at once,
        # whatever a stalled Realtime peer does with its closing handshake.
        if close_twilio:
            self._emit(CloseTwilio(detail or reason))
        if close_realtime:
            self._emit(CloseRealtime(detail or reason))

    def summary(self, with_text: bool = True) -> dict[str, Any]:
        """The end-of-call record (logged once as `call.summary`)."""
        for item_id, played in self.playback.items.items():
            turn = self.transcript.assistant(item_id)
            turn.sent_ms = played.sent_ms
            if turn.heard_ms is None:
                turn.heard_ms = played.played_ms
        return {
            "ended": self.end_reason or "unknown",
            "end_detail": self.end_detail or None,
            "duration_s": round(max(0.0, self.ended_ms - self.started_ms) / 1000, 3),
            "barge_ins": self.barge_ins,
            "reprompts": self.nudges.reprompts_total,
            "caller_audio_ms": self.caller_audio_bytes // tw.BYTES_PER_MS,
            "bot_audio_ms": sum(i.sent_ms for i in self.playback.items.values()),
            "usage": dict(self.usage),
            "bad_input": dict(self.bad_input),
            "turns": self.transcript.to_list(with_text),
        }

    # -- plumbing -------------------------------------------------------------------------

    def _bad(self, source: str, reason: str, **fields: object) -> None:
        """Bad input: one clear log line (throttled per kind), skipped; the call goes on."""
        key = f"{source}.{reason}"
        n = self.bad_input.get(key, 0) + 1
        self.bad_input[key] = n
        if n <= _BAD_LOG_FIRST or n % _BAD_LOG_EVERY == 0:
            log_event(
                logger, _WARNING, "bad_input", source=source, reason=reason, count=n, **fields
            )

    def _instructions(self, extra: str) -> str:
        """Session instructions plus a one-off instruction, for a single response."""
        return f"{self.config.instructions}\n\n{extra}"

    def _emit(self, action: Action) -> None:
        if type(action) is ToRealtime and self.phase in ("waiting_start", "connecting"):
            self._hold(action)
            return
        self._out.append(action)

    def _hold(self, action: ToRealtime) -> None:
        """Keep a client event until the Realtime socket opens (see `_before_open`)."""
        self._before_open.append(action)
        if action.msg["type"] != "input_audio_buffer.append":
            return
        self._before_open_audio += decoded_len(action.msg["audio"])
        limit = self.config.connect_buffer_ms * tw.BYTES_PER_MS
        while self._before_open_audio > limit:
            oldest = next(a for a in self._before_open if a.msg["type"] == action.msg["type"])
            self._before_open.remove(oldest)
            self._before_open_audio -= decoded_len(oldest.msg["audio"])

    def _flush(self) -> list[Action]:
        out, self._out = self._out, []
        return out
