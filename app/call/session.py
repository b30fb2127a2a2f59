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
from app.call.config import CallConfig
from app.call.ending import PLAYOUT_TIMER, RETRY_TIMER, STOP_GRACE_TIMER, Ending
from app.call.nudges import MAX_DURATION_TIMER, SILENCE_TIMER, Nudges
from app.call.playback import Echo, PlaybackTracker
from app.call.transcript import Transcript
from app.call.turns import Start, Stop, TurnPolicy
from app.observability import log_event
from app.protocol import realtime as rt
from app.protocol import twilio as tw
from app.protocol.b64 import decoded_len, is_b64

logger = logging.getLogger("app.call")

READY_TIMER = "realtime_ready"
CONFIRM_TIMER = "interrupt_confirm"
_ENDING_TIMERS = (PLAYOUT_TIMER, RETRY_TIMER, STOP_GRACE_TIMER)
_NUDGE_TIMERS = (SILENCE_TIMER, MAX_DURATION_TIMER)
ALL_TIMERS = (READY_TIMER, CONFIRM_TIMER, *_ENDING_TIMERS, *_NUDGE_TIMERS)

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
        self.account_sid = ""
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
        self.ending = Ending(self)
        self.nudges = Nudges(self)
        self.barge_ins = 0
        self.usage: dict[str, int] = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
        self.bad_input: dict[str, int] = {}
        self.caller_audio_bytes = 0
        self._buffer: deque[str] = deque()
        self._buffer_bytes = 0
        self._active_response: str | None = None
        self._dropped_responses: set[str] = set()
        self._unheard_items: dict[str, None] = {}
        self._response_after_done = False
        self._after_done_instructions: str | None = None
        self._after_done_closing = False
        self._requested = False  # response.create sent, response.created not yet seen
        self._requested_closing = False  # ... and it asked for the closing words
        self._responses_with_audio: set[str] = set()
        self._out: list[Action] = []

    @property
    def responding(self) -> bool:
        """A response is being generated, or has been asked for."""
        return self._active_response is not None or self._requested

    @property
    def done(self) -> bool:
        """The call is over; the I/O layer can tear down."""
        return self.phase == "ended"

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
        self.stream_sid, self.call_sid, self.account_sid, self.parameters = fields
        self.started_ms = now
        self.phase = "connecting"
        claimed = self.parameters.get("CallSid")
        if claimed and claimed != self.call_sid:
            log_event(logger, _WARNING, "twilio.call_sid_mismatch", claimed=claimed)
        log_event(logger, _INFO, "call.started", caller=self.parameters.get("From"))
        self._emit(ConnectRealtime())
        self._emit(SetTimer(READY_TIMER, now + self.config.realtime_ready_timeout_ms))
        self.nudges.call_started(now)

    def _on_media(self, msg: dict[str, Any]) -> None:
        if self.phase != "live":
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
        nbytes = decoded_len(payload)
        self.caller_audio_bytes += nbytes
        if self.phase == "live":
            self._emit(ToRealtime(rt.input_audio_append(payload)))
            return
        # Connecting: keep the most recent audio so the caller's first words aren't lost.
        self._buffer.append(payload)
        self._buffer_bytes += nbytes
        limit = self.config.connect_buffer_ms * tw.BYTES_PER_MS
        while self._buffer_bytes > limit:
            self._buffer_bytes -= decoded_len(self._buffer.popleft())

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
        while self._buffer:
            self._emit(ToRealtime(rt.input_audio_append(self._buffer.popleft())))
        self._buffer_bytes = 0
        if self.config.greeting:
            self._respond_when_idle(self._instructions(self.config.greeting))
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
            self._on_speech_started(now, ev)
        elif kind == "input_audio_buffer.speech_stopped":
            self._on_speech_stopped(now, ev)
        elif kind == "input_audio_buffer.committed":
            self._on_committed(now, ev)
        elif kind == "response.created":
            response = ev.get("response")
            if isinstance(response, dict) and isinstance(response.get("id"), str):
                self._active_response = response["id"]
                if self._requested and self._requested_closing:
                    self.ending.response_created(response["id"])
                self._requested = self._requested_closing = False
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
            self._on_error(ev)
        elif not isinstance(kind, str):
            self._bad("realtime", "event_without_type")
        return self._flush()

    def _on_audio_delta(self, now: float, ev: dict[str, Any]) -> None:
        response_id = ev.get("response_id")
        delta, item_id = ev.get("delta"), ev.get("item_id")
        if response_id in self._dropped_responses or self.phase != "live":
            # Audio of a response the caller interrupted: never played. An item none of
            # whose audio reached the caller is deleted once the response is over.
            if isinstance(item_id, str) and item_id not in self.playback.items:
                self._unheard_items[item_id] = None
            return
        if not is_b64(delta) or not isinstance(item_id, str):
            self._bad("realtime", "invalid_audio_delta")
            return
        assert isinstance(delta, str)
        nbytes = decoded_len(delta)
        if isinstance(response_id, str):
            self._responses_with_audio.add(response_id)
        self.nudges.disarm()
        name = self.playback.sent(now, item_id, nbytes)
        self._emit(ToTwilio(tw.media(self.stream_sid, delta)))
        self._emit(ToTwilio(tw.mark(self.stream_sid, name)))
        self.transcript.assistant(item_id).sent_ms = self.playback.items[item_id].sent_ms

    def _on_response_done(self, now: float, ev: dict[str, Any]) -> None:
        response = ev.get("response")
        if not isinstance(response, dict):
            self._bad("realtime", "malformed_response_done")
            return
        if response.get("id") == self._active_response:
            self._active_response = None
        if response.get("id") in self._dropped_responses:
            for item_id in self._unheard_items:
                self._emit(ToRealtime(rt.item_delete(item_id)))
            self._unheard_items.clear()
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
        rid = response.get("id")
        self.ending.response_done(now, rid, rid in self._responses_with_audio)
        self._responses_with_audio.discard(rid)
        if self._response_after_done and not self.responding:
            self._response_after_done = False
            instructions, self._after_done_instructions = self._after_done_instructions, None
            closing, self._after_done_closing = self._after_done_closing, False
            self._respond_when_idle(instructions, closing=closing)
        self.nudges.maybe_arm(now)

    def _on_error(self, ev: dict[str, Any]) -> None:
        err = ev.get("error")
        err = err if isinstance(err, dict) else {}
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

    # -- barge-in -------------------------------------------------------------------------

    def _on_speech_started(self, now: float, ev: dict[str, Any]) -> None:
        item_id = ev.get("item_id") if isinstance(ev.get("item_id"), str) else None
        start_ms = ev.get("audio_start_ms")
        start_ms = start_ms if isinstance(start_ms, int) else 0
        self.nudges.disarm()
        decision = self.turns.speech_started(item_id, start_ms, self.playback.playing)
        if decision is Start.INTERRUPT:
            self._interrupt(now)
        elif decision is Start.NOTHING and self.turns.automatic and self._active_response:
            # Nothing audible yet, but the service cancels its response on speech: drop
            # whatever audio of it is still in flight rather than play a fragment.
            self._interrupt(now)
        elif decision is Start.WAIT:
            self._emit(SetTimer(CONFIRM_TIMER, now + self.turns.confirm_after_ms))

    def _on_speech_stopped(self, now: float, ev: dict[str, Any]) -> None:
        end_ms = ev.get("audio_end_ms")
        outcome = self.turns.speech_stopped(end_ms if isinstance(end_ms, int) else 0)
        if not self.turns.automatic:
            self._emit(CancelTimer(CONFIRM_TIMER))
        if outcome is Stop.TURN_INTERRUPT and self.playback.playing:
            self._interrupt(now)
        elif outcome is Stop.NOISE:
            log_event(logger, _INFO, "turn.noise_ignored")
        if outcome is not Stop.NOISE:
            self.nudges.caller_active()
        self.nudges.maybe_arm(now)

    def _on_committed(self, now: float, ev: dict[str, Any]) -> None:
        """Under the min-speech policy the bridge, not the service, answers real turns."""
        if self.turns.automatic:
            return
        item_id = ev.get("item_id")
        if isinstance(item_id, str) and item_id in self.turns.noise_items:
            self._emit(ToRealtime(rt.item_delete(item_id)))
            return
        if self._active_response is not None:
            # A turn while an older answer is still being generated: stop it, then answer
            # once the service confirms it is done (a second response would be refused).
            self._interrupt(now)
            self._response_after_done = True
        else:
            self._respond_when_idle()

    def timer(self, now: float, name: str) -> list[Action]:
        """A timer set by a `SetTimer` action expired."""
        if name == READY_TIMER:
            if not self.realtime_ready and self.phase in ("connecting", "live"):
                log_event(logger, _ERROR, "realtime.not_ready_in_time")
                self._end(now, "failure", detail="realtime_unavailable")
        elif name == CONFIRM_TIMER and self.turns.confirmed() and self.playback.playing:
            self._interrupt(now)
        elif self.phase == "ended":
            pass
        elif name in _ENDING_TIMERS:
            self.ending.timer(now, name)
        elif name in _NUDGE_TIMERS:
            self.nudges.timer(now, name)
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

    def _interrupt(self, now: float) -> None:
        """Stop the bot: silence what the caller hears, and make the model remember only that.

        Order matters: Twilio `clear` first (the caller stops hearing the bot at once), then
        `response.cancel` (stop generating; "not active" is an expected answer when the
        service already cancelled by itself), then truncate the item being heard at the
        heard position, never past the audio received for it. Items of which nothing was
        heard are deleted instead (the service rejects a truncate before any audio), and
        audio of the cancelled response that is still in flight is dropped, never played.
        """
        heard = self.playback.heard(now)
        audible = self.playback.playing
        queued: list[str] = []
        if audible:
            self.barge_ins += 1
            queued = self.playback.clear()
            self._emit(ToTwilio(tw.clear(self.stream_sid)))
        self._emit(ToRealtime(rt.response_cancel()))
        if self._active_response is not None:
            self._dropped_responses.add(self._active_response)
        for item_id in queued:
            turn = self.transcript.assistant(item_id)
            turn.interrupted = True
            sent_ms = self.playback.items[item_id].sent_ms
            heard_ms = min(heard.ms, sent_ms) if heard and heard.item_id == item_id else 0
            turn.heard_ms = heard_ms
            if heard_ms > 0:
                self._emit(ToRealtime(rt.item_truncate(item_id, heard_ms)))
            else:
                self._emit(ToRealtime(rt.item_delete(item_id)))
        if audible:
            self.ending.call_off(now)  # after the model's memory is fixed, tell it
        log_event(
            logger,
            _INFO,
            "turn.barge_in" if audible else "turn.response_dropped",
            item_id=heard.item_id if heard else None,
            heard_ms=heard.ms if heard else 0,
        )

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
        if close_realtime:
            self._emit(CloseRealtime(detail or reason))
        if close_twilio:
            self._emit(CloseTwilio(detail or reason))

    def summary(self, with_text: bool = True) -> dict[str, Any]:
        """The end-of-call record (logged once as `call.summary`)."""
        for item_id, played in self.playback.items.items():
            turn = self.transcript.assistant(item_id)
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

    def _respond_when_idle(self, instructions: str | None = None, *, closing: bool = False) -> None:
        """Ask for a response now, or as soon as the current one is done (the service
        refuses a second active response). `closing`: it carries the last words of a
        deliberate ending, which then waits for exactly that response."""
        if self.responding:
            self._response_after_done = True
            self._after_done_instructions = instructions or self._after_done_instructions
            self._after_done_closing = self._after_done_closing or closing
        else:
            self._requested = True
            self._requested_closing = closing
            self._emit(ToRealtime(rt.response_create(instructions)))

    def _emit(self, action: Action) -> None:
        self._out.append(action)

    def _flush(self) -> list[Action]:
        out, self._out = self._out, []
        return out
