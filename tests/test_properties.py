"""Property-based tests of the call core: whatever either peer sends, in whatever order.

Two kinds of input are generated. Garbage: arbitrary JSON (`st.recursive`), values nested
1000 deep or 100 000 characters long, and real messages with a random subtree replaced.
And mostly-valid call scripts (`CallScript`, a Hypothesis state machine): start, the
session, responses with audio for their items, marks echoed in order (or not), the
caller's speech, tool calls, REST answers, key presses, socket events and timers (fired
as the driver contract says: each at its own deadline), with garbage mixed in. Over every
sequence nothing may raise out of the core, and the call's invariants hold:

(a) for every item, what the marks say was heard never exceeds what was sent;
(b) a `conversation.item.truncate` never cuts past the audio received for its item;
(c) after a `clear`, no audio of a response that was playing then reaches Twilio;
(d) no `response.create` while a response is active or in flight, as the core tracks it;
(e) once the call is over, both sockets were closed (unless the peer closed its own),
    no timer is left, and no input makes the core do anything.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from app.call.actions import (
    Action,
    CloseRealtime,
    CloseTwilio,
    ConnectRealtime,
    RestRequest,
    ToRealtime,
    ToTwilio,
)
from app.call.config import CallConfig
from app.call.ending import tool_reason
from app.call.inbound import FUNCTION_CALL, REALTIME, TWILIO, Shape, lookup, malformed, preview
from app.call.session import CallSession
from app.call.state import Input, Machine, Phase, Transition
from app.protocol import realtime as rt
from app.protocol import twilio as tw
from app.protocol.b64 import decoded_len, is_b64
from app.replay import FixtureError, parse, replay, report, timeline
from app.replay.__main__ import main
from tests.core import (
    STREAM,
    b64,
    delta,
    dtmf_msg,
    function_call,
    greeted,
    live,
    mark_msg,
    media_msg,
    play,
    quiet,
    response_created,
    response_done,
    speech_started,
    speech_stopped,
    start_msg,
    stop_msg,
    to_realtime,
)

# -- garbage --------------------------------------------------------------------------------


def nested(depth: int, kind: str) -> Any:
    """A list (or object) nested `depth` deep, built without recursion."""
    value: Any = 1
    for _ in range(depth):
        value = [value] if kind == "list" else {"a": value}
    return value


#: Values a peer could send that no handler expects: deep, huge, or both at once. Drawn by
#: index, so a failing example prints a number instead of a 1000-deep structure.
ODD: tuple[Any, ...] = (
    nested(1000, "list"),
    nested(1000, "dict"),
    "A" * 100_000,
    2**64 - 1,
    -(2**63),
    1e308,
    list(range(2000)),
    {str(i): [i] for i in range(500)},
)
#: What orjson can hand the core: 64-bit integers (it refuses larger ones), finite floats.
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
JSON = st.recursive(
    SCALARS,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=12,
)
WEIRD = JSON | st.integers(0, len(ODD) - 1).map(ODD.__getitem__)


def _short(value: Any) -> str:
    """A value for a failing example's report: compact, cut short, and never recursing
    (Hypothesis' own printer recurses, and a 1000-deep value would crash the report)."""
    try:
        return orjson.dumps(value).decode()[:160]
    except orjson.JSONEncodeError:
        return "<nested too deep to print>"


class Short:
    """Printed short (`_short`) in a failing example: not a dataclass, whose fields
    Hypothesis' printer would walk itself."""

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))


class Boxed(Short):
    """A drawn value."""

    def __init__(self, v: Any) -> None:
        self.v = v

    def __repr__(self) -> str:
        return f"Boxed({_short(self.v)})"


class Frame(Short):
    """One input from a peer: its direction and message."""

    def __init__(self, direction: str, msg: dict[str, Any]) -> None:
        self.direction, self.msg = direction, msg

    def __repr__(self) -> str:
        return f"Frame({self.direction}, {_short(self.msg)})"


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a subtree of `value` (keys and list indexes), its root excepted."""
    out: list[tuple[Any, ...]] = []
    items = (
        value.items() if type(value) is dict else enumerate(value) if type(value) is list else ()
    )
    for key, child in items:
        out.append((*prefix, key))
        out.extend(_paths(child, (*prefix, key)))
    return out


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    """A copy of `value` with the subtree at `path` replaced by `new` (`value` untouched)."""
    if not path:
        return new
    head, *rest = path
    copy: Any = dict(value) if type(value) is dict else list(value)
    copy[head] = _replace(value[head], tuple(rest), new)
    return copy


@st.composite
def mutated(draw: st.DrawFn, template: dict[str, Any]) -> dict[str, Any]:
    """`template` with one random subtree replaced by a weird value, or a key added."""
    paths = _paths(template)
    if not paths or draw(st.integers(0, 9)) == 0:
        return {**template, draw(st.text(max_size=8)): draw(WEIRD)}
    return _replace(template, draw(st.sampled_from(paths)), draw(WEIRD))  # type: ignore[no-any-return]


def _error(code: str = "server_error", event_id: str | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"type": "server_error", "code": code, "message": "Something broke"}
    if event_id is not None:
        err["event_id"] = event_id
    return {"type": "error", "error": err}


#: Real messages of every kind the core reads, to be mutated.
TWILIO_TEMPLATES: tuple[dict[str, Any], ...] = (
    start_msg(),
    media_msg(b64(160)),
    mark_msg("item_a.g0.m1"),
    stop_msg(),
    dtmf_msg("5"),
    {"event": "connected", "protocol": "Call", "version": "1.0.0"},
)
REALTIME_TEMPLATES: tuple[dict[str, Any], ...] = (
    delta("item_a"),
    speech_started("u1", 1200),
    speech_stopped("u1", 2400),
    {"type": "input_audio_buffer.committed", "item_id": "u1", "previous_item_id": None},
    response_created("resp_2", {"bridge_request": "bridge_response_1"}),
    response_done(
        "resp_1",
        "failed",
        usage={"input_tokens": 5, "output_tokens": 7, "total_tokens": 12},
        status_details={"type": "failed", "error": {"type": "server_error", "code": "x"}},
    ),
    function_call("end_call"),
    _error("conversation_already_has_active_response", "bridge_response_1"),
    {"type": "response.output_audio_transcript.done", "item_id": "item_a", "transcript": "Hi"},
    {
        "type": "conversation.item.input_audio_transcription.completed",
        "item_id": "u1",
        "transcript": "Hello",
    },
    {"type": "session.updated", "session": {}},
)


def garbage(direction: str) -> st.SearchStrategy[Frame]:
    """Anything a peer could send on one side: mutated real messages, arbitrary JSON
    objects, messages of a known kind holding arbitrary values, unparseable frames."""
    templates = TWILIO_TEMPLATES if direction == "from_twilio" else REALTIME_TEMPLATES
    key = "event" if direction == "from_twilio" else "type"
    kinds = [t[key] for t in templates]
    objects = st.dictionaries(st.text(max_size=8), WEIRD, max_size=4)
    msgs = st.one_of(
        st.sampled_from(templates).flatmap(mutated),
        objects,
        st.builds(lambda k, rest: {**rest, key: k}, st.sampled_from(kinds), objects),
        st.builds(lambda reason: {"_frame_error": reason}, WEIRD),
    )
    return msgs.map(lambda msg: Frame(direction, msg))


ANY_FRAME = garbage("from_twilio") | garbage("from_openai")
_REST_FIELDS = st.sampled_from(["status", "code", "error"])
#: A REST answer out of shape (the driver's own input: still never a crash).
REST_GARBAGE = st.builds(
    lambda answer: Frame("rest", answer),
    st.dictionaries(st.sampled_from(["response", "status"]), WEIRD, max_size=2)
    | st.builds(lambda r: {"response": r}, st.dictionaries(_REST_FIELDS, WEIRD)),
)

# -- garbage into every entry point -----------------------------------------------------------

CONFIGS: tuple[CallConfig, ...] = (
    quiet(tools=("end_call", "transfer_call"), rest_available=True, transfer_number="+15550001234"),
    quiet(interrupt_min_speech_ms=300, tools=("end_call",), rest_available=True),
    greeted(
        silence_reprompt_ms=3000,
        silence_max_reprompts=1,
        max_call_ms=9000,
        playout_timeout_ms=2000,
        tools=("end_call",),
    ),
)
_FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FAST
@given(cfg=st.sampled_from(CONFIGS), frames=st.lists(ANY_FRAME, max_size=12))
def test_garbage_from_either_side_is_skipped_and_the_call_goes_on(
    cfg: CallConfig, frames: list[Frame]
) -> None:
    s = live(cfg)
    play(s, 80, "item_x", 3)
    for t, frame in enumerate(frames, start=100):
        s.feed(t, frame.direction, frame.msg)
        if frame.direction == "from_openai":
            s.bot_audio(t, frame.msg)  # the live driver's audio path sees every delta
        else:
            media = frame.msg.get("media")
            s.caller_audio(media.get("payload") if type(media) is dict else None)
    if not s.done:  # only a (mutated) stop or socket event may end it
        frame = b64(160, 0x2A)  # caller audio still flows, as the same string (among
        # what a timer due meanwhile, such as a barge-in's confirmation, sends)
        events = to_realtime(s.feed(1000, "from_twilio", media_msg(frame)))
        assert rt.input_audio_append(frame) in events


_DEEP_PARAMETER = {
    "event": "start",
    "start": {"callSid": "CA", "streamSid": "MZ", "customParameters": {"k": nested(1000, "list")}},
}


@_FAST
@given(frame=ANY_FRAME | st.sampled_from(TWILIO_TEMPLATES).flatmap(mutated).map(Boxed))
@example(frame=Boxed(_DEEP_PARAMETER))
def test_start_fields_of_anything_is_a_start_or_none(frame: Frame | Boxed) -> None:
    fields = tw.start_fields(frame.msg if isinstance(frame, Frame) else frame.v)
    if fields is not None:
        stream_sid, call_sid, account_sid, params = fields
        assert all(type(v) is str for v in (stream_sid, call_sid, account_sid))
        assert all(type(k) is str and type(v) is str for k, v in params.items())


# -- one call, scripted: mostly valid, with garbage mixed in ------------------------------


class Queued(NamedTuple):
    """A mark sent to Twilio: the bytes of its item sent up to it, and whose audio."""

    name: str
    response: str
    item: str
    item_end: int


class CallScript(RuleBasedStateMachine):
    """One call driven the way a driver drives it, its invariants checked at every step."""

    def __init__(self) -> None:
        super().__init__()
        self.s = CallSession(CONFIGS[0])
        self.now = 0.0
        self.actions: list[Action] = []
        self.item = 0  # the bot's current item: item_{n}
        self.response = 0  # the latest response the service started: resp_{n}
        self.received: dict[str, int] = {}  # audio bytes the service sent per item
        self.sent: dict[str, int] = {}  # audio bytes forwarded to Twilio per item
        self.played: dict[str, int] = {}  # audio bytes per item that marks say were heard
        self.pending: list[Queued] = []  # marks sent and not yet played, in order
        self.cleared: list[str] = []  # marks flushed by a clear
        self.cut_off: set[str] = set()  # unfinished responses whose audio a clear flushed
        self.finished: set[str] = set()  # responses the core saw done
        self.end: Input | None = None  # the input that ended the call, in the core's table
        self.twilio_gone = False  # the caller's side ended it (stop, its socket closed)
        self.connect = False
        self.realtime_gone = False

    # -- driving --------------------------------------------------------------------------

    @initialize(
        cfg=st.sampled_from(CONFIGS),
        setup=st.sampled_from(["live", "live", "live", "started", "opened"]),
    )
    def begin(self, cfg: CallConfig, setup: str) -> None:
        """A new call: most scripts start live (the interesting part), some earlier."""
        self.s = s = CallSession(cfg)
        send = s.responses._send

        def checked(req: Any) -> None:  # (d), as the core itself tracks it
            assert not s.responses.responding, "response.create while one is active"
            send(req)

        s.responses._send = checked  # type: ignore[method-assign]
        finish = s.responses.done

        def done(response: dict[str, Any]) -> Any:  # what the core takes for finished
            finished = finish(response)
            self.finished.add(finished.response_id)
            return finished

        s.responses.done = done  # type: ignore[method-assign]
        Machine.observer = self._observe
        self._handle(s.opened(0.0))
        if setup != "opened":
            self._feed(1, "from_twilio", start_msg())
        if setup == "live":
            self._feed(40, "from_openai", {"_socket": "open"})
            self._feed(10, "from_openai", {"type": "session.updated", "session": {}})

    def _observe(self, machine: str, row: Transition[Any]) -> None:
        if machine == "phase" and row.target is Phase.ENDED:
            self.end = row.input

    def teardown(self) -> None:
        Machine.observer = None

    def _wake(self, until: float) -> None:
        """The driver contract: every timer due by `until` fires at its own deadline."""
        while (at := self.s.deadline) is not None and at <= until:
            self._handle(self.s.advance(at))

    def _feed(self, dt: float, direction: str, msg: dict[str, Any]) -> list[Action]:
        self.now += dt
        self._wake(self.now)
        was_done, phase = self.s.done, self.s.phase.state
        audio = self._audio_of(direction, msg)
        actions = self.s.feed(self.now, direction, msg)
        if was_done:
            assert actions == [], "an ended call does nothing"
            return actions
        self._note_sockets(direction, msg, phase)
        self._handle(actions, audio)
        if self.s.done and self.end is Input.TWILIO_GONE and not self.twilio_gone:
            # Only the caller's side going away may end a call as gone, without closing it.
            assert direction == "from_twilio"
            assert "_socket" in msg or msg.get("event") == "stop"
            self.twilio_gone = True
        return actions

    def _audio_of(self, direction: str, msg: dict[str, Any]) -> tuple[str, str] | None:
        """The (item, response) of a delta about to be fed, its audio counted as received;
        any `media` the core sends for it belongs to them (garbage may be a delta too)."""
        if direction != "from_openai" or msg.get("type") != "response.output_audio.delta":
            return None
        item, rid, audio = msg.get("item_id"), msg.get("response_id"), msg.get("delta")
        if type(item) is not str or type(rid) is not str or type(audio) is not str:
            return None
        self.received[item] = self.received.get(item, 0) + decoded_len(audio)
        return item, rid

    def _note_sockets(self, direction: str, msg: dict[str, Any], phase: Phase) -> None:
        socket = msg.get("_socket") if direction == "from_openai" else None
        if (socket == "closed" and phase in (Phase.CONNECTING, Phase.LIVE)) or (
            socket == "failed" and phase is Phase.CONNECTING
        ):
            self.realtime_gone = True

    def _handle(self, actions: list[Action], audio: tuple[str, str] | None = None) -> None:
        """Check and book what the core asked for; `audio`: the (item, response) of the
        delta just fed, to which any `media` belongs."""
        self.actions.extend(actions)
        to_realtime(actions)  # every client event is valid GA
        for action in actions:
            if isinstance(action, ToTwilio):
                self._to_twilio(action.msg, audio)
            elif (
                isinstance(action, ToRealtime)
                and action.msg["type"] == "conversation.item.truncate"
            ):
                item, end_ms = action.msg["item_id"], action.msg["audio_end_ms"]
                assert end_ms <= self.received.get(item, 0) // 8, "(b) truncate past the audio"
                assert end_ms <= self.sent.get(item, 0) // 8, "(b) truncate past what was sent"
            elif isinstance(action, ConnectRealtime):
                self.connect = True

    def _to_twilio(self, msg: dict[str, Any], audio: tuple[str, Any] | None) -> None:
        assert msg["streamSid"] == self.s.stream_sid
        event = msg["event"]
        if event == "media":
            assert audio is not None, "media only for a delta"
            item, rid = audio
            assert rid not in self.cut_off, "(c) audio of a cut-off response after its clear"
            self.sent[item] = self.sent.get(item, 0) + decoded_len(msg["media"]["payload"])
        elif event == "mark":
            assert audio is not None
            item, rid = audio
            self.pending.append(Queued(msg["mark"]["name"], rid, item, self.sent[item]))
        elif event == "clear":
            # A finished response has sent all its audio: only the others can be cut off.
            self.cut_off |= {q.response for q in self.pending if q.response not in self.finished}
            self.cleared += [q.name for q in self.pending]
            self.pending = []

    # -- Twilio ---------------------------------------------------------------------------

    @rule(dt=st.integers(0, 50))
    def start(self, dt: int) -> None:
        self._feed(dt, "from_twilio", start_msg())

    @rule(dt=st.integers(0, 100), n=st.sampled_from([160, 320]), direct=st.booleans())
    def caller_media(self, dt: int, n: int, direct: bool) -> None:
        if direct:  # the live driver's audio path
            self.now += dt
            self._wake(self.now)
            self.s.caller_audio(b64(n))
            self._handle(self.s.out.take())
        else:
            self._feed(dt, "from_twilio", media_msg(b64(n)))

    @rule(dt=st.integers(0, 400), how=st.sampled_from(["next", "next", "last", "any", "cleared"]))
    def echo(self, dt: int, how: str) -> None:
        """Twilio echoes a mark: the next one played (mostly), a later one, or a cleared
        one (after a clear, every flushed mark comes back)."""
        self.now += dt
        self._wake(self.now)  # a timer due first may clear what is pending
        if how == "cleared" and self.cleared:
            self._feed(0, "from_twilio", mark_msg(self.cleared.pop(0)))
        elif self.pending:
            k = {"next": 0, "last": len(self.pending) - 1}.get(how, len(self.pending) // 2)
            for q in self.pending[: k + 1] if not self.s.done else ():
                # Twilio plays in order: everything before this mark has played too.
                self.played[q.item] = max(self.played.get(q.item, 0), q.item_end)
            name, self.pending = self.pending[k].name, self.pending[k + 1 :]
            self._feed(0, "from_twilio", mark_msg(name))

    @rule(dt=st.integers(0, 500), digit=st.sampled_from(["1", "#", "x", ""]))
    def dtmf(self, dt: int, digit: str) -> None:
        msg = {"event": "dtmf", "streamSid": STREAM, "dtmf": {"digit": digit}}
        self._feed(dt, "from_twilio", msg)

    # -- the Realtime service -----------------------------------------------------------

    @rule(dt=st.integers(0, 200))
    def realtime_open(self, dt: int) -> None:
        self._feed(dt, "from_openai", {"_socket": "open"})

    @rule(dt=st.integers(0, 100))
    def session_updated(self, dt: int) -> None:
        self._feed(dt, "from_openai", {"type": "session.updated", "session": {}})

    @rule(dt=st.integers(0, 300), tag=st.sampled_from(["ours", "null", "absent"]))
    def response_created(self, dt: int, tag: str) -> None:
        """The service starts a response: the one the core asked for last, or its own."""
        self.response += 1
        response: dict[str, Any] = {"id": f"resp_{self.response}"}
        asked = [a.msg for a in self.actions if isinstance(a, ToRealtime)]
        asked = [e for e in asked if e["type"] == "response.create"]
        if tag == "ours" and asked:
            response["metadata"] = asked[-1]["response"]["metadata"]
        elif tag == "null":
            response["metadata"] = None
        self._feed(dt, "from_openai", {"type": "response.created", "response": response})

    @rule(
        dt=st.integers(0, 120),
        n=st.sampled_from([160, 800, 4000]),
        new_item=st.booleans(),
        older=st.booleans(),
        direct=st.booleans(),
    )
    def bot_delta(self, dt: int, n: int, new_item: bool, older: bool, direct: bool) -> None:
        """Audio of the latest response (or, now and then, of an older one), for its
        current item or a new one; through `feed` or the driver's audio path."""
        if new_item or not self.item:
            self.item += 1
        rid = f"resp_{max(1, self.response - 1 if older else self.response)}"
        item = f"item_{self.item}"
        ev = delta(item, n, rid)
        if not direct:
            self._feed(dt, "from_openai", ev)
            return
        self.now += dt
        self._wake(self.now)
        was_done = self.s.done
        self._audio_of("from_openai", ev)
        name = self.s.bot_audio(self.now, ev)
        actions = self.s.out.take()
        if name is not None:  # the driver sends media and mark itself
            assert not was_done
            sid = self.s.stream_sid
            actions = [*actions, ToTwilio(tw.media(sid, ev["delta"])), ToTwilio(tw.mark(sid, name))]
        self._handle(actions, (item, rid))

    @rule(dt=st.integers(0, 300), at_ms=st.integers(0, 60_000))
    def speech_started(self, dt: int, at_ms: int) -> None:
        self._feed(dt, "from_openai", speech_started(f"u{self.item}", at_ms))

    @rule(dt=st.integers(0, 1500), at_ms=st.integers(0, 60_000))
    def speech_stopped(self, dt: int, at_ms: int) -> None:
        self._feed(dt, "from_openai", speech_stopped(f"u{self.item}", at_ms))

    @rule(dt=st.integers(0, 100))
    def committed(self, dt: int) -> None:
        ev = {"type": "input_audio_buffer.committed", "item_id": f"u{self.item}"}
        self._feed(dt, "from_openai", ev)

    @rule(
        dt=st.integers(0, 300),
        status=st.sampled_from(["completed", "completed", "cancelled", "incomplete", "failed"]),
        older=st.booleans(),
    )
    def response_done(self, dt: int, status: str, older: bool) -> None:
        rid = f"resp_{max(1, self.response - 1 if older else self.response)}"
        self._feed(dt, "from_openai", response_done(rid, status))

    @rule(
        dt=st.integers(0, 100),
        name=st.sampled_from(["end_call", "transfer_call", "lookup"]),
        status=st.sampled_from(["completed", "completed", "incomplete"]),
        arguments=st.sampled_from(['{"reason": "bye"}', "not json", "[" * 3000, "{}"]),
    )
    def tool_call(self, dt: int, name: str, status: str, arguments: str) -> None:
        rid = f"resp_{max(1, self.response)}"
        ev = function_call(name, f"call_{self.now}", status, arguments=arguments, response_id=rid)
        self._feed(dt, "from_openai", ev)

    @rule(
        dt=st.integers(0, 100),
        code=st.sampled_from(
            ["conversation_already_has_active_response", "server_error", "insufficient_quota"]
        ),
    )
    def refusal(self, dt: int, code: str) -> None:
        """The service refuses the core's latest `response.create`."""
        asked = [a.msg for a in self.actions if isinstance(a, ToRealtime)]
        asked = [e for e in asked if e["type"] == "response.create"]
        self._feed(dt, "from_openai", _error(code, asked[-1]["event_id"] if asked else None))

    # -- REST, time, the end --------------------------------------------------------------

    @rule(
        dt=st.integers(0, 1000),
        answer=st.sampled_from(
            [(200, None), (429, None), (503, None), (0, None), (400, 21220), (404, 20404)]
        ),
    )
    def rest_answer(self, dt: int, answer: tuple[int, int | None]) -> None:
        if any(isinstance(a, RestRequest) for a in self.actions):
            status, code = answer
            self._feed(dt, "rest", {"response": {"status": status, "code": code, "error": ""}})

    @rule(dt=st.sampled_from([0.5, 20, 100, 400, 1000, 2500, 6000, 12_000]))
    def time_passes(self, dt: float) -> None:
        self.now += dt
        self._wake(self.now)

    @rule()
    def next_timer(self) -> None:
        if (at := self.s.deadline) is not None:
            self.now = max(self.now, at)
            self._wake(self.now)

    @rule(
        dt=st.integers(0, 1000),
        how=st.sampled_from(
            ["stop", "twilio_closed", "stalled", "realtime_closed", "failed", "shutdown"]
        ),
        now=st.integers(0, 7),
    )
    def socket_event(self, dt: int, how: str, now: int) -> None:
        """A socket event or the server's shutdown: rare (one draw in eight), so that most
        scripts get somewhere before something ends them."""
        if now:
            return
        if how == "shutdown":
            self._shutdown(dt)
            return
        msg: dict[str, Any] = {
            "stop": stop_msg(),
            "twilio_closed": {"_socket": "closed"},
            "stalled": {"_socket": "stalled"},
            "realtime_closed": {"_socket": "closed", "code": 1006, "reason": ""},
            "failed": {"_socket": "failed", "reason": "refused"},
        }[how]
        side = "from_openai" if how in ("realtime_closed", "failed") else "from_twilio"
        self._feed(dt, side, msg)

    def _shutdown(self, dt: int) -> None:
        self.now += dt
        self._wake(self.now)
        was_done = self.s.done
        actions = self.s.shutdown(self.now)
        assert not (was_done and actions)
        self._handle(actions)

    @rule(dt=st.integers(0, 100), frame=ANY_FRAME | REST_GARBAGE)
    def garbage(self, dt: int, frame: Frame) -> None:
        self._feed(dt, frame.direction, frame.msg)

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def heard_never_exceeds_sent(self) -> None:  # (a)
        """What the marks say was heard of each item: the core's count is the wire's, and
        never more than was sent."""
        for item_id, item in self.s.playback.items.items():
            assert item.played == self.played.get(item_id, 0)
            assert item.played <= item.sent == self.sent[item_id]

    @invariant()
    def an_ended_call_closed_both_sides_and_left_no_timer(self) -> None:  # (e)
        s = self.s
        if not s.done:
            return
        assert s.deadline is None and not s.out.timers
        if not self.twilio_gone:
            assert any(isinstance(a, CloseTwilio) for a in self.actions), self.end
        if self.connect and not self.realtime_gone:
            assert any(isinstance(a, CloseRealtime) for a in self.actions), self.end


def test_scripted_calls_keep_their_invariants(caplog: pytest.LogCaptureFixture) -> None:
    try:
        run_state_machine_as_test(
            CallScript,
            settings=settings(
                max_examples=300,
                stateful_step_count=50,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
    finally:
        Machine.observer = None
    _log_fields_are_plain(caplog)


def _log_fields_are_plain(caplog: pytest.LogCaptureFixture) -> None:
    """Whatever the peers sent, the core's log lines hold only plain, short values: a
    peer's object is never logged as it is (it could be nested without bound)."""
    for record in caplog.get_records("call"):
        if not record.name.startswith("app.call"):
            continue
        for name, value in getattr(record, "fields", {}).items():
            assert value is None or type(value) in (str, int, float, bool), (record.msg, name)
            assert type(value) is not str or len(value) <= 300, (record.msg, name)


# -- the shapes, one field at a time ------------------------------------------------------


#: A valid message of every kind `app.call.inbound` lists.
VALID: dict[tuple[str, str], dict[str, Any]] = {
    ("from_openai", "input_audio_buffer.speech_started"): speech_started("u1", 100),
    ("from_openai", "input_audio_buffer.speech_stopped"): speech_stopped("u1", 900),
    ("from_openai", "input_audio_buffer.committed"): {
        "type": "input_audio_buffer.committed",
        "item_id": "u1",
    },
    ("from_openai", "response.created"): response_created("resp_2", {"bridge_request": "x"}),
    ("from_openai", "response.output_item.done"): function_call("end_call"),
    ("from_openai", "response.done"): REALTIME_TEMPLATES[5],
    ("from_openai", "response.output_audio_transcript.done"): REALTIME_TEMPLATES[8],
    ("from_openai", "conversation.item.input_audio_transcription.completed"): REALTIME_TEMPLATES[9],
    ("from_openai", "error"): _error("server_error", "evt_9"),
    ("from_twilio", "mark"): mark_msg("item_a.g0.m1"),
    ("from_twilio", "dtmf"): TWILIO_TEMPLATES[4],
}
SHAPES: list[tuple[str, str, Shape]] = [("from_openai", k, v) for k, v in REALTIME.items()] + [
    ("from_twilio", k, v) for k, v in TWILIO.items()
]


def test_every_shape_has_a_valid_message_that_fits_it() -> None:
    assert {(d, k) for d, k, _ in SHAPES} == set(VALID)
    for direction, kind, shape in SHAPES:
        assert malformed(VALID[direction, kind], shape) is None, kind


def _wrong(kind: type) -> st.SearchStrategy[Boxed]:
    """A value of any JSON type but `kind` (null excepted: that is an absent field)."""
    return WEIRD.filter(lambda v: v is not None and type(v) is not kind).map(Boxed)


@pytest.mark.parametrize(
    ("direction", "kind", "shape"), SHAPES, ids=[f"{d}:{k}" for d, k, _ in SHAPES]
)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_a_field_of_the_wrong_type_skips_the_message_as_bad_input(
    direction: str, kind: str, shape: Shape, data: st.DataObject
) -> None:
    f = data.draw(st.sampled_from(shape.fields))
    msg = dict(VALID[direction, kind])
    parent: Any = msg
    for key in f.path[:-1]:  # a missing parent is made, so that the field itself is wrong
        parent[key] = parent = dict(parent.get(key) or {})
    parent[f.path[-1]] = data.draw(_wrong(f.kind)).v
    assert malformed(msg, shape) is not None
    s = live(CONFIGS[1])
    play(s, 80, "item_x", 2)
    before = dict(s.bad_input)
    assert s.feed(100, direction, msg) == []  # skipped: nothing done about it
    source = "twilio" if direction == "from_twilio" else "realtime"
    assert (
        s.bad_input.get(f"{source}.{shape.reason}", 0)
        == before.get(f"{source}.{shape.reason}", 0) + 1
    )


@_FAST
@given(frame=ANY_FRAME, shape=st.sampled_from([shape for _, _, shape in SHAPES] + [FUNCTION_CALL]))
def test_a_message_fits_a_shape_only_with_every_field_of_its_type(
    frame: Frame, shape: Shape
) -> None:
    fits = malformed(frame.msg, shape) is None
    values = [(f, lookup(frame.msg, f.path)) for f in shape.fields]
    ok = all(
        (v is not None or not f.required) and type(v) in (f.kind, type(None)) for f, v in values
    )
    assert fits is ok


# -- the parsers ----------------------------------------------------------------------------


@_FAST
@given(value=(WEIRD | st.text(alphabet="AB+/=", max_size=12)).map(Boxed))
def test_base64_facts_of_any_value_never_raise(value: Boxed) -> None:
    if is_b64(value.v):
        assert decoded_len(value.v) == len(base64.b64decode(value.v, validate=True))


@_FAST
@given(arguments=st.text(max_size=50) | JSON.map(lambda v: orjson.dumps(v).decode()))
@example(arguments="[" * 100_000)
@example(arguments='{"reason": ' * 1000 + "1" + "}" * 1000)
@example(arguments='{"reason": "' + "x" * 10_000 + '"}')
@example(arguments='{"reason": ["a"]}')
def test_tool_arguments_of_any_text_never_raise(arguments: str) -> None:
    reason = tool_reason(arguments)
    assert reason is None or (type(reason) is str and 0 < len(reason) <= 200)


def _line(direction: str, msg: str, t_ms: float = 5) -> str:
    """A fixture line around `msg`, raw JSON text (which may be nested past any parser)."""
    return f'{{"t_ms":{t_ms},"dir":"{direction}","msg":{msg}}}'


def _deep_line(depth: int) -> str:
    return _line("from_twilio", '{"event":"x","v":' + "[" * depth + "]" * depth + "}")


_AUDIO = {"event": "media", "media": {"payload": {"_audio_bytes": 10**15}}}
_AUDIO_LINE = orjson.dumps({"t_ms": 1, "dir": "from_twilio", "msg": _AUDIO}).decode()
HEADER = orjson.dumps({"fixture": 1, "config": {}}).decode()


@_FAST
@given(line=st.text(max_size=40) | JSON.map(lambda v: orjson.dumps(v).decode()))
@example(line=_deep_line(100_000))
@example(line='{"t_ms": 1, "dir": ["from_twilio"], "msg": {}}')
@example(line='{"t_ms": "1", "dir": "from_twilio", "msg": {}}')
@example(line=_AUDIO_LINE)
def test_a_fixture_line_parses_or_is_an_error_naming_its_line(line: str) -> None:
    try:
        fixture = parse([HEADER, line])
    except FixtureError as exc:
        assert str(exc).startswith("fixture:2: ")
    else:
        assert all(e.line == 2 for e in fixture.entries)


def test_a_recording_with_frames_nested_1000_deep_replays_and_reports_the_difference() -> None:
    """An input nested 1000 deep (within orjson's limit, past `json`'s) is bad input to
    the core; a recorded output nested so deep is a difference, shown in the report."""
    deep = "[" * 1000 + "]" * 1000
    lines = [
        HEADER,
        _line("from_twilio", orjson.dumps(start_msg()).decode(), 1),
        _line("to_openai", '{"_socket":"connect"}', 1),
        _line("from_twilio", '{"event":' + deep + "}"),
        _line("to_twilio", '{"event":"clear","streamSid":' + deep + "}"),
    ]
    fixture = parse(lines)
    result = replay(fixture)
    assert [m.recorded.line for m in result.mismatches if m.recorded] == [5]
    assert "line 5" in report(result) and "REPLAY MISMATCH" in report(result)
    assert len(timeline(fixture.entries)) == 4


@pytest.mark.parametrize("depth", [1025, 100_000])
def test_a_fixture_line_nested_past_the_parsers_limit_is_an_error_naming_it(
    depth: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [HEADER, _line("from_twilio", orjson.dumps(start_msg()).decode()), _deep_line(depth)]
    with pytest.raises(FixtureError, match=r"fixture:3: not JSON"):
        parse(lines)
    path = tmp_path / "call.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8")
    assert main([str(path)]) == 2  # the command line says why, it doesn't crash
    assert f"{path}:3: not JSON" in capsys.readouterr().err


def test_preview_never_prints_a_peers_object() -> None:
    assert preview(nested(1000, "list")) == "<list>"
    assert preview("x" * 100) == "x" * 40
    assert preview(None) == "<NoneType>"
