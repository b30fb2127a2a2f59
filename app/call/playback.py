"""PlaybackTracker: what the caller has really heard, from Twilio mark echoes.

Twilio queues the bot's audio and plays it in real time; the Realtime service produces
it much faster. So "sent" and "heard" differ by seconds, and only Twilio knows where
playback is. It tells us through marks: after every audio chunk we send a uniquely named
mark, and Twilio echoes it when the audio before it has played.

Rules (each one a bug seen in peer bridges):

1. A mark echo means "played" only if that mark was still pending in the current
   playback generation. `clear` makes Twilio echo every pending mark at once, and those
   echoes look exactly like played ones; we remember which marks a clear flushed and
   treat their echoes as *cleared*, even when they arrive late, after audio for the next
   item is already flowing.
2. Each mark name carries its item and generation (`{item}.g{gen}.m{seq}`), so an echo
   that outlives our bookkeeping is still recognised as belonging to an old generation.
3. Positions are counted in bytes of mu-law (8 per ms), never from clocks or Twilio's
   media timestamps, and a position inside an item never exceeds the audio received
   for it: a truncate computed from it can't be rejected by the service.
4. Between two echoes the position is interpolated from the clock, but never past the
   next unechoed mark: the estimate is off by at most one chunk, and only in time
   we can't observe.

All times are call milliseconds passed in by the caller of the tracker; it has no clock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum

BYTES_PER_MS = 8
#: Cleared-mark names remembered for late echoes (a few per barge-in are normal).
_CLEARED_MEMORY = 4096
#: Played chunks kept for a resume's rewind (the service's deltas are 50-200 ms).
_RECENT = 16


class Echo(Enum):
    """What a mark echo turned out to be."""

    PLAYED = "played"
    CLEARED = "cleared"
    UNKNOWN = "unknown"


@dataclass(slots=True)
class ItemPlayback:
    """Bytes of one assistant audio item sent to Twilio, and confirmed played."""

    item_id: str
    sent: int = 0
    played: int = 0

    @property
    def sent_ms(self) -> int:
        return self.sent // BYTES_PER_MS

    @property
    def played_ms(self) -> int:
        return self.played // BYTES_PER_MS


@dataclass(frozen=True, slots=True)
class Heard:
    """The caller is hearing `item_id`, `ms` into it (floor; never past what was sent)."""

    item_id: str
    ms: int


@dataclass(slots=True)
class _Mark:
    name: str
    item_id: str
    item_end: int  # bytes of the item sent up to and including this chunk
    stream_end: int  # bytes sent on the call up to and including this chunk
    nbytes: int = 0  # bytes of audio in the chunk
    payload: str = ""  # the chunk's audio as sent (base64): kept for a resume


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of an item's audio as the service sent it (base64, never decoded here):
    bytes `start` to `start + nbytes` of item `item_id`."""

    item_id: str
    start: int
    nbytes: int
    payload: str

    @property
    def end(self) -> int:
        return self.start + self.nbytes


def mark_generation(name: str) -> int | None:
    """The playback generation encoded in a mark name, or None if it is not one of ours."""
    parts = name.rsplit(".", 2)
    if len(parts) != 3 or not parts[1].startswith("g") or not parts[2].startswith("m"):
        return None
    try:
        return int(parts[1][1:])
    except ValueError:
        return None


class PlaybackTracker:
    """Sent and played audio per item, advanced only by echoes of audio that really played."""

    def __init__(self) -> None:
        self.generation = 0
        self.items: dict[str, ItemPlayback] = {}
        self._seq = 0
        self._stream_sent = 0
        self._played_pos = 0
        self._pending: deque[_Mark] = deque()
        self._by_name: dict[str, _Mark] = {}
        self._cleared: dict[str, None] = {}  # insertion-ordered set, oldest first
        self._anchor: tuple[float, int] | None = None  # (time, stream position) known playing
        #: The last chunks played, newest last: what a resume may rewind into.
        self.recent: deque[_Mark] = deque(maxlen=_RECENT)
        #: When the bot's audio last started playing from silence (the echo guard's clock).
        self.started_at: float | None = None

    # -- inputs ---------------------------------------------------------------------------

    def sent(self, now: float, item_id: str, nbytes: int, payload: str = "") -> str:
        """Record a chunk of `item_id` sent to Twilio; returns the mark name to send after it.
        `payload` (the chunk as sent, a reference: never copied nor decoded) is kept until
        the chunk has played, for a resume."""
        start = self.received(item_id, nbytes)
        return self._queue(now, item_id, start + nbytes, nbytes, payload)

    def received(self, item_id: str, nbytes: int) -> int:
        """A chunk of `item_id` arrived (sent, or held by a paused answer): it counts as
        audio received for the item. Returns where in the item it starts (bytes)."""
        item = self.items.get(item_id)
        if item is None:
            item = self.items[item_id] = ItemPlayback(item_id)
        start = item.sent
        item.sent += nbytes
        return start

    def resent(self, now: float, chunk: Chunk) -> str:
        """Send again (a resume) bytes `chunk.start..chunk.end` of an item already counted as
        received; returns the mark name to send after it."""
        return self._queue(now, chunk.item_id, chunk.end, chunk.nbytes, chunk.payload)

    def _queue(self, now: float, item_id: str, item_end: int, nbytes: int, payload: str) -> str:
        if not self._pending:
            # Twilio's queue is empty, so this chunk starts playing as it arrives.
            self._anchor = (now, self._stream_sent)
            self.started_at = now
        self._stream_sent += nbytes
        self._seq += 1
        name = f"{item_id}.g{self.generation}.m{self._seq}"
        mark = _Mark(name, item_id, item_end, self._stream_sent, nbytes, payload)
        self._pending.append(mark)
        self._by_name[name] = mark
        return name

    def echo(self, now: float, name: str) -> Echo:
        """Twilio echoed mark `name`."""
        mark = self._by_name.get(name)
        if mark is None:
            if name in self._cleared:
                del self._cleared[name]
                return Echo.CLEARED
            gen = mark_generation(name)
            if gen is not None and gen < self.generation:
                return Echo.CLEARED
            return Echo.UNKNOWN
        # Twilio plays in order: this echo means every earlier chunk has played too.
        while self._pending:
            done = self._pending.popleft()
            del self._by_name[done.name]
            item = self.items[done.item_id]
            item.played = max(item.played, done.item_end)
            self.recent.append(done)
            if done is mark:
                break
        self._played_pos = mark.stream_end
        self._anchor = (now, mark.stream_end)
        return Echo.PLAYED

    def pending_chunks(self) -> list[Chunk]:
        """The audio sent and not yet played, in play order (call before `clear`)."""
        return [_chunk(m) for m in self._pending]

    def played_chunks(self, item_id: str) -> list[Chunk]:
        """The last chunks of `item_id` that played, oldest first (a resume's rewind)."""
        return [_chunk(m) for m in self.recent if m.item_id == item_id]

    def clear(self) -> list[str]:
        """We sent Twilio `clear`: pending marks will echo as cleared. Returns the items
        that still had unplayed audio queued, in play order."""
        items: list[str] = []
        for mark in self._pending:
            self._cleared[mark.name] = None
            if not items or items[-1] != mark.item_id:
                items.append(mark.item_id)
        while len(self._cleared) > _CLEARED_MEMORY:
            del self._cleared[next(iter(self._cleared))]
        self._pending.clear()
        self._by_name.clear()
        self.generation += 1
        self._played_pos = self._stream_sent
        self._anchor = None
        return items

    # -- questions ------------------------------------------------------------------------

    @property
    def playing(self) -> bool:
        """Is audio sent to Twilio still waiting to be played (the caller hearing the bot)?"""
        return bool(self._pending)

    def heard(self, now: float) -> Heard | None:
        """Which item the caller is hearing at `now`, and how far into it; None if silent."""
        if not self._pending:
            return None
        first = self._pending[0]
        pos = self._played_pos
        if self._anchor is not None:
            at, anchor_pos = self._anchor
            pos = max(pos, anchor_pos + int((now - at) * BYTES_PER_MS))
        pos = min(pos, first.stream_end)
        item_bytes = first.item_end - (first.stream_end - pos)
        return Heard(first.item_id, max(0, item_bytes) // BYTES_PER_MS)

    def queued_ms(self) -> int:
        """Audio sent but not confirmed played, in ms."""
        return (self._stream_sent - self._played_pos) // BYTES_PER_MS


def _chunk(mark: _Mark) -> Chunk:
    return Chunk(mark.item_id, mark.item_end - mark.nbytes, mark.nbytes, mark.payload)
