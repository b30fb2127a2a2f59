"""What the benchmark hides inside the audio bytes, and the clock every process shares.

Latency is measured end to end without trusting the target: each caller frame and each
assistant delta starts with a 12-byte tag (magic, who, which, when). The process at the
far end finds the tag in the audio it receives and subtracts the send time.

Clock: the runner reads CLOCK_MONOTONIC once (the epoch) and hands it to every process;
each stamps events as microseconds since it. CLOCK_MONOTONIC is system-wide on Linux, so
the load generator's and the fake's stamps are directly comparable. Stamps are u32 (they
wrap after 71 minutes, far beyond any run).
"""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import Callable

MAGIC = b"\xa5\x5a"
"""Never produced by the silence the frames are padded with (0xff), so a search is exact."""

TAG_BYTES = 12
"""A multiple of 3: base64(tag + rest) == base64(tag) + base64(rest), so only the tag is
encoded per frame and the padding's base64 is computed once."""

UPLINK = struct.Struct(">2sHII")
"""Caller frame tag: magic, call index, frame sequence number, send time (us)."""

DOWNLINK = struct.Struct(">2sHHHI")
"""Assistant delta tag: magic, call index, response number, delta index, send time (us)."""

CALLER_FRAME_BYTES = 160
"""20 ms of 8 kHz mu-law: what Twilio sends per media message."""

DELTA_BYTES = 800
"""100 ms of 8 kHz mu-law: one assistant audio delta."""

MULAW_SILENCE = b"\xff"
UPLINK_PAD_B64 = base64.b64encode(MULAW_SILENCE * (CALLER_FRAME_BYTES - TAG_BYTES))
DOWNLINK_PAD_B64 = base64.b64encode(MULAW_SILENCE * (DELTA_BYTES - TAG_BYTES))


mono_ns = time.monotonic_ns


def clock_us(epoch_ns: int) -> Callable[[], int]:
    """A function returning microseconds since `epoch_ns` (a time.monotonic_ns reading)."""
    mono = mono_ns

    def now_us() -> int:
        return (mono() - epoch_ns) // 1000

    return now_us


def find_tags(raw: bytes) -> list[int]:
    """Offsets of every tag in `raw` (a target may batch or split frames; a tag cut in two
    by a split is not found, and its frame counts as lost)."""
    out = []
    i = raw.find(MAGIC)
    last = len(raw) - TAG_BYTES
    while 0 <= i <= last:
        out.append(i)
        i = raw.find(MAGIC, i + TAG_BYTES)
    return out
