"""Deliberate endings: hang up or transfer after the bot's last word. Sans-I/O.

Peers cut the goodbye off (a hang-up on a timer), transfer on top of the hand-off
sentence, or treat the `stop` that follows their own REST call as a failure. Here an
ending is a machine of its own, `Stage` in `app.call.state` (its diagram is in
`docs/call-states.md`), moved only along the rows of `ENDINGS`:

* A tool runs only from a *completed* function-call item: an interrupted response can
  carry truncated arguments (the session checks this before `from_tool`).
* "Played out" is known from Twilio mark echoes, never from generation time; the wait is
  bounded (`playout_timeout_ms`), and when it runs out the action happens anyway, logged.
* REST retries (429, 5xx, no answer) are decided here, with backoff timers, so that a
  recorded call replays its retries too. 20404 means the call is already over: done.

This class keeps the ending's state and emits its own actions (the REST update, closing
the Realtime socket once Twilio accepted it, the message telling the model an ending was
called off); it returns what happened, and the session decides what that means for the
call (asking for closing words, ending the call).
"""

from __future__ import annotations

import logging
from enum import Enum
from typing import Final

import orjson

from app.call.actions import CloseRealtime, RestRequest
from app.call.config import CallConfig
from app.call.inbound import text_or
from app.call.outbox import Outbox, Timer
from app.call.state import ENDINGS, WORDS_STAGES, Input, Machine, Stage
from app.observability import log_event
from app.protocol import realtime as rt
from app.protocol import twilio as tw

logger = logging.getLogger("app.call")

#: After a successful REST update Twilio ends the stream itself; if it doesn't, we do.
STOP_GRACE_MS: Final = 3000
REST_BACKOFF_MS: Final = (500, 1000, 2000, 4000)
#: A tool call's arguments are `{"reason": "..."}`: far longer ones are not read at all.
MAX_ARGUMENTS_CHARS: Final = 4096

#: The model's tools that end the call, by the kind of ending they ask for.
TOOL_ENDINGS: Final = {"end_call": "hangup", "transfer_call": "transfer"}
#: How each kind of ending is reported in the call summary.
END_REASONS: Final = {"hangup": "bot_hung_up", "transfer": "transferred"}

#: What the model is asked to say when it called the tool without a word.
CLOSING_WORDS: Final = {
    "hangup": "Say a brief, friendly goodbye to the caller now, in one short sentence.",
    "transfer": "Tell the caller in one short sentence that you are transferring them now.",
}
#: The function call's output: what the model is told will happen.
TOOL_RESULT: Final = {
    "hangup": "The call will be hung up as soon as your last words have been heard. "
    "Say nothing more unless the caller speaks.",
    "transfer": "The caller will be transferred as soon as your last words have been heard. "
    "Say nothing more unless the caller speaks.",
}
_CALLED_OFF: Final = (
    "The caller spoke while you were finishing, so the {what} was called off and the call "
    "is still going on. Listen to the caller and continue the conversation."
)

_UNDER_WAY: Final = (*WORDS_STAGES, Stage.WAITING_FOR_CALLER, Stage.TAIL, Stage.REST)
_COMMITTED: Final = (Stage.TAIL, Stage.REST, Stage.DONE, Stage.FAILED)


class Progress(Enum):
    """What a `response.done` meant for the ending."""

    NOTHING = "nothing"
    ASK_FOR_WORDS = "ask_for_words"  # the tool came without a word: ask for closing words
    PLAYED_OUT = "played_out"  # the last words are generated and have all been heard


class RestVerdict(Enum):
    """What a REST answer meant."""

    IGNORED = "ignored"  # not waiting for one
    DONE = "done"  # Twilio ends the stream next: the expected end
    RETRY = "retry"
    FAILED = "failed"  # the call goes to the fallback TwiML


class Ending:
    """The call's deliberate ending, if any."""

    def __init__(self, outbox: Outbox, config: CallConfig) -> None:
        self.out = outbox
        self.config = config
        self.machine: Machine[Stage] = Machine("ending", ENDINGS, Stage.NONE)
        self.kind = ""  # "hangup" | "transfer"
        self.reason = ""  # why, for the log (from the model, or max_duration / silence)
        self.summary_reason = ""  # how the call ends, when not the kind's default
        self.response_id: str | None = None  # the response whose last words we wait for
        self.attempts = 0

    # -- questions ------------------------------------------------------------------------

    @property
    def stage(self) -> Stage:
        return self.machine.state

    @property
    def active(self) -> bool:
        """An ending is under way (and not yet accepted by Twilio)."""
        return self.machine.state in _UNDER_WAY

    @property
    def committed(self) -> bool:
        """The REST request is out or done: too late to call the ending off."""
        return self.machine.state in _COMMITTED

    @property
    def waiting_for_caller(self) -> bool:
        """The last words played while the caller talked over them: turn, or noise?"""
        return self.machine.state is Stage.WAITING_FOR_CALLER

    def intended_reason(self) -> str:
        """How the call ends if this ending succeeds (for the summary)."""
        return self.summary_reason or END_REASONS[self.kind]

    # -- starting -------------------------------------------------------------------------

    def from_tool(self, now: float, kind: str, reason: str, response_id: str | None) -> None:
        """The model called `end_call`/`transfer_call` in response `response_id`; its
        words are waited for at most `playout_timeout_ms` (the service might never finish
        that response)."""
        self._start(Input.TOOL_CALL, kind, reason, "", response_id)
        self._bound_last_words(now)

    def from_bridge(self, now: float, kind: str, reason: str, summary_reason: str) -> None:
        """The bridge ends the call (time limit, silence): its closing words are asked for
        next (by the session), and waited for at most `playout_timeout_ms`."""
        self._start(Input.BRIDGE_ENDS, kind, reason, summary_reason, None)
        self._bound_last_words(now)

    def at_once(self, reason: str, summary_reason: str) -> bool:
        """Hang up now, without last words (an answering machine under
        `machine_detection = "hangup"`). False as `act` says it (no REST credentials)."""
        self.kind, self.reason, self.summary_reason = "hangup", reason, summary_reason
        self.response_id, self.attempts = None, 0
        return self.act(Input.MACHINE)

    def _start(
        self, via: Input, kind: str, reason: str, summary_reason: str, response_id: str | None
    ) -> None:
        self.machine.move(via)
        self.kind, self.reason, self.summary_reason = kind, reason, summary_reason
        self.response_id, self.attempts = response_id, 0

    def _bound_last_words(self, now: float) -> None:
        """Wait for the last words at most `playout_timeout_ms` from `now`."""
        self.out.set_timer(Timer.LAST_WORDS, now + self.config.playout_timeout_ms)

    # -- progress -------------------------------------------------------------------------

    def response_created(self, response_id: str) -> None:
        """The response carrying the closing words started."""
        if self.machine.state is Stage.CLOSING and self.response_id is None:
            self.response_id = response_id

    def response_done(
        self, now: float, response_id: str, had_audio: bool, playing: bool, queued_ms: int = 0
    ) -> Progress:
        """The last words' response is done. `queued_ms`: its audio still to be heard (the
        service sends faster than real time): the wait for it to play is that long plus
        `playout_timeout_ms`, so a long goodbye or voicemail is never cut by the bound."""
        state = self.machine.state
        if state not in (Stage.SPEAKING, Stage.CLOSING) or self.response_id != response_id:
            return Progress.NOTHING
        if state is Stage.SPEAKING and not had_audio:
            # The model called the tool without a word: the closing words come first.
            self.machine.move(Input.DONE_WITHOUT_WORDS)
            self.response_id = None
            self._bound_last_words(now)
            return Progress.ASK_FOR_WORDS
        self.machine.move(Input.DONE_WITH_WORDS if state is Stage.SPEAKING else Input.CLOSING_DONE)
        if not playing:
            return Progress.PLAYED_OUT
        self._bound_last_words(now + queued_ms)
        return Progress.NOTHING

    def caller_over_last_words(self) -> None:
        """The last words played out while the caller was speaking: wait to learn whether
        that was a turn (the last-words timer still bounds the wait)."""
        self.machine.move(Input.CALLER_OVER_LAST_WORDS)

    def call_off(self) -> None:
        """The caller spoke during the last words: no hang-up or transfer; the model is told."""
        self.machine.move(Input.CALLED_OFF)
        self.out.cancel_timer(Timer.LAST_WORDS)
        log_event(logger, logging.INFO, "ending.called_off", kind=self.kind)
        what = "hang-up" if self.kind == "hangup" else "transfer"
        self.out.realtime(rt.system_text(_CALLED_OFF.format(what=what)))

    # -- acting ---------------------------------------------------------------------------

    def tail(self, now: float) -> bool:
        """The last words have played: True when the update waits `hangup_tail_ms` first
        (`HANGUP_TAIL_MS`: Twilio echoes the last mark as it hands the last audio on, a
        little before the caller hears it), False when it goes now."""
        tail_ms = self.config.hangup_tail_ms
        if tail_ms <= 0:
            return False
        self.machine.move(Input.TAIL_START)
        self.out.cancel_timer(Timer.LAST_WORDS)
        self.out.set_timer(Timer.HANGUP_TAIL, now + tail_ms)
        return True

    def act(self, via: Input) -> bool:
        """Move to REST along `via` and send the update. False when there are no REST
        credentials: the only way to end the call is then to close the stream (Twilio runs
        the fallback TwiML; tools are not offered in that case), which the session does."""
        self.machine.move(via)
        self.out.cancel_timer(Timer.LAST_WORDS)
        if not self.config.rest_available:
            log_event(logger, logging.WARNING, "ending.without_rest", kind=self.kind)
            return False
        self._request()
        return True

    def _request(self) -> None:
        self.attempts += 1
        cfg = self.config
        if self.kind == "hangup":
            params = {"Status": "completed"}
        else:
            assert cfg.transfer_number
            twiml = tw.dial_twiml(
                cfg.transfer_number, cfg.transfer_caller_id, cfg.transfer_timeout_s
            )
            params = {"Twiml": twiml}
        log_event(logger, logging.INFO, "rest.request", kind=self.kind, attempt=self.attempts)
        self.out.emit(RestRequest(self.kind, params))

    def rest_result(self, now: float, status: int, code: int | None, error: str) -> RestVerdict:
        if self.machine.state is not Stage.REST:
            return RestVerdict.IGNORED
        ok = 200 <= status < 300
        gone = code == 20404 or (status == 404 and code is None)
        log_event(
            logger,
            logging.INFO if ok or gone else logging.WARNING,
            "rest.response",
            kind=self.kind,
            status=status,
            code=code,
            error=error or None,
            attempt=self.attempts,
        )
        if ok or gone:
            self.machine.move(Input.REST_OK)
            # Twilio now ends the stream (`stop`, close): that is the expected end.
            self.out.emit(CloseRealtime(self.intended_reason()))
            self.out.set_timer(Timer.STOP_GRACE, now + STOP_GRACE_MS)
            return RestVerdict.DONE
        retriable = status == 429 or status >= 500 or status == 0
        if retriable and self.attempts <= len(REST_BACKOFF_MS):
            self.machine.move(Input.REST_RETRY)
            self.out.set_timer(Timer.REST_RETRY, now + REST_BACKOFF_MS[self.attempts - 1])
            return RestVerdict.RETRY
        log_event(logger, logging.ERROR, "ending.rest_failed", kind=self.kind, status=status)
        self.machine.move(Input.REST_FAILED)
        return RestVerdict.FAILED

    def retry(self) -> None:
        """The backoff before repeating the REST update is over."""
        if self.machine.state is Stage.REST:
            self.machine.move(Input.RETRY_TIMER)
            self._request()

    def stream_ended(self) -> None:
        """Twilio ended the stream while our update was out: its `stop` overtook the REST
        answer. That is the deliberate end, not a hang-up (peers lose transfers to it)."""
        self.machine.move(Input.STREAM_ENDED)


def tool_reason(arguments: str | None) -> str | None:
    """The `reason` argument of an ending tool call, for the log ("unspecified" when it
    gives none); None when the arguments are bad: not JSON, longer than
    `MAX_ARGUMENTS_CHARS`, or nested too deep to parse. They are the model's text, so any
    failure to parse them is theirs, never the call's (a deep nesting raises
    RecursionError, not ValueError, in `json`; orjson refuses it with a ValueError)."""
    if arguments is None:
        return "unspecified"
    if len(arguments) > MAX_ARGUMENTS_CHARS:
        return None
    try:
        parsed = orjson.loads(arguments)
    except Exception:  # untrusted text: whatever parsing it raises means bad arguments
        return None
    reason = parsed.get("reason") if type(parsed) is dict else None
    return text_or(reason, "", 200) or "unspecified"
