"""Barge-in: the caller speaks while the bot is talking. Sans-I/O.

`TurnPolicy` (app.call.turns) decides whether speech interrupts; this module acts on it:
it stops the bot and corrects the model's memory of what it said. What was heard comes
from `PlaybackTracker` (mark echoes), never from clocks or Twilio timestamps.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final

from app.call.actions import CancelTimer, SetTimer, ToRealtime, ToTwilio
from app.call.turns import Start, Stop
from app.observability import log_event
from app.protocol import realtime as rt
from app.protocol import twilio as tw

if TYPE_CHECKING:
    from app.call.session import CallSession

logger = logging.getLogger("app.call")

CONFIRM_TIMER: Final = "interrupt_confirm"


class BargeIn:
    """The caller's speech events, and interrupting the bot."""

    def __init__(self, call: CallSession) -> None:
        self.call = call
        self.count = 0  # barge-ins: times the caller cut off audible bot speech

    def speech_started(self, now: float, ev: dict[str, Any]) -> None:
        call = self.call
        item_id = ev.get("item_id") if isinstance(ev.get("item_id"), str) else None
        start_ms = ev.get("audio_start_ms")
        start_ms = start_ms if isinstance(start_ms, int) else 0
        call.nudges.disarm()
        decision = call.turns.speech_started(item_id, start_ms, call.playback.playing)
        if decision is Start.INTERRUPT:
            self.interrupt(now)
        elif decision is Start.NOTHING and call.turns.automatic and call.responses.active:
            # Nothing audible yet, but the service cancels its response on speech: drop
            # whatever audio of it is still in flight rather than play a fragment.
            self.interrupt(now)
        elif decision is Start.WAIT:
            call._emit(SetTimer(CONFIRM_TIMER, now + call.turns.confirm_after_ms))
        if decision is Start.NOTHING and call.ending.active:
            # Speech while the bot is silent is a turn: the caller spoke before the last
            # words were audible, so nobody hangs up or transfers on top of them.
            call.ending.call_off(now)

    def speech_stopped(self, now: float, ev: dict[str, Any]) -> None:
        call = self.call
        end_ms = ev.get("audio_end_ms")
        outcome = call.turns.speech_stopped(end_ms if isinstance(end_ms, int) else 0)
        if not call.turns.automatic:
            call._emit(CancelTimer(CONFIRM_TIMER))
        if outcome is Stop.TURN_INTERRUPT and call.playback.playing:
            self.interrupt(now)
        elif outcome is Stop.NOISE:
            log_event(logger, logging.INFO, "turn.noise_ignored")
        if outcome is not Stop.NOISE:
            call.nudges.caller_active()
        if call.ending.waiting_for_caller:
            # The last words have played while the caller was talking over them: noise
            # lets the ending go ahead; a real turn calls it off.
            if outcome is Stop.NOISE:
                call.ending.played_out(now)
            else:
                call.ending.call_off(now)
        call.nudges.maybe_arm(now)

    def committed(self, now: float, ev: dict[str, Any]) -> None:
        """Under the min-speech policy the bridge, not the service, answers real turns."""
        call = self.call
        if call.turns.automatic:
            return
        item_id = ev.get("item_id")
        if isinstance(item_id, str) and item_id in call.turns.noise_items:
            call._emit(ToRealtime(rt.item_delete(item_id)))
            return
        if call.responses.active is not None:
            # A turn while an older answer is still being generated: stop it, then answer
            # once the service confirms it is done (a second response would be refused).
            self.interrupt(now)
            call.responses.request_after_done()
        else:
            call.responses.request()

    def confirm_timer(self, now: float) -> None:
        """The min-speech confirmation time passed with the caller still speaking."""
        call = self.call
        if not call.turns.confirmed():
            return
        if call.playback.playing:
            self.interrupt(now)
        elif call.ending.waiting_for_caller:
            call.ending.call_off(now)  # a real turn over the last words: no hang-up

    def interrupt(self, now: float) -> None:
        """Stop the bot: silence what the caller hears, and make the model remember only that.

        Order matters: Twilio `clear` first (the caller stops hearing the bot at once), then
        `response.cancel` (stop generating; "not active" is an expected answer when the
        service already cancelled by itself), then truncate the item being heard at the
        heard position, never past the audio received for it. Items of which nothing was
        heard are deleted instead (the service rejects a truncate before any audio), and
        audio of the cancelled response that is still in flight is dropped, never played.
        A pending hang-up or transfer is called off last, once the model's memory is right.
        """
        call = self.call
        heard = call.playback.heard(now)
        audible = call.playback.playing
        queued: list[str] = []
        if audible:
            self.count += 1
            queued = call.playback.clear()
            call._emit(ToTwilio(tw.clear(call.stream_sid)))
        call._emit(ToRealtime(rt.response_cancel()))
        call.responses.drop_active()
        for item_id in queued:
            turn = call.transcript.assistant(item_id)
            turn.interrupted = True
            sent_ms = call.playback.items[item_id].sent_ms
            heard_ms = min(heard.ms, sent_ms) if heard and heard.item_id == item_id else 0
            turn.heard_ms = heard_ms
            if heard_ms > 0:
                call._emit(ToRealtime(rt.item_truncate(item_id, heard_ms)))
            else:
                call._emit(ToRealtime(rt.item_delete(item_id)))
        if audible or call.ending.active:
            call.ending.call_off(now)  # the caller spoke up: no hang-up on top of them
        log_event(
            logger,
            logging.INFO,
            "turn.barge_in" if audible else "turn.response_dropped",
            item_id=heard.item_id if heard else None,
            heard_ms=heard.ms if heard else 0,
        )
