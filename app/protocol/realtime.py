"""OpenAI Realtime GA client events the bridge sends, and the session it asks for. No I/O.

GA protocol only (the beta shape is shut down): `session.type = "realtime"`, nested
`audio.input` / `audio.output`, and mu-law (`audio/pcmu`) both ways so Twilio's audio
passes through untouched. Every builder here returns an event that validates against
`openai.types.realtime.RealtimeClientEvent`; the test suite checks each of them.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

Event = dict[str, Any]

PCMU: Final = {"type": "audio/pcmu"}
#: Metadata key tagging the responses the bridge asked for.
REQUEST_KEY: Final = "bridge_request"

#: Server error codes that are a normal part of the conversation, not failures.
BENIGN_ERROR_CODES: Final = frozenset({"response_cancel_not_active"})
#: Response failures that will not go away by asking again.
FATAL_RESPONSE_CODES: Final = frozenset(
    {"insufficient_quota", "invalid_api_key", "account_deactivated", "billing_hard_limit_reached"}
)


def server_vad(
    threshold: float, prefix_padding_ms: int, silence_duration_ms: int, *, automatic: bool
) -> dict[str, Any]:
    """A `server_vad` turn-detection block.

    `automatic`: the service both answers (`create_response`) and cancels its answer when
    the caller speaks (`interrupt_response`). Off when the bridge decides what is a turn.
    """
    return {
        "type": "server_vad",
        "threshold": threshold,
        "prefix_padding_ms": prefix_padding_ms,
        "silence_duration_ms": silence_duration_ms,
        "create_response": automatic,
        "interrupt_response": automatic,
    }


def semantic_vad(eagerness: str, *, automatic: bool) -> dict[str, Any]:
    """A `semantic_vad` turn-detection block (see `server_vad` for `automatic`)."""
    return {
        "type": "semantic_vad",
        "eagerness": eagerness,
        "create_response": automatic,
        "interrupt_response": automatic,
    }


def session_update(
    *,
    instructions: str,
    voice: str,
    turn_detection: dict[str, Any],
    noise_reduction: str | None,
    transcription: dict[str, Any] | None,
    tools: list[dict[str, Any]],
    reasoning_effort: str | None = None,
    parallel_tool_calls: bool | None = None,
) -> Event:
    """`session.update` for a phone call: pcmu in and out, voice, VAD, tools (function
    and MCP entries), and the reasoning settings of models that have them."""
    audio_in: dict[str, Any] = {
        "format": PCMU,
        "turn_detection": turn_detection,
        "noise_reduction": {"type": noise_reduction} if noise_reduction else None,
    }
    if transcription is not None:
        audio_in["transcription"] = transcription
    session: dict[str, Any] = {
        "type": "realtime",
        "instructions": instructions,
        "output_modalities": ["audio"],
        "audio": {"input": audio_in, "output": {"format": PCMU, "voice": voice}},
        "tools": tools,
        "tool_choice": "auto" if tools else "none",
    }
    if reasoning_effort is not None:
        session["reasoning"] = {"effort": reasoning_effort}
    if parallel_tool_calls is not None:
        session["parallel_tool_calls"] = parallel_tool_calls
    return {"type": "session.update", "session": session}


def input_audio_append(payload: str) -> Event:
    """Caller audio, forwarded as the very base64 string Twilio sent."""
    return {"type": "input_audio_buffer.append", "audio": payload}


def response_create(
    instructions: str | None = None, event_id: str | None = None, *, no_tools: bool = False
) -> Event:
    """Ask for a response; `instructions` replace the session's for this response only.
    `event_id` comes back in an `error` if the service refuses the request. `no_tools`:
    the response may not call a tool (a filler while one runs)."""
    event: Event = {"type": "response.create"}
    response: dict[str, Any] = {}
    if no_tools:
        response["tool_choice"] = "none"
    if event_id is not None:
        # The id comes back in an `error` refusing this request, and, as metadata, in the
        # `response.created` of the response it started: so both can be told apart from
        # responses the service starts by itself (server VAD).
        event["event_id"] = event_id
        response["metadata"] = {REQUEST_KEY: event_id}
    if instructions is not None:
        response["instructions"] = instructions
    if response:
        event["response"] = response
    return event


def response_cancel() -> Event:
    """Cancel the in-progress response (an error answers it when none is active)."""
    return {"type": "response.cancel"}


def item_truncate(item_id: str, audio_end_ms: int) -> Event:
    """Cut an assistant audio item to what the caller heard (drops the unheard transcript)."""
    return {
        "type": "conversation.item.truncate",
        "item_id": item_id,
        "content_index": 0,
        "audio_end_ms": audio_end_ms,
    }


def item_delete(item_id: str) -> Event:
    """Remove an item from the conversation (an answer the caller never heard)."""
    return {"type": "conversation.item.delete", "item_id": item_id}


def _message(role: str, text: str) -> Event:
    return {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": role,
            "content": [{"type": "input_text", "text": text}],
        },
    }


def user_text(text: str) -> Event:
    """A short user message (a key press) for the model to act on."""
    return _message("user", text)


def system_text(text: str) -> Event:
    """A system message: what the bridge itself tells the model (time limits, silence)."""
    return _message("system", text)


def function_output(call_id: str, output: str) -> Event:
    """The result of a function call the model made."""
    return {
        "type": "conversation.item.create",
        "item": {"type": "function_call_output", "call_id": call_id, "output": output},
    }


def encode(event: Event) -> bytes:
    """Serialise a client event (UTF-8 JSON, as the websocket text frame carries it)."""
    return orjson.dumps(event)


def encode_append(payload: str) -> bytes:
    """`input_audio_buffer.append` for caller audio, serialised directly (the hot path:
    50 a second per call). orjson escapes whatever the string holds, so the payload needs
    no validation to make well-formed JSON."""
    return _APPEND_HEAD + orjson.dumps(payload) + b"}"


_APPEND_HEAD: Final = b'{"type":"input_audio_buffer.append","audio":'
