"""What the core decides on in each inbound message, and of which JSON type: checked once,
where the message is read.

Both peers are outside our control: a Realtime event or a Twilio frame may hold a list
where an id should be, a dict where a code should be, or a value nested a thousand deep.
Used as they are, such values crash the call (a set lookup on a list, a `str()` that
recurses past the interpreter's limit). So every field a decision of the core depends on
is listed here with its type, and the session checks a message against its event's
`Shape` before any handler sees it: a message with a field of the wrong type (or without
a required one) is reported as bad input and skipped, and the call goes on. Handlers
then read plain, typed values.

A value the core only logs (an error's message, the `connected` protocol version) is not
listed, so an odd one never costs the event: it reaches a log line only through
`preview` or `text_or`, never as the peer's object (printing that could recurse without
bound, or flood the log).

`null` counts as absent (the service sends `"metadata": null`, `"code": null`). Types
are exact: `true` is not an integer. A field under an absent optional field is absent.

The audio path is not checked here: `CallSession.caller_audio` and `bot_audio` check the
few fields they use themselves (they run 60 times a second; no second look is added).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, TypeVar

Message = dict[str, Any]
Default = TypeVar("Default", str, None)


@dataclass(frozen=True, slots=True)
class Field:
    """One field the core reads: its path from the message's top, its JSON type."""

    path: tuple[str, ...]
    kind: type
    required: bool = False

    @property
    def name(self) -> str:
        return ".".join(self.path)


def field(dotted: str, kind: type, *, required: bool = False) -> Field:
    return Field(tuple(dotted.split(".")), kind, required)


@dataclass(frozen=True, slots=True)
class Shape:
    """The fields the core reads of one kind of message, and the bad-input reason a
    message of that kind gets when one of them is of the wrong type."""

    reason: str
    fields: tuple[Field, ...]


def lookup(msg: Message, path: tuple[str, ...]) -> object:
    """The value at `path`, or None where any step is absent or not an object."""
    node: object = msg
    for key in path:
        if type(node) is not dict:
            return None
        node = node.get(key)
    return node


def malformed(msg: Message, shape: Shape) -> str | None:
    """The first field of `shape` that `msg` holds with the wrong type (or lacks although
    it is required), as a dotted path; None when `msg` is fit for its handler."""
    for f in shape.fields:
        value = lookup(msg, f.path)
        if value is None:
            if f.required:
                return f.name
        elif type(value) is not f.kind:
            return f.name
    return None


def preview(value: object, limit: int = 40) -> str:
    """An unchecked value for a log line: a string cut to `limit`, anything else only its
    type (printing a peer's nested value could recurse without bound, or flood the log)."""
    if type(value) is str:
        return value[:limit]
    return f"<{type(value).__name__}>"


def short(value: str | None, limit: int = 64) -> str | None:
    """A peer's string (an id, a code), checked already, cut for a log line."""
    return value if value is None else value[:limit]


def text_or(value: object, default: Default, limit: int = 200) -> str | Default:
    """`value` if it is a string (cut to `limit`), else `default`."""
    return value[:limit] if type(value) is str else default


def int_or(value: object, default: int | None) -> int | None:
    """`value` if it is an integer (not a boolean), else `default`."""
    return value if type(value) is int else default


def _shape(reason: str, *fields: Field) -> Shape:
    return Shape(reason, fields)


_ID = field("item_id", str)

#: Realtime server events by `type`: the fields the core reads of each. Events not listed
#: are either ignored whatever they carry (`session.IGNORED_EVENTS`), read nothing
#: (`session.updated`), or are audio (`response.output_audio.delta`, see above).
REALTIME: Final[dict[str, Shape]] = {
    "input_audio_buffer.speech_started": _shape(
        "malformed_speech_started", _ID, field("audio_start_ms", int)
    ),
    "input_audio_buffer.speech_stopped": _shape(
        "malformed_speech_stopped", field("audio_end_ms", int)
    ),
    "input_audio_buffer.committed": _shape("malformed_committed", _ID),
    "response.created": _shape(
        "malformed_response_created",
        field("response", dict, required=True),
        field("response.id", str, required=True),
        field("response.metadata", dict),
        field("response.metadata.bridge_request", str),
    ),
    "response.output_item.done": _shape(
        "malformed_output_item",
        field("response_id", str),
        field("item", dict, required=True),
        field("item.type", str),
    ),
    "response.done": _shape(
        "malformed_response_done",
        field("response", dict, required=True),
        field("response.id", str, required=True),
        field("response.status", str),
        field("response.usage", dict),
        field("response.usage.input_tokens", int),
        field("response.usage.output_tokens", int),
        field("response.usage.total_tokens", int),
        field("response.status_details", dict),
        field("response.status_details.error", dict),
        field("response.status_details.error.code", str),
    ),
    "response.output_audio_transcript.done": _shape(
        "malformed_transcript",
        field("item_id", str, required=True),
        field("transcript", str, required=True),
    ),
    "conversation.item.input_audio_transcription.completed": _shape(
        "malformed_transcription",
        field("item_id", str, required=True),
        field("transcript", str, required=True),
    ),
    "error": _shape(
        "malformed_error",
        field("error", dict, required=True),
        field("error.code", str),
        field("error.event_id", str),
    ),
}

#: A `response.output_item.done` item of type `function_call` (the model calling a tool).
FUNCTION_CALL: Final = _shape(
    "malformed_function_call",
    field("name", str),
    field("call_id", str, required=True),
    field("status", str),
    field("arguments", str),
)

#: `response.output_item.done` / `conversation.item.done` items of the MCP kinds.
MCP_ITEM: Final = _shape(
    "malformed_mcp_item",
    field("id", str),
    field("name", str),
    field("server_label", str),
    field("arguments", str),
    field("approval_request_id", str),
)

#: MCP progress events (`mcp_list_tools.*`, `response.mcp_call.*`): the item they are about.
MCP_EVENT: Final = _shape("malformed_mcp_event", field("item_id", str, required=True))

#: Twilio events by `event`: the fields the core reads of each. `media` is audio (see
#: above); `start` is read by `app.protocol.twilio.start_fields`, which the driver uses
#: too; `stop` is read for nothing but itself.
TWILIO: Final[dict[str, Shape]] = {
    "mark": _shape(
        "malformed_mark",
        field("mark", dict, required=True),
        field("mark.name", str, required=True),
    ),
    "dtmf": _shape(
        "malformed_dtmf",
        field("dtmf", dict, required=True),
        field("dtmf.digit", str, required=True),
    ),
}
