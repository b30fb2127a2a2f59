"""Twilio wire formats: Media Streams (bidirectional, `<Connect><Stream>`) messages, and
the REST update that transfers a live call. No I/O, no SDK.

Inbound messages are plain dicts (parsed once by the socket layer with orjson); nothing on
the media path is validated with a model, only the few fields we use are checked.
Outbound messages are built here as dicts, in exactly Twilio's shape: Twilio answers any
extra or missing field with warning 31951, so nothing else is ever sent. `StreamEncoder`
serialises the two frames of the audio path (media, mark) with their constant parts built
once per call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final
from xml.sax.saxutils import escape

import orjson

Message = dict[str, Any]

#: Events Twilio sends on a bidirectional stream.
INBOUND_EVENTS: Final = frozenset({"connected", "start", "media", "dtmf", "mark", "stop"})

#: mu-law at 8 kHz: one byte per sample.
BYTES_PER_MS: Final = 8


def media(stream_sid: str, payload: str) -> Message:
    """Audio to play to the caller (base64 mu-law, any length); Twilio queues it in order."""
    return {"event": "media", "streamSid": stream_sid, "media": {"payload": payload}}


def mark(stream_sid: str, name: str) -> Message:
    """Ask Twilio to echo `name` when the audio sent before it has played (or was cleared)."""
    return {"event": "mark", "streamSid": stream_sid, "mark": {"name": name}}


def clear(stream_sid: str) -> Message:
    """Drop all queued audio; Twilio then echoes every pending mark."""
    return {"event": "clear", "streamSid": stream_sid}


def start_fields(msg: Message) -> tuple[str, str, str, dict[str, str]] | None:
    """(stream_sid, call_sid, account_sid, custom_parameters) of a `start`, or None if
    malformed. Scalar parameter values are read as strings; a list or an object (which
    could be nested without bound, and `str()` of it recurse) makes the start malformed."""
    start = msg.get("start")
    if not isinstance(start, dict):
        return None
    stream_sid = start.get("streamSid") or msg.get("streamSid")
    call_sid = start.get("callSid")
    account_sid = start.get("accountSid", "")
    params = start.get("customParameters") or {}
    if not (isinstance(stream_sid, str) and stream_sid and isinstance(call_sid, str) and call_sid):
        return None
    if not isinstance(account_sid, str) or not isinstance(params, dict):
        return None
    if any(type(v) in (list, dict) for v in params.values()):
        return None  # a `<Parameter>` value is a string: a nested one is no start of Twilio's
    return stream_sid, call_sid, account_sid, {str(k): str(v) for k, v in params.items()}


def encode(msg: Message) -> str:
    """Serialise an outbound message (a websocket text frame)."""
    return orjson.dumps(msg).decode()


#: The most base64 characters one `media` frame to Twilio carries (12 KiB of audio, 1.5 s,
#: a multiple of 4): a longer delta goes as several frames, its mark after the last.
MAX_MEDIA_CHARS: Final = 16 * 1024


def media_parts(payload: str) -> Sequence[str]:
    """`payload` cut into frames of at most MAX_MEDIA_CHARS (base64 stays aligned: the
    cuts fall on 4-character boundaries, so each part decodes on its own). A payload that
    fits, as every real one does, is returned as it is, nothing copied."""
    step = MAX_MEDIA_CHARS
    if len(payload) <= step:
        return (payload,)
    return [payload[i : i + step] for i in range(0, len(payload), step)]


class StreamEncoder:
    """The audio path's outbound frames for one stream, its constant parts serialised once.

    Payloads are serialised by orjson, which escapes whatever a string holds: the bot's
    audio needs no validation to make a well-formed frame.
    """

    __slots__ = ("_mark_head", "_media_head")

    def __init__(self, stream_sid: str) -> None:
        sid = orjson.dumps(stream_sid).decode()
        self._media_head = '{"event":"media","streamSid":' + sid + ',"media":{"payload":'
        self._mark_head = '{"event":"mark","streamSid":' + sid + ',"mark":{"name":'

    def media(self, payload: str) -> str:
        return self._media_head + orjson.dumps(payload).decode() + "}}"

    def mark(self, name: str) -> str:
        return self._mark_head + orjson.dumps(name).decode() + "}}"


# -- REST: the TwiML that transfers a live call -----------------------------------------


def _attr(value: str) -> str:
    return escape(value, {'"': "&quot;", "\n": "&#10;", "\r": "&#13;", "\t": "&#09;"})


def dial_twiml(number: str, caller_id: str | None = None, timeout_s: int | None = None) -> str:
    """`<Response><Dial>` a phone number or `sip:` URI, as a REST update's `Twiml=` value.

    `caller_id` sets the number the callee sees; `timeout_s` is how long to ring. The
    document has no `<?xml ...?>` declaration (the contract spells it
    `<Response><Dial>NUMBER</Dial></Response>`) and is byte for byte what twilio's
    `VoiceResponse` writes (a test compares), without the SDK in the call core.
    """
    attrs = ""
    if caller_id is not None:
        attrs += f' callerId="{_attr(caller_id)}"'
    if timeout_s is not None:
        attrs += f' timeout="{timeout_s}"'
    target = escape(number)
    if number.lower().startswith("sip:"):
        target = f"<Sip>{target}</Sip>"
    return f"<Response><Dial{attrs}>{target}</Dial></Response>"
