"""A call fixture as a stereo WAV: the caller on the left, what the caller heard on the right.

Listening to a recorded call answers what a timeline can't (did the bot really say that
much before the barge-in? was the cut clean?), but only if the bot's side is what the
caller heard, not what was sent: sent audio runs seconds ahead and includes everything a
`clear` threw away. So the right channel is built from `app.viewer.playout`: each played
piece's bytes placed sample-exactly at its start (8 samples per ms), cut where the clear
cut it; audio that never played is absent. The left channel is the caller's `media`
frames, each at its own Twilio `timestamp` (its arrival time when it has none), so a
lost frame is a 20 ms gap of silence rather than a shift of everything after it.

16-bit PCM at 8 kHz, as long as the call. mu-law is decoded with our own 256-entry
table (ITU-T G.711): `audioop` is gone from Python 3.13. A fixture recorded with
`RECORD_AUDIO=false` kept only lengths, so there is nothing to hear: `render_wav` returns
None for it.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import sys
import wave
from array import array
from typing import Final

from app.call.inbound import lookup
from app.call.playback import BYTES_PER_MS
from app.protocol.mulaw import TO_LINEAR
from app.replay import Entry, Fixture
from app.viewer.playout import playout

SAMPLE_RATE: Final = 8000
SAMPLES_PER_MS: Final = SAMPLE_RATE // 1000
#: One mu-law byte is one sample.
assert SAMPLES_PER_MS == BYTES_PER_MS


ULAW_TABLE: Final = TO_LINEAR


def decode_ulaw(data: bytes) -> array[int]:
    """mu-law bytes as 16-bit samples."""
    table = ULAW_TABLE
    return array("h", [table[b] for b in data])


def _audio(payload: object) -> bytes | None:
    """A kept base64 payload's bytes; None for a length-only one or a broken one."""
    if type(payload) is not str:
        return None
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return None


def _caller_at(e: Entry) -> float:
    """Where a caller frame goes: Twilio's media timestamp (ms of the caller's stream),
    else its arrival time."""
    stamp = lookup(e.msg, ("media", "timestamp"))
    if type(stamp) is str and stamp.isdigit():
        return float(int(stamp))
    if type(stamp) is int and stamp >= 0:
        return float(stamp)
    return e.t_ms


def _place(track: array[int], at_ms: float, samples: array[int]) -> None:
    """Write `samples` into `track` from sample `round(at_ms * 8)`, clipped to its end."""
    start = max(0, round(at_ms * SAMPLES_PER_MS))
    room = len(track) - start
    if room <= 0 or not samples:
        return
    part = samples if len(samples) <= room else samples[:room]
    track[start : start + len(part)] = part


def render_wav(fixture: Fixture) -> bytes | None:
    """The call as WAV bytes (module docstring), or None when it kept no audio."""
    if fixture.header.get("audio") != "kept":
        return None
    model = playout(fixture)
    total = max(0, math.ceil(model.duration_ms * SAMPLES_PER_MS))
    left, right = array("h", bytes(2 * total)), array("h", bytes(2 * total))
    for e in fixture.entries:
        if e.dir == "from_twilio" and e.msg.get("event") == "media" and e.t_ms <= model.duration_ms:
            data = _audio(lookup(e.msg, ("media", "payload")))
            if data:
                _place(left, _caller_at(e), decode_ulaw(data))
    for piece in model.played:
        data = _audio(model.chunks[piece.chunk_index].payload)
        if data:
            _place(right, piece.start_ms, decode_ulaw(data[: piece.length_bytes]))
    frames = array("h", bytes(4 * total))
    frames[0::2], frames[1::2] = left, right
    if sys.byteorder == "big":
        frames.byteswap()
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(frames.tobytes())
    return out.getvalue()
