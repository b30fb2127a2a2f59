"""What the bridge tells the model on its own: silence, the time limit, key presses. Sans-I/O.

* **Silence reprompt.** When the caller has said nothing for `silence_reprompt_ms` after
  the bot's audio has *finished playing* (the last mark echo, not the end of generation,
  which comes seconds earlier), the model is asked to check on the caller. After
  `silence_max_reprompts` unanswered reprompts it says goodbye and the call is hung up
  after its last word. Any caller speech or key press resets the count.
* **Maximum duration.** At `max_call_ms` the model is asked to wrap up politely; the call
  ends after its last word (or when the last-words wait runs out).
* **DTMF.** A key press reaches the model as a short user message ("The caller pressed
  5."). Digits are never logged: callers type card numbers and PINs.

Every setting is off when 0 (or false). This class emits only its own messages to the
model and its own timers; what a wrap-up or a goodbye means for the call (an ending after
the last word) is the session's to carry out.
"""

from __future__ import annotations

import logging
from enum import Enum
from typing import Final

from app.call.config import CallConfig
from app.call.outbox import Outbox, Timer
from app.observability import log_event
from app.protocol import realtime as rt

logger = logging.getLogger("app.call")

#: After the caller talks over the time-limit wrap-up (or a goodbye was pending when the
#: limit came), the limit comes back this much later; the second wrap-up is final.
MAX_DURATION_GRACE_MS: Final = 60_000
#: Every key a `dtmf` message can report.
DTMF_KEYS: Final = frozenset("0123456789*#ABCD")
#: What the model is told for a key press (the recorder redacts the digit in it).
DTMF_MESSAGE: Final = "The caller pressed {digit} on their keypad."

_REPROMPT: Final = (
    "The caller has not said anything for a while. Briefly and kindly check whether they "
    "are still there."
)
#: The closing words' instruction when the caller stays silent.
SILENCE_GOODBYE: Final = (
    "The caller has not answered. Say a short, polite goodbye now; the call will then end."
)
#: The closing words' instruction at the time limit.
WRAP_UP: Final = (
    "The call has reached its maximum length. Politely tell the caller you have to end the "
    "call now and say goodbye, in one or two short sentences."
)


class Silence(Enum):
    """What the silence timer asks for."""

    NOTHING = "nothing"
    REPROMPT = "reprompt"  # ask the model to check on the caller
    GOODBYE = "goodbye"  # end the call after a goodbye (`SILENCE_GOODBYE`)


class Nudges:
    """Silence and time-limit timers, and key presses, for one call."""

    def __init__(self, outbox: Outbox, config: CallConfig) -> None:
        self.out = outbox
        self.config = config
        self.reprompts = 0  # unanswered in a row
        self.reprompts_total = 0
        self.key_presses = 0  # counted, never kept: digits are the caller's secrets
        self._armed = False
        self._grace_used = False

    # -- max duration ---------------------------------------------------------------------

    def call_started(self, started: float, now: float) -> None:
        """The call (started at `started`) can speak from `now` on: the time limit runs
        from its start, and is due no earlier than now."""
        if self.config.max_call_ms > 0:
            due = max(now, started + self.config.max_call_ms)
            self.out.set_timer(Timer.MAX_DURATION, due)

    def max_duration(self, now: float, ending_active: bool) -> bool:
        """The time limit is reached: True to wrap up now (the model is told; the session
        ends the call after its closing words, `WRAP_UP`)."""
        if ending_active:
            # Another ending is under way; if it is called off, the limit still applies.
            self.out.set_timer(Timer.MAX_DURATION, now + MAX_DURATION_GRACE_MS)
            return False
        log_event(logger, logging.INFO, "call.max_duration")
        self.disarm()
        self.out.realtime(rt.system_text(WRAP_UP))
        return True

    def grant_grace(self, now: float) -> bool:
        """The caller talked over the wrap-up: allow one more grace period (True), once."""
        if self._grace_used:
            return False
        self._grace_used = True
        self.out.set_timer(Timer.MAX_DURATION, now + MAX_DURATION_GRACE_MS)
        return True

    # -- silence --------------------------------------------------------------------------

    def maybe_arm(self, now: float, quiet: bool) -> None:
        """Start the silence clock if the call is `quiet`: both sides silent, the bot heard
        out, nothing asked for, no ending under way."""
        if quiet and not self._armed and self.config.silence_reprompt_ms > 0:
            self._armed = True
            self.out.set_timer(Timer.SILENCE, now + self.config.silence_reprompt_ms)

    def disarm(self) -> None:
        if self._armed:
            self._armed = False
            self.out.cancel_timer(Timer.SILENCE)

    def caller_active(self) -> None:
        """The caller spoke or pressed a key: the silence count starts over."""
        self.reprompts = 0
        self.disarm()

    def silence(self, busy: bool) -> Silence:
        """The silence timer fired (`busy`: something happened meanwhile after all)."""
        self._armed = False
        if busy:
            return Silence.NOTHING
        limit = self.config.silence_max_reprompts
        if limit > 0 and self.reprompts >= limit:
            log_event(logger, logging.INFO, "call.silence_hangup", reprompts=self.reprompts)
            self.out.realtime(rt.system_text(SILENCE_GOODBYE))
            return Silence.GOODBYE
        self.reprompts += 1
        self.reprompts_total += 1
        log_event(logger, logging.INFO, "call.silence_reprompt", reprompt=self.reprompts)
        self.out.realtime(rt.system_text(_REPROMPT))
        return Silence.REPROMPT

    # -- key presses ----------------------------------------------------------------------

    def dtmf(self, digit: object, committed: bool) -> bool:
        """A key press; True when it was passed to the model (which should then answer).
        `committed`: the call is ending, too late to act on keys."""
        if not isinstance(digit, str) or digit not in DTMF_KEYS:
            self.out.bad("twilio", "malformed_dtmf")
            return False
        self.key_presses += 1
        self.caller_active()
        if not self.config.dtmf_to_model or committed:
            log_event(logger, logging.INFO, "twilio.dtmf", forwarded=False)
            return False
        log_event(logger, logging.INFO, "twilio.dtmf", forwarded=True)
        self.out.realtime(rt.user_text(DTMF_MESSAGE.format(digit=digit)))
        return True
