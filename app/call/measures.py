"""What a call measures for its operator: the figures only the core can see. Sans-I/O.

The two numbers a phone-bot operator cares about most need events from both sockets at
once, which only the core has together:

- **Heard latency** (`RESPONSE_LATENCY`): from the end of the caller's turn (the service's
  `speech_stopped`, as received) to the first mark echo of the answer's audio, i.e. the
  moment Twilio confirms the caller has *heard* its first chunk. Not the first audio
  generated or sent: those come seconds before the caller hears anything when audio is
  queued, and peers that report them flatter themselves. It includes the first chunk's own
  playing time (one service delta). The answer is the audio of the first response created
  after the turn ended; a turn whose response ends with no audio, or whose answer is cut
  off before its first echo, is unanswered (nothing is observed), and so is one overtaken
  by the bridge's own words (a reprompt, a goodbye, an answer to a key press).
- **Barge-in reaction** (`BARGE_IN`): from `speech_started` received to the `clear` sent
  that silences the bot. Zero ms of call time when speech interrupts at once (the clear
  goes out in the same input's actions: the live driver adds its own processing time, read
  off its clock); the confirmation time under INTERRUPT_MIN_SPEECH_MS.

Each figure is emitted once, as its event happens, as a `Measure` action (the driver
feeds its metrics; call fixtures don't record it), and also kept for the call record. The
audio path never passes through here: the hooks run on speech events, the first chunk of
a new item, mark echoes, barge-ins, REST answers and tool calls.
"""

from __future__ import annotations

import statistics
from typing import Any

from app.call.actions import Measure, Metric
from app.call.outbox import Outbox
from app.call.playback import ItemPlayback


def rest_result(status: int) -> str:
    """A REST answer as a metric label: `ok` (2xx), `unreachable` (no answer), `error`."""
    if 200 <= status < 300:
        return "ok"
    return "unreachable" if status == 0 else "error"


class Measures:
    """One call's figures: emitted as they happen, kept for its record."""

    def __init__(self, outbox: Outbox) -> None:
        self.out = outbox
        #: Per barge-in, `speech_started` -> `clear`, in ms.
        self.reactions_ms: list[int] = []
        #: Per answered caller turn, `speech_stopped` -> the answer's first echo, in ms.
        self.latencies_ms: list[int] = []
        #: Bot audio sent but cut before it was heard, in ms.
        self.unheard_ms = 0
        self.rest: list[dict[str, Any]] = []
        self.tool_calls: list[dict[str, Any]] = []
        self._speech_at: float | None = None
        #: A caller turn waiting for its answer to be heard: when it ended, the response
        #: answering it (the first created after it), and that response's first item.
        self._turn_end: float | None = None
        self._response: str | None = None
        self._answer: str | None = None

    # -- the caller's turns and the answer ----------------------------------------------------

    def speech_started(self, now: float) -> None:
        self._speech_at = now

    def turn_ended(self, now: float) -> None:
        """The caller's speech stopped and it was a turn (not noise): the clock starts."""
        self._turn_end = now
        self._response = self._answer = None

    def response_created(self, response_id: str) -> None:
        """The first response created after a turn is its answer."""
        if self._turn_end is not None and self._response is None:
            self._response = response_id

    def audio_sent(self, item_id: str, response_id: str) -> None:
        """The first chunk of a bot item was sent: the answer, if it is the awaited
        response's first item."""
        if self._answer is None and self._response is not None and response_id == self._response:
            self._answer = item_id

    def response_done(self, response_id: str | None) -> None:
        """A response finished: if it was the awaited answer and had no audio, the turn
        goes unanswered (a failed response, a tool call without words)."""
        if response_id is not None and response_id == self._response and self._answer is None:
            self.unanswered()

    def unanswered(self) -> None:
        """The turn gets no answer of its own: what the bot says next (a reprompt, a
        goodbye, an answer to a key press) is not one."""
        self._turn_end = self._response = self._answer = None

    def played(self, now: float, items: dict[str, ItemPlayback]) -> None:
        """A mark echo confirmed audio as played: the answer's first one stops the clock."""
        answer = self._answer
        if answer is None or self._turn_end is None:
            return
        item = items.get(answer)
        if item is not None and item.played > 0:
            seconds = max(0.0, now - self._turn_end) / 1000
            self.latencies_ms.append(round(seconds * 1000))
            self.out.emit(Measure(Metric.RESPONSE_LATENCY, seconds))
            self.unanswered()  # answered: nothing more awaits

    def barged_in(self, now: float, unheard_ms: int) -> None:
        """The caller cut the bot off: `clear` was sent now; `unheard_ms` of its audio
        were sent and will never be heard."""
        seconds = 0.0 if self._speech_at is None else max(0.0, now - self._speech_at) / 1000
        self.reactions_ms.append(round(seconds * 1000))
        self.out.emit(Measure(Metric.BARGE_IN, seconds))
        if unheard_ms > 0:
            self.unheard_ms += unheard_ms
            self.out.emit(Measure(Metric.TRUNCATED_AUDIO, unheard_ms / 1000))
        self.unanswered()  # an answer cut before it was heard answers nothing

    # -- counts ---------------------------------------------------------------------------

    def reprompted(self) -> None:
        self.unanswered()
        self.out.emit(Measure(Metric.REPROMPT))

    def ending_called_off(self, kind: str) -> None:
        self.out.emit(Measure(Metric.ENDING_CALLED_OFF, labels=(kind,)))

    def realtime_error(self, code: str) -> None:
        self.out.emit(Measure(Metric.REALTIME_ERROR, labels=(code,)))

    def tool_call(
        self,
        name: str,
        result: str,
        ms: int = 0,
        *,
        ran: bool = False,
        label: str | None = None,
        **extra: Any,
    ) -> None:
        """A function call of the model's, answered (`ok`, `error`, `timeout`,
        `cancelled`); `ran`: a business tool really ran for `ms` (its duration is observed).
        `label`: the metrics' name for it, when `name` is the model's invention (`unknown`:
        names the model makes up must not crowd out the real tools' series). `extra` (call
        id, redacted arguments, detail) goes into the call's record."""
        record = {"name": name, "ok": result == "ok", "result": result, "ms": ms, **extra}
        self.tool_calls.append(record)
        self.out.emit(Measure(Metric.TOOL_CALL, labels=(label or name, result)))
        if ran:
            self.out.emit(Measure(Metric.TOOL_DURATION, ms / 1000, (label or name,)))

    def rest_answer(self, now: float, action: str, status: int, code: int | None) -> None:
        """A Twilio REST update was answered (status 0: no answer at all)."""
        result = rest_result(status)
        self.rest.append(
            {"action": action, "result": result, "status": status, "code": code, "at_ms": now}
        )
        self.out.emit(Measure(Metric.REST, labels=(action, result)))

    # -- the record -------------------------------------------------------------------------

    def median_latency_ms(self) -> int | None:
        """The call's typical heard latency (None: no caller turn was answered)."""
        if not self.latencies_ms:
            return None
        return round(statistics.median(self.latencies_ms))
