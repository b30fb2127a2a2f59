"""The call's states, and every transition between them: the one table to read first.

Everything that moves a call from one phase to another, or its deliberate ending from one
stage to the next, is listed in `PHASES` and `ENDINGS` below (after h11's `_state.py`,
"rule 1: everything that affects the state machine lives here"). The code elsewhere in
`app.call` decides *when* an input happens; it can only move a machine along a row of these
tables, through `Machine.move`, which checks the row exists, logs the change at DEBUG and
raises `IllegalTransition` otherwise. `docs/call-states.md` is generated from the tables
(`python -m app.call.state > docs/call-states.md`) and a test fails when it drifts.

Two machines describe a call:

* **Phase** — the call as a whole: waiting for Twilio's `start`, connecting to the Realtime
  service, live, ended. Once ended, every later input is ignored.
* **Stage** of the deliberate ending (hang-up or transfer after the bot's last word): none,
  the model speaking its last words, the bridge asking for closing words, playing them out,
  waiting to learn whether a caller talking over them took a turn, the REST request, done.

Each row also says what the transition sends (`emits`): action kinds (`ToTwilio:clear`,
`ToRealtime:response.create`, `RestRequest`, `CloseTwilio`, ...) and timers (`timer:NAME`).
Plain names are always emitted in the same input; names in parentheses may be (they depend
on the configuration or on what else is going on). A test replays the fixture library and
the core scenarios and checks every row is taken and its plain emits really happen.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar, Final, Generic, TypeVar

from app.observability import log_event

logger = logging.getLogger("app.call.state")


class Phase(Enum):
    """The call as a whole."""

    WAITING_START = "waiting_start"
    CONNECTING = "connecting"
    LIVE = "live"
    ENDED = "ended"


class Stage(Enum):
    """The deliberate ending (hang-up or transfer after the last word)."""

    NONE = "none"
    SPEAKING = "speaking"  # the model called end_call/transfer_call; its words may follow
    CLOSING = "closing"  # the bridge asked for closing words and waits for that response
    PLAYING_OUT = "playing_out"  # words generated; waiting for the last mark echo
    WAITING_FOR_CALLER = "waiting_for_caller"  # played out while the caller talked over it
    TAIL = "tail"  # the last mark echoed; the last sound still reaching the caller's ear
    REST = "rest"  # the REST update is out (or being retried): too late to call it off
    DONE = "done"  # Twilio accepted it: the `stop` that follows is the expected end
    FAILED = "failed"  # Twilio refused it: the call ends through the fallback TwiML


class Input(Enum):
    """What can move a machine. Values read as the diagram's edge labels."""

    # phase
    START = "start"
    START_REFUSED = "start refused"
    NO_START = "no start in time"
    REALTIME_OPEN = "realtime open"
    REALTIME_FAILED = "realtime unavailable"
    NOT_READY = "not ready in time"
    REALTIME_LOST = "realtime lost"
    TWILIO_GONE = "stop or stream closed"
    TWILIO_STALLED = "caller side not reading or not sending"
    RESPONSES_FAILING = "responses failing"
    NO_REST = "ending without REST"
    REST_FAILED = "REST refused"
    STOP_GRACE = "no stop after REST"
    SHUTDOWN = "shutdown"
    CRASHED = "bridge error"
    # ending
    TOOL_CALL = "end_call or transfer_call"
    BRIDGE_ENDS = "time limit or silence"
    DONE_WITH_WORDS = "response done, words said"
    DONE_WITHOUT_WORDS = "response done, no words"
    CLOSING_DONE = "closing words done"
    PLAYED_OUT = "last mark echo"
    CALLER_OVER_LAST_WORDS = "last mark echo, caller speaking"
    NOISE = "caller's speech was noise"
    TAIL_START = "played out, tail to play"
    TAIL_OVER = "tail played"
    CALLED_OFF = "caller spoke"
    PLAYOUT_TIMEOUT = "last-words timeout"
    HARD_LIMIT = "time limit, second time"
    MACHINE = "answering machine or fax (outbound)"
    REST_OK = "REST accepted"
    REST_RETRY = "REST 429, 5xx or no answer"
    RETRY_TIMER = "retry timer"
    STREAM_ENDED = "stop before the REST answer"


S = TypeVar("S", Phase, Stage)


@dataclass(frozen=True, slots=True)
class Transition(Generic[S]):
    """One row: in `source`, `input` moves the machine to `target` and sends `emits`."""

    source: S
    input: Input
    target: S
    emits: tuple[str, ...] = ()

    @property
    def required(self) -> tuple[str, ...]:
        """The emits that always happen (not in parentheses)."""
        return tuple(e for e in self.emits if not e.startswith("("))


_P = Phase
_I = Input
_CLOSE_BOTH = ("CloseTwilio", "CloseRealtime")

#: The call's phases. Not listed: anything in ENDED (every input is ignored once ended).
PHASES: tuple[Transition[Phase], ...] = (
    Transition(
        _P.WAITING_START, _I.START, _P.CONNECTING, ("ConnectRealtime", "timer:realtime_ready")
    ),
    Transition(_P.WAITING_START, _I.START_REFUSED, _P.ENDED, ("CloseTwilio",)),
    Transition(_P.WAITING_START, _I.NO_START, _P.ENDED, ("CloseTwilio",)),
    Transition(_P.WAITING_START, _I.TWILIO_GONE, _P.ENDED, ("CloseRealtime",)),
    Transition(_P.WAITING_START, _I.SHUTDOWN, _P.ENDED, _CLOSE_BOTH),
    Transition(
        _P.CONNECTING,
        _I.REALTIME_OPEN,
        _P.LIVE,
        ("ToRealtime:session.update", "(ToRealtime:response.create)"),
    ),
    Transition(_P.CONNECTING, _I.REALTIME_FAILED, _P.ENDED, ("CloseTwilio",)),
    Transition(_P.CONNECTING, _I.NOT_READY, _P.ENDED, _CLOSE_BOTH),
    Transition(_P.CONNECTING, _I.REALTIME_LOST, _P.ENDED, ("CloseTwilio",)),
    Transition(_P.CONNECTING, _I.TWILIO_GONE, _P.ENDED, ("CloseRealtime",)),
    Transition(_P.CONNECTING, _I.SHUTDOWN, _P.ENDED, _CLOSE_BOTH),
    Transition(_P.LIVE, _I.NOT_READY, _P.ENDED, _CLOSE_BOTH),
    Transition(_P.LIVE, _I.REALTIME_LOST, _P.ENDED, ("CloseTwilio",)),
    Transition(_P.LIVE, _I.TWILIO_GONE, _P.ENDED, ("CloseRealtime",)),
    Transition(_P.LIVE, _I.TWILIO_STALLED, _P.ENDED, _CLOSE_BOTH),
    Transition(_P.LIVE, _I.RESPONSES_FAILING, _P.ENDED, _CLOSE_BOTH),
    Transition(_P.LIVE, _I.NO_REST, _P.ENDED, _CLOSE_BOTH),
    Transition(_P.LIVE, _I.REST_FAILED, _P.ENDED, _CLOSE_BOTH),
    Transition(_P.LIVE, _I.STOP_GRACE, _P.ENDED, _CLOSE_BOTH),
    Transition(_P.LIVE, _I.SHUTDOWN, _P.ENDED, _CLOSE_BOTH),
    *(Transition(p, _I.CRASHED, _P.ENDED) for p in (_P.WAITING_START, _P.CONNECTING, _P.LIVE)),
)

_S = Stage
#: The stages in which the last words are still being generated or played: the ones the
#: last-words timer bounds. Only a time-limit ending, which starts in CLOSING, can hit the
#: limit a second time.
WORDS_STAGES: Final = (_S.SPEAKING, _S.CLOSING, _S.PLAYING_OUT)
_OPEN = (*WORDS_STAGES, _S.WAITING_FOR_CALLER)
_ACT = ("(RestRequest)", "(CloseTwilio)")  # CloseTwilio when there are no REST credentials
_CALLED_OFF = ("ToRealtime:conversation.item.create",)

#: The deliberate ending. A called-off ending starts again from NONE.
ENDINGS: tuple[Transition[Stage], ...] = (
    Transition(
        _S.NONE,
        _I.TOOL_CALL,
        _S.SPEAKING,
        ("ToRealtime:conversation.item.create", "timer:last_words"),
    ),
    Transition(
        _S.NONE,
        _I.BRIDGE_ENDS,
        _S.CLOSING,
        ("ToRealtime:conversation.item.create", "timer:last_words", "(ToRealtime:response.create)"),
    ),
    Transition(_S.SPEAKING, _I.DONE_WITH_WORDS, _S.PLAYING_OUT, ("(timer:last_words)",)),
    Transition(
        _S.SPEAKING,
        _I.DONE_WITHOUT_WORDS,
        _S.CLOSING,
        ("timer:last_words", "(ToRealtime:response.create)"),
    ),
    Transition(_S.CLOSING, _I.CLOSING_DONE, _S.PLAYING_OUT, ("(timer:last_words)",)),
    Transition(_S.PLAYING_OUT, _I.PLAYED_OUT, _S.REST, _ACT),
    Transition(_S.PLAYING_OUT, _I.CALLER_OVER_LAST_WORDS, _S.WAITING_FOR_CALLER),
    Transition(_S.WAITING_FOR_CALLER, _I.NOISE, _S.REST, _ACT),
    # HANGUP_TAIL_MS > 0: the last mark's echo comes while the last sound is still on its
    # way to the caller's ear; the update waits for it (and can no longer be called off).
    Transition(_S.PLAYING_OUT, _I.TAIL_START, _S.TAIL, ("timer:hangup_tail",)),
    Transition(_S.WAITING_FOR_CALLER, _I.TAIL_START, _S.TAIL, ("timer:hangup_tail",)),
    Transition(_S.TAIL, _I.TAIL_OVER, _S.REST, _ACT),
    *(Transition(s, _I.PLAYOUT_TIMEOUT, _S.REST, _ACT) for s in WORDS_STAGES),
    *(Transition(s, _I.CALLED_OFF, _S.NONE, _CALLED_OFF) for s in _OPEN),
    *(Transition(s, _I.HARD_LIMIT, _S.REST, _ACT) for s in _OPEN if s is not _S.SPEAKING),
    # Outbound, a machine detected (`app.call.opening`): hang up at once, no word said.
    Transition(_S.NONE, _I.MACHINE, _S.REST, _ACT),
    Transition(_S.REST, _I.REST_OK, _S.DONE, ("CloseRealtime", "timer:stop_grace")),
    Transition(_S.REST, _I.REST_RETRY, _S.REST, ("timer:rest_retry",)),
    Transition(_S.REST, _I.RETRY_TIMER, _S.REST, ("RestRequest",)),
    Transition(_S.REST, _I.REST_FAILED, _S.FAILED),
    Transition(_S.REST, _I.STREAM_ENDED, _S.DONE),
)


class IllegalTransition(RuntimeError):
    """A machine was asked to move along a row its table does not have (a bug)."""


class Machine(Generic[S]):
    """One state machine: its current state, moved only along the rows of its table.

    `observer`, when set (tests), is called with every transition taken.
    """

    observer: ClassVar[Callable[[str, Transition[Any]], None] | None] = None

    def __init__(self, name: str, table: tuple[Transition[S], ...], initial: S) -> None:
        self.name = name
        self.state: S = initial
        self._rows: dict[tuple[S, Input], Transition[S]] = {(t.source, t.input): t for t in table}

    def move(self, event: Input) -> S:
        """Take the row (current state, `event`); raise `IllegalTransition` if there is none."""
        row = self._rows.get((self.state, event))
        if row is None:
            raise IllegalTransition(f"{self.name}: no transition from {self.state} on {event}")
        log_event(
            logger,
            logging.DEBUG,
            "state.change",
            machine=self.name,
            source=row.source.value,
            input=event.name.lower(),
            target=row.target.value,
        )
        self.state = row.target
        observer = Machine.observer
        if observer is not None:
            observer(self.name, row)
        return row.target


# -- the generated documentation ----------------------------------------------------------


def _mermaid(title: str, table: tuple[Transition[S], ...], initial: S, final: S | None) -> str:
    lines = [f"### {title}", "", "```mermaid", "stateDiagram-v2"]
    lines.append(f"    [*] --> {initial.value}")
    for t in table:
        lines.append(f"    {t.source.value} --> {t.target.value}: {t.input.value}")
    if final is not None:
        lines.append(f"    {final.value} --> [*]")
    lines += ["```", ""]
    return "\n".join(lines)


def _rows(table: tuple[Transition[S], ...]) -> str:
    out = ["| from | input | to | emits |", "|---|---|---|---|"]
    for t in table:
        emits = ", ".join(f"`{e}`" for e in t.emits) or "-"
        out.append(f"| {t.source.value} | {t.input.value} | {t.target.value} | {emits} |")
    return "\n".join(out) + "\n"


def render() -> str:
    """`docs/call-states.md`: the two machines as Mermaid diagrams and as tables."""
    head = (
        "# Call states\n\n"
        "Generated from `app/call/state.py` by `python -m app.call.state > docs/call-states.md`;"
        " do not edit by hand (a test compares). Emits in parentheses depend on the"
        " configuration or on what else is going on; the others always happen. `timer:NAME`"
        " sets a timer of `app.call.outbox.Timer`.\n\n"
    )
    return (
        head
        + _mermaid("Phase of the call", PHASES, Phase.WAITING_START, Phase.ENDED)
        + "\n"
        + _rows(PHASES)
        + "\n"
        + _mermaid("Stage of the deliberate ending", ENDINGS, Stage.NONE, None)
        + "\n"
        + _rows(ENDINGS)
    )


if __name__ == "__main__":
    sys.stdout.write(render())
