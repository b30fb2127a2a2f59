"""CallSession: the whole decision logic of one phone call, without I/O.

Inputs are the messages of the two sockets (already JSON-parsed dicts), socket lifecycle
events and REST answers, each stamped with the call time in ms; each returns the list of
`app.call.actions` to carry out, in order. The core keeps its own timers: the driver wakes
it at `deadline` and calls `advance` (the contract is in `app.call.outbox`). Nothing here
reads a clock, sleeps or touches a socket, so a recorded call replays deterministically.

The call's phases and its ending's stages move only along the rows of `app.call.state`
(read that table first). This class is the coordinator: it turns each input into the
components' calls and their outcomes into the call's next steps. The components (barge-in,
responses, ending, nudges) never call each other or this class: they get the outbox and
the state they read, and return outcomes.

Audio passes straight through: Twilio's base64 payload becomes `input_audio_buffer.append`
as the same string; each `response.output_audio.delta` becomes a Twilio `media` message
with the same string, followed by a uniquely named `mark` so that `PlaybackTracker` knows
what the caller has really heard. Payloads are never decoded nor validated: only their
type and length (a multiple of 4, as base64 is) are checked. `caller_audio` and
`bot_audio` are the audio path's two entry points, which the live driver calls directly
(building the frames itself) and `feed` calls for every other driver.

Every other message is checked once, as it is read, against the shape of its kind
(`app.call.inbound`: the fields a decision depends on, and their JSON types); one that
doesn't fit is reported as bad input and skipped, so a handler never meets a list where
an id should be. A peer's value reaches a log line only checked, or through
`inbound.preview`.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Final

from app.call.actions import (
    Action,
    CheckVoice,
    CloseRealtime,
    CloseTwilio,
    ConnectRealtime,
    FindPause,
    Measure,
    Metric,
)
from app.call.bargein import BargeIn, Held
from app.call.config import CallConfig
from app.call.ending import (
    CLOSING_WORDS,
    TOOL_ENDINGS,
    TOOL_RESULT,
    Ending,
    Progress,
    RestVerdict,
    tool_reason,
)
from app.call.falseturn import (
    JUDGE_LIMIT_MS,
    TRANSCRIPT_WAIT_MS,
    VOICE_WINDOW_MS,
    FalseTurns,
    Suspect,
    Verdict,
)
from app.call.inbound import (
    FUNCTION_CALL,
    MCP_EVENT,
    MCP_ITEM,
    REALTIME,
    TWILIO,
    Shape,
    int_or,
    malformed,
    preview,
    short,
    text_or,
)
from app.call.mcp import EVENTS as MCP_EVENTS
from app.call.mcp import ITEM_TYPES as MCP_ITEM_TYPES
from app.call.mcp import McpCalls
from app.call.measures import Measures
from app.call.nudges import SILENCE_GOODBYE, WRAP_UP, Nudges, Silence
from app.call.opening import (
    ANSWERED_BY,
    DEFAULT_OUTBOUND_GREETING,
    REACHED_VOICEMAIL,
    VOICEMAIL,
    Opening,
    Step,
)
from app.call.outbox import Outbox, Timer, logged, tally
from app.call.playback import BYTES_PER_MS, Chunk, Echo, PlaybackTracker
from app.call.responses import Refusal, Responses
from app.call.resume import Resume, around, plan
from app.call.setup import automatic_turns, session_update
from app.call.state import PHASES, WORDS_STAGES, Input, Machine, Phase, Stage
from app.call.toolcalls import Flush, ToolCalls
from app.call.transcript import Transcript
from app.call.turns import Start, Stop, TurnPolicy
from app.observability import log_event
from app.protocol import realtime as rt
from app.protocol import twilio as tw
from app.protocol.b64 import decoded_len

logger = logging.getLogger("app.call")

#: What the model is told to say while a slow tool runs (its words: the tool's filler).
FILLER: Final = 'A tool is still working. Say only this, in the language of the call: "{text}"'

#: Resume mode: how long a false turn's resume waits for the driver to find the pause
#: (it answers at once; this bounds a driver that doesn't), and how far before the heard
#: position a resume starts without one (marks know the position to about a frame).
RESUME_WAIT_MS: Final = 100
RESUME_LEAD_MS: Final = 20

#: Outbound: the least time from the Realtime session's opening to a greeting unasked.
GREET_AFTER_OPEN_MS: Final = 800

#: A media stream that never sends `start` is closed after this long.
START_TIMEOUT_MS: Final = 10_000

#: Server events the core ignores whatever they carry: a driver may drop them unparsed
#: (a test feeds each to a live call and checks nothing happens).
IGNORED_EVENTS: Final = frozenset(
    {
        "session.created",
        "rate_limits.updated",
        "response.output_item.added",
        "response.content_part.added",
        "response.content_part.done",
        "response.output_audio.done",
        "response.output_audio_transcript.delta",
        "response.output_text.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "conversation.item.added",
        "conversation.item.created",
        "conversation.item.truncated",
        "conversation.item.deleted",
        "conversation.item.input_audio_transcription.delta",
        "input_audio_buffer.cleared",
    }
)

_DEBUG = logging.DEBUG
_INFO = logging.INFO
_WARNING = logging.WARNING
_ERROR = logging.ERROR


def _frame_reason(reason: object) -> str:
    """The bad-input kind of a frame the driver could not parse (its reason, if sane)."""
    return text_or(reason, "", 40) or "frame_error"


def _audio_ok(text: object) -> bool:
    """Shape only, never content: a non-empty string whose length base64 could have."""
    return type(text) is str and len(text) > 0 and len(text) % 4 == 0


class CallSession:
    """One call, from Twilio's `start` to the end of both sockets."""

    def __init__(self, config: CallConfig, *, replaying: bool = False) -> None:
        """`replaying`: fed from a call fixture (`app.replay`): a redacted tool argument's
        recorded verdict is taken as the live call's (`app.call.toolcalls`)."""
        self._replaying = replaying
        self.out = Outbox(config.connect_buffer_ms)
        self.phase: Machine[Phase] = Machine("phase", PHASES, Phase.WAITING_START)
        self.stream_sid = ""
        self.call_sid = ""
        self.parameters: dict[str, str] = {}
        self.started_ms = 0.0
        self.ended_ms = 0.0
        self.end_reason = ""
        self.end_detail = ""
        self.realtime_ready = False
        self.playback = PlaybackTracker()
        self.transcript = Transcript()
        self.responses = Responses(self.out)
        self.barge_in = BargeIn(self.out, self.playback, self.transcript)
        self.measures = Measures(self.out)
        self._configure(config)
        #: A tool batch's answer waits to learn whether the caller's speech was a turn.
        self._tool_answer_owed = False
        #: The last words have played, but a tool of theirs still runs ("booked, goodbye").
        self._ending_waits_for_tools = False
        self.usage: dict[str, int] = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
        self.caller_audio_bytes = 0
        #: `error` events from the service by code (refusals of our requests excluded).
        self.realtime_errors: dict[str, int] = {}

    def _configure(self, config: CallConfig) -> None:
        self.config = config
        server_vad = config.turn_detection == "server_vad"
        silence_ms = config.vad_silence_duration_ms if server_vad else 500
        resume = config.interrupt_mode == "resume" and config.interrupt_min_speech_ms == 0
        self.turns = TurnPolicy(
            config.interrupt_min_speech_ms, config.vad_prefix_padding_ms, silence_ms, resume=resume
        )
        #: Resume mode's judge of speech over the bot (None in cancel mode).
        self.false_turns: FalseTurns | None = None
        if resume:
            self.false_turns = FalseTurns(
                decide_ms=config.interrupt_decide_ms,
                prefix_padding_ms=config.vad_prefix_padding_ms,
                silence_ms=silence_ms,
                backchannels=config.backchannels,
                transcribing=config.transcription_model is not None,
                local_vad=config.local_vad is not None,
            )
        #: The paused answer while speech over it is judged (resume mode).
        self.held: Held | None = None
        self.false_turn_count = 0
        self.resume_count = 0
        self.ending = Ending(self.out, config)
        #: How the conversation starts (an outbound call waits for the callee's hello).
        self.opening = Opening(
            outbound=config.direction == "outbound",
            machine_detection=config.machine_detection,
            greet_silence_ms=config.greet_silence_ms,
            amd_wait_ms=config.amd_wait_ms,
            amd_limit_ms=config.amd_limit_ms,
        )
        #: An answering-machine verdict that came before the Realtime session opened.
        self._early_verdict: str | None = None
        self.nudges = Nudges(self.out, config)
        self.tools = ToolCalls(self.out, config, self.measures, trust_redacted=self._replaying)
        labels = tuple(str(entry.get("server_label")) for entry in config.mcp_servers)
        self.mcp = McpCalls(self.out, self.measures, labels)

    def configure(self, config: CallConfig) -> None:
        """The call's own configuration (its agent's), learned from its `start` before the
        `start` is fed: only before the call has started."""
        if self.phase.state is not Phase.WAITING_START:
            raise RuntimeError("a call is configured before its start")
        self._configure(config)

    # -- questions ------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """The call is over; the I/O layer can tear down."""
        return self.phase.state is Phase.ENDED

    @property
    def responding(self) -> bool:
        """A response is being generated, or has been asked for."""
        return self.responses.responding

    @property
    def barge_ins(self) -> int:
        return self.barge_in.count

    @property
    def deliberate(self) -> bool:
        """The bridge ended the call itself (Twilio accepted the REST update): the `stop`
        and closes that follow are the expected end, not failures."""
        return self.ending.stage is Stage.DONE

    @property
    def bad_input(self) -> dict[str, int]:
        return self.out.bad_input

    @property
    def deadline(self) -> float | None:
        """When the driver must wake the core (`advance`), in call ms; None: no timer."""
        return self.out.deadline

    # -- the driver's entry points ------------------------------------------------------------

    def opened(self, now: float) -> list[Action]:
        """The media stream socket was accepted: `start` must follow soon."""
        self.out.set_timer(Timer.START, now + START_TIMEOUT_MS)
        return self.out.take()

    def advance(self, now: float) -> list[Action]:
        """Fire every timer due at or before `now`, each at its own deadline."""
        self._advance(now)
        return self.out.take()

    def feed(self, now: float, direction: str, msg: dict[str, Any]) -> list[Action]:
        """Any input, in the form a call fixture records it (see `app.recording_lines`).

        `direction` is `from_twilio`, `from_openai` or `rest`. Besides protocol messages,
        `{"_socket": ...}` records a socket event, `{"_frame_error": reason}` a frame that
        could not be parsed, and `{"response": {...}}` (direction `rest`) a REST answer.
        A Realtime message while no Realtime socket is open (before the call is live) is
        bad input: nothing could have sent it.
        The live bridge and the replayer both feed inputs through here (or through the two
        audio entry points), so both run the very same code. Timers due by `now` fire first.
        """
        self._advance(now)
        if self.phase.state is Phase.ENDED:
            return self.out.take()
        if direction == "from_twilio":
            if "_socket" in msg:
                if msg["_socket"] in ("stalled", "idle"):  # not reading, or not sending
                    self._twilio_stalled(now, f"twilio_{msg['_socket']}")
                else:
                    self._twilio_gone(now)
            elif "_frame_error" in msg:
                self.out.bad("twilio", _frame_reason(msg["_frame_error"]))
            else:
                self._twilio_message(now, msg)
        elif direction == "from_openai":
            socket = msg.get("_socket")
            if socket == "open":
                self._realtime_open(now)
            elif socket == "failed":
                self._realtime_failed(now, text_or(msg.get("reason"), ""))
            elif socket == "closed":
                code = int_or(msg.get("code"), None)
                self._realtime_closed(now, code, text_or(msg.get("reason"), ""))
            elif "_frame_error" in msg:
                self.out.bad("realtime", _frame_reason(msg["_frame_error"]))
            elif self.phase.state is not Phase.LIVE:
                # No socket is open to have sent it: acting on it (a tool call before
                # `start`) would take the call along rows its phase doesn't have.
                self.out.bad("realtime", "event_before_open")
            else:
                self._realtime_message(now, msg)
        elif direction == "rest":
            if "tool_result" in msg:
                self._tool_result(now, msg["tool_result"])
            elif "voice" in msg:
                self._voice(now, msg["voice"])
            elif "pause" in msg:
                self._pause_found(now, msg["pause"])
            elif "answered_by" in msg:
                self._answered_by(now, msg["answered_by"])
            else:
                self._rest_answer(now, msg.get("response"))
        else:
            raise ValueError(f"not an input: {direction}")
        return self.out.take()

    def caller_audio(self, payload: object) -> bool:
        """A Twilio `media` payload: True when it goes to the Realtime socket now, as
        `input_audio_buffer.append` (the caller builds the frame); False when it was held
        for the socket to open, or skipped."""
        phase = self.phase.state
        if phase is Phase.WAITING_START:
            self.out.bad("twilio", "media_before_start")
            return False
        if phase is Phase.ENDED:
            return False
        if not _audio_ok(payload):
            self.out.bad("twilio", "invalid_audio_payload")
            return False
        self.caller_audio_bytes += decoded_len(payload)  # type: ignore[arg-type]
        if phase is Phase.LIVE:
            return True
        self.out.realtime(rt.input_audio_append(payload))  # type: ignore[arg-type]  # held
        return False

    def bot_audio(self, now: float, ev: dict[str, Any]) -> str | None:
        """A `response.output_audio.delta`: the name of the mark to send after its audio
        when it is to be played (the caller sends `media` then `mark`), else None."""
        delta, item_id, rid = ev.get("delta"), ev.get("item_id"), ev.get("response_id")
        if not _audio_ok(delta) or type(item_id) is not str or type(rid) is not str:
            self.out.bad("realtime", "invalid_audio_delta")
            return None
        new_item = item_id not in self.playback.items
        if self.phase.state is not Phase.LIVE or not self.responses.audio(
            rid, item_id, new_item=new_item
        ):
            return None  # audio of a response the caller cut off is never played
        if new_item:
            self.transcript.assistant(item_id)  # the bot's turn starts with its first audio
            self.measures.audio_sent(item_id, rid)
        self.nudges.disarm()
        nbytes = decoded_len(delta)  # type: ignore[arg-type]
        held = self.held
        if held is not None:  # paused: kept for the resume, not played (yet)
            start = self.playback.received(item_id, nbytes)
            held.chunks.append(Chunk(item_id, start, nbytes, delta))  # type: ignore[arg-type]
            return None
        return self.playback.sent(now, item_id, nbytes, delta)  # type: ignore[arg-type]

    def refuse(self, now: float, reason: str, start: dict[str, Any] | None = None) -> list[Action]:
        """The stream's `start` failed the I/O layer's checks (a stream token or account
        that doesn't match, no slot left): close it before anything is opened for it. The
        `start`'s SIDs and parameters are kept, for the record of a real call refused."""
        if self.phase.state is Phase.WAITING_START:
            fields = tw.start_fields(start) if start is not None else None
            if fields is not None:
                self.stream_sid, self.call_sid, _, self.parameters = fields
                self.started_ms = now
            self._end(now, Input.START_REFUSED, "failure", detail=reason, close_realtime=False)
        return self.out.take()

    def shutdown(self, now: float) -> list[Action]:
        """The server is shutting down and the drain time is over: end the call through the
        media stream, so Twilio runs the fallback TwiML (which may dial a human)."""
        if self.phase.state is not Phase.ENDED:
            log_event(logger, _WARNING, "call.ended_by_shutdown")
            self._end(now, Input.SHUTDOWN, "shutdown")
        return self.out.take()

    def crashed(self, now: float) -> None:
        """The driver caught an error of ours: the call is over (it tears everything down)."""
        if self.phase.state is not Phase.ENDED:
            self.phase.move(Input.CRASHED)
            self.end_reason, self.ended_ms = "bridge_error", now
            self.tools.ended(now)  # for the record (the driver cancels every task)
            self.out.cancel_all_timers()

    # -- Twilio ---------------------------------------------------------------------------

    def _fit(self, source: str, shape: Shape | None, msg: dict[str, Any]) -> bool:
        """Whether `msg` holds every field its handler decides on with the right type
        (`app.call.inbound`); if not, it is reported as bad input, to be skipped."""
        if shape is None:
            return True
        where = malformed(msg, shape)
        if where is None:
            return True
        self.out.bad(source, shape.reason, field=where)
        return False

    def _twilio_message(self, now: float, msg: dict[str, Any]) -> None:
        event = msg.get("event")
        if event == "media":
            media = msg.get("media")
            payload = media.get("payload") if type(media) is dict else None
            if self.caller_audio(payload):
                self.out.realtime(rt.input_audio_append(payload))  # type: ignore[arg-type]
            return
        if type(event) is not str:
            self.out.bad("twilio", "unknown_event", event=preview(event))
            return
        if not self._fit("twilio", TWILIO.get(event), msg):
            return
        if event == "mark":
            self._on_mark(now, msg)
        elif event == "start":
            self._on_start(now, msg)
        elif event == "stop":
            self._twilio_gone(now)
        elif event == "connected":
            log_event(logger, _DEBUG, "twilio.connected", protocol=preview(msg.get("protocol")))
        elif event == "dtmf":
            if self.opening.deaf:
                if not self.opening.open:  # a key is as good as a hello: someone is there
                    self._opening_step(now, self.opening.committed())
                return
            if self.false_turns is not None and self.false_turns.pending:
                self._verdict(now, self.false_turns.key_pressed())  # a key is a turn
            if self.nudges.dtmf(msg["dtmf"]["digit"], self.ending.committed):
                self._caller_spoke(now)  # a key press is the caller's turn
                self.measures.unanswered()  # the answer is to the key, not to speech
                self.responses.request()
        else:
            self.out.bad("twilio", "unknown_event", event=preview(event))

    def _on_start(self, now: float, msg: dict[str, Any]) -> None:
        if self.phase.state is not Phase.WAITING_START:
            self.out.bad("twilio", "duplicate_start")
            return
        fields = tw.start_fields(msg)
        if fields is None:
            self.out.bad("twilio", "malformed_start")
            return
        self.stream_sid, self.call_sid, _, self.parameters = fields
        self.started_ms = now
        self.out.cancel_timer(Timer.START)
        self.phase.move(Input.START)
        claimed = self.parameters.get("CallSid")
        if claimed and claimed != self.call_sid:
            log_event(logger, _WARNING, "twilio.call_sid_mismatch", claimed=short(claimed))
        log_event(logger, _INFO, "call.started", caller=short(self.parameters.get("From")))
        self.out.emit(ConnectRealtime())
        self.out.set_timer(Timer.READY, now + self.config.realtime_ready_timeout_ms)

    def _on_mark(self, now: float, msg: dict[str, Any]) -> None:
        name: str = msg["mark"]["name"]
        result = self.playback.echo(now, name)
        if result is Echo.PLAYED:
            self.measures.played(now, self.playback.items)
            if not self.playback.playing:
                self._ending_played_out(now)
                self._maybe_arm(now)
        elif result is Echo.UNKNOWN:
            self.out.bad("twilio", "unknown_mark")
        elif result is Echo.CLEARED:
            log_event(logger, _DEBUG, "playback.cleared_echo", mark=short(name))

    def _twilio_gone(self, now: float) -> None:
        """The media stream ended (`stop`, or the socket closed without one)."""
        if self.deliberate:  # Twilio ending the stream after our own REST update
            self._end(now, Input.TWILIO_GONE, self.end_reason, close_twilio=False)
        elif self.ending.stage is Stage.TAIL and self.ending.kind == "hangup":
            # The caller hung up on the last word's tail: the goodbye was said.
            self._end(now, Input.TWILIO_GONE, self.ending.intended_reason(), close_twilio=False)
        elif self.ending.stage is Stage.REST:
            self.ending.stream_ended()
            self._end(now, Input.TWILIO_GONE, self.ending.intended_reason(), close_twilio=False)
        else:
            self._end(now, Input.TWILIO_GONE, "caller_hung_up", close_twilio=False)

    def _twilio_stalled(self, now: float, detail: str) -> None:
        """The caller's side is stuck: the driver could not hand Twilio its frames
        (`twilio_stalled`), or Twilio sent none for STREAM_IDLE_SECONDS (`twilio_idle`)."""
        if self.phase.state is Phase.LIVE:
            self._end(now, Input.TWILIO_STALLED, "failure", detail=detail)

    # -- Realtime -------------------------------------------------------------------------

    def _realtime_open(self, now: float) -> None:
        """The Realtime socket is open: configure the session, flush what was held, greet."""
        if self.phase.state is not Phase.CONNECTING:
            return
        self.phase.move(Input.REALTIME_OPEN)
        # The time limit counts from the start, but only a call that can speak can wrap up.
        self.nudges.call_started(self.started_ms, now)
        if self.opening.outbound:
            self.out.open_realtime(session_update(self.config, hold=True))
            self._opening_timers(now)
            if self._early_verdict is not None:
                self._act_on_verdict(now, self._early_verdict)
            return
        self.out.open_realtime(session_update(self.config))
        if self.config.greeting and not self.responding:
            self.responses.request(self._instructions(self.config.greeting), droppable=True)

    def _realtime_failed(self, now: float, reason: str) -> None:
        """The Realtime socket could not be opened (after the bridge's bounded retries)."""
        if self.phase.state is Phase.CONNECTING:
            log_event(logger, _ERROR, "realtime.unavailable", reason=reason)
            detail = "realtime_unavailable"
            self._end(now, Input.REALTIME_FAILED, "failure", detail=detail, close_realtime=False)

    def _realtime_closed(self, now: float, code: int | None, reason: str) -> None:
        """The Realtime socket closed under us."""
        if self.deliberate:
            log_event(logger, _DEBUG, "realtime.closed_after_ending", code=code)
        elif self.phase.state in (Phase.CONNECTING, Phase.LIVE):
            log_event(logger, _ERROR, "realtime.lost", code=code, reason=reason)
            detail = "realtime_lost"
            self._end(now, Input.REALTIME_LOST, "failure", detail=detail, close_realtime=False)

    def _realtime_message(self, now: float, ev: dict[str, Any]) -> None:
        kind = ev.get("type")
        if kind == "response.output_audio.delta":
            name = self.bot_audio(now, ev)
            if name is not None:
                for part in tw.media_parts(ev["delta"]):  # the driver's fast path does the same
                    self.out.twilio(tw.media(self.stream_sid, part))
                self.out.twilio(tw.mark(self.stream_sid, name))
            return
        if type(kind) is not str:
            self.out.bad("realtime", "event_without_type")
            return
        if not self._fit("realtime", REALTIME.get(kind), ev):
            return
        if kind == "input_audio_buffer.speech_started":
            self._speech_started(now, ev)
        elif kind == "input_audio_buffer.speech_stopped":
            self._speech_stopped(now, ev)
        elif kind == "input_audio_buffer.committed":
            self._committed(now, ev)
        elif kind == "response.created":
            response = ev["response"]
            self.measures.response_created(response["id"])
            self.tools.turn_answering()
            if self.responses.created(response):
                self.ending.response_created(response["id"])
            self.nudges.disarm()
        elif kind == "response.output_item.done":
            item = ev["item"]
            item_type = item.get("type")
            if item_type == "function_call" and self._fit("realtime", FUNCTION_CALL, item):
                self._function_call(now, item, ev.get("response_id"))
            elif item_type in MCP_ITEM_TYPES and self._fit("realtime", MCP_ITEM, item):
                self._mcp_item(now, item)
        elif kind == "conversation.item.done":
            done = ev.get("item")
            if (
                type(done) is dict
                and done.get("type") in MCP_ITEM_TYPES
                and self._fit("realtime", MCP_ITEM, done)
            ):
                self._mcp_item(now, done)
        elif kind in MCP_EVENTS:
            if self._fit("realtime", MCP_EVENT, ev):
                self.mcp.event(now, kind, ev["item_id"])
        elif kind == "response.done":
            self._response_done(now, ev)
        elif kind == "response.output_audio_transcript.done":
            item_id: str = ev["item_id"]
            turn = self.transcript.assistant(item_id)
            turn.text = ev["transcript"]
            if item_id not in self.playback.items:  # its answer was cut off first
                turn.interrupted, turn.heard_ms = True, 0
        elif kind == "conversation.item.input_audio_transcription.completed":
            ft = self.false_turns
            if ft is not None:
                echo = ft.suspect.echo_item if ft.suspect is not None else None
                bot_text = self.transcript.assistant(echo).text if echo else ""
                self._verdict(now, ft.transcript(ev["item_id"], ev["transcript"], bot_text))
            if ev["item_id"] not in self.turns.noise_items:
                self.transcript.caller(ev["item_id"], ev["transcript"])
        elif kind == "conversation.item.input_audio_transcription.failed":
            ft = self.false_turns
            if ft is not None and ft.owns(ev.get("item_id")):
                self._verdict(now, ft.no_words())
        elif kind == "session.updated":
            if not self.realtime_ready:
                self.realtime_ready = True
                self.out.cancel_timer(Timer.READY)
                log_event(logger, _INFO, "realtime.ready")
        elif kind == "error":
            self._on_error(now, ev)

    def _response_done(self, now: float, ev: dict[str, Any]) -> None:
        response: dict[str, Any] = ev["response"]
        usage = response.get("usage")
        if usage is not None:
            for key in self.usage:
                value = usage.get(key)
                if value is not None:
                    self.usage[key] += value
        log_event(
            logger,
            _DEBUG,
            "realtime.response_done",
            response_id=short(response["id"]),
            status=short(response.get("status")),
        )
        ft = self.false_turns
        if ft is not None and ft.pending and self.held is not None:
            details = response.get("status_details")
            reason = details.get("reason") if type(details) is dict else None
            if response.get("status") == "cancelled" and reason == "turn_detected":
                self._verdict(now, ft.service_cancelled())
        finished = self.responses.done(response)
        self.measures.response_done(finished.response_id)
        self.tools.response_done(finished.response_id)
        if finished.failing and not self.ending.committed:
            self._responses_failing(now)
            return
        progress = self.ending.response_done(
            now,
            finished.response_id,
            finished.had_audio,
            self._bot_holds_floor,
            self.playback.queued_ms(),
        )
        if progress is Progress.ASK_FOR_WORDS:
            words = self._instructions(CLOSING_WORDS[self.ending.kind])
            self.responses.request(words, closing=True)
        elif progress is Progress.PLAYED_OUT:
            self._ending_played_out(now)
        if not self.done:
            self._flush_tools(now)
        self.responses.send_waiting()
        if not self.done:
            self._maybe_arm(now)

    def _on_error(self, now: float, ev: dict[str, Any]) -> None:
        err: dict[str, Any] = ev["error"]
        code: str | None = err.get("code")
        self.measures.realtime_error(str(code)[:60])
        refusal = self.responses.refused(err)
        if refusal is not None:
            log_event(logger, _WARNING, "realtime.response_refused", code=short(err.get("code")))
            if refusal is Refusal.FAILING and not self.ending.committed:
                self._responses_failing(now)
            elif refusal is Refusal.FAILED:
                self.responses.send_waiting()  # what waited behind it is still wanted
            if not self.done:
                self._maybe_arm(now)  # nothing is coming: the line may be quiet now
            return
        n = tally(self.realtime_errors, str(code)[:60])
        if logged(n):  # a bad frame every 20 ms would be a line every 20 ms
            log_event(
                logger,
                _DEBUG if code in rt.BENIGN_ERROR_CODES else _WARNING,
                "realtime.error",
                code=short(code),
                count=n,
                error_type=text_or(err.get("type"), None, 60),
                message=text_or(err.get("message"), "", 300),
                param=text_or(err.get("param"), None, 60),
            )

    def _responses_failing(self, now: float) -> None:
        """Answers keep failing (quota, outage): a caller must not sit through silence."""
        failed = self.responses.failed_in_row
        log_event(logger, _ERROR, "realtime.responses_failing", failed_in_row=failed)
        self._end(now, Input.RESPONSES_FAILING, "failure", detail="responses_failing")

    def _function_call(self, now: float, item: dict[str, Any], response_id: str | None) -> None:
        """A function-call item of the model's finished (`response.output_item.done`)."""
        name: str | None = item.get("name")
        if item.get("status") != "completed":
            # Cut off while its arguments were being written: they may be truncated.
            log_event(logger, _INFO, "tool.ignored_incomplete", tool=short(name))
            label = None if self.tools.offers(name) or name in self.config.tools else "unknown"
            self.measures.tool_call(
                short(name) or "?", "cancelled", label=label, detail="incomplete"
            )
            return
        rid = response_id or ""
        cut_off = self.responses.was_cut_off(response_id)
        if self.tools.offers(name):
            self.tools.call(now, item, rid, cut_off)
            self._flush_tools(now)
            return
        kind = TOOL_ENDINGS.get(name) if name is not None else None
        if kind is None or name not in self.config.tools:
            self.tools.unknown(now, item, rid)
            self._flush_tools(now)
            return
        if item["call_id"] in self.tools.runs:  # a repeated item: it was answered once
            self.out.bad("realtime", "duplicate_call_id")
            return
        if cut_off:
            # The caller cut that response off: whatever it asked for, they are still
            # talking, and nobody hangs up or transfers on them.
            log_event(logger, _INFO, "tool.ignored_interrupted", tool=name)
            self.measures.tool_call(name, "cancelled", detail="interrupted")
            self._builtin_output(now, item, rid, '{"error": "not done: the caller interrupted"}')
            return
        if self.ending.stage is not Stage.NONE:
            self.measures.tool_call(name, "ok")
            self._builtin_output(now, item, rid, '{"result": "already ending"}')
            return
        reason = tool_reason(item.get("arguments"))
        if reason is None:
            self.out.bad("realtime", "bad_tool_arguments")  # the model's intent is its name
            reason = "unspecified"
        log_event(logger, _INFO, "tool.called", tool=name, reason=reason)
        self.measures.tool_call(name, "ok")
        self.ending.from_tool(now, kind, reason, response_id)
        self._builtin_output(now, item, rid, json.dumps(TOOL_RESULT[kind]))

    def _builtin_output(self, now: float, item: dict[str, Any], rid: str, output: str) -> None:
        """A built-in tool's output, in its place among the response's tool outputs."""
        if self.tools.answered(now, item, rid, output):
            self._flush_tools(now)

    def _tool_result(self, now: float, answer: object) -> None:
        """A business tool's outcome (`RunTool` answered)."""
        if type(answer) is not dict:
            self.out.bad("rest", "malformed_tool_result")
            return
        if self.tools.result(now, answer):
            self._flush_tools(now)
            self._maybe_arm(now)

    def _flush_tools(self, now: float) -> None:
        """Send the tool outputs due; a batch complete and unanswered gets its answer."""
        for want in self.tools.flush(self.responding):
            if want is not Flush.NOTHING:
                self._answer_tools(no_tools=want is Flush.ANSWER_NO_TOOLS)
        if self._ending_waits_for_tools and not self.tools.running:
            self._ending_waits_for_tools = False
            self._ending_played_out(now)

    def _answer_tools(self, *, no_tools: bool = False) -> None:
        if self.ending.stage is not Stage.NONE:
            return  # the ending says the last words
        if self.turns.current is not None or self._judging:
            self._tool_answer_owed = True  # a turn, or noise? its verdict knows
            return
        self.responses.withdraw_fillers()
        if no_tools:
            log_event(logger, _WARNING, "tool.rounds_limit", rounds=self.tools.rounds)
        self.responses.request(droppable=True, tool_answer=True, no_tools=no_tools)

    def _caller_spoke(self, now: float) -> None:
        """The caller is taking a turn: `cancel` tools stop; open batches won't answer
        before it; a filler or a tools' answer not yet started is not said over them."""
        self._tool_answer_owed = False
        if self.tools.runs:
            self.responses.withdraw_tool_speech()
            self.tools.caller_spoke(now)
            self._flush_tools(now)

    def _mcp_item(self, now: float, item: dict[str, Any]) -> None:
        reply = self.mcp.item(now, item)
        if reply is not None:
            self.out.realtime(reply)
            self.responses.request(droppable=True)  # the model tells the caller

    @property
    def _bot_holds_floor(self) -> bool:
        """The bot's answer is playing, or paused while speech over it is judged."""
        return self.playback.playing or self.held is not None

    @property
    def _judging(self) -> bool:
        """Speech over the bot awaits its verdict (resume mode)."""
        return self.false_turns is not None and self.false_turns.pending

    def _line_quiet(self) -> bool:
        """Neither the bot nor the caller is speaking, and the call isn't ending."""
        return (
            not self._bot_holds_floor
            and not self.responding
            and self.turns.current is None
            and not self._judging
            and self.ending.stage is Stage.NONE
        )

    def _filler_timer(self, now: float) -> None:
        spec = self.tools.filler_due(now, self._line_quiet())
        if spec is not None:
            log_event(logger, _INFO, "tool.filler", tool=spec.name)
            text = self._instructions(FILLER.format(text=spec.filler_text))
            self.responses.request(text, droppable=True, filler=True)

    # -- the caller's speech ------------------------------------------------------------------

    def _speech_started(self, now: float, ev: dict[str, Any]) -> None:
        start_ms: int = ev.get("audio_start_ms") or 0
        self.nudges.disarm()
        if self.opening.deaf:  # the callee's hello, or a voicemail's recorder
            self.opening.speech_started()
            return
        self.measures.speech_started(now)
        decision = self.turns.speech_started(ev.get("item_id"), start_ms, self.playback.playing)
        if self.false_turns is not None:
            # Over the bot: it is heard, or an answer of its is being made or asked for.
            over_bot = self._bot_holds_floor or self.responses.responding
            item_id = ev.get("item_id")
            if over_bot or self.false_turns.pending:
                self._suspect(now, item_id if type(item_id) is str else None, start_ms)
            elif self.ending.active:
                self._call_off(now)  # speech while the bot is silent is a turn
            return
        if self.turns.automatic:
            self._caller_spoke(now)  # the service takes any speech as a turn
        if decision is Start.INTERRUPT:
            self._interrupt(now)
        elif decision is Start.NOTHING and self.turns.automatic and self.responses.active:
            # Nothing audible yet, but the service cancels its response on speech: drop
            # whatever audio of it is still in flight rather than play a fragment.
            self._interrupt(now)
        elif decision is Start.WAIT:
            self.out.set_timer(Timer.CONFIRM, now + self.turns.confirm_after_ms)
        if decision is Start.NOTHING and self.ending.active:
            # Speech while the bot is silent is a turn: the caller spoke before the last
            # words were audible, so nobody hangs up or transfers on top of them.
            self._call_off(now)

    def _speech_stopped(self, now: float, ev: dict[str, Any]) -> None:
        audio_end_ms: int = ev.get("audio_end_ms") or 0
        if self.opening.deaf:
            self.opening.speech_stopped()
            if not self.opening.open:
                self.measures.turn_ended(now)  # the greeting answers the hello
            return
        ft = self.false_turns
        stopped_item = ev.get("item_id")
        if ft is not None and type(stopped_item) is str and stopped_item in self.turns.noise_items:
            # The end of speech already judged no turn (a fan the detector called no voice,
            # while the service still heard speech): nothing of a turn happens now, but
            # what waited for the speech to end goes on, as after noise.
            self.turns.speech_stopped(audio_end_ms)
            self._noise_over(now)
            self._maybe_arm(now)
            return
        if ft is not None and ft.pending:
            self.turns.speech_stopped(audio_end_ms)
            ft.stopped(now, audio_end_ms)
            self.out.cancel_timer(Timer.DECIDE)
            if ft.local_vad:
                self.out.emit(CheckVoice(VOICE_WINDOW_MS, at_decision=False))
            elif not ft.transcribing:
                self._verdict(now, ft.no_words())
            self._maybe_arm(now)
            return
        outcome = self.turns.speech_stopped(audio_end_ms)
        if not self.turns.automatic:
            self.out.cancel_timer(Timer.CONFIRM)
        if outcome is Stop.TURN_INTERRUPT and self.playback.playing:
            self._interrupt(now)
        if outcome is Stop.NOISE:
            log_event(logger, _INFO, "turn.noise_ignored")
            self._noise_over(now)
        else:
            self.nudges.caller_active()
            self.measures.turn_ended(now)
            self._caller_spoke(now)
            if self.turns.automatic:
                self.tools.turn_answering()  # the service has committed it to answer it
            if self.ending.waiting_for_caller:
                self._call_off(now)  # a turn over the last words that played
        self._maybe_arm(now)

    def _noise_over(self, now: float) -> None:
        """The caller's sound was no turn: what waited to learn that goes on. A tools'
        answer held back for it is asked for, and last words that played while it went on
        go ahead (the ending acts)."""
        if self._tool_answer_owed and self.turns.current is None and not self._judging:
            self._tool_answer_owed = False
            self._answer_tools()
        if self.ending.waiting_for_caller:
            self._act(now, Input.NOISE)

    def _committed(self, now: float, ev: dict[str, Any]) -> None:
        """The caller's turn is in the conversation (its place in the transcript); under the
        min-speech policy the bridge, not the service, answers real turns."""
        item_id: str | None = ev.get("item_id")
        if self.opening.deaf:
            if not self.opening.open:  # the hello: in the conversation, answered on opening
                if item_id is not None:
                    self.transcript.caller_committed(item_id)
                self._opening_step(now, self.opening.committed())
            return
        ft = self.false_turns
        if ft is not None and ft.owns(item_id):
            # Judged by its words (or their absence) once it is committed.
            assert ft.suspect is not None and item_id is not None
            ft.suspect.committed.add(item_id)
            if ft.transcribing:
                self.out.set_timer(Timer.WORDS, now + TRANSCRIPT_WAIT_MS)
            return
        if item_id is not None and item_id not in self.turns.noise_items:
            self.transcript.caller_committed(item_id)
        if self.turns.automatic:
            return
        if item_id is not None and item_id in self.turns.noise_items:
            self.out.realtime(rt.item_delete(item_id))
            return
        if self.responses.active is not None:
            # A turn while an older answer is still being generated: stop it, then answer
            # once the service confirms it is done (a second response would be refused).
            self._interrupt(now)
            self.responses.request_after_done()
        else:
            self.responses.request()

    def _confirm_timer(self, now: float) -> None:
        """The min-speech confirmation time passed with the caller still speaking."""
        if not self.turns.confirmed():
            return
        self._caller_spoke(now)
        if self.playback.playing:
            self._interrupt(now)
        elif self.ending.waiting_for_caller:
            self._call_off(now)  # a real turn over the last words: no hang-up

    def _interrupt(self, now: float) -> None:
        """Stop the bot (`BargeIn`); its answer's late audio is dropped, never played, and a
        pending hang-up or transfer is called off once the model's memory is right."""
        if self.held is not None:
            self._cut_held(now)
            return
        interruption = self.barge_in.interrupt(now, self.stream_sid)
        if interruption.audible:
            self.measures.barged_in(now, interruption.unheard_ms)
        self.responses.cut_off()
        self._caller_spoke(now)
        if interruption.audible or self.ending.active:
            self._call_off(now)  # the caller spoke up: no hang-up on top of them

    # -- resume mode: speech over the bot, judged ---------------------------------------

    def _suspect(self, now: float, item_id: str | None, start_ms: int) -> None:
        """Speech over the bot: stop it at once, but only pause its answer (unless the echo
        guard wants words first), and judge the speech (`app.call.falseturn`)."""
        ft = self.false_turns
        assert ft is not None
        guarded = self._echo_guarded(now)
        heard = self.playback.heard(now) if guarded else None
        echo_item = heard.item_id if heard else None
        if not ft.pending:
            self.out.set_timer(Timer.JUDGE_LIMIT, now + JUDGE_LIMIT_MS)
        ft.started(now, item_id, start_ms, paused=not guarded, echo_item=echo_item)
        if not guarded and self.held is None:
            self.held = self.barge_in.pause(now, self.stream_sid)
        self.out.set_timer(Timer.DECIDE, now + ft.decide_ms)
        self.out.cancel_timer(Timer.WORDS)

    def _echo_guarded(self, now: float) -> bool:
        """The speech began so soon after the bot's audio started playing that it may be
        the bot's own voice coming back (a speakerphone): it needs words to interrupt."""
        guard = self.config.echo_guard_ms
        started = self.playback.started_at
        if guard <= 0 or started is None or not self.playback.playing or self.held is not None:
            return False
        if now - started < guard:
            log_event(logger, _INFO, "turn.echo_guarded", since_audio_ms=round(now - started))
            return True
        return False

    def _voice(self, now: float, report: object) -> None:
        """The local detector's report (`CheckVoice` answered)."""
        ft = self.false_turns
        if type(report) is not dict:
            self.out.bad("rest", "malformed_voice_report")
            return
        if ft is None or not ft.pending:
            return
        at_decision = report.get("at_decision") is True
        verdict = ft.voice(report, at_decision)
        if verdict is Verdict.PENDING:
            if at_decision:
                # The voice ended and the service's silence window runs: ask again later.
                self.out.set_timer(Timer.DECIDE, now + ft.decide_ms)
            elif not ft.transcribing:
                verdict = ft.no_words()
        self._verdict(now, verdict)

    def _decide_timer(self, now: float) -> None:
        ft = self.false_turns
        if ft is None or not ft.pending:
            return
        if ft.local_vad:
            self.out.emit(CheckVoice(VOICE_WINDOW_MS, at_decision=True))
        else:
            self._verdict(now, ft.decision_due())

    def _verdict(self, now: float, verdict: Verdict) -> None:
        """A suspect was judged: interrupt for real, or resume."""
        if verdict is Verdict.PENDING:
            return
        ft = self.false_turns
        assert ft is not None
        suspect = ft.settled()
        assert suspect is not None
        self.out.cancel_timer(Timer.DECIDE)
        self.out.cancel_timer(Timer.WORDS)
        self.out.cancel_timer(Timer.JUDGE_LIMIT)
        log_event(
            logger,
            _INFO,
            "turn.real" if verdict is Verdict.REAL else "turn.false",
            reason=suspect.reason,
            after_ms=round(now - suspect.started_at),
        )
        self.out.emit(Measure(Metric.FALSE_TURN, labels=(verdict.value, suspect.reason)))
        if verdict is Verdict.REAL:
            self._real_turn(now, suspect)
        else:
            self._false_turn(now, suspect)

    def _real_turn(self, now: float, suspect: Suspect) -> None:
        """The caller took the turn: the paused answer is cut where they stopped hearing
        it (or, echo-guarded, the bot is stopped now), and their turn gets its answer."""
        if self.held is not None:
            self._cut_held(now)
        elif self.playback.playing:
            self._interrupt(now)
        else:
            self._caller_spoke(now)
            self._call_off(now)  # a turn over the last words (they played out meanwhile)
        if suspect.stopped_at is not None:
            self.nudges.caller_active()
            self.measures.turn_ended(suspect.stopped_at)
        for item_id in suspect.item_ids:
            if item_id in suspect.committed:
                self.transcript.caller_committed(item_id)
        # The turn is answered now if it is in the conversation, unless the caller is still
        # speaking (that utterance's commit answers all of it) or pressed a key (the key's
        # own answer does).
        if suspect.committed and self.turns.current is None and suspect.reason != "key":
            self._answer_turn(now)
        self._maybe_arm(now)

    def _cut_held(self, now: float) -> None:
        held, self.held = self.held, None
        assert held is not None
        # `response.cancel` even when no response is active: the contract's barge-in sends
        # it, and "not active" is an expected answer (the service is told not to cancel).
        interruption = self.barge_in.confirm(held, cancel=True)
        if interruption.audible:
            self.measures.barged_in(held.at, interruption.unheard_ms)
        self.responses.cut_off()
        self._caller_spoke(now)
        if interruption.audible or self.ending.active:
            self._call_off(now)

    def _answer_turn(self, now: float) -> None:
        """Resume mode: the bridge answers a real turn that is committed. An answer still
        being generated is stopped (unless the verdict cut it off already: one cancel, not
        two, unlike the min-speech policy's `_committed`), and the turn is answered once
        the service confirms it is done (a second response would be refused)."""
        active = self.responses.active
        if active is not None:
            if not self.responses.was_cut_off(active):
                self._interrupt(now)
            self.responses.request_after_done()
        else:
            self.responses.request()

    def _false_turn(self, now: float, suspect: Suspect) -> None:
        """Not a turn: the model never hears it (its input items leave the conversation),
        and the caller hears the rest of the answer."""
        self.false_turn_count += 1
        for item_id in suspect.item_ids:
            self.turns.noise_items.add(item_id)
            if item_id in suspect.committed:
                self.out.realtime(rt.item_delete(item_id))
        held = self.held
        if held is not None:
            heard = held.heard
            rewind = self.config.resume_rewind_ms
            if heard is not None and rewind > 0:
                # Where the last pause before the heard position ends is the driver's to
                # find (the core decodes no audio); meanwhile the answer stays paused.
                at = heard.ms * BYTES_PER_MS
                chunks = around(heard.item_id, at, rewind, held.played, held.chunks)
                self.out.emit(FindPause(heard.item_id, at, rewind, chunks))
                self.out.set_timer(Timer.RESUME, now + RESUME_WAIT_MS)
            else:
                self._resume(now, None)
        self._noise_over(now)
        self._maybe_arm(now)

    def _pause_found(self, now: float, answer: object) -> None:
        """The driver's answer to `FindPause`: resume from there."""
        held = self.held
        if type(answer) is not dict or type(answer.get("resume_at")) is not int:
            self.out.bad("rest", "malformed_pause")
            return
        if held is None or held.heard is None or answer.get("item_id") != held.heard.item_id:
            return  # too late (the fallback resumed) or not ours
        if self._judging:
            return  # more speech came meanwhile: its verdict decides (and asks again)
        self._resume(now, answer["resume_at"])

    def _resume_timer(self, now: float) -> None:
        """The driver never said where the pause is: resume a frame before the position."""
        if self.held is not None and self.false_turns is not None and not self._judging:
            log_event(logger, _WARNING, "turn.resume_without_pause")
            self._resume(now, None)

    def _resume(self, now: float, start: int | None) -> None:
        """Play the paused answer on from item byte `start` (the driver's pause, clamped to
        the rewind window; None: a frame before the heard position), with new marks."""
        held, self.held = self.held, None
        assert held is not None
        self.out.cancel_timer(Timer.RESUME)
        heard = held.heard
        if heard is not None:
            at = heard.ms * BYTES_PER_MS
            lowest = at - self.config.resume_rewind_ms * BYTES_PER_MS
            if start is None:
                start = at - min(RESUME_LEAD_MS, self.config.resume_rewind_ms) * BYTES_PER_MS
            start = max(lowest, min(at, start))
            resumed = plan(heard.item_id, at, start, held.played, held.chunks)
        else:
            resumed = Resume(held.chunks, 0)
        sid = self.stream_sid
        sent = 0
        for chunk in resumed.chunks:
            if not chunk.payload or chunk.nbytes <= 0:
                continue
            name = self.playback.resent(now, chunk)
            for part in tw.media_parts(chunk.payload):
                self.out.twilio(tw.media(sid, part))
            self.out.twilio(tw.mark(sid, name))
            sent += chunk.nbytes
        if sent:
            self.resume_count += 1
        log_event(
            logger,
            _INFO,
            "turn.resumed",
            item_id=short(heard.item_id) if heard else None,
            heard_ms=heard.ms if heard else 0,
            rewind_ms=resumed.rewind_ms,
            resumed_ms=sent // BYTES_PER_MS,
            paused_ms=round(now - held.at),
        )
        if not self.playback.playing:
            self._ending_played_out(now)  # all of it had been heard
        self._maybe_arm(now)

    # -- the opening (outbound calls: `app.call.opening`) ----------------------------------

    def _opening_timers(self, now: float) -> None:
        """An outbound call's Realtime session is ready to be used: the silence after which
        the bot greets unasked, and the wait for the detection's verdict."""
        opening = self.opening
        # At least GREET_AFTER_OPEN_MS after the session opened: caller audio buffered
        # while it connected (a hello, perhaps) must reach the service's VAD first.
        greet_at = max(now + GREET_AFTER_OPEN_MS, self.started_ms + opening.greet_silence_ms)
        self.out.set_timer(Timer.GREET, greet_at)
        if opening.waiting:
            self.out.set_timer(Timer.DETECTION, max(now, self.started_ms + opening.amd_wait_ms))

    def _detection_timer(self, now: float) -> None:
        opening = self.opening
        limit = self.started_ms + opening.amd_limit_ms
        at_limit = now >= limit
        step = opening.wait_over(at_limit)
        if opening.waiting:  # voicemail: a machine still talking; wait for its beep
            log_event(
                logger, _INFO, "outbound.detection_waits", waited_ms=round(now - self.started_ms)
            )
            self.out.set_timer(Timer.DETECTION, limit)
            return
        log_event(
            logger, _WARNING, "outbound.detection_timeout", waited_ms=round(now - self.started_ms)
        )
        self._opening_step(now, step)

    def _answered_by(self, now: float, value: object) -> None:
        """Twilio's answering-machine verdict (`AnsweredBy`), as the driver learned it."""
        if type(value) is not str or value not in ANSWERED_BY:
            self.out.bad("rest", "bad_answered_by", value=preview(value))
            return
        if not self.opening.outbound or self.phase.state is Phase.ENDED:
            log_event(logger, _DEBUG, "outbound.answered_by_ignored", answered_by=value)
            return
        if self.phase.state is not Phase.LIVE:
            # Before the Realtime session is open (the verdict can come first): acted on
            # as it opens.
            self._early_verdict = self._early_verdict or value
            return
        self._act_on_verdict(now, value)

    def _act_on_verdict(self, now: float, value: str) -> None:
        log_event(logger, _INFO, "outbound.answered_by", answered_by=value)
        self._opening_step(now, self.opening.verdict(value))

    def _opening_step(self, now: float, step: Step) -> None:
        """Do what the opening decided."""
        if not self.opening.waiting:
            self.out.cancel_timer(Timer.DETECTION)  # nothing left to wait for
        if step is Step.NOTHING:
            return
        self.out.cancel_timer(Timer.GREET)
        self.out.cancel_timer(Timer.DETECTION)
        opening = self.opening
        log_event(
            logger, _INFO, "outbound.opened", how=opening.how, answered_by=opening.answered_by
        )
        if step is Step.GREET:
            if automatic_turns(self.config):
                self.out.realtime(session_update(self.config))  # the policy's own turns now
            if opening.how != "hello":
                self.measures.unanswered()
            if not self.responding:
                words = self.config.greeting or DEFAULT_OUTBOUND_GREETING
                self.responses.request(self._instructions(words), droppable=True)
        elif step is Step.HANG_UP:
            if self.ending.stage is not Stage.NONE:
                return  # an ending under way ends the call as well
            if not self.ending.at_once("machine_detected", "machine"):
                self._end(now, Input.NO_REST, "machine", detail="no_rest_credentials")
        elif step is Step.VOICEMAIL:
            if self._bot_holds_floor or self.responding:
                self._interrupt(now)  # a verdict after the bot began: the machine gets the message
            if self.ending.stage is Stage.NONE:
                self.out.realtime(rt.system_text(REACHED_VOICEMAIL))
            words = VOICEMAIL.format(message=self.config.voicemail_message)
            self._begin_ending(now, "voicemail", "voicemail", words)
        self._maybe_arm(now)

    # -- endings --------------------------------------------------------------------------

    def _begin_ending(self, now: float, reason: str, summary_reason: str, words: str) -> None:
        """End the call on the bridge's own initiative (time limit, silence): the model says
        its closing words (`words` instructs it), then the call is hung up."""
        if self.ending.stage is not Stage.NONE:
            return
        self.ending.from_bridge(now, "hangup", reason, summary_reason)
        self.measures.unanswered()  # the closing words answer no turn
        self.responses.request(self._instructions(words), closing=True)

    def _ending_played_out(self, now: float) -> None:
        """Everything sent has been heard: an ending playing out its last words acts
        (once the tools the model called with them are done: "booked, goodbye" books)."""
        if self.ending.stage is not Stage.PLAYING_OUT or self.held is not None:
            return
        if self.tools.running:
            log_event(logger, _INFO, "ending.waits_for_tools")
            self._ending_waits_for_tools = True
            return
        utterance = self.turns.current
        if (utterance is not None and not utterance.interrupted) or self._judging:
            self.ending.caller_over_last_words()
        else:
            self._act(now, Input.PLAYED_OUT)

    def _act(self, now: float, via: Input) -> None:
        if via in (Input.PLAYED_OUT, Input.NOISE) and self.ending.tail(now):
            return  # the last sound still reaches the caller: the update waits for it
        if not self.ending.act(via):
            reason = self.ending.intended_reason()
            self._end(now, Input.NO_REST, reason, detail="no_rest_credentials")

    def _call_off(self, now: float) -> None:
        """The caller spoke during the last words: the ending is called off, except a
        time-limit ending the second time (the limit gets one grace period after a
        call-off, then it is hard: the call ends even if the caller talks over it)."""
        ending = self.ending
        if not ending.active or ending.committed:
            return
        if ending.summary_reason == "max_duration" and not self.nudges.grant_grace(now):
            log_event(logger, _WARNING, "ending.hard_limit", kind=ending.kind)
            self._act(now, Input.HARD_LIMIT)
            return
        self.responses.withdraw_closing()
        self.measures.ending_called_off(ending.kind)
        ending.call_off()

    def _last_words_timeout(self, now: float) -> None:
        stage = self.ending.stage
        if stage is Stage.WAITING_FOR_CALLER:
            self._call_off(now)  # the caller is still talking over the last words
        elif stage in WORDS_STAGES:
            log_event(
                logger,
                _WARNING,
                "ending.playout_timeout",
                kind=self.ending.kind,
                stage=stage.value,
                queued_ms=self.playback.queued_ms(),
            )
            self._act(now, Input.PLAYOUT_TIMEOUT)

    def _rest_answer(self, now: float, answer: object) -> None:
        """A REST answer as the driver recorded it. One that is not in shape counts as no
        answer at all (status 0, retried): an ending must never wait for an answer that
        came but could not be read."""
        if type(answer) is not dict or type(answer.get("status", 0)) is not int:
            self.out.bad("rest", "malformed_answer")
            self._rest_result(now, 0, None, "")
            return
        code = int_or(answer.get("code"), None)
        self._rest_result(now, answer.get("status", 0), code, text_or(answer.get("error"), ""))

    def _rest_result(self, now: float, status: int, code: int | None, error: str) -> None:
        """The answer to a `RestRequest` (status 0: no answer at all)."""
        verdict = self.ending.rest_result(now, status, code, error)
        if verdict is not RestVerdict.IGNORED:
            self.measures.rest_answer(now, self.ending.kind, status, code)
        if verdict is RestVerdict.DONE:
            self.end_reason = self.ending.intended_reason()
        elif verdict is RestVerdict.FAILED:
            # Nobody is left in silence: closing the stream makes Twilio run the fallback.
            detail = f"rest_{self.ending.kind}_failed"
            self._end(now, Input.REST_FAILED, "failure", detail=detail)

    # -- timers ---------------------------------------------------------------------------

    def _advance(self, now: float) -> None:
        while (due := self.out.pop_due(now)) is not None:
            timer, at = due
            self._fire(timer, at)

    def _fire(self, timer: Timer, now: float) -> None:
        phase = self.phase.state
        if timer is Timer.START:
            if phase is Phase.WAITING_START:
                log_event(logger, _WARNING, "twilio.no_start")
                self._end(now, Input.NO_START, "failure", detail="no_start", close_realtime=False)
        elif timer is Timer.READY:
            if not self.realtime_ready and phase in (Phase.CONNECTING, Phase.LIVE):
                log_event(logger, _ERROR, "realtime.not_ready_in_time")
                self._end(now, Input.NOT_READY, "failure", detail="realtime_unavailable")
        elif timer is Timer.CONFIRM:
            self._confirm_timer(now)
        elif timer is Timer.DECIDE:
            self._decide_timer(now)
        elif timer is Timer.JUDGE_LIMIT:
            if self.false_turns is not None:
                self._verdict(now, self.false_turns.limit())
        elif timer is Timer.RESUME:
            self._resume_timer(now)
        elif timer is Timer.WORDS:
            if self.false_turns is not None:
                self._verdict(now, self.false_turns.no_words())
        elif timer is Timer.HANGUP_TAIL:
            if self.ending.stage is Stage.TAIL:
                self._act(now, Input.TAIL_OVER)
        elif timer is Timer.LAST_WORDS:
            self._last_words_timeout(now)
        elif timer is Timer.REST_RETRY:
            self.ending.retry()
        elif timer is Timer.STOP_GRACE:
            self._end(now, Input.STOP_GRACE, self.end_reason)
        elif timer is Timer.SILENCE:
            ending = self.ending.stage is not Stage.NONE
            busy = self._bot_holds_floor or self.responding or self.tools.running
            silence = self.nudges.silence(ending or busy)
            if silence is Silence.REPROMPT:
                self.measures.reprompted()
                self.responses.request(droppable=True)
            elif silence is Silence.GOODBYE:
                self._begin_ending(now, "silence", "bot_hung_up", SILENCE_GOODBYE)
        elif timer is Timer.GREET:
            self._opening_step(now, self.opening.silence())
        elif timer is Timer.DETECTION:
            self._detection_timer(now)
        elif timer is Timer.TOOL_FILLER:
            self._filler_timer(now)
        elif timer is Timer.TOOL_DEADLINE:
            self.tools.past_deadline(now)
            self._flush_tools(now)
            self._maybe_arm(now)
        elif timer is Timer.MAX_DURATION and self.nudges.max_duration(
            now, self.ending.stage is not Stage.NONE
        ):
            self._begin_ending(now, "max_duration", "max_duration", WRAP_UP)

    def _maybe_arm(self, now: float) -> None:
        """Start the silence clock if both sides are quiet and the bot has been heard out
        (and a tool's filler wait, if one was put off)."""
        if self.tools.runs and self.phase.state is Phase.LIVE and self._line_quiet():
            self.tools.line_quiet(now)
        quiet = (
            self.phase.state is Phase.LIVE
            and not self.opening.deaf  # a call not yet opened is not silent: it waits
            and not self.ending.active
            and not self._bot_holds_floor
            and not self.responding
            and not self.tools.running  # waiting for a tool is not the caller's silence
            and self.turns.current is None
            and not self._judging
        )
        self.nudges.maybe_arm(now, quiet)

    # -- the end --------------------------------------------------------------------------

    def _end(
        self,
        now: float,
        via: Input,
        reason: str,
        *,
        detail: str = "",
        close_twilio: bool = True,
        close_realtime: bool = True,
    ) -> None:
        """The call is over: `reason` is caller_hung_up, bot_hung_up, transferred, failure
        or max_duration; `detail` says more (realtime_lost, rest_hangup_failed, ...)."""
        self.phase.move(via)
        self.end_reason = reason
        self.end_detail = detail
        self.ended_ms = now
        self.out.cancel_all_timers()
        self.tools.ended(now)
        # The caller first: closing the stream lets Twilio run the fallback at once,
        # whatever a stalled Realtime peer does with its closing handshake.
        if close_twilio:
            self.out.emit(CloseTwilio(detail or reason))
        if close_realtime:
            self.out.emit(CloseRealtime(detail or reason))

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
            "false_turns": self.false_turn_count,
            "resumes": self.resume_count,
            "direction": self.config.direction,
            "answered_by": self.opening.answered_by,
            "reprompts": self.nudges.reprompts_total,
            "heard_latency_ms": self.measures.median_latency_ms(),
            "unheard_audio_ms": self.measures.unheard_ms,
            "key_presses": self.nudges.key_presses,
            "caller_audio_ms": self.caller_audio_bytes // tw.BYTES_PER_MS,
            "bot_audio_ms": sum(i.sent_ms for i in self.playback.items.values()),
            "usage": dict(self.usage),
            "bad_input": dict(self.bad_input),
            "realtime_errors": dict(self.realtime_errors),
            "tool_calls": [
                call if with_text else {k: v for k, v in call.items() if k != "arguments"}
                for call in self.measures.tool_calls
            ],
            "turns": self.transcript.to_list(with_text),
        }

    def _instructions(self, extra: str) -> str:
        """Session instructions plus a one-off instruction, for a single response."""
        return f"{self.config.instructions}\n\n{extra}"
