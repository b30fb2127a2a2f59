"""How an outbound call's conversation starts: after the callee's hello, or a short silence,
and only once answering-machine detection has said who answered. Sans-I/O.

An inbound caller has dialled us and waits to be greeted. The person we call picks up and
says "Hello?" first: a bot greeting at once talks over them, and the first thing they hear
is cut off. So an outbound call opens when

* the callee has spoken and stopped (their hello is in the conversation: the greeting
  answers it), or
* `greet_silence_ms` passed after the stream started with nobody speaking (some people pick
  up and wait);

and, when detection is on (`machine_detection` `hangup` or `voicemail`), only once Twilio's
detection has a verdict (`AnsweredBy`, an input of the driver's) or `amd_wait_ms` passed
without one. A late verdict still counts: a machine found after the bot began still gets
the hang-up or the voicemail.

* `human`, `unknown` (and no verdict in time): the greeting, as above.
* `machine_start`, `fax`, or any machine under `hangup`: hang up, no word said.
* `machine_end_beep` / `machine_end_silence` / `machine_end_other` under `voicemail`: the
  greeting has ended (Twilio's `DetectMessageEnd`): the voicemail message is spoken, not
  interruptible (nobody is there to interrupt it; the recorder's own sounds must not), and
  the call is hung up after its last word, from the mark echoes as every ending.

Under `voicemail` Twilio says `human` as soon as it knows, but a machine only at the end of
its greeting; so past `amd_wait_ms` with no verdict it is most likely a machine still
talking, and the bot keeps waiting, up to `amd_limit_ms` (Twilio's own detection timeout
and a margin), then greets as for `unknown`.

This class keeps the opening's state and says what to do; the session does it.
"""

from __future__ import annotations

from enum import Enum
from typing import Final

#: `AnsweredBy` values Twilio sends (asynchronous AMD callbacks).
HUMAN: Final = frozenset({"human", "unknown"})
MACHINE_START: Final = "machine_start"
MESSAGE_END: Final = frozenset({"machine_end_beep", "machine_end_silence", "machine_end_other"})
FAX: Final = "fax"
ANSWERED_BY: Final = frozenset({*HUMAN, MACHINE_START, *MESSAGE_END, FAX})

#: What the model is told when the callee answered and nobody gave a greeting of its own.
DEFAULT_OUTBOUND_GREETING: Final = (
    "You placed this call and the person has just answered. Greet them, say who you are "
    "and why you are calling, in one or two short sentences."
)
#: What the conversation is told when the voicemail starts (as the time limit's wrap-up is).
REACHED_VOICEMAIL: Final = (
    "The call was answered by an answering machine, not a person. Its greeting has ended "
    "and it is recording now: leave the voicemail message, then the call ends."
)
#: The voicemail: the model is told to say exactly the operator's message.
VOICEMAIL: Final = (
    "You reached an answering machine and its beep has sounded: you are recording a "
    "voicemail now. Say exactly this message, word for word, and nothing else: "
    '"{message}"'
)


class Step(Enum):
    """What the session does next for the opening."""

    NOTHING = "nothing"
    GREET = "greet"  # open the conversation: the bot speaks
    HANG_UP = "hang_up"  # a machine (or fax): hang up without a word
    VOICEMAIL = "voicemail"  # the beep: say the voicemail message, then hang up


class Opening:
    """The opening of one call (inbound calls are open from the start)."""

    def __init__(
        self,
        *,
        outbound: bool,
        machine_detection: str,
        greet_silence_ms: int,
        amd_wait_ms: int,
        amd_limit_ms: int,
    ) -> None:
        self.outbound = outbound
        self.detection = machine_detection if outbound else "off"
        self.greet_silence_ms = greet_silence_ms
        self.amd_wait_ms = amd_wait_ms
        self.amd_limit_ms = amd_limit_ms
        #: The bot may speak (always, inbound).
        self.open = not outbound
        #: The callee's speech since the stream started: speaking now / a turn completed.
        self.speaking = False
        self.spoke = False
        #: The silence before greeting unasked is over.
        self.silence_over = False
        #: Waiting for Twilio's verdict (detection on, none yet and not given up on).
        self.waiting = outbound and self.detection != "off"
        self.answered_by: str | None = None
        #: Leaving a voicemail: the line's sounds are nobody's turn.
        self.voicemail = False
        #: A machine answered (hang-up mode): its sounds are nobody's turn either, so
        #: they can't call off an ending under way.
        self.machine = False
        #: How the opening ended: "hello", "silence", "machine", "voicemail" (the log's).
        self.how = ""

    @property
    def deaf(self) -> bool:
        """The caller's sounds are nobody's turn (before the opening, or on voicemail)."""
        return not self.open or self.voicemail or self.machine

    # -- inputs ---------------------------------------------------------------------------

    def speech_started(self) -> None:
        self.speaking = True

    def speech_stopped(self) -> None:
        self.speaking = False

    def committed(self) -> Step:
        """The callee's speech is a turn in the conversation (their hello)."""
        self.spoke = True
        return self._ready("hello")

    def silence(self) -> Step:
        """`greet_silence_ms` passed since the stream started."""
        self.silence_over = True
        return self._ready("silence")

    def verdict(self, answered_by: str) -> Step:
        """Twilio's detection said who answered (first verdict only)."""
        if self.answered_by is not None or self.voicemail:
            return Step.NOTHING
        if answered_by == MACHINE_START and self.detection == "voicemail":
            return Step.NOTHING  # (not sent under DetectMessageEnd) its beep is to come
        self.answered_by = answered_by
        self.waiting = False
        if answered_by in HUMAN:
            return self._ready("hello" if self.spoke else "silence")
        if answered_by in MESSAGE_END and self.detection == "voicemail":
            self.voicemail = self.open = True
            self.how = "voicemail"
            return Step.VOICEMAIL
        if answered_by in MESSAGE_END or answered_by in (MACHINE_START, FAX):
            self.open = self.machine = True
            self.how = "machine"
            return Step.HANG_UP
        return Step.NOTHING

    def wait_over(self, at_limit: bool) -> Step:
        """`amd_wait_ms` (or, under voicemail, `amd_limit_ms`) passed with no verdict."""
        if not self.waiting:
            return Step.NOTHING
        if self.detection == "voicemail" and not at_limit:
            return Step.NOTHING  # a machine is still talking: wait for its beep
        self.waiting = False
        return self._ready("hello" if self.spoke else "silence")

    # -- decisions -------------------------------------------------------------------------

    def _ready(self, how: str) -> Step:
        """Greet now, if nothing still holds the greeting back."""
        if self.open or self.waiting or self.speaking:
            return Step.NOTHING
        if not (self.spoke or self.silence_over):
            return Step.NOTHING
        self.open = True
        self.how = how
        return Step.GREET
