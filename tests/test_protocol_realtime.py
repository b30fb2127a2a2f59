"""Realtime GA client events: every builder's output is a valid GA event, in exactly its shape."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from app.call import tools
from app.call.setup import session_update as session_for
from app.protocol import realtime as rt
from tests.core import b64, config
from tests.fakes.realtime_server import CLIENT_EVENT_ADAPTER

AWKWARD = '"\\\x00\x1f\n\u2028é日本🎉'


def _extras(value: object, path: str = "") -> list[str]:
    """Fields of a validated event that the GA models do not know (they allow extras)."""
    found: list[str] = []
    if isinstance(value, BaseModel):
        found += [f"{path}.{k}" for k in value.model_extra or {}]
        for name in type(value).model_fields:
            found += _extras(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            found += _extras(v, f"{path}[{i}]")
    elif isinstance(value, dict):
        for k, v in value.items():
            found += _extras(v, f"{path}.{k}")
    return found


def valid(event: dict[str, Any]) -> dict[str, Any]:
    """`event`, checked against the openai package's GA client-event union, with no field
    the GA models don't know."""
    model = CLIENT_EVENT_ADAPTER.validate_python(event)
    assert _extras(model) == [], event
    return event


def session(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "instructions": "Be brief.",
        "voice": "marin",
        "turn_detection": rt.server_vad(0.5, 300, 500, automatic=True),
        "noise_reduction": "near_field",
        "transcription": {"model": "gpt-4o-mini-transcribe"},
        "tools": [],
    }
    return rt.session_update(**{**args, **overrides})


def test_the_validation_can_fail() -> None:
    with pytest.raises(ValidationError):
        valid({"type": "conversation.item.truncate", "item_id": "i", "audio_end_ms": "x"})
    with pytest.raises(ValidationError):  # the beta shape is gone
        valid({"type": "session.update", "session": {"input_audio_format": "g711_ulaw"}})
    with pytest.raises(AssertionError):
        valid({"type": "response.cancel", "bogus": 1})


@pytest.mark.parametrize(
    "event",
    [
        rt.input_audio_append(b64(160)),
        rt.response_create(),
        rt.response_create("Say hi."),
        rt.response_create(event_id="bridge_response_1"),
        rt.response_create("Say hi.", "bridge_response_1"),
        rt.response_cancel(),
        rt.item_truncate("item_1", 1234),
        rt.item_delete("item_1"),
        rt.user_text("The caller pressed 5 on their keypad."),
        rt.system_text("Wrap up."),
        rt.function_output("call_1", '{"result": "ok"}'),
        session(),
        session(tools=tools.definitions(("end_call", "transfer_call"))),
        session(noise_reduction=None, transcription=None),
        session(transcription={"model": "gpt-4o-mini-transcribe", "language": "de"}),
        session(turn_detection=rt.server_vad(0.7, 200, 800, automatic=False)),
        session(turn_detection=rt.semantic_vad("low", automatic=True)),
        session(turn_detection=rt.semantic_vad("high", automatic=False)),
    ],
    ids=lambda e: e["type"],
)
def test_every_builder_makes_a_valid_ga_client_event(event: dict[str, Any]) -> None:
    valid(event)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"tools": ("end_call",), "rest_available": True},
        {"tools": ("end_call", "transfer_call"), "rest_available": True},
        {"turn_detection": "semantic_vad"},
        {"interrupt_min_speech_ms": 800},
        {"noise_reduction": None, "transcription_model": None},
        {"transcription_language": "fr"},
    ],
)
def test_the_calls_session_update_is_valid(overrides: dict[str, Any]) -> None:
    valid(session_for(config(**overrides)))


# -- shapes -----------------------------------------------------------------------------


def test_session_update_is_pcmu_both_ways() -> None:
    s = session()["session"]
    assert s["type"] == "realtime" and s["output_modalities"] == ["audio"]
    assert s["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert s["audio"]["output"] == {"format": {"type": "audio/pcmu"}, "voice": "marin"}
    assert s["audio"]["input"]["noise_reduction"] == {"type": "near_field"}
    assert s["audio"]["input"]["transcription"] == {"model": "gpt-4o-mini-transcribe"}
    assert s["instructions"] == "Be brief."


def test_session_update_without_tools_sets_tool_choice_none() -> None:
    assert session()["session"]["tools"] == []
    assert session()["session"]["tool_choice"] == "none"
    with_tools = session(tools=tools.definitions(("end_call",)))["session"]
    assert with_tools["tool_choice"] == "auto"
    assert [t["name"] for t in with_tools["tools"]] == ["end_call"]


def test_session_update_without_noise_reduction_or_transcription() -> None:
    audio_in = session(noise_reduction=None, transcription=None)["session"]["audio"]["input"]
    assert audio_in["noise_reduction"] is None  # explicitly off
    assert "transcription" not in audio_in


@pytest.mark.parametrize("automatic", [True, False])
def test_server_vad_automatic_flags(automatic: bool) -> None:
    assert rt.server_vad(0.5, 300, 500, automatic=automatic) == {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 500,
        "create_response": automatic,
        "interrupt_response": automatic,
    }


@pytest.mark.parametrize("automatic", [True, False])
def test_semantic_vad_automatic_flags(automatic: bool) -> None:
    assert rt.semantic_vad("auto", automatic=automatic) == {
        "type": "semantic_vad",
        "eagerness": "auto",
        "create_response": automatic,
        "interrupt_response": automatic,
    }


def test_response_create_shapes() -> None:
    assert rt.response_create() == {"type": "response.create"}
    assert rt.response_create("Hi.") == {
        "type": "response.create",
        "response": {"instructions": "Hi."},
    }
    assert rt.response_create("Hi.", "e1") == {
        "type": "response.create",
        "event_id": "e1",
        "response": {"metadata": {rt.REQUEST_KEY: "e1"}, "instructions": "Hi."},
    }


def test_item_event_shapes() -> None:
    assert rt.item_truncate("i", 5) == {
        "type": "conversation.item.truncate",
        "item_id": "i",
        "content_index": 0,
        "audio_end_ms": 5,
    }
    assert rt.item_delete("i") == {"type": "conversation.item.delete", "item_id": "i"}
    assert rt.system_text("s")["item"] == {
        "type": "message",
        "role": "system",
        "content": [{"type": "input_text", "text": "s"}],
    }
    assert rt.user_text("u")["item"]["role"] == "user"
    assert rt.function_output("c", "o") == {
        "type": "conversation.item.create",
        "item": {"type": "function_call_output", "call_id": "c", "output": "o"},
    }


# -- serialisation ------------------------------------------------------------------------


@given(payload=st.text())
@example(payload=b64(160))
@example(payload=AWKWARD)
def test_encode_append_is_the_append_event(payload: str) -> None:
    frame = rt.encode_append(payload)
    expected = orjson.dumps({"type": "input_audio_buffer.append", "audio": payload})
    assert orjson.loads(frame) == orjson.loads(expected) == rt.input_audio_append(payload)
    assert frame == expected


@given(text=st.text())
@example(text=AWKWARD)
def test_encode_is_utf8_json_of_the_event(text: str) -> None:
    event = rt.system_text(text)
    assert orjson.loads(rt.encode(event).decode("utf-8")) == event
