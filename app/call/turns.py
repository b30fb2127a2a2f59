"""Interruption policy: does the caller's speech stop the bot, and is it a turn at all?

Two policies of `INTERRUPT_MODE=cancel`, chosen by `interrupt_min_speech_ms` (the default
mode, `resume`, is judged in `app.call.falseturn`; here it tracks the utterance like the
first policy, except that the bridge answers):

* **0 (default): interrupt at once.** The first `speech_started` while the caller is
  hearing the bot stops it. The Realtime service cancels its own response and answers
  the caller by itself (`interrupt_response` / `create_response` true).
* **N > 0: interrupt only after N ms of speech.** On a noisy line a cough, a door or a
  passing car must not cut the bot off. The bot keeps talking while the caller's speech
  is unconfirmed. The service can't be trusted with that decision, so it is told neither
  to cancel nor to answer by itself; the bridge does both.

Server VAD reports the end of speech only after its silence window, so "still speaking
N ms after the start" can be known for sure only N + silence ms after `speech_started`
(the confirmation timer) or from `speech_stopped`'s audio times, whichever comes first.
Speech during the bot's audio that ends before N ms is noise: it interrupts nothing,
gets no answer, and its committed input item is deleted so it doesn't steer the model.
Speech while the bot is silent is always a turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Start(Enum):
    """What to do when the caller starts speaking."""

    NOTHING = "nothing"  # the bot isn't audible: nothing to interrupt
    INTERRUPT = "interrupt"  # stop the bot now
    WAIT = "wait"  # set the confirmation timer; the bot keeps talking


class Stop(Enum):
    """What the finished speech was."""

    TURN = "turn"
    TURN_INTERRUPT = "turn_interrupt"  # a turn, long enough to stop the bot now
    NOISE = "noise"


@dataclass(slots=True)
class Utterance:
    item_id: str | None
    audio_start_ms: int
    over_bot: bool  # the bot was audible when it began
    interrupted: bool = False


class TurnPolicy:
    """Sans-I/O state of the caller's current utterance under one interruption policy."""

    def __init__(
        self, min_speech_ms: int, prefix_padding_ms: int, silence_ms: int, *, resume: bool = False
    ) -> None:
        self.min_speech_ms = min_speech_ms
        #: Resume mode (`app.call.falseturn`): speech over the bot stops it at once, but
        #: the bridge, not the service, judges it and answers.
        self.resume = resume
        self._prefix_ms = prefix_padding_ms
        self._silence_ms = silence_ms
        self.current: Utterance | None = None
        self.noise_items: set[str] = set()

    @property
    def automatic(self) -> bool:
        """True when the service interrupts and answers by itself."""
        return self.min_speech_ms == 0 and not self.resume

    @property
    def confirm_after_ms(self) -> int:
        """Delay after `speech_started` at which speech is known to have lasted N ms."""
        return self.min_speech_ms + self._silence_ms

    def speech_started(self, item_id: str | None, audio_start_ms: int, bot_audible: bool) -> Start:
        self.current = Utterance(item_id, audio_start_ms, over_bot=bot_audible)
        if not bot_audible:
            return Start.NOTHING
        if self.min_speech_ms == 0:
            self.current.interrupted = True
            return Start.INTERRUPT
        return Start.WAIT

    def confirmed(self) -> bool:
        """The confirmation timer fired with the caller still speaking: interrupt?"""
        u = self.current
        if u is None or u.interrupted or not u.over_bot:
            return False
        u.interrupted = True
        return True

    def speech_stopped(self, audio_end_ms: int) -> Stop:
        u, self.current = self.current, None
        if u is None or not u.over_bot or u.interrupted or self.automatic:
            return Stop.TURN
        # The service's audio_start_ms is the speech start minus its prefix padding, and
        # its audio_end_ms is the speech end plus its silence window (both documented).
        spoken = (audio_end_ms - self._silence_ms) - (u.audio_start_ms + self._prefix_ms)
        if spoken >= self.min_speech_ms:
            return Stop.TURN_INTERRUPT
        if u.item_id:
            self.noise_items.add(u.item_id)
        return Stop.NOISE
