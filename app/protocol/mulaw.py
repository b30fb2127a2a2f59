"""G.711 mu-law, the audio both peers carry: the decode table, and what is derived from it.

The bridge never decodes audio on its hot path; these are for the places that look at it
on purpose, off the per-frame path (the local speech detector, the resume's pause, the call
viewer's audio). `audioop` is gone from Python 3.13, so the table is built here.
"""

from __future__ import annotations

from typing import Final


def _to_linear(byte: int) -> int:
    """G.711 mu-law to 16-bit linear (the classic decoder; 0xFF and 0x7F are 0)."""
    u = ~byte & 0xFF
    magnitude = (((u & 0x0F) << 3) + 0x84) << ((u >> 4) & 0x07)
    return 0x84 - magnitude if u & 0x80 else magnitude - 0x84


#: mu-law byte -> linear sample in [-32124, 32124].
TO_LINEAR: Final[tuple[int, ...]] = tuple(_to_linear(b) for b in range(256))
#: mu-law byte -> its linear sample squared (energy sums without a multiply a sample).
SQUARES: Final[tuple[int, ...]] = tuple(v * v for v in TO_LINEAR)


def mean_square(data: bytes) -> float:
    """The mean energy of mu-law `data` (its RMS squared, in 16-bit linear units)."""
    return sum(SQUARES[b] for b in data) / len(data) if data else 0.0
