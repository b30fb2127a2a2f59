"""Recordings never hold key presses or per-call secrets, and still replay green."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from app.call.nudges import DTMF_MESSAGE
from app.recording import CallRecorder
from app.recording_lines import DTMF_KEYS, redact
from app.replay import Entry, load, replay, report
from tests.core import config, dtmf_msg
from tests.fakes.realtime_server import RealtimeConnection
from tests.fakes.recording import KeptLines
from tests.fakes.twilio_caller import FakeTwilioCall
from tests.test_call_fixtures import record_one_call

LIBRARY = Path(__file__).parent / "fixtures" / "calls"
STREAM = "MZ" + "1" * 32
TOKEN = "tok_9f8e7d6c5b4a39281706"


def user_text(text: str, kind: str = "conversation.item.create") -> dict[str, Any]:
    return {
        "type": kind,
        "item": {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": text}],
        },
    }


def start(params: dict[str, str]) -> dict[str, Any]:
    return {
        "event": "start",
        "streamSid": STREAM,
        "start": {
            "callSid": "CA" + "2" * 32,
            "streamSid": STREAM,
            "accountSid": "AC" + "3" * 32,
            "customParameters": params,
        },
    }


# -- redact() -------------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(DTMF_KEYS))
def test_every_key_press_is_recorded_as_a_star(key: str) -> None:
    msg = dtmf_msg(key)
    original = copy.deepcopy(msg)
    assert redact("from_twilio", msg)["dtmf"] == {"track": "inbound_track", "digit": "*"}
    assert msg == original  # the live message is not touched
    told = redact("to_openai", user_text(DTMF_MESSAGE.format(digit=key)))
    assert told["item"]["content"][0]["text"] == DTMF_MESSAGE.format(digit="*")
    assert told["item"]["content"][0]["type"] == "input_text"


def test_a_malformed_digit_is_recorded_as_still_malformed() -> None:
    # The core rejects "1234" (one key per message); the recording must not hold it, and a
    # replay must see it rejected again, so it becomes "?" rather than a valid "*".
    assert redact("from_twilio", dtmf_msg("1234"))["dtmf"]["digit"] == "?"
    assert redact("from_twilio", dtmf_msg(5))["dtmf"]["digit"] == "?"
    no_digit = {"event": "dtmf", "streamSid": STREAM, "dtmf": {"track": "inbound_track"}}
    assert redact("from_twilio", no_digit) is no_digit


def test_the_services_echoes_of_the_key_press_text_are_redacted_too() -> None:
    for kind in ("conversation.item.added", "conversation.item.done"):
        echo = user_text(DTMF_MESSAGE.format(digit="9"), kind)
        echo["item"]["id"] = "item_1"
        clean = redact("from_openai", echo)
        assert clean["item"]["content"][0]["text"] == DTMF_MESSAGE.format(digit="*")
        assert clean["item"]["id"] == "item_1" and clean["type"] == kind


def test_other_messages_are_left_alone() -> None:
    said = user_text("My PIN is what I pressed.")
    assert redact("to_openai", said) is said
    system = user_text(DTMF_MESSAGE.format(digit="5"))
    system["item"]["role"] = "system"
    assert redact("to_openai", system) is system
    media = {"event": "media", "streamSid": STREAM, "media": {"payload": "//8="}}
    assert redact("from_twilio", media) is media
    assert redact("to_twilio", dtmf_msg("5"))["dtmf"]["digit"] == "5"  # not a caller message
    plain = start({"CallSid": "CA1", "From": "+15550001111"})
    assert redact("from_twilio", plain) is plain


def test_the_stream_token_is_recorded_as_stars() -> None:
    msg = start({"CallSid": "CA1", "From": "+15550001111", "StreamToken": TOKEN})
    clean = redact("from_twilio", msg)
    assert clean["start"]["customParameters"] == {
        "CallSid": "CA1",
        "From": "+15550001111",
        "StreamToken": "***",
    }
    assert clean["start"]["callSid"] == msg["start"]["callSid"]
    assert msg["start"]["customParameters"]["StreamToken"] == TOKEN  # untouched


# -- the recorder ---------------------------------------------------------------------


@pytest.mark.parametrize("keep_audio", [False, True])
def test_the_recorder_writes_no_digit_and_no_token(keep_audio: bool) -> None:
    writer = KeptLines()
    recorder = CallRecorder(writer, config(), keep_audio=keep_audio)
    recorder.record(0, "from_twilio", start({"StreamToken": TOKEN}))
    recorder.record(10, "from_twilio", dtmf_msg("7"))
    recorder.record(10, "to_openai", user_text(DTMF_MESSAGE.format(digit="7")))
    recorder.record(12, "from_openai", user_text(DTMF_MESSAGE.format(digit="7"), "x.added"))
    recorder.close()
    text = "".join(writer.lines)
    assert TOKEN not in text
    assert "pressed 7" not in text and '"digit":"7"' not in text
    assert text.count(DTMF_MESSAGE.format(digit="*")) == 2
    assert '"digit":"*"' in text and '"StreamToken":"***"' in text
    assert json.loads(writer.lines[0])["call_sid"] == "CA" + "2" * 32


# -- replays --------------------------------------------------------------------------


def _with_digit(entry: Entry, digit: str) -> Entry:
    """The entry as an unredacted recording made before the fix would hold it."""
    text = json.dumps(entry.msg)
    text = text.replace('"digit": "*"', f'"digit": "{digit}"')
    text = text.replace(DTMF_MESSAGE.format(digit="*"), DTMF_MESSAGE.format(digit=digit))
    return Entry(entry.t_ms, entry.dir, json.loads(text), entry.line)


def test_the_library_dtmf_fixture_is_redacted_and_replays() -> None:
    text = (LIBRARY / "dtmf.jsonl").read_text()
    assert '"digit":"*"' in text and DTMF_MESSAGE.format(digit="*") in text
    assert not any(DTMF_MESSAGE.format(digit=k) in text for k in DTMF_KEYS if k != "*")
    result = replay(load(LIBRARY / "dtmf.jsonl"))
    assert result.ok, report(result)


def test_a_redacted_recording_replays_like_the_raw_one() -> None:
    fixture = load(LIBRARY / "dtmf.jsonl")
    fixture.entries = [_with_digit(e, "5") for e in fixture.entries]
    raw = json.dumps([e.msg for e in fixture.entries])
    assert '"digit": "5"' in raw and DTMF_MESSAGE.format(digit="5") in raw
    assert replay(fixture).ok  # the raw recording replays...
    fixture.entries = [Entry(e.t_ms, e.dir, redact(e.dir, e.msg), e.line) for e in fixture.entries]
    clean = json.dumps([e.msg for e in fixture.entries])
    assert '"digit": "5"' not in clean and DTMF_MESSAGE.format(digit="5") not in clean
    result = replay(fixture)  # ...and so does the same recording, redacted
    assert result.ok, report(result)


@pytest.mark.e2e
async def test_e2e_a_recorded_key_press_is_redacted_and_replays(tmp_path: Path) -> None:
    async def press_7(call: FakeTwilioCall, conn: RealtimeConnection) -> None:
        await call.send_dtmf("7")
        item = await conn.wait_for("conversation.item.create", timeout=10)
        assert item["item"]["content"][0]["text"] == DTMF_MESSAGE.format(digit="7")
        await conn.wait_for("response.create", timeout=10)

    path = await record_one_call(tmp_path, during=press_7)
    text = path.read_text()
    assert '"event":"dtmf"' in text and '"digit":"*"' in text
    assert DTMF_MESSAGE.format(digit="*") in text
    assert '"digit":"7"' not in text and DTMF_MESSAGE.format(digit="7") not in text
    result = replay(load(path))
    assert result.ok, report(result)


# -- malformed input never crashes the call, and still leaks nothing ---------------------


def test_a_malformed_user_item_echo_is_recorded_not_raised() -> None:
    # The red team's crash: a `text` that is a list is unhashable, and the redaction looked
    # it up in a set. The echo is recorded as it came.
    echo = user_text("", "conversation.item.added")
    echo["item"]["content"] = [{"type": "input_text", "text": ["a", {"b": None}]}, 7, None]
    assert redact("from_openai", echo) is echo
    writer = KeptLines()
    recorder = CallRecorder(writer, config(), keep_audio=False)
    recorder.record(0, "from_twilio", start({}))
    recorder.record(5, "from_openai", echo)
    recorder.close()
    assert json.loads(writer.lines[-1])["msg"] == echo


@pytest.mark.parametrize("inner", [["CA1"], "CA1", None, 7, {"callSid": {"x": 1}}])
def test_a_start_of_any_shape_opens_the_recording_without_raising(inner: object) -> None:
    writer = KeptLines()
    recorder = CallRecorder(writer, config(), keep_audio=False)
    recorder.record(0, "from_twilio", {"event": "start", "streamSid": STREAM, "start": inner})
    recorder.close()
    assert recorder.filename is not None and "_unknown_" in recorder.filename
    fixture = writer.fixture()
    assert fixture.header["call_sid"] == ""
    assert fixture.entries[0].msg["start"] == inner


@pytest.mark.parametrize(
    "value",
    ["7", 7, ["7"], {"7": "7"}, {"digit": ["7"], "track": "7", "other": "7"}, {"digit": {"7": 1}}],
)
def test_a_dtmf_field_of_any_shape_keeps_no_key(value: object) -> None:
    msg = {"event": "dtmf", "streamSid": STREAM, "dtmf": value}
    clean = redact("from_twilio", msg)["dtmf"]
    assert not any(c.isdigit() for c in json.dumps(clean))
    assert clean == "?" or clean.get("digit") in (None, "?")  # still malformed for the core


def test_a_dtmf_field_in_any_twilio_message_is_redacted() -> None:
    # Twilio never sends it elsewhere: when unsure, redact (the core reads it only in `dtmf`).
    odd = {"event": "mark", "streamSid": STREAM, "mark": {"name": "m"}, "dtmf": {"digit": "4"}}
    assert redact("from_twilio", odd)["dtmf"] == {"digit": "*"}


def test_the_key_press_text_is_never_written_wherever_it_stands() -> None:
    writer = KeptLines()
    recorder = CallRecorder(writer, config(), keep_audio=False)
    recorder.record(0, "from_twilio", start({}))
    system = user_text(DTMF_MESSAGE.format(digit="5"))
    system["item"]["role"] = "system"
    recorder.record(1, "to_openai", system)
    deep = {"type": "odd", "a": [[{"text": "x " + DTMF_MESSAGE.format(digit="#") + " y"}]]}
    recorder.record(2, "from_openai", deep)
    recorder.close()
    text = "".join(writer.lines)
    assert not any(DTMF_MESSAGE.format(digit=k) in text for k in DTMF_KEYS - {"*"})
    assert text.count(DTMF_MESSAGE.format(digit="*")) == 2


def test_the_stream_token_is_scrubbed_from_every_line_of_its_call() -> None:
    writer = KeptLines()
    recorder = CallRecorder(writer, config(), keep_audio=False)
    recorder.record(0, "from_twilio", start({"StreamToken": TOKEN}))
    recorder.record(1, "to_twilio", {"event": "odd", "echo": f"token={TOKEN}"})
    recorder.close()
    text = "".join(writer.lines)
    assert TOKEN not in text and "token=***" in text
