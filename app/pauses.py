"""Where a paused answer may start again: the last pause between words before a position.

The driver's side of resume mode's rewind (`app.call.session`, `FindPause`): the call core
never decodes audio, so it hands the driver the base64 chunks around the position the
caller stopped hearing, and the driver answers with where to resume. The answer is an input
the recorder keeps, so a call fixture without audio (`RECORD_AUDIO=false`, the default)
replays the same resume.

A pause is at least `QUIET_RUN_MS` of 10 ms blocks quieter than `QUIET_RMS` (16-bit linear:
speech is 500-8000, the gaps between words well below 300). The resume starts `LEAD_MS` before
the end of the last pause within the window (a breath of silence, then the word) or, when
there is none, `LEAD_MS` before the heard position (which marks know to about one 20 ms
frame: better a few ms twice than a few ms never).
"""

from __future__ import annotations

import binascii
from collections.abc import Sequence
from typing import Final

from app.call.playback import BYTES_PER_MS, Chunk
from app.protocol.mulaw import mean_square

QUIET_RMS: Final = 300
QUIET_RUN_MS: Final = 40
LEAD_MS: Final = 20
_BLOCK: Final = 10 * BYTES_PER_MS


def resume_point(chunks: Sequence[Chunk], heard: int, rewind_ms: int) -> int:
    """Where (item bytes) to resume an item heard up to byte `heard`, at most `rewind_ms`
    before it, from its audio in `chunks` (any order; bad or missing audio: no pause)."""
    lo = max(0, heard - rewind_ms * BYTES_PER_MS)
    lead = LEAD_MS * BYTES_PER_MS
    window = _window(chunks, lo, heard)
    if window is None:
        return max(lo, heard - lead)
    begin, audio = window
    quiet = []
    for i in range(0, len(audio) - _BLOCK + 1, _BLOCK):
        quiet.append(mean_square(audio[i : i + _BLOCK]) < QUIET_RMS**2)
    need, run, best = QUIET_RUN_MS // 10, 0, None
    for index, is_quiet in enumerate(quiet):
        run = run + 1 if is_quiet else 0
        if run >= need:
            best = index + 1  # the pause ends after this block (so far)
    if best is None:
        return max(begin, heard - lead)
    return max(begin, begin + best * _BLOCK - lead)


def _window(chunks: Sequence[Chunk], lo: int, hi: int) -> tuple[int, bytes] | None:
    """The item's audio known contiguously back from `hi` (to `lo` at most)."""
    pieces: dict[int, bytes] = {}
    for chunk in chunks:
        if chunk.end <= lo or chunk.start >= hi:
            continue
        try:
            audio = binascii.a2b_base64(chunk.payload, strict_mode=True)
        except (TypeError, ValueError):
            continue
        if len(audio) == chunk.nbytes:
            pieces[chunk.start] = audio
    at: int | None = None
    segments: list[bytes] = []
    for start, audio in sorted(pieces.items(), reverse=True):
        if start < hi <= start + len(audio):
            at = start
            segments.append(audio[: hi - start])
            break
    if at is None:
        return None
    ends = {start + len(audio): start for start, audio in pieces.items()}
    while at > lo and at in ends:
        at = ends[at]
        segments.append(pieces[at])
    audio = b"".join(reversed(segments))
    if at < lo:
        audio, at = audio[lo - at :], lo
    return at, audio
