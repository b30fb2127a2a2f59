"""Twilio Media Streams (bidirectional, `<Connect><Stream>`) wire format. No I/O.

Inbound messages are plain dicts (parsed once by the socket layer with `json.loads`);
nothing on the media path is validated with a model, only the few fields we use are
checked. Outbound messages are built here as dicts, in exactly Twilio's shape: Twilio
answers any extra or missing field with warning 31951, so nothing else is ever sent.
"""

from __future__ import annotations

import json
from typing import Any, Final

Message = dict[str, Any]

#: Events Twilio sends on a bidirectional stream.
INBOUND_EVENTS: Final = frozenset({"connected", "start", "media", "dtmf", "mark", "stop"})

#: A Twilio frame carries 20 ms of audio (about 300 characters of JSON). Anything far larger
#: is not a Twilio frame; refusing it early bounds the work a hostile peer can cause.
MAX_INBOUND_CHARS: Final = 64 * 1024

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
    """(stream_sid, call_sid, account_sid, custom_parameters) of a `start`, or None if malformed."""
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
    return stream_sid, call_sid, account_sid, {str(k): str(v) for k, v in params.items()}


def encode(msg: Message) -> str:
    """Serialise an outbound message. Media frames (the bulk of the traffic) are spliced
    as text: their payload is validated base64, which needs no JSON escaping."""
    if msg["event"] == "media":
        return (
            '{"event":"media","streamSid":'
            + json.dumps(msg["streamSid"])
            + ',"media":{"payload":"'
            + msg["media"]["payload"]
            + '"}}'
        )
    return json.dumps(msg, separators=(",", ":"))
