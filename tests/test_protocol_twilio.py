"""Twilio wire formats: the audio path's encoder, the transfer TwiML, `start` parsing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from twilio.twiml.voice_response import VoiceResponse

from app.protocol import twilio as tw
from tests.core import CALL, STREAM, start_msg

#: Strings that need escaping in JSON or XML, or are outside ASCII.
AWKWARD = ['"', "\\", "\x00", "\x1f", "\n\r\t", "\u2028\u2029", "é", "日本", "🎉", "</x>&'"]


# -- the audio path's frames --------------------------------------------------------------


@pytest.mark.parametrize("kind", ["media", "mark"])
@given(sid=st.text(), value=st.text())
@example(sid=STREAM, value="//8=")
@example(sid=STREAM, value="item_1.g0.m1")
@example(sid='M"Z\\', value="".join(AWKWARD))
@example(sid="\x00é", value="".join(AWKWARD))
def test_stream_encoder_frames_are_the_messages(kind: str, sid: str, value: str) -> None:
    frame = getattr(tw.StreamEncoder(sid), kind)(value)
    assert json.loads(frame) == getattr(tw, kind)(sid, value)


def test_stream_encoder_frames_are_compact_and_reuse_one_encoder() -> None:
    enc = tw.StreamEncoder(STREAM)
    assert enc.media("AAAA") == tw.encode(tw.media(STREAM, "AAAA"))
    assert enc.mark("m1") == tw.encode(tw.mark(STREAM, "m1"))
    assert enc.media("BBBB") == tw.encode(tw.media(STREAM, "BBBB"))


def test_outbound_messages_have_exactly_twilios_shape() -> None:
    assert tw.media("MZ1", "AAAA") == {
        "event": "media",
        "streamSid": "MZ1",
        "media": {"payload": "AAAA"},
    }
    assert tw.mark("MZ1", "m") == {"event": "mark", "streamSid": "MZ1", "mark": {"name": "m"}}
    assert tw.clear("MZ1") == {"event": "clear", "streamSid": "MZ1"}


@given(text=st.text())
@example(text="".join(AWKWARD))
def test_encode_is_compact_json_that_round_trips(text: str) -> None:
    msg = tw.mark(text, text)
    frame = tw.encode(msg)
    assert isinstance(frame, str) and json.loads(frame) == msg
    assert frame == json.dumps(msg, ensure_ascii=False, separators=(",", ":"))


def test_encode_keeps_non_ascii_as_is() -> None:
    assert tw.encode(tw.clear("é")) == '{"event":"clear","streamSid":"é"}'


# -- the transfer TwiML -------------------------------------------------------------------


def sdk_dial(number: str, caller_id: str | None, timeout_s: int | None) -> str:
    """What twilio's own SDK writes for the same `<Dial>`."""
    response = VoiceResponse()
    if number.lower().startswith("sip:"):
        response.dial(caller_id=caller_id, timeout=timeout_s).sip(number)
    else:
        response.dial(number, caller_id=caller_id, timeout=timeout_s)
    return str(response.to_xml(xml_declaration=False))


XML_SPECIAL = st.sampled_from(list("<>&\"'\n\r\t ;=@"))
TEXT = st.text(st.one_of(XML_SPECIAL, st.characters(codec="utf-8", exclude_categories=["Cs"])))
NUMBERS = st.one_of(
    st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True),
    TEXT.filter(bool),
)
SIP = st.builds(lambda scheme, rest: scheme + rest, st.sampled_from(["sip:", "SIP:", "Sip:"]), TEXT)
CALLER_IDS = st.none() | st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True) | TEXT
TIMEOUTS = st.none() | st.integers(5, 600)


@given(number=NUMBERS | SIP, caller_id=CALLER_IDS, timeout_s=TIMEOUTS)
@example(number="+15550001234", caller_id=None, timeout_s=None)
@example(number="+1555<&>\"'\n", caller_id='a"b<&\n\r\t', timeout_s=20)
@example(number="sip:agent@example.com;transport=tls?x=<y>&z", caller_id="+1555", timeout_s=30)
def test_dial_twiml_is_what_twilios_sdk_writes(
    number: str, caller_id: str | None, timeout_s: int | None
) -> None:
    assert tw.dial_twiml(number, caller_id, timeout_s) == sdk_dial(number, caller_id, timeout_s)


def test_dial_twiml_shape() -> None:
    assert tw.dial_twiml("+15550001234") == "<Response><Dial>+15550001234</Dial></Response>"
    assert tw.dial_twiml("sip:a@b.example", "+1555", 20) == (
        '<Response><Dial callerId="+1555" timeout="20"><Sip>sip:a@b.example</Sip></Dial></Response>'
    )


# -- start -------------------------------------------------------------------------------


def test_start_fields_of_a_good_start() -> None:
    assert tw.start_fields(start_msg(Extra="x")) == (
        STREAM,
        CALL,
        "AC" + "2" * 32,
        {"CallSid": CALL, "From": "+15550001111", "Extra": "x"},
    )


def _start(**start: Any) -> dict[str, Any]:
    return {"event": "start", "start": {"streamSid": STREAM, "callSid": CALL, **start}}


def test_start_fields_fill_in_what_twilio_may_leave_out() -> None:
    # No account SID, no parameters; the stream SID only at the top level.
    msg = {"event": "start", "streamSid": STREAM, "start": {"callSid": CALL}}
    assert tw.start_fields(msg) == (STREAM, CALL, "", {})
    assert tw.start_fields(_start(customParameters=None)) == (STREAM, CALL, "", {})
    # Parameter values are strings whatever the JSON held.
    params = {"n": 5, "b": True, "z": None}
    assert tw.start_fields(_start(customParameters=params))[3] == {  # type: ignore[index]
        "n": "5",
        "b": "True",
        "z": "None",
    }


@pytest.mark.parametrize(
    "msg",
    [
        {"event": "start"},
        {"event": "start", "start": None},
        {"event": "start", "start": "x"},
        {"event": "start", "start": {"streamSid": STREAM}},  # no call SID
        {"event": "start", "start": {"callSid": CALL}},  # no stream SID anywhere
        _start(callSid=""),
        _start(callSid=5),
        _start(streamSid=""),
        _start(streamSid=["MZ"]),
        _start(accountSid=7),
        _start(customParameters=["a", "b"]),
        _start(customParameters="a=b"),
        # A parameter value is a string: a nested one (which `str()` could recurse on
        # without bound) is no start of Twilio's.
        _start(customParameters={"From": ["+1555"]}),
        _start(customParameters={"k": {"a": 1}}),
        _start(customParameters={"k": [[[[[[]]]]]] * 2}),
    ],
)
def test_start_fields_of_a_malformed_start_is_none(msg: dict[str, Any]) -> None:
    assert tw.start_fields(msg) is None


def test_start_fields_of_a_parameter_nested_1000_deep_is_none() -> None:
    deep: Any = []
    for _ in range(1000):
        deep = [deep]
    assert tw.start_fields(_start(customParameters={"k": deep})) is None
