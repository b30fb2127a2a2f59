"""The core's side of the driver contract: what a call emits, the timers it wants, bad input.

Every component of the call core gets this one narrow object instead of the call session:
it appends actions (`app.call.actions`) in the order they must be carried out, keeps the
call's timers, and reports bad input. The session hands the collected actions to its
driver after each input (`take`).

**Timers.** A timer is a name and a deadline in call milliseconds; setting one replaces a
timer of the same name. The core keeps them itself, so both drivers (the live bridge and
the replayer) implement one contract and never a timer table of their own:

* after handing any input to the session, wake the session at `CallSession.deadline`
  (None: no timer is set);
* when woken (or before any input at a later time), call `CallSession.advance(now)`: due
  timers fire in deadline order, each *at its own deadline*, so a live call and its replay
  fire them at exactly the same call time whatever the live event loop's jitter.

**Before the Realtime socket is open**, client events are held (the caller's first words,
a key press) and sent right after `session.update`, in order; of the caller's audio only the
most recent `connect_buffer_ms` is kept.
"""

from __future__ import annotations

import logging
from collections import deque
from enum import Enum
from typing import Any, Final

from app.call.actions import Action, ToRealtime, ToTwilio
from app.observability import log_event
from app.protocol.b64 import decoded_len

logger = logging.getLogger("app.call")

#: Per kind of bad input, log the first few in full, then one in this many.
BAD_LOG_FIRST: Final = 5
BAD_LOG_EVERY: Final = 100
_APPEND: Final = "input_audio_buffer.append"


def tally(counts: dict[str, int], key: str) -> int:
    """Count one more `key`; the new count."""
    n = counts[key] = counts.get(key, 0) + 1
    return n


def logged(n: int) -> bool:
    """Whether the `n`-th of a kind of bad input gets a log line: the first few, then one
    in `BAD_LOG_EVERY` (a peer sending garbage 50 times a second must not flood the log)."""
    return n <= BAD_LOG_FIRST or n % BAD_LOG_EVERY == 0


class Timer(Enum):
    """Every timer a call can set."""

    START = "twilio_start"  # Twilio must send `start` soon after the stream opens
    READY = "realtime_ready"  # the Realtime session must be ready in time
    CONFIRM = "interrupt_confirm"  # min-speech policy: still speaking N ms later?
    LAST_WORDS = "last_words"  # bound on waiting for an ending's last words to play
    REST_RETRY = "rest_retry"  # backoff before repeating a REST update
    STOP_GRACE = "stop_grace"  # Twilio should end the stream after our REST update
    SILENCE = "silence"  # the caller has been quiet this long: reprompt
    MAX_DURATION = "max_duration"  # the call's length limit
    TOOL_FILLER = "tool_filler"  # a slow tool: time the caller hears a filler
    TOOL_DEADLINE = "tool_deadline"  # a run the driver never answered is given up
    DECIDE = "turn_decide"  # resume mode: speech over the bot still going is a turn
    WORDS = "turn_words"  # resume mode: the suspect's transcript is due by now
    HANGUP_TAIL = "hangup_tail"  # the last words' tail plays before the hang-up
    RESUME = "resume"  # resume mode: the driver never said where the pause is
    JUDGE_LIMIT = "turn_judge_limit"  # resume mode: the longest a paused answer waits
    GREET = "outbound_greet"  # outbound: nobody said hello; the bot greets
    DETECTION = "outbound_detection"  # outbound: no answering-machine verdict in time


class Outbox:
    """Actions, timers and bad-input counts of one call."""

    def __init__(self, connect_buffer_ms: int) -> None:
        self.actions: list[Action] = []
        self.timers: dict[Timer, float] = {}
        #: Skipped bad inputs by kind (`twilio.unknown_mark`...), for the call summary.
        self.bad_input: dict[str, int] = {}
        self._deadline: float | None = None
        self._held: deque[ToRealtime] | None = deque()  # None once the socket is open
        self._held_audio = 0
        self._held_audio_limit = connect_buffer_ms * 8  # mu-law: 8 bytes a ms

    # -- actions --------------------------------------------------------------------------

    def emit(self, action: Action) -> None:
        self.actions.append(action)

    def twilio(self, msg: dict[str, Any]) -> None:
        self.actions.append(ToTwilio(msg))

    def realtime(self, msg: dict[str, Any]) -> None:
        """A client event: sent now, or held until the Realtime socket is open."""
        if self._held is None:
            self.actions.append(ToRealtime(msg))
        else:
            self._hold(ToRealtime(msg))

    def open_realtime(self, first: dict[str, Any]) -> None:
        """The socket is open: send `first` (the session update), then what was held."""
        held, self._held = self._held or deque(), None
        self.actions.append(ToRealtime(first))
        self.actions.extend(held)

    def _hold(self, action: ToRealtime) -> None:
        held = self._held
        assert held is not None
        held.append(action)
        if action.msg["type"] != _APPEND:
            return
        self._held_audio += decoded_len(action.msg["audio"])
        while self._held_audio > self._held_audio_limit:
            oldest = next(a for a in held if a.msg["type"] == _APPEND)
            held.remove(oldest)
            self._held_audio -= decoded_len(oldest.msg["audio"])

    def take(self) -> list[Action]:
        """The actions emitted since the last call, in order."""
        out, self.actions = self.actions, []
        return out

    # -- timers ---------------------------------------------------------------------------

    def set_timer(self, timer: Timer, at_ms: float) -> None:
        """Call `timer` at `at_ms`; replaces a timer of the same name."""
        self.timers[timer] = at_ms
        self._deadline = min(self.timers.values())

    def cancel_timer(self, timer: Timer) -> None:
        if self.timers.pop(timer, None) is not None:
            self._deadline = min(self.timers.values(), default=None)

    def cancel_all_timers(self) -> None:
        self.timers.clear()
        self._deadline = None

    @property
    def deadline(self) -> float | None:
        """When the earliest timer is due (call ms), or None."""
        return self._deadline

    def pop_due(self, now: float) -> tuple[Timer, float] | None:
        """The earliest timer due at or before `now`, removed; None if none is due."""
        if self._deadline is None or self._deadline > now:
            return None
        timer = min(self.timers, key=self.timers.__getitem__)
        at = self.timers.pop(timer)
        self._deadline = min(self.timers.values(), default=None)
        return timer, at

    # -- bad input ------------------------------------------------------------------------

    def bad(self, source: str, reason: str, **fields: object) -> None:
        """Bad input: one clear log line (throttled per kind), skipped; the call goes on."""
        n = tally(self.bad_input, f"{source}.{reason}")
        if logged(n):
            log_event(
                logger,
                logging.WARNING,
                "bad_input",
                source=source,
                reason=reason,
                count=n,
                **fields,
            )
