"""Deliberate endings: hang up or transfer after the bot's last word. Sans-I/O.

Peers cut the goodbye off (a hang-up on a timer), transfer on top of the hand-off
sentence, or treat the `stop` that follows their own REST call as a failure. Here an
ending is a small state machine owned by the call:

    speaking --response.done--> playing_out --last mark echo--> rest --2xx/20404--> done
       |  (no words in that response: ask for closing words first)  | 429/5xx: retry
       |                                                            | other: failure,
       +--- caller barges in: called off, the model is told ---+    |  close the stream
                                                                    v  (fallback TwiML)

* A tool runs only from a *completed* function-call item: an interrupted response can
  carry truncated arguments.
* "Played out" is known from Twilio mark echoes, never from generation time; the wait is
  bounded (`playout_timeout_ms`), and when it runs out the action happens anyway, logged.
* REST retries (429, 5xx, no answer) are decided here, with backoff timers, so that a
  recorded call replays its retries too. 20404 means the call is already over: done.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from app import twiml
from app.call.actions import CancelTimer, CloseRealtime, RestRequest, SetTimer, ToRealtime
from app.observability import log_event
from app.protocol import realtime as rt

if TYPE_CHECKING:
    from app.call.session import CallSession

logger = logging.getLogger("app.call")

PLAYOUT_TIMER: Final = "last_words"
RETRY_TIMER: Final = "rest_retry"
STOP_GRACE_TIMER: Final = "stop_grace"
#: After a successful REST update Twilio ends the stream itself; if it doesn't, we do.
STOP_GRACE_MS: Final = 3000
REST_BACKOFF_MS: Final = (500, 1000, 2000, 4000)

#: How each kind of ending is reported in the call summary.
END_REASONS: Final = {"hangup": "bot_hung_up", "transfer": "transferred"}

_CLOSING_WORDS: Final = {
    "hangup": "Say a brief, friendly goodbye to the caller now, in one short sentence.",
    "transfer": "Tell the caller in one short sentence that you are transferring them now.",
}
_TOOL_RESULT: Final = {
    "hangup": "The call will be hung up as soon as your last words have been heard. "
    "Say nothing more unless the caller speaks.",
    "transfer": "The caller will be transferred as soon as your last words have been heard. "
    "Say nothing more unless the caller speaks.",
}
_CALLED_OFF: Final = (
    "The caller spoke while you were finishing, so the {what} was called off and the call "
    "is still going on. Listen to the caller and continue the conversation."
)


@dataclass(slots=True)
class PendingEnding:
    kind: str  # "hangup" | "transfer"
    reason: str  # why, for the log (from the model, or max_duration / silence)
    stage: str  # speaking | closing | playing_out | rest | done
    response_id: str | None = None  # the response whose last words we wait for
    attempts: int = 0
    summary_reason: str = ""


class Ending:
    """The call's deliberate ending, if any. Emits actions through its call session."""

    def __init__(self, call: CallSession) -> None:
        self.call = call
        self.pending: PendingEnding | None = None
        #: The last words have played, but the caller was speaking over them and it isn't
        #: known yet whether that was a turn (call off) or noise (go ahead).
        self.waiting_for_caller = False

    @property
    def active(self) -> bool:
        return self.pending is not None and self.pending.stage != "done"

    @property
    def committed(self) -> bool:
        """The REST request is out or done: too late to call the ending off."""
        return self.pending is not None and self.pending.stage in ("rest", "done")

    def intended_reason(self) -> str:
        """How the call ends if the pending ending succeeds (for the summary)."""
        p = self.pending
        assert p is not None
        return p.summary_reason or END_REASONS[p.kind]

    # -- starting -------------------------------------------------------------------------

    def tool_call(self, now: float, item: dict[str, Any], response_id: str | None) -> None:
        """A function-call item of the model's finished (`response.output_item.done`)."""
        call, name, call_id = self.call, item.get("name"), item.get("call_id")
        if not isinstance(call_id, str):
            call._bad("realtime", "function_call_without_call_id")
            return
        if item.get("status") != "completed":
            log_event(logger, logging.INFO, "tool.ignored_incomplete", tool=name)
            return
        kind = {"end_call": "hangup", "transfer_call": "transfer"}.get(str(name))
        if kind is None or name not in call.config.tools:
            log_event(logger, logging.WARNING, "tool.unknown", tool=str(name)[:60])
            call._emit(ToRealtime(rt.function_output(call_id, '{"error": "unknown tool"}')))
            call.responses.request()
            return
        if self.active:
            call._emit(ToRealtime(rt.function_output(call_id, '{"result": "already ending"}')))
            return
        reason = _reason(item.get("arguments"))
        log_event(logger, logging.INFO, "tool.called", tool=name, reason=reason)
        self.pending = PendingEnding(kind, reason, "speaking", response_id)
        call._emit(ToRealtime(rt.function_output(call_id, json.dumps(_TOOL_RESULT[kind]))))

    def begin(
        self, now: float, kind: str, reason: str, summary_reason: str, last_words: str
    ) -> None:
        """End the call on the bridge's own initiative (max duration, silence): the model
        says `last_words` (an instruction), then the call ends after they have played."""
        if self.active:
            return
        self.pending = PendingEnding(kind, reason, "speaking", summary_reason=summary_reason)
        self._ask_for_last_words(now, last_words)

    def _ask_for_last_words(self, now: float, instruction: str) -> None:
        """Ask the model for the closing words; the ending then waits for that response
        (bounded by the last-words timeout)."""
        p, call = self.pending, self.call
        assert p is not None
        p.stage, p.response_id = "closing", None
        call._emit(SetTimer(PLAYOUT_TIMER, now + call.config.playout_timeout_ms))
        call.responses.request(call._instructions(instruction), closing=True)

    # -- progress -------------------------------------------------------------------------

    def response_created(self, response_id: str) -> None:
        p = self.pending
        if p is not None and p.stage == "closing" and p.response_id is None:
            p.response_id = response_id

    def response_done(self, now: float, response_id: str | None, had_audio: bool) -> None:
        p, call = self.pending, self.call
        if p is None or p.response_id != response_id or p.stage not in ("speaking", "closing"):
            return
        if p.stage == "speaking" and not had_audio:
            # The model called the tool without a word: ask for the closing words first.
            self._ask_for_last_words(now, _CLOSING_WORDS[p.kind])
            return
        p.stage = "playing_out"
        if not call.playback.playing:
            self.played_out(now)
        else:
            call._emit(SetTimer(PLAYOUT_TIMER, now + call.config.playout_timeout_ms))

    def played_out(self, now: float) -> None:
        """The last mark echo of everything sent has come back."""
        p = self.pending
        if p is None or p.stage != "playing_out":
            return
        utterance = self.call.turns.current
        if utterance is not None and not utterance.interrupted:
            self.waiting_for_caller = True  # the playout timer still bounds this wait
            return
        self.waiting_for_caller = False
        self._act(now)

    def playout_timeout(self, now: float) -> None:
        p = self.pending
        if p is not None and self.waiting_for_caller:
            self.call_off(now)  # the caller is still talking over the last words
            return
        if p is not None and p.stage in ("speaking", "closing", "playing_out"):
            log_event(
                logger,
                logging.WARNING,
                "ending.playout_timeout",
                kind=p.kind,
                stage=p.stage,
                queued_ms=self.call.playback.queued_ms(),
            )
            self._act(now)

    def call_off(self, now: float) -> bool:
        """The caller barged in during the last words: the ending is called off.

        Except a time-limit ending the second time: the limit gets one grace period after
        a call-off, then it is hard (the call ends even if the caller talks over it)."""
        p = self.pending
        if p is None or self.committed:
            return False
        if p.summary_reason == "max_duration" and not self.call.nudges.grant_grace(now):
            log_event(logger, logging.WARNING, "ending.hard_limit", kind=p.kind)
            self._act(now)
            return False
        self.pending = None
        self.waiting_for_caller = False
        self.call.responses.withdraw_closing()
        self.call._emit(CancelTimer(PLAYOUT_TIMER))
        what = "hang-up" if p.kind == "hangup" else "transfer"
        log_event(logger, logging.INFO, "ending.called_off", kind=p.kind)
        self.call._emit(ToRealtime(rt.system_text(_CALLED_OFF.format(what=what))))
        return True

    # -- acting ---------------------------------------------------------------------------

    def _act(self, now: float) -> None:
        p, call = self.pending, self.call
        assert p is not None
        p.stage = "rest"
        self.waiting_for_caller = False
        call._emit(CancelTimer(PLAYOUT_TIMER))
        if not call.config.rest_available:
            # No REST credentials: the only way to end the call is to close the stream
            # (Twilio then runs the fallback TwiML). Tools are not offered in this case.
            log_event(logger, logging.WARNING, "ending.without_rest", kind=p.kind)
            call._end(now, self.intended_reason(), detail="no_rest_credentials")
            return
        self._request(now)

    def _request(self, now: float) -> None:
        p, cfg = self.pending, self.call.config
        assert p is not None
        p.attempts += 1
        if p.kind == "hangup":
            params = {"Status": "completed"}
        else:
            assert cfg.transfer_number
            document = twiml.dial(
                cfg.transfer_number, cfg.transfer_caller_id, cfg.transfer_timeout_s
            )
            params = {"Twiml": document}
        log_event(logger, logging.INFO, "rest.request", kind=p.kind, attempt=p.attempts)
        self.call._emit(RestRequest(p.kind, params))

    def rest_result(self, now: float, status: int, code: int | None, error: str) -> None:
        p, call = self.pending, self.call
        if p is None or p.stage != "rest":
            return
        ok = 200 <= status < 300
        gone = code == 20404 or (status == 404 and code is None)
        log_event(
            logger,
            logging.INFO if ok or gone else logging.WARNING,
            "rest.response",
            kind=p.kind,
            status=status,
            code=code,
            error=error or None,
            attempt=p.attempts,
        )
        if ok or gone:
            p.stage = "done"
            call.end_reason = self.intended_reason()
            call.deliberate = True
            # Twilio now ends the stream (`stop`, close): that is the expected end.
            call._emit(CloseRealtime(call.end_reason))
            call._emit(SetTimer(STOP_GRACE_TIMER, now + STOP_GRACE_MS))
            return
        retriable = status == 429 or status >= 500 or status == 0
        if retriable and p.attempts <= len(REST_BACKOFF_MS):
            call._emit(SetTimer(RETRY_TIMER, now + REST_BACKOFF_MS[p.attempts - 1]))
            return
        log_event(logger, logging.ERROR, "ending.rest_failed", kind=p.kind, status=status)
        # Nobody is left in silence: closing the stream makes Twilio run the fallback.
        call._end(now, "failure", detail=f"rest_{p.kind}_failed")

    def timer(self, now: float, name: str) -> None:
        if name == PLAYOUT_TIMER:
            self.playout_timeout(now)
        elif name == RETRY_TIMER:
            if self.pending is not None and self.pending.stage == "rest":
                self._request(now)
        elif name == STOP_GRACE_TIMER and self.call.phase != "ended":
            self.call._end(now, self.call.end_reason)


def _reason(arguments: object) -> str:
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
    except ValueError:
        return "unspecified"
    reason = parsed.get("reason") if isinstance(parsed, dict) else None
    return str(reason)[:200] if reason else "unspecified"
