"""The audio to send when a paused answer resumes. Sans-I/O, and no audio is decoded.

Resume mode (`app.call.falseturn`) plays a paused answer on after a false turn, from a
point at or a little before where the caller stopped hearing it (the driver finds the
last pause between words: `app.pauses`, asked with `FindPause`). The chunks from there on
are the service's own base64 strings, sent again; only the first is cut, and it is cut in
the base64 text itself, at a multiple of 3 bytes (4 characters) from its start, so nothing
is decoded: a resume starts at most 2 bytes (a quarter of a ms) before the point asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from app.call.playback import BYTES_PER_MS, Chunk


@dataclass(frozen=True, slots=True)
class Resume:
    """The audio to send, in order, and how far before the heard position it starts."""

    chunks: list[Chunk]
    rewind_ms: int


def around(
    item_id: str, heard: int, rewind_ms: int, played: Sequence[Chunk], held: Sequence[Chunk]
) -> tuple[Chunk, ...]:
    """The item's chunks a resume point within `rewind_ms` before `heard` can fall in."""
    lo = heard - rewind_ms * BYTES_PER_MS
    return tuple(
        c for c in (*played, *held) if c.item_id == item_id and c.end > lo and c.start < heard
    )


def plan(
    item_id: str, heard: int, start: int, played: Sequence[Chunk], held: Sequence[Chunk]
) -> Resume:
    """Resume item `item_id` (heard up to byte `heard`) from byte `start`.

    `played`: that item's last chunks played (oldest first; what a rewind reaches back
    into); `held`: the audio not heard, in play order (what was queued at Twilio from the
    chunk being heard on, then what arrived while paused).
    """
    own = sorted((c for c in (*played, *held) if c.item_id == item_id), key=lambda c: c.start)
    if not any(c.start <= start < c.end for c in own):
        firsts = [c.start for c in held if c.item_id == item_id]
        start = min(firsts) if firsts else heard  # the rewind reaches into audio unknown
    out: list[Chunk] = []
    pos = start
    while True:
        chunk = next((c for c in own if c.start <= pos < c.end), None)
        if chunk is None:
            break
        piece = _from(chunk, pos)
        out.append(piece)
        pos = chunk.end
    first = out[0].start if out else heard
    out += [c for c in held if c.item_id != item_id]
    return Resume(out, max(0, heard - first) // BYTES_PER_MS)


def _from(chunk: Chunk, pos: int) -> Chunk:
    """`chunk` from item byte `pos` on (rounded down to a multiple of 3 bytes into it)."""
    offset = pos - chunk.start
    offset -= offset % 3
    if offset <= 0:
        return chunk
    return Chunk(
        chunk.item_id, chunk.start + offset, chunk.nbytes - offset, chunk.payload[offset // 3 * 4 :]
    )
