"""OpenAI Realtime GA client events the bridge sends, and the session it asks for. No I/O.

GA protocol only (the beta shape is shut down): `session.type = "realtime"`, nested
`audio.input` / `audio.output`, and mu-law (`audio/pcmu`) both ways so Twilio's audio
passes through untouched. Every builder here returns an event that validates against
`openai.types.realtime.RealtimeClientEvent`; the test suite checks each of them.
"""

from __future__ import annotations

import json
from typing import Any, Final

from app.call import tools
from app.call.config import CallConfig

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


def turn_detection(cfg: CallConfig) -> dict[str, Any]:
    """The `turn_detection` block.

    With an immediate interruption policy the service both answers and cancels by itself.
    With a minimum-speech policy the bridge decides whether speech was a real turn, so the
    service must neither cancel (`interrupt_response`) nor answer noise (`create_response`).
    """
    automatic = cfg.interrupt_min_speech_ms == 0
    if cfg.turn_detection == "semantic_vad":
        return {
            "type": "semantic_vad",
            "eagerness": cfg.vad_eagerness,
            "create_response": automatic,
            "interrupt_response": automatic,
        }
    return {
        "type": "server_vad",
        "threshold": cfg.vad_threshold,
        "prefix_padding_ms": cfg.vad_prefix_padding_ms,
        "silence_duration_ms": cfg.vad_silence_duration_ms,
        "create_response": automatic,
        "interrupt_response": automatic,
    }


def session_update(cfg: CallConfig) -> Event:
    """`session.update` for a phone call: pcmu in and out, voice, VAD, tools."""
    audio_in: dict[str, Any] = {
        "format": PCMU,
        "turn_detection": turn_detection(cfg),
        "noise_reduction": {"type": cfg.noise_reduction} if cfg.noise_reduction else None,
    }
    if cfg.transcription_model:
        transcription: dict[str, Any] = {"model": cfg.transcription_model}
        if cfg.transcription_language:
            transcription["language"] = cfg.transcription_language
        audio_in["transcription"] = transcription
    session: dict[str, Any] = {
        "type": "realtime",
        "instructions": cfg.instructions,
        "output_modalities": ["audio"],
        "audio": {"input": audio_in, "output": {"format": PCMU, "voice": cfg.voice}},
        "tools": tools.definitions(cfg.tools),
        "tool_choice": "auto" if cfg.tools else "none",
    }
    return {"type": "session.update", "session": session}


def input_audio_append(payload: str) -> Event:
    """Caller audio, forwarded as the very base64 string Twilio sent."""
    return {"type": "input_audio_buffer.append", "audio": payload}


def response_create(instructions: str | None = None, event_id: str | None = None) -> Event:
    """Ask for a response; `instructions` replace the session's for this response only.
    `event_id` comes back in an `error` if the service refuses the request."""
    event: Event = {"type": "response.create"}
    response: dict[str, Any] = {}
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


def encode(event: Event) -> str:
    """Serialise a client event. Audio appends (50 a second) are spliced as text: their
    payload is validated base64, which needs no JSON escaping."""
    if event["type"] == "input_audio_buffer.append":
        return '{"type":"input_audio_buffer.append","audio":"' + event["audio"] + '"}'
    return json.dumps(event, separators=(",", ":"))
