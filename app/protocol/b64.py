"""Base64 facts about audio payloads, without decoding them.

Audio crosses the bridge as the same base64 text it arrived in (Twilio `media.payload`
<-> Realtime `input_audio_buffer.append.audio` / `response.output_audio.delta.delta`).
Decoding every 20 ms frame only to learn its length would waste the hot path, so the
length is computed from the text (`decoded_len`). Nothing on the hot path validates a
payload: only the recorder, which replaces payloads by their length, checks that a string
really is base64 (`is_b64`) before measuring it.
"""

from __future__ import annotations

import re

_B64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")


def is_b64(text: object) -> bool:
    """True when `text` is non-empty, padded, standard-alphabet base64."""
    return isinstance(text, str) and len(text) % 4 == 0 and _B64.fullmatch(text) is not None


def decoded_len(text: str) -> int:
    """Number of bytes `text` decodes to, from its length and padding alone (for text that
    isn't base64 the figure is meaningless but harmless: it only counts audio)."""
    if text.endswith("=="):
        pad = 2
    elif text.endswith("="):
        pad = 1
    else:
        pad = 0
    return len(text) // 4 * 3 - pad
