"""Audio helpers for the test doubles: real spoken mu-law audio, silence and a tiny VAD.

Twilio Media Streams and the Realtime API (with ``audio/pcmu``) both carry raw G.711 mu-law
at 8 kHz mono, i.e. 8 bytes per millisecond.  Tests need *real* speech (not random bytes) so
that the fake Realtime service's energy VAD fires the way the real one would, so ``speech()``
synthesises it with ``espeak-ng`` and converts it with ``sox``.  The results are cached under
``tests/.cache/audio/`` (gitignored) keyed by a hash of the text, so the tools only run once.

``audioop`` was removed in Python 3.13, so the G.711 decode/encode is implemented here in pure
Python (the classic ITU-T table).
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

BYTES_PER_MS = 8
"""mu-law 8 kHz mono: one byte per sample, 8 samples per millisecond."""

FRAME_MS = 20
FRAME_BYTES = FRAME_MS * BYTES_PER_MS
"""Twilio's inbound frame: 20 ms = 160 bytes."""

MULAW_SILENCE = 0xFF
"""The mu-law code for linear 0 (positive zero); what Twilio sends for silence."""

SPEECH_RMS_THRESHOLD = 250.0
"""Linear-PCM RMS above which a frame counts as speech (espeak speech frames are ~500-8000,
digital silence is 0, inter-word gaps fall below ~150)."""

CACHE_DIR = Path(__file__).resolve().parents[1] / ".cache" / "audio"
_CACHE_VERSION = "v1"  # bump to invalidate cached audio if the synthesis recipe changes


class AudioToolMissingError(RuntimeError):
    """Raised when espeak-ng or sox are not installed, with a hint how to install them."""


def _ulaw_decode_byte(code: int) -> int:
    """Decode one G.711 mu-law byte to a 16-bit linear sample (ITU-T G.711 reference)."""
    u = ~code & 0xFF
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    sample = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return -sample if sign else sample


ULAW_TO_LINEAR: tuple[int, ...] = tuple(_ulaw_decode_byte(i) for i in range(256))
"""Decode table: mu-law byte -> linear sample in [-32124, 32124]."""

_ULAW_SQUARES: tuple[int, ...] = tuple(v * v for v in ULAW_TO_LINEAR)


def linear_to_ulaw(sample: int) -> int:
    """Encode one 16-bit linear sample as a G.711 mu-law byte."""
    bias, clip = 0x84, 32635
    sign = 0x80 if sample < 0 else 0x00
    magnitude = min(abs(sample), clip) + bias
    exponent = max(0, min(7, magnitude.bit_length() - 8))
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def decode(data: bytes) -> list[int]:
    """Decode mu-law bytes to a list of linear samples."""
    table = ULAW_TO_LINEAR
    return [table[b] for b in data]


def rms(chunk: bytes) -> float:
    """Root-mean-square energy of a mu-law chunk, in linear 16-bit units (0.0 for empty)."""
    if not chunk:
        return 0.0
    squares = _ULAW_SQUARES
    return math.sqrt(sum(squares[b] for b in chunk) / len(chunk))


def is_speech(chunk: bytes, threshold: float = SPEECH_RMS_THRESHOLD) -> bool:
    """True when the chunk's energy is above the speech threshold (a crude energy VAD)."""
    return rms(chunk) > threshold


def speech_ratio(data: bytes, frame_bytes: int = FRAME_BYTES) -> float:
    """Fraction of full 20 ms frames in ``data`` that ``is_speech`` classifies as speech."""
    frames = [data[i : i + frame_bytes] for i in range(0, len(data) - frame_bytes + 1, frame_bytes)]
    if not frames:
        return 0.0
    return sum(is_speech(f) for f in frames) / len(frames)


def silence(ms: int) -> bytes:
    """``ms`` milliseconds of mu-law silence (0xFF bytes)."""
    return bytes([MULAW_SILENCE]) * (ms * BYTES_PER_MS)


def ms(data: bytes | bytearray) -> int:
    """Duration in whole milliseconds of mu-law 8 kHz audio."""
    return len(data) // BYTES_PER_MS


def tone(duration_ms: int, freq_hz: float = 440.0, amplitude: int = 8000) -> bytes:
    """A sine tone as mu-law bytes: loud, deterministic audio that needs no external tools."""
    n = duration_ms * BYTES_PER_MS
    step = 2 * math.pi * freq_hz / 8000
    return bytes(linear_to_ulaw(int(amplitude * math.sin(step * i))) for i in range(n))


@functools.cache
def synth(*effect: str) -> bytes:
    """A sox ``synth`` sound (``synth("0.3", "brownnoise", "vol", "0.05")``: a noise, a
    tone) as raw 8 kHz mono mu-law. ``sox -R`` makes it repeatable (the same bytes every
    run)."""
    sox = shutil.which("sox")
    if sox is None:
        raise AudioToolMissingError("synth() needs sox on PATH: apt-get install -y sox")
    command = [sox, "-R", "-n", "-r", "8000", "-c", "1", "-e", "mu-law", "-t", "raw", "-"]
    out = subprocess.run([*command, "synth", *effect], check=True, capture_output=True).stdout
    if not out:
        raise RuntimeError(f"sox synth {' '.join(effect)} produced no audio")
    return out


def _require_tools() -> tuple[str, str]:
    espeak = shutil.which("espeak-ng")
    sox = shutil.which("sox")
    missing = [name for name, path in (("espeak-ng", espeak), ("sox", sox)) if path is None]
    if missing or espeak is None or sox is None:
        raise AudioToolMissingError(
            f"speech() needs {' and '.join(missing)} on PATH to synthesise test audio; "
            "install with: apt-get install -y espeak-ng sox"
        )
    return espeak, sox


def _cache_path(text: str, voice: str, wpm: int) -> Path:
    key = hashlib.sha256(f"{_CACHE_VERSION}\0{voice}\0{wpm}\0{text}".encode()).hexdigest()[:32]
    return CACHE_DIR / f"{key}.ulaw"


def speech(text: str, *, voice: str = "en-us", wpm: int = 175) -> bytes:
    """Real spoken ``text`` as raw 8 kHz mono mu-law bytes (no header).

    Synthesised with ``espeak-ng -w tmp.wav`` and converted with
    ``sox tmp.wav -r 8000 -c 1 -e mu-law -t raw out.ulaw``; cached by a hash of the text and
    voice settings under ``tests/.cache/audio/``, written atomically so concurrent test
    processes never see a partial file.
    """
    if not text.strip():
        raise ValueError("speech() needs non-empty text")
    path = _cache_path(text, voice, wpm)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    espeak, sox = _require_tools()
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="speech-") as tmp:
        wav = Path(tmp) / "speech.wav"
        raw = Path(tmp) / "speech.ulaw"
        # Text goes through stdin so that text starting with "-" is never taken as an option.
        subprocess.run(
            [espeak, "-v", voice, "-s", str(wpm), "-w", str(wav)],
            input=text.encode(),
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [sox, str(wav), "-r", "8000", "-c", "1", "-e", "mu-law", "-t", "raw", str(raw)],
            check=True,
            capture_output=True,
        )
        data = raw.read_bytes()
    if not data:
        raise RuntimeError(f"espeak-ng/sox produced no audio for {text!r}")
    fd, tmp_name = tempfile.mkstemp(dir=CACHE_DIR, prefix=".tmp-", suffix=".ulaw")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return data
