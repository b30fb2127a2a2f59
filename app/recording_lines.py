"""One line of a call fixture: its format, redaction, a line's size cap and the file's name.

Pure functions (no I/O, no threads); `app.recording` writes the lines, `app.replay` reads
them.

Format (the contract's): the first line is a header `{"fixture": 1, ...}` (`header`) with
the call's effective configuration, versions and the recording's limits; then one line per
message, in the order they happened (`record_line`): `{"t_ms": <ms since the media stream
opened>, "dir": <direction>, "msg": {...}}` with direction `from_twilio`, `to_twilio`,
`from_openai`, `to_openai` or `rest`.

Besides the protocol messages themselves, a few small records complete the story:
`{"_socket": "open" | "failed" | "closed" | "stalled" | "connect" | "close", ...}` for socket
events (`stalled`: the caller's side stopped taking frames),
`{"_frame_error": reason}` for a frame that could not be parsed, and for `rest`
`{"request": {"kind", "params"}}` / `{"response": {"status", "code", "error"}}`, and for the
business tools the bridge runs `{"tool_request": {"call_id", "name", "arguments",
"timeout_ms"}}` / `{"tool_cancel": {"call_id"}}` (outputs) and `{"tool_result": {"call_id",
"name", "result", "output", "detail", "ms"}}` (an input: a replay feeds it, nothing runs),
and for an outbound call `{"answered_by": "human" | "machine_start" | ...}` (Twilio's
answering-machine verdict, an input too).
A tool's `redact` arguments are recorded as `***` wherever the call's arguments appear
(the model's function-call items and events, `tool_request`): `redact`'s `redactions`.
Audio payloads are replaced by `{"_audio_bytes": N}` unless RECORD_AUDIO is on: a
recording otherwise holds the caller's voice (an audio field that is an object, never
audio, is recorded as `{"_not_audio": "object"}`, so a replay cannot mistake it for a
length). Key presses (PINs, card numbers) and per-call secrets are never stored, whatever
RECORD_AUDIO says (`redact`): every key is recorded as `*` (a malformed one as `?`), in
any `dtmf` object Twilio sends and in the text the model is told, wherever that text
appears in a line, so a replay feeds `*` to the core and gets exactly the recorded text
back; the `StreamToken` stream parameter is recorded as `***` (and its value, should it
appear anywhere else in the call's lines, too: `secret_values`). Outputs carry the time the
core decided them, so a replay of unchanged code reproduces the times exactly.

Nothing a caller or the service sends can crash the call through a recording, nor make one
line big: every function here accepts any JSON value anywhere in a message.

- A message's line holds at most `MAX_LINE_CHARS` characters (lines are ASCII, JSON
  escapes the rest, so characters are bytes; the header, the operator's configuration, is
  not cut, and keeps the SIDs to `MAX_SID_CHARS`). A longer message is recorded as
  `{"_oversized": N}` (N: its encoded length; its `event` / `type` kept when short), after
  a try with its audio replaced by its length when RECORD_AUDIO kept it. A message JSON
  cannot encode (nesting deeper than the interpreter's recursion limit, an integer of more
  than 4300 digits, NaN) becomes `{"_unrecordable": "too_deep" | "not_json"}` the same way.
- A recording cut short (`app.recording`: the call's byte limit, or the writer's backlog)
  ends with one marker line (`marker_line`):
  `{"t_ms": ..., "dir": "rest", "msg": {"_recording": "truncated" | "abandoned", "limit": N}}`.
  Either marker has direction `rest` and no `response`: the replayer loads it as an output
  (never an input), so a recording cut short loads for inspection and its replay reports
  the cut as a difference rather than failing to parse.

A file is named `<UTC time to the ms>_<CallSid>_<StreamSid>.jsonl` (`file_label` makes the
`<CallSid>_<StreamSid>` part), each SID reduced to `[A-Za-z0-9_-]` and `MAX_SID_CHARS`.
"""

from __future__ import annotations

import json
import math
import platform
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

from app.call.actions import (
    Action,
    CancelTool,
    CheckVoice,
    CloseRealtime,
    CloseTwilio,
    ConnectRealtime,
    FindPause,
    RestRequest,
    RunTool,
    ToRealtime,
    ToTwilio,
)
from app.call.config import CallConfig
from app.call.nudges import DTMF_KEYS, DTMF_MESSAGE
from app.call.toolcalls import redacted_arguments
from app.call.toolspec import ToolSpec
from app.protocol.b64 import decoded_len, is_b64

FORMAT_VERSION: Final = 1
DIRECTIONS: Final = ("from_twilio", "to_twilio", "from_openai", "to_openai", "rest")
AUDIO: Final = "_audio_bytes"

#: Longest line written: room for any frame the default TWILIO_MAX_FRAME_BYTES (64 KiB)
#: admits, even all non-ASCII (JSON's `\uXXXX` escapes make a character 6), plus the
#: envelope, so a replay meets every Twilio message the live call did (a `start` cut to
#: `_oversized` would never start). The Realtime events the core acts on are far smaller,
#: and a 4 MiB frame of junk is not kept.
MAX_LINE_CHARS: Final = 6 * 64 * 1024 + 4096
#: Longest SID kept in a file name (Twilio's are 34) and in the header.
MAX_SID_CHARS: Final = 64
_UNSAFE_NAME_CHARS: Final = re.compile(r"[^A-Za-z0-9_-]")
#: Longest `event` / `type` kept in a stand-in record.
_MAX_KIND_CHARS: Final = 64

Message = dict[str, Any]

#: What a key press is recorded as: a valid key, so a replay drives the same code path.
REDACTED_DIGIT: Final = "*"
#: What a malformed `digit` is recorded as: still invalid, so the core rejects it again.
REDACTED_BAD_DIGIT: Final = "?"
REDACTED: Final = "***"
#: `start` custom parameters whose values are secrets (compared case-insensitively).
SECRET_PARAMETERS: Final = frozenset({"streamtoken"})
#: Shortest secret value also scrubbed as text from every line of its call.
MIN_SECRET_CHARS: Final = 8
#: A `dtmf.track` kept as is: a plain name such as Twilio's `inbound_track`.
_TRACK: Final = re.compile(r"[A-Za-z_]{1,32}")
_DTMF_TEXTS: Final = frozenset(DTMF_MESSAGE.format(digit=key) for key in DTMF_KEYS)
_REDACTED_DTMF_TEXT: Final = DTMF_MESSAGE.format(digit=REDACTED_DIGIT)


def _json_fragment(text: str) -> str:
    """`text` as it appears inside a JSON string written by this module."""
    return json.dumps(text)[1:-1]


_BEFORE_KEY, _, _AFTER_KEY = DTMF_MESSAGE.partition("{digit}")
#: The key-press text for any key but `*`, as it appears in an encoded line.
_KEYPAD_IN_LINE: Final = re.compile(
    re.escape(_json_fragment(_BEFORE_KEY))
    + "["
    + re.escape("".join(sorted(DTMF_KEYS - {REDACTED_DIGIT})))
    + "]"
    + re.escape(_json_fragment(_AFTER_KEY))
)
_KEYPAD_HINT: Final = max(_json_fragment(_BEFORE_KEY), _json_fragment(_AFTER_KEY), key=len)
_REDACTED_IN_LINE: Final = _json_fragment(_REDACTED_DTMF_TEXT).replace("\\", "\\\\")


# -- audio ------------------------------------------------------------------------------


def audio_field(direction: str, msg: Message) -> tuple[str, ...] | None:
    """Path of the audio payload inside `msg`, if it carries one."""
    if type(msg) is not dict:
        return None
    if direction in ("from_twilio", "to_twilio"):
        return ("media", "payload") if msg.get("event") == "media" else None
    kind = msg.get("type")
    if direction == "to_openai" and kind == "input_audio_buffer.append":
        return ("audio",)
    if direction == "from_openai" and kind == "response.output_audio.delta":
        return ("delta",)
    return None


def map_audio(direction: str, msg: Message, change: Callable[[Any], Any]) -> Message:
    """A copy of `msg` with its audio field (if any) replaced by `change(field)`; the
    message itself is never modified (it may still be on its way to a socket)."""
    path = audio_field(direction, msg)
    if path is None:
        return msg
    *parents, leaf = path
    out = dict(msg)
    node = out
    for key in parents:
        child = node.get(key)
        if not isinstance(child, dict):
            return msg
        node[key] = node = dict(child)
    node[leaf] = change(node.get(leaf))
    return out


def _to_length(payload: Any) -> Any:
    return {AUDIO: decoded_len(payload)} if is_b64(payload) else payload


def strip_audio(direction: str, msg: Message) -> Message:
    """A copy of `msg` with its audio payload replaced by `{"_audio_bytes": N}`."""
    return map_audio(direction, msg, _to_length)


def _not_audio(payload: Any) -> Any:
    """An object where audio belongs is recorded as a marker: the replayer reads
    `{"_audio_bytes": N}` there as a length (and would build N bytes), while the core
    treats every non-string payload alike, so nothing a replay needs is lost."""
    return {"_not_audio": "object"} if isinstance(payload, dict) else payload


def _length_only(payload: Any) -> Any:
    return _to_length(_not_audio(payload))


# -- redaction --------------------------------------------------------------------------


def _recorded_digit(digit: object) -> object:
    if digit is None:
        return None  # no key at all: nothing to hide, and the core rejects it again
    return REDACTED_DIGIT if isinstance(digit, str) and digit in DTMF_KEYS else REDACTED_BAD_DIGIT


def _redacted_dtmf(dtmf: object) -> object:
    """A `dtmf` object as it may be stored. The core reads only its `digit`, so only what
    cannot hold a key press is kept: `digit` becomes `*` (`?` when malformed), `track` stays
    when it is a plain name (else `***`), any other key is dropped, and a `dtmf` that is
    not an object becomes `?` (the core rejects both forms alike)."""
    if dtmf is None:
        return None
    if not isinstance(dtmf, dict):
        return REDACTED_BAD_DIGIT
    out: dict[str, object] = {}
    for key, value in dtmf.items():
        if key == "digit":
            out[key] = _recorded_digit(value)
        elif key == "track":
            plain = isinstance(value, str) and _TRACK.fullmatch(value) is not None
            out[key] = value if plain else REDACTED
    return out


def _redact_dtmf(msg: Message) -> Message:
    dtmf = msg["dtmf"]
    clean = _redacted_dtmf(dtmf)
    return msg if clean == dtmf else {**msg, "dtmf": clean}


def _is_secret(name: object) -> bool:
    return isinstance(name, str) and name.strip().lower() in SECRET_PARAMETERS


def _redact_start(msg: Message) -> Message:
    start = msg["start"]
    if not isinstance(start, dict):
        return msg
    params = start.get("customParameters")
    if not isinstance(params, dict) or not any(_is_secret(name) for name in params):
        return msg
    clean = {k: REDACTED if _is_secret(k) else v for k, v in params.items()}
    return {**msg, "start": {**start, "customParameters": clean}}


def secret_values(msg: Message) -> list[str]:
    """The secret custom parameters of a `start`, as they would appear in a line (at
    least `MIN_SECRET_CHARS` long: shorter ones would mangle lines if scrubbed as text)."""
    start = msg.get("start")
    params = start.get("customParameters") if isinstance(start, dict) else None
    if not isinstance(params, dict):
        return []
    return [
        _json_fragment(value)
        for name, value in params.items()
        if _is_secret(name) and isinstance(value, str) and len(value) >= MIN_SECRET_CHARS
    ]


def _is_key_press_text(part: object) -> bool:
    if not isinstance(part, dict):
        return False
    text = part.get("text")
    return isinstance(text, str) and text in _DTMF_TEXTS


def _redact_item(msg: Message) -> Message:
    """Redact the key-press text in a user message item (sent, or echoed by the service).
    A line holding that text anywhere else is redacted as text by the recorder."""
    item = msg["item"]
    if not isinstance(item, dict) or item.get("role") != "user":
        return msg
    content = item.get("content")
    if not isinstance(content, list) or not any(_is_key_press_text(p) for p in content):
        return msg
    clean = [{**p, "text": _REDACTED_DTMF_TEXT} if _is_key_press_text(p) else p for p in content]
    return {**msg, "item": {**item, "content": clean}}


#: Tool name -> its spec, for the tools with arguments recorded as `***` (`ToolSpec.redact`).
Redactions = Mapping[str, ToolSpec]
_ARGUMENT_EVENTS: Final = frozenset(
    {"response.function_call_arguments.done", "response.function_call_arguments.delta"}
)


def redactions_of(config: CallConfig) -> dict[str, ToolSpec]:
    return {spec.name: spec for spec in config.functions if spec.redact}


def _text(value: object) -> str:
    """A peer's value as a lookup key: text, or "" (a list can't be looked up)."""
    return value if type(value) is str else ""


def _kind(msg: Message) -> str:
    return _text(msg.get("type"))


def _redact_call(item: object, redactions: Redactions) -> object:
    if type(item) is not dict or item.get("type") != "function_call":
        return item
    spec = redactions.get(_text(item.get("name")))
    if spec is None or "arguments" not in item:
        return item
    return {**item, "arguments": redacted_arguments(spec, item["arguments"])}


def _redact_tool_arguments(direction: str, msg: Message, redactions: Redactions) -> Message:
    """The values of redacted tool arguments, wherever a message carries them."""
    if direction == "from_openai":
        kind = _kind(msg)
        if kind in _ARGUMENT_EVENTS:
            if kind.endswith("delta"):
                return {**msg, "delta": REDACTED} if "delta" in msg else msg
            spec = redactions.get(_text(msg.get("name")))
            if spec is not None and "arguments" in msg:
                return {**msg, "arguments": redacted_arguments(spec, msg["arguments"])}
            return msg
        if "item" in msg:
            item = _redact_call(msg["item"], redactions)
            return msg if item is msg["item"] else {**msg, "item": item}
        response = msg.get("response")
        if kind == "response.done" and type(response) is dict:
            output = response.get("output")
            if type(output) is list:
                clean = [_redact_call(item, redactions) for item in output]
                return {**msg, "response": {**response, "output": clean}}
        return msg
    request = msg.get("tool_request")
    if direction == "rest" and type(request) is dict:
        spec = redactions.get(_text(request.get("name")))
        arguments = request.get("arguments")
        if spec is not None and type(arguments) is dict:
            hidden = {k: (REDACTED if k in spec.redact else v) for k, v in arguments.items()}
            return {**msg, "tool_request": {**request, "arguments": hidden}}
    return msg


#: Server events that echo the session, MCP servers' headers and tokens included.
_SESSION_ECHOES: Final = frozenset({"session.created", "session.updated"})
_MCP_SECRET_FIELDS: Final = ("headers", "authorization")


def _redact_session_tools(msg: Message) -> Message:
    """A session echo with its MCP entries' header values and tokens as `***` (our own
    `session.update` holds only `${ENV}` references; the service echoes the values)."""
    session = msg.get("session")
    tools = session.get("tools") if type(session) is dict else None
    if type(tools) is not list or not any(
        type(t) is dict and any(f in t for f in _MCP_SECRET_FIELDS) for t in tools
    ):
        return msg
    clean = []
    for tool in tools:
        if type(tool) is dict:
            tool = dict(tool)
            headers = tool.get("headers")
            if type(headers) is dict:
                tool["headers"] = {k: REDACTED for k in headers}
            if "authorization" in tool and tool["authorization"] is not None:
                tool["authorization"] = REDACTED
        clean.append(tool)
    return {**msg, "session": {**session, "tools": clean}}  # type: ignore[dict-item]


def redact(direction: str, msg: Message, redactions: Redactions | None = None) -> Message:
    """`msg` without key presses or per-call secrets, as it may be written to a recording.

    - `from_twilio`, any message with a `dtmf` field: the digit becomes `*` (a malformed
      one `?`, still malformed; see `_redacted_dtmf`);
    - `from_twilio`, any message with a `start` field: the `StreamToken` custom parameter
      becomes `***`;
    - a user message item whose text is the key-press message (`to_openai`
      `conversation.item.create`, and the service's `conversation.item.*` echoes of it):
      the text becomes the message for `*`, which is what the core says when fed `*`.

    Any value of any type may stand anywhere in `msg`; nothing raises. Returns `msg` itself
    when there is nothing to redact, else a copy (`msg` is untouched).
    """
    if type(msg) is not dict:
        return msg
    if redactions:
        msg = _redact_tool_arguments(direction, msg, redactions)
    if direction == "from_openai" and _kind(msg) in _SESSION_ECHOES:
        msg = _redact_session_tools(msg)
    if direction == "from_twilio":
        if "dtmf" in msg:
            msg = _redact_dtmf(msg)
        if "start" in msg:
            msg = _redact_start(msg)
        return msg
    if direction in ("to_openai", "from_openai") and "item" in msg:
        return _redact_item(msg)
    return msg


def _scrub_key_press_text(line: str) -> str:
    """Defence in depth, at any depth of any message: the key-press text for any key but
    `*`, wherever it stands in an encoded line, becomes the text for `*` (same length)."""
    if _KEYPAD_HINT not in line:
        return line
    return _KEYPAD_IN_LINE.sub(_REDACTED_IN_LINE, line)


# -- lines ------------------------------------------------------------------------------


def _time(t_ms: float) -> float:
    """The time as written: to the microsecond, and always a JSON number."""
    if isinstance(t_ms, int | float) and math.isfinite(t_ms):
        return round(t_ms, 3)
    return 0.0


def dumps(value: object) -> str:
    """`value` as compact JSON, the way every line of a fixture is encoded (no NaN)."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def _encode(t: float, direction: str, msg: object) -> str:
    return dumps({"t_ms": t, "dir": direction, "msg": msg})


def _stand_in(msg: Message, key: str, value: object) -> Message:
    """A small record in place of `msg`, keeping what kind of message it was."""
    out: Message = {}
    for name in ("event", "type"):
        kind = msg.get(name)
        if isinstance(kind, str) and len(kind) <= _MAX_KIND_CHARS:
            out[name] = kind
    out[key] = value
    return out


def record_line(
    t_ms: float,
    direction: str,
    msg: Message,
    keep_audio: bool,
    redactions: Redactions | None = None,
) -> str:
    """The fixture line for one message (with its newline): redacted, its audio kept or
    replaced by its length as `keep_audio` says, at most `MAX_LINE_CHARS` long and valid
    JSON, whatever `msg` holds. Never raises."""
    t = _time(t_ms)
    if type(msg) is not dict:
        msg = {"_unrecordable": "not_an_object"}
    change = _not_audio if keep_audio else _length_only
    clean = map_audio(direction, redact(direction, msg, redactions), change)
    try:
        line = _encode(t, direction, clean)
        if len(line) > MAX_LINE_CHARS and keep_audio:
            lighter = strip_audio(direction, clean)
            if lighter is not clean:
                line = _encode(t, direction, lighter)
        if len(line) > MAX_LINE_CHARS:
            line = _encode(t, direction, _stand_in(clean, "_oversized", len(line)))
    except RecursionError:  # nested deeper than the interpreter's recursion limit
        line = _encode(t, direction, _stand_in(clean, "_unrecordable", "too_deep"))
    except (ValueError, TypeError):  # NaN, an integer too long to print, a non-JSON object
        line = _encode(t, direction, _stand_in(clean, "_unrecordable", "not_json"))
    return _scrub_key_press_text(line) + "\n"


def marker_line(t_ms: float, kind: str, limit: int) -> str:
    """The last line of a recording cut short, with its newline (see the module docstring)."""
    msg = {"_recording": kind, "limit": limit}
    return dumps({"t_ms": _time(t_ms), "dir": "rest", "msg": msg}) + "\n"


def action_record(action: Action) -> tuple[str, Message] | None:
    """The fixture form of an output action (timers are internal and not recorded)."""
    if type(action) is ToTwilio:
        return "to_twilio", action.msg
    if type(action) is ToRealtime:
        return "to_openai", action.msg
    if type(action) is RestRequest:
        return "rest", {"request": {"kind": action.kind, "params": action.params}}
    if type(action) is RunTool:
        request = {
            "call_id": action.call_id,
            "name": action.name,
            "arguments": action.arguments,
            "timeout_ms": action.timeout_ms,
        }
        return "rest", {"tool_request": request}
    if type(action) is CancelTool:
        return "rest", {"tool_cancel": {"call_id": action.call_id}}
    if type(action) is CheckVoice:
        check = {"window_ms": action.window_ms, "at_decision": action.at_decision}
        return "rest", {"voice_check": check}
    if type(action) is FindPause:  # its chunks are audio: the question alone is kept
        find = {"item_id": action.item_id, "heard": action.heard, "rewind_ms": action.rewind_ms}
        return "rest", {"pause_find": find}
    if type(action) is ConnectRealtime:
        return "to_openai", {"_socket": "connect"}
    if type(action) is CloseTwilio:
        return "to_twilio", {"_socket": "close", "reason": action.reason}
    if type(action) is CloseRealtime:
        return "to_openai", {"_socket": "close", "reason": action.reason}
    return None


def _sid_text(value: object) -> str:
    """A SID from a `start` message as the header keeps it: text, at most MAX_SID_CHARS."""
    return value[:MAX_SID_CHARS] if isinstance(value, str) else ""


def _start_object(start: Message) -> Message:
    """The `start` object of Twilio's `start` message (empty when it is not an object)."""
    inner = start.get("start")
    return inner if isinstance(inner, dict) else {}


def header(
    config: CallConfig, start: Message, keep_audio: bool, limits: Message | None = None
) -> Message:
    """The first line of the fixture of the call Twilio's `start` message starts. Its SIDs
    come from the caller's side: any value is accepted, and only text of at most
    MAX_SID_CHARS is kept."""
    from app import __version__

    fields = _start_object(start)
    head: Message = {
        "fixture": FORMAT_VERSION,
        "call_sid": _sid_text(fields.get("callSid")),
        "stream_sid": _sid_text(fields.get("streamSid")),
        "recorded_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "audio": "kept" if keep_audio else "lengths",
        "versions": {
            "bridge": __version__,
            "python": platform.python_version(),
            "realtime_protocol": "ga",
        },
        "config": config.to_dict(),
    }
    if limits is not None:
        head["limits"] = limits
    return head


def _name_part(value: object) -> str:
    """A SID as part of a file name: ASCII letters, digits, `_` and `-`, MAX_SID_CHARS at
    most (a non-ASCII SID could otherwise pass the file system's 255-byte name limit)."""
    if not isinstance(value, str):
        return ""
    return _UNSAFE_NAME_CHARS.sub("", value[: 16 * MAX_SID_CHARS])[:MAX_SID_CHARS]


def file_label(start: Message) -> str:
    """`<CallSid>[_<StreamSid>]` of Twilio's `start` message, as a file name part."""
    fields = _start_object(start)
    call = _name_part(fields.get("callSid")) or "unknown"
    stream = _name_part(fields.get("streamSid")) or _name_part(start.get("streamSid"))
    return f"{call}_{stream}" if stream else call
