"""The transition table (app/call/state.py) is the truth about what a call does.

* the generated diagram in docs/call-states.md is the table's (no drift);
* a machine moves only along its rows: anything else raises, and every move is logged;
* every row is taken, by the recorded call library or by one of the scenarios below (an
  executable index of the table: a row nobody can reach is a row that lies), and the
  actions a row says it always emits really come out in the step that took it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from app.call.actions import Action, ToRealtime, ToTwilio
from app.call.config import CallConfig
from app.call.outbox import Timer
from app.call.session import START_TIMEOUT_MS, CallSession
from app.call.state import (
    ENDINGS,
    PHASES,
    IllegalTransition,
    Input,
    Machine,
    Phase,
    Stage,
    Transition,
    render,
)
from app.replay import load, replay
from tests.core import connecting as core_connecting
from tests.core import (
    fire,
    function_call,
    hear,
    play,
    quiet,
    realtime,
    response_created,
    response_done,
    rest,
    socket,
    speech_started,
    speech_stopped,
    to_realtime,
)
from tests.core import live as core_live

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ROOT / "tests" / "fixtures" / "calls"
ROWS: list[tuple[str, Transition[Any]]] = [("phase", r) for r in PHASES] + [
    ("ending", r) for r in ENDINGS
]


def test_the_docs_diagram_is_generated_from_the_table() -> None:
    drawn = (ROOT / "docs" / "call-states.md").read_text(encoding="utf-8")
    assert drawn == render(), "run: python -m app.call.state > docs/call-states.md"


def test_a_move_off_the_table_fails_loudly_and_a_move_on_it_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    phase: Machine[Phase] = Machine("phase", PHASES, Phase.ENDED)
    with pytest.raises(IllegalTransition, match=r"from Phase\.ENDED on Input\.START"):
        phase.move(Input.START)
    ending: Machine[Stage] = Machine("ending", ENDINGS, Stage.NONE)
    with pytest.raises(IllegalTransition):
        ending.move(Input.REST_OK)
    assert ending.state is Stage.NONE  # a refused move changes nothing
    with caplog.at_level(logging.DEBUG, logger="app.call.state"):
        ending.move(Input.TOOL_CALL)
    (record,) = [r for r in caplog.records if r.getMessage() == "state.change"]
    assert record.fields == {  # type: ignore[attr-defined]
        "machine": "ending",
        "source": "none",
        "input": "tool_call",
        "target": "speaking",
    }


def test_rows_are_unique() -> None:
    keys = [(name, r.source, r.input) for name, r in ROWS]
    assert len(keys) == len(set(keys))


# -- watching the core step by step ------------------------------------------------------


@dataclass
class Step:
    rows: list[tuple[str, Transition[Any]]]
    emitted: set[str]


@dataclass
class Watch:
    """Collects, per step of a session, the rows it took and what it emitted."""

    steps: list[Step] = field(default_factory=list)
    _rows: list[tuple[str, Transition[Any]]] = field(default_factory=list)
    _timers: dict[int, dict[Timer, float]] = field(default_factory=dict)

    def moved(self, name: str, row: Transition[Any]) -> None:
        self._rows.append((name, row))

    def step(self, session: CallSession, actions: list[Action]) -> None:
        before = self._timers.get(id(session), {})
        after = dict(session.out.timers)
        self._timers[id(session)] = after
        set_now = {f"timer:{t.value}" for t, at in after.items() if before.get(t) != at}
        self.steps.append(Step(self._rows, {_kind(a) for a in actions} | set_now))
        self._rows = []


def _kind(action: Action) -> str:
    if isinstance(action, ToRealtime):
        return f"ToRealtime:{action.msg['type']}"
    if isinstance(action, ToTwilio):
        return f"ToTwilio:{action.msg['event']}"
    return type(action).__name__


WATCH = Watch()


@pytest.fixture
def watch() -> Iterator[Watch]:
    watch = Watch()
    Machine.observer = watch.moved
    global WATCH
    WATCH = watch
    try:
        yield watch
    finally:
        Machine.observer = None


class Watched(CallSession):
    """A real session whose every step is shown to the current `Watch` (nothing else
    changes: each method is the parent's)."""

    def opened(self, now: float) -> list[Action]:
        return self._seen(super().opened(now))

    def feed(self, now: float, direction: str, msg: dict[str, Any]) -> list[Action]:
        return self._seen(super().feed(now, direction, msg))

    def advance(self, now: float) -> list[Action]:
        return self._seen(super().advance(now))

    def refuse(self, now: float, reason: str) -> list[Action]:
        return self._seen(super().refuse(now, reason))

    def shutdown(self, now: float) -> list[Action]:
        return self._seen(super().shutdown(now))

    def crashed(self, now: float) -> None:
        super().crashed(now)
        self._seen([])

    def _seen(self, actions: list[Action]) -> list[Action]:
        WATCH.step(self, actions)
        return actions


# -- scenarios: the rows the recorded library doesn't take -------------------------------

REST = {"tools": ("end_call",), "rest_available": True}
MIN_SPEECH = {"interrupt_min_speech_ms": 800}


def waiting(cfg: CallConfig | None = None) -> Watched:
    s = Watched(cfg or quiet())
    s.opened(0)
    return s


def connecting(cfg: CallConfig | None = None) -> Watched:
    s = core_connecting(cfg, session=Watched)
    assert isinstance(s, Watched)
    return s


def live(cfg: CallConfig | None = None) -> Watched:
    """Live and ready, the response `resp_1` started."""
    s = core_live(cfg, session=Watched)
    assert isinstance(s, Watched)
    return s


def tool_ending(cfg: CallConfig, words: bool = True) -> tuple[Watched, list[str]]:
    """The model says goodbye (or not a word) and calls end_call in `resp_1`."""
    s = live(cfg)
    marks = play(s, 100, "item_a", 3, "resp_1") if words else []
    realtime(s, 110, function_call("end_call"))
    realtime(s, 120, response_done("resp_1"))
    return s, marks


def rest_out(cfg: CallConfig) -> Watched:
    s, marks = tool_ending(cfg)
    hear(s, 120, marks)  # the last mark echo: the REST update goes out
    return s


def closing_request(actions: list[Action]) -> str:
    (create,) = [e for e in to_realtime(actions) if e["type"] == "response.create"]
    return str(create["event_id"])


def wrap_up(s: Watched) -> tuple[float, str]:
    """The time limit: its time, and the id of the request for the wrap-up's words."""
    at = s.out.timers[Timer.MAX_DURATION]
    return at, closing_request(fire(s, Timer.MAX_DURATION))


def hard_limit_ready(cfg: CallConfig) -> Watched:
    """A time-limit ending the caller already talked over once: the next call-off finds
    its grace used up."""
    s = live(cfg)
    realtime(s, 80, response_done("resp_1"))
    at, eid = wrap_up(s)
    realtime(s, at + 100, speech_started())  # over the (silent) wrap-up: called off, grace
    realtime(s, at + 200, response_created("resp_w", {"bridge_request": eid}))  # cancelled
    realtime(s, at + 300, response_done("resp_w", "cancelled"))
    realtime(s, at + 900, speech_stopped(audio_end_ms=2_000))
    return s


def _closing_played(s: Watched, now: float, eid: str) -> list[str]:
    realtime(s, now, response_created("resp_c", {"bridge_request": eid}))
    marks = play(s, now, "item_c", 3, "resp_c")
    realtime(s, now + 5, response_done("resp_c"))
    return marks


def opened() -> Watched:
    """The Realtime socket is open, but the session never confirms it is ready."""
    s = connecting()
    socket(s, 9, "openai", "open")
    return s


def rest_answered(status: int) -> Watched:
    s = rest_out(quiet(**REST))
    rest(s, 500, status)
    return s


def rest_retried() -> Watched:
    """Twilio answered 503; the backoff is over and the update went out again."""
    s = rest_answered(503)
    fire(s, Timer.REST_RETRY)
    return s


def saying_goodbye(words: bool = False) -> Watched:
    """The model called end_call in `resp_1`, which hasn't finished (its goodbye playing,
    with `words`)."""
    s = live(quiet(**REST))
    if words:
        play(s, 100, "item_a", 3, "resp_1")
    realtime(s, 110, function_call("end_call"))
    return s


SCENARIOS: dict[str, Callable[[], object]] = {
    "start refused": lambda: waiting().refuse(5, "bad_stream_token"),
    "no start": lambda: waiting().advance(START_TIMEOUT_MS),
    "gone before start": lambda: socket(waiting(), 5, "twilio", "closed"),
    "shutdown before start": lambda: waiting().shutdown(5),
    "crash before start": lambda: waiting().crashed(5),
    "realtime unavailable": lambda: socket(connecting(), 9, "openai", "failed", reason="x"),
    "never ready": lambda: fire(connecting(), Timer.READY),
    "lost while connecting": lambda: socket(connecting(), 9, "openai", "closed", code=1006),
    "gone while connecting": lambda: socket(connecting(), 9, "twilio", "closed"),
    "shutdown while connecting": lambda: connecting().shutdown(9),
    "crash while connecting": lambda: connecting().crashed(9),
    "open but never ready": lambda: fire(opened(), Timer.READY),
    "caller side stalled": lambda: socket(live(), 99, "twilio", "stalled"),
    "shutdown while live": lambda: live().shutdown(99),
    "crash while live": lambda: live().crashed(99),
    "answers failing": lambda: realtime(
        live(),
        99,
        response_done("resp_1", "failed", status_details={"error": {"code": "insufficient_quota"}}),
    ),
    "no REST credentials": lambda: rest_out(quiet(tools=("end_call",), rest_available=False)),
    "REST refused": lambda: rest(rest_out(quiet(**REST)), 500, 403),
    "no stop after REST": lambda: fire(rest_answered(200), Timer.STOP_GRACE),
    "REST retried": lambda: rest(rest_retried(), 2000, 200),
    "tool without a word": lambda: tool_ending(quiet(**REST), words=False),
    "closing words never come": lambda: fire(
        tool_ending(quiet(**REST), words=False)[0], Timer.LAST_WORDS
    ),
    "last words never heard": lambda: fire(tool_ending(quiet(**REST))[0], Timer.LAST_WORDS),
    "the goodbye's response never finishes": lambda: fire(saying_goodbye(), Timer.LAST_WORDS),
    "barge-in over the model's goodbye": lambda: realtime(
        saying_goodbye(words=True), 200, speech_started()
    ),
    "caller speaks before the closing words": lambda: realtime(
        tool_ending(quiet(**REST), words=False)[0], 200, speech_started()
    ),
    "noise over the last word": lambda: _over_last_words(audio_end_ms=600),
    "a turn over the last word": lambda: _over_last_words(audio_end_ms=2_000),
    "the last sound's tail before the hang-up": lambda: _tail(noise=False),
    "noise over the last word, then the tail": lambda: _tail(noise=True),
    "time limit hard while closing": lambda: _hard_limit("closing"),
    "time limit hard while playing out": lambda: _hard_limit("playing_out"),
    "time limit hard over the last word": lambda: _hard_limit("waiting"),
    "an answering machine (outbound)": lambda: _machine(),
}


def _machine() -> None:
    """An outbound call with detection: Twilio says a machine answered."""
    cfg = quiet(**REST, direction="outbound", machine_detection="hangup")
    s = connecting(cfg)
    socket(s, 9, "openai", "open")
    realtime(s, 60, {"type": "session.updated", "session": {}})
    s.feed(900, "rest", {"answered_by": "machine_start"})
    assert s.ending.stage is Stage.REST


def _over_last_words(audio_end_ms: int, **extra: Any) -> None:
    """Min-speech policy: the caller talks while the goodbye plays out; noise or a turn?"""
    s, marks = tool_ending(quiet(**REST, **MIN_SPEECH, **extra))
    realtime(s, 125, speech_started(audio_start_ms=0))  # unconfirmed: the bot goes on
    hear(s, 125, marks)  # played out with the caller still speaking
    assert s.ending.stage is Stage.WAITING_FOR_CALLER
    realtime(s, 700, speech_stopped(audio_end_ms=audio_end_ms))


def _tail(noise: bool) -> None:
    """HANGUP_TAIL_MS: the update waits for the last sound to reach the caller's ear."""
    tail = {"hangup_tail_ms": 300}
    if not noise:
        s = rest_out(quiet(**REST, **tail))
        assert s.ending.stage is Stage.TAIL
    else:
        _over_last_words(audio_end_ms=600, **tail)
        return
    fire(s, Timer.HANGUP_TAIL)
    assert s.ending.stage is Stage.REST


def _hard_limit(where: str) -> None:
    extra = MIN_SPEECH if where == "waiting" else {}
    s = hard_limit_ready(quiet(max_call_ms=60_000, rest_available=True, **extra))
    at, eid = wrap_up(s)  # the limit, again, after its grace
    if where == "closing":
        realtime(s, at + 100, speech_started())
    else:
        marks = _closing_played(s, at + 100, eid)
        assert s.ending.stage is Stage.PLAYING_OUT
        realtime(s, at + 110, speech_started())
        if where == "waiting":
            hear(s, at + 110, marks)
            assert s.ending.stage is Stage.WAITING_FOR_CALLER
            realtime(s, at + 700, speech_stopped(audio_end_ms=5_000))
    assert s.ending.stage is Stage.REST


def _library_steps(watch: Watch) -> None:
    for path in sorted(LIBRARY.glob("*.jsonl")):
        result = replay(load(path), observe=lambda s, _t, actions: watch.step(s, actions))
        assert result.ok, path


def test_every_row_is_taken_and_emits_what_it_says(watch: Watch) -> None:
    logging.disable(logging.CRITICAL)  # the scenarios' own warnings are expected
    try:
        _library_steps(watch)
        for name, run in SCENARIOS.items():
            before = len(watch.steps)
            run()
            # Each scenario ends on a move: the row it is there to take.
            assert len(watch.steps) > before and watch.steps[-1].rows, name
    finally:
        logging.disable(logging.NOTSET)
    taken = {(name, row) for step in watch.steps for name, row in step.rows}
    missing = [f"{n}: {r.source.value} --{r.input.value}--> {r.target.value}" for n, r in ROWS]
    missing = [m for (n, r), m in zip(ROWS, missing, strict=True) if (n, r) not in taken]
    assert not missing, "rows no scenario or fixture takes:\n" + "\n".join(missing)
    for step in watch.steps:
        for name, row in step.rows:
            lacking = [e for e in row.required if e not in step.emitted]
            assert not lacking, f"{name} {row.source} --{row.input}--> {row.target}: {lacking}"
