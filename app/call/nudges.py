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

Every setting is off when 0 (or false).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

from app.call.actions import CancelTimer, SetTimer, ToRealtime
from app.observability import log_event
from app.protocol import realtime as rt

if TYPE_CHECKING:
    from app.call.session import CallSession

logger = logging.getLogger("app.call")

SILENCE_TIMER: Final = "silence"
MAX_DURATION_TIMER: Final = "max_duration"
#: After the caller talks over the time-limit wrap-up (or a goodbye was pending when the
#: limit came), the limit comes back this much later; the second wrap-up is final.
MAX_DURATION_GRACE_MS: Final = 60_000
_DIGITS: Final = frozenset("0123456789*#ABCD")
#: What the model is told for a key press (the recorder redacts the digit in it).
DTMF_MESSAGE: Final = "The caller pressed {digit} on their keypad."

_REPROMPT: Final = (
    "The caller has not said anything for a while. Briefly and kindly check whether they "
    "are still there."
)
_SILENCE_GOODBYE: Final = (
    "The caller has not answered. Say a short, polite goodbye now; the call will then end."
)
_WRAP_UP: Final = (
    "The call has reached its maximum length. Politely tell the caller you have to end the "
    "call now and say goodbye, in one or two short sentences."
)


class Nudges:
    """Silence and time-limit timers, and key presses, for one call."""

    def __init__(self, call: CallSession) -> None:
        self.call = call
        self.reprompts = 0  # unanswered in a row
        self.reprompts_total = 0
        self._armed = False
        self._grace_used = False

    # -- max duration ---------------------------------------------------------------------

    def call_started(self, now: float) -> None:
        if self.call.config.max_call_ms > 0:
            self.call._emit(SetTimer(MAX_DURATION_TIMER, now + self.call.config.max_call_ms))

    def _max_duration(self, now: float) -> None:
        call = self.call
        if call.ending.active:
            # Another ending is under way; if it is called off, the limit still applies.
            call._emit(SetTimer(MAX_DURATION_TIMER, now + MAX_DURATION_GRACE_MS))
            return
        log_event(logger, logging.INFO, "call.max_duration")
        self.disarm()
        call._emit(ToRealtime(rt.system_text(_WRAP_UP)))
        call.ending.begin(now, "hangup", "max_duration", "max_duration", last_words=_WRAP_UP)

    def grant_grace(self, now: float) -> bool:
        """The caller talked over the wrap-up: allow one more grace period (True), once."""
        if self._grace_used:
            return False
        self._grace_used = True
        self.call._emit(SetTimer(MAX_DURATION_TIMER, now + MAX_DURATION_GRACE_MS))
        return True

    # -- silence --------------------------------------------------------------------------

    def maybe_arm(self, now: float) -> None:
        """Start the silence clock if both sides are quiet and the bot has been heard out."""
        call = self.call
        if (
            call.config.silence_reprompt_ms <= 0
            or self._armed
            or call.phase != "live"
            or call.ending.active
            or call.playback.playing
            or call.responding
            or call.turns.current is not None
        ):
            return
        self._armed = True
        call._emit(SetTimer(SILENCE_TIMER, now + call.config.silence_reprompt_ms))

    def disarm(self) -> None:
        if self._armed:
            self._armed = False
            self.call._emit(CancelTimer(SILENCE_TIMER))

    def caller_active(self) -> None:
        """The caller spoke or pressed a key: the silence count starts over."""
        self.reprompts = 0
        self.disarm()

    def _silence(self, now: float) -> None:
        call = self.call
        self._armed = False
        if call.ending.active or call.playback.playing or call.responding:
            return
        limit = call.config.silence_max_reprompts
        if limit > 0 and self.reprompts >= limit:
            log_event(logger, logging.INFO, "call.silence_hangup", reprompts=self.reprompts)
            call._emit(ToRealtime(rt.system_text(_SILENCE_GOODBYE)))
            call.ending.begin(now, "hangup", "silence", "bot_hung_up", last_words=_SILENCE_GOODBYE)
            return
        self.reprompts += 1
        self.reprompts_total += 1
        log_event(logger, logging.INFO, "call.silence_reprompt", reprompt=self.reprompts)
        call._emit(ToRealtime(rt.system_text(_REPROMPT)))
        call.responses.request(droppable=True)

    # -- key presses ----------------------------------------------------------------------

    def dtmf(self, now: float, digit: object) -> None:
        call = self.call
        if not isinstance(digit, str) or digit not in _DIGITS:
            call._bad("twilio", "malformed_dtmf")
            return
        self.caller_active()
        if not call.config.dtmf_to_model or call.ending.committed:
            log_event(logger, logging.INFO, "twilio.dtmf", forwarded=False)
            return
        log_event(logger, logging.INFO, "twilio.dtmf", forwarded=True)
        call._emit(ToRealtime(rt.user_text(DTMF_MESSAGE.format(digit=digit))))
        call.responses.request()

    def timer(self, now: float, name: str) -> None:
        if name == SILENCE_TIMER:
            self._silence(now)
        elif name == MAX_DURATION_TIMER:
            self._max_duration(now)
