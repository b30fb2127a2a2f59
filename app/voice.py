"""A local second opinion on whether the caller's "speech" is a voice, run only around events.

The Realtime service's server VAD says when it *thinks* the caller started speaking; a fan, a
door or line noise can trip it as easily as a word. This module answers "was that a voice?"
with WebRTC's GMM speech detector (``webrtcvad``), which tells voices from noise far better
than an energy threshold, over the last second or so of caller audio.

Two halves, so that the per-frame hot path never decodes audio:

- :class:`VoiceRing` keeps the most recent caller frames exactly as Twilio sent them (base64
  mu-law strings). ``ring.append`` *is* ``collections.deque.append``: no decoding, no checks.
- :class:`VoiceDetector` decodes the last ``window_ms`` of a ring only when asked (a few times
  per interruption) and returns a :class:`VoiceReport`: voiced ms in the window, voiced ms in
  its last ``tail_ms`` ("still speaking?") and the longest voiced run. Bad frames (not base64,
  not 160 bytes) are skipped and counted, never raised.

What it can and cannot tell (tests/test_voice.py; ``python -m tests.test_voice`` prints the
table): at mode 3 over a 1 s window, spoken words give >= 380 voiced ms in runs >= 380 ms, while
fans, hiss, hum and clicks that trip an energy VAD give no voiced run over 120 ms (clicks do
earn voiced ms from webrtcvad's hangover: judge by ``longest_voiced_ms`` too). Its limit is
level: stationary noise about as loud as the speech, or clicks 20 times a second, is voiced.

Decoding is G.711 mu-law -> 16-bit little-endian linear PCM through a 256-entry table built once
at import (``audioop`` is deprecated and gone in Python 3.13). The table is applied with two
``bytes.translate`` calls (low and high byte) interleaved by slice assignment, all in C.
"""

from __future__ import annotations

import binascii
import math
import statistics
from collections import deque
from dataclasses import asdict, dataclass
from typing import Final

import webrtcvad

from app.protocol.mulaw import TO_LINEAR, mean_square

__all__ = [
    "FRAME_BYTES",
    "FRAME_MS",
    "MULAW_TO_LINEAR",
    "PRIME_FRAMES",
    "SAMPLE_RATE",
    "VoiceDetector",
    "VoiceReport",
    "VoiceRing",
    "mulaw_to_pcm16le",
]

SAMPLE_RATE: Final = 8000
"""Twilio Media Streams audio: G.711 mu-law, 8 kHz mono."""

FRAME_MS: Final = 20
"""Twilio's inbound frame length, and the frame length fed to webrtcvad (10, 20 or 30 ms)."""

FRAME_BYTES: Final = SAMPLE_RATE * FRAME_MS // 1000
"""One 20 ms frame: 160 mu-law bytes (one byte per sample), 216 base64 characters."""

PRIME_FRAMES: Final = 5
"""Frames (100 ms) from the window's start fed to each fresh detector first, results discarded:
a fresh webrtcvad calls the first 80-100 ms of any non-silent audio voiced (its noise model
starts empty), so without this every noise would show a 100 ms voiced run."""


MULAW_TO_LINEAR: Final = TO_LINEAR
"""The decode table (`app.protocol.mulaw`), as webrtcvad is fed."""

_LOW_BYTES: Final = bytes(v & 0xFF for v in MULAW_TO_LINEAR)
_HIGH_BYTES: Final = bytes((v >> 8) & 0xFF for v in MULAW_TO_LINEAR)


def mulaw_to_pcm16le(data: bytes) -> bytes:
    """Decode mu-law bytes to 16-bit little-endian signed linear PCM (twice as long)."""
    out = bytearray(2 * len(data))
    out[0::2] = data.translate(_LOW_BYTES)
    out[1::2] = data.translate(_HIGH_BYTES)
    return bytes(out)


class VoiceRing:
    """The most recent caller frames, kept as the base64 strings they arrived as.

    Frames are assumed to be 20 ms each (Twilio's inbound frames: 160 mu-law bytes), so the
    ring holds ``max_ms // 20`` frames and the oldest fall off as new ones arrive. Nothing is
    decoded or validated on :attr:`append`, which is the underlying deque's own bound
    ``append``: as cheap as a ``deque.append``, safe on the per-frame hot path.
    """

    __slots__ = ("_frames", "append", "max_ms")

    def __init__(self, max_ms: int = 1500) -> None:
        if max_ms < FRAME_MS:
            raise ValueError(f"max_ms must be at least one frame ({FRAME_MS} ms), got {max_ms}")
        self.max_ms = max_ms
        self._frames: deque[str] = deque(maxlen=max_ms // FRAME_MS)
        self.append = self._frames.append
        """Add one base64 payload (a bound ``deque.append``: no decoding, no checks)."""

    def __len__(self) -> int:
        """Frames held (each assumed to be 20 ms)."""
        return len(self._frames)

    @property
    def ms(self) -> int:
        """Audio held, in ms (frames x 20)."""
        return len(self._frames) * FRAME_MS

    def clear(self) -> None:
        """Forget every frame (e.g. when the caller's stream restarts)."""
        self._frames.clear()

    def last(self, frames: int) -> list[str]:
        """The most recent ``frames`` payloads, oldest first (fewer if the ring holds fewer)."""
        if frames <= 0:
            return []
        held = list(self._frames)
        return held[-frames:]


@dataclass(frozen=True, slots=True)
class VoiceReport:
    """What webrtcvad heard in the last ``window_ms`` of caller audio.

    ``window_ms`` is the audio actually examined: the asked-for ms rounded down to whole 20 ms
    frames, less when the ring held less. Skipped frames count in it but are never voiced and
    break voiced runs.
    """

    window_ms: int
    """Audio examined, in ms: frames taken from the ring x 20 (skipped ones included)."""
    voiced_ms: int
    """Voiced ms in the whole window."""
    tail_voiced_ms: int
    """Voiced ms within the window's last ``tail_ms``: the caller is still speaking (at mode 3,
    tail 300 ms, >= 60 ms is; speech that ended 200 ms or more before gives 0)."""
    longest_voiced_ms: int
    """The longest run of consecutive voiced frames, in ms."""
    skipped: int
    """Frames skipped as bad audio: not valid base64, or not 160 bytes once decoded."""
    level_spread_db: float = 0.0
    """How much the level moves from one 20 ms frame to the next over the window's sounding
    frames (standard deviation of their levels in dB; silence left out). One talker's
    syllables make it move a lot (7-11 dB measured on speech); a fan, hiss or a babble of
    several voices is steady (2-5 dB)."""

    def to_dict(self) -> dict[str, int | float]:
        """A JSON-ready dict of exactly the fields above (a core input; recorded in fixtures)."""
        return asdict(self)


class VoiceDetector:
    """WebRTC's speech detector over the tail of a :class:`VoiceRing`, run only when asked.

    ``aggressiveness`` is webrtcvad's mode, 0 (least aggressive about filtering out non-speech)
    to 3 (most). Each :meth:`check` starts a fresh detector, primed with the window's first
    100 ms (:data:`PRIME_FRAMES`), so a report depends only on the audio in its window, never
    on an earlier check.
    """

    __slots__ = ("aggressiveness",)

    def __init__(self, aggressiveness: int) -> None:
        if not 0 <= aggressiveness <= 3:
            raise ValueError(
                f"aggressiveness must be 0-3 (webrtcvad's modes), got {aggressiveness}"
            )
        self.aggressiveness = aggressiveness

    def check(self, ring: VoiceRing, window_ms: int, tail_ms: int = 300) -> VoiceReport:
        """Decode the last ``window_ms`` of ``ring`` and report how much of it is voiced.

        Never raises on bad audio: a frame that is not valid base64, or not 160 bytes, is
        skipped (counted in :attr:`VoiceReport.skipped`) and counts as unvoiced.
        """
        payloads = ring.last(window_ms // FRAME_MS)
        good: list[bytes] = []
        positions: list[int] = []
        for index, payload in enumerate(payloads):
            try:
                frame = binascii.a2b_base64(payload, strict_mode=True)
            except (TypeError, ValueError):  # binascii.Error is a ValueError
                continue
            if len(frame) == FRAME_BYTES:
                good.append(frame)
                positions.append(index)
        voiced = [False] * len(payloads)
        if good:
            vad = webrtcvad.Vad(self.aggressiveness)
            pcm = mulaw_to_pcm16le(b"".join(good))
            step = 2 * FRAME_BYTES
            for n in range(min(PRIME_FRAMES, len(good))):  # settle a fresh detector; discarded
                vad.is_speech(pcm[n * step : (n + 1) * step], SAMPLE_RATE)
            for n, index in enumerate(positions):
                voiced[index] = vad.is_speech(pcm[n * step : (n + 1) * step], SAMPLE_RATE)
        levels = [_rms(frame) for frame in good]
        sounding = [20 * math.log10(v) for v in levels if v > _SOUNDING_RMS]
        spread = statistics.pstdev(sounding) if len(sounding) > 1 else 0.0
        longest = run = 0
        for is_voiced in voiced:
            run = run + 1 if is_voiced else 0
            longest = max(longest, run)
        tail_frames = min(len(voiced), max(0, tail_ms) // FRAME_MS)
        return VoiceReport(
            window_ms=len(payloads) * FRAME_MS,
            voiced_ms=sum(voiced) * FRAME_MS,
            tail_voiced_ms=sum(voiced[len(voiced) - tail_frames :]) * FRAME_MS,
            longest_voiced_ms=longest * FRAME_MS,
            skipped=len(payloads) - len(good),
            level_spread_db=round(spread, 1),
        )


#: Frames quieter than this (16-bit linear RMS) are silence for the level spread.
_SOUNDING_RMS: Final = 100


def _rms(frame: bytes) -> int:
    """The RMS of a mu-law frame, in 16-bit linear units."""
    return math.isqrt(int(mean_square(frame)))
