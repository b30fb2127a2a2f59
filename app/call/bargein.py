"""Stopping the bot when the caller cuts in, and correcting the model's memory. Sans-I/O.

Whether speech interrupts is `TurnPolicy`'s decision (app.call.turns) and what else an
interruption means (no hang-up on top of the caller, the cut-off answer's late audio
dropped) is the session's; this module does the one thing every interruption needs: make
the caller stop hearing the bot at once, and make the model remember only what was heard.
What was heard comes from `PlaybackTracker` (mark echoes), never from clocks or Twilio's
media timestamps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from app.call.inbound import short
from app.call.outbox import Outbox
from app.call.playback import Chunk, Heard, PlaybackTracker
from app.call.transcript import Transcript
from app.observability import log_event
from app.protocol import realtime as rt
from app.protocol import twilio as tw

logger = logging.getLogger("app.call")


@dataclass(frozen=True, slots=True)
class Interruption:
    """What an interruption found."""

    audible: bool  # the caller was hearing the bot: a barge-in
    heard: Heard | None  # where the caller was, if anywhere
    unheard_ms: int = 0  # bot audio sent that the caller will now never hear


@dataclass(slots=True)
class Held:
    """A paused answer (resume mode): what the caller heard, and what they haven't yet."""

    at: float  # call ms of the pause (the `clear`)
    heard: Heard | None
    #: The audio not heard, in play order: what was queued at Twilio (from the chunk being
    #: heard on), then what arrived while paused. Base64 as the service sent it.
    chunks: list[Chunk] = field(default_factory=list)
    #: The heard item's last chunks played (what a resume may rewind into).
    played: list[Chunk] = field(default_factory=list)

    def items(self) -> list[str]:
        """The items with unheard audio, in play order."""
        seen: dict[str, None] = {}
        for chunk in self.chunks:
            seen[chunk.item_id] = None
        if self.heard is not None and self.heard.item_id not in seen:
            seen = {self.heard.item_id: None, **seen}
        return list(seen)


class BargeIn:
    """Interrupting the bot, and how often the caller did."""

    def __init__(self, outbox: Outbox, playback: PlaybackTracker, transcript: Transcript) -> None:
        self.out = outbox
        self.playback = playback
        self.transcript = transcript
        self.count = 0  # barge-ins: times the caller cut off audible bot speech

    def interrupt(self, now: float, stream_sid: str) -> Interruption:
        """Stop the bot: silence what the caller hears, and make the model remember only that.

        Order matters: Twilio `clear` first (the caller stops hearing the bot at once), then
        `response.cancel` (stop generating; "not active" is an expected answer when the
        service already cancelled by itself), then truncate the item being heard at the
        heard position, never past the audio received for it. Items of which nothing was
        heard are deleted instead (the service rejects a truncate before any audio).
        """
        playback = self.playback
        heard = playback.heard(now)
        audible = playback.playing
        queued: list[str] = []
        unheard_ms = 0
        if audible:
            self.count += 1
            queued = playback.clear()
            self.out.twilio(tw.clear(stream_sid))
        self.out.realtime(rt.response_cancel())
        for item_id in queued:
            turn = self.transcript.assistant(item_id)
            turn.interrupted = True
            sent_ms = playback.items[item_id].sent_ms
            heard_ms = min(heard.ms, sent_ms) if heard and heard.item_id == item_id else 0
            turn.heard_ms = heard_ms
            if audible:
                unheard_ms += sent_ms - heard_ms
            if heard_ms > 0:
                self.out.realtime(rt.item_truncate(item_id, heard_ms))
            else:
                self.out.realtime(rt.item_delete(item_id))
        log_event(
            logger,
            logging.INFO,
            "turn.barge_in" if audible else "turn.response_dropped",
            item_id=short(heard.item_id) if heard else None,
            heard_ms=heard.ms if heard else 0,
        )
        return Interruption(audible, heard, unheard_ms)

    # -- resume mode ----------------------------------------------------------------------

    def pause(self, now: float, stream_sid: str) -> Held:
        """Silence the bot at once (Twilio `clear`), keeping what the caller didn't hear:
        the service is neither cancelled nor corrected until the speech is judged."""
        playback = self.playback
        heard = playback.heard(now)
        held = Held(now, heard, playback.pending_chunks())
        if heard is not None:
            held.played = playback.played_chunks(heard.item_id)
        if playback.playing:
            playback.clear()
            self.out.twilio(tw.clear(stream_sid))
        log_event(
            logger,
            logging.INFO,
            "turn.paused",
            item_id=short(heard.item_id) if heard else None,
            heard_ms=heard.ms if heard else 0,
        )
        return held

    def confirm(self, held: Held, *, cancel: bool) -> Interruption:
        """The paused answer was interrupted for real: `response.cancel` (`cancel`: a
        response is still being generated), then the model remembers only what was heard:
        the item being heard truncated there, the items not heard at all deleted."""
        if cancel:
            self.out.realtime(rt.response_cancel())
        heard = held.heard
        unheard_ms = 0
        items = held.items()
        audible = heard is not None  # the caller was hearing it (else it was only coming)
        if audible:
            self.count += 1
        for item_id in items:
            turn = self.transcript.assistant(item_id)
            turn.interrupted = True
            received = self.playback.items.get(item_id)
            sent_ms = received.sent_ms if received is not None else 0
            heard_ms = min(heard.ms, sent_ms) if heard and heard.item_id == item_id else 0
            turn.heard_ms = heard_ms
            unheard_ms += sent_ms - heard_ms
            if heard_ms > 0:
                self.out.realtime(rt.item_truncate(item_id, heard_ms))
            elif received is not None:
                self.out.realtime(rt.item_delete(item_id))
        log_event(
            logger,
            logging.INFO,
            "turn.barge_in",
            item_id=short(heard.item_id) if heard else None,
            heard_ms=heard.ms if heard else 0,
            paused=True,
        )
        return Interruption(audible, heard, unheard_ms)
