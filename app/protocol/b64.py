"""Base64 facts about audio payloads, without decoding them.

Audio crosses the bridge as the same base64 text it arrived in (Twilio `media.payload`
<-> Realtime `input_audio_buffer.append.audio` / `response.output_audio.delta.delta`).
Decoding every 20 ms frame only to learn its length would waste the hot path, so the
length is computed from the text, and validity is checked by a compiled regex.
"""

from __future__ import annotations

import re

# One character class and a length check: ~3.4 ns a character, three times faster than a
# grouped pattern and faster than decoding (measured in bench/hot_path.py).
_B64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")


def is_b64(text: object) -> bool:
    """True when `text` is non-empty, padded, standard-alphabet base64.

    Such a string contains no character that JSON would escape, which lets the wire
    encoders splice it into a frame without `json.dumps` scanning it again.
    """
    return isinstance(text, str) and len(text) % 4 == 0 and _B64.fullmatch(text) is not None


def decoded_len(text: str) -> int:
    """Number of bytes `text` decodes to (valid base64 assumed; see `is_b64`)."""
    if text.endswith("=="):
        pad = 2
    elif text.endswith("="):
        pad = 1
    else:
        pad = 0
    return len(text) // 4 * 3 - pad
