"""Recordings are bounded (per line, per call, in the writer's backlog), named safely, and
never raise whatever a caller or the service sends; still no key press or token in them."""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import recording
from app.call.actions import RestRequest, ToRealtime, ToTwilio
from app.call.nudges import DTMF_MESSAGE
from app.call.toolspec import ToolSpec
from app.recording import MAX_EARLY_CHARS, CallRecorder, RecordingWriter
from app.recording_lines import AUDIO, DTMF_KEYS, MAX_LINE_CHARS
from app.replay import describe, load, parse, replay
from tests.core import config, dtmf_msg
from tests.fakes.recording import KeptLines

STREAM = "MZ" + "1" * 32
CALL_SID = "CA" + "2" * 32
TOKEN = "tok_9f8e7d6c5b4a39281706"
AUDIO_B64 = "////" * 40  # 120 bytes of mu-law silence
KEYS = "0123456789"


# -- real messages --------------------------------------------------------------------


def start(call_sid: object = CALL_SID, stream_sid: object = STREAM) -> dict[str, Any]:
    return {
        "event": "start",
        "sequenceNumber": "1",
        "streamSid": stream_sid,
        "start": {
            "accountSid": "AC" + "3" * 32,
            "streamSid": stream_sid,
            "callSid": call_sid,
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            "customParameters": {"From": "+15550001111", "StreamToken": TOKEN},
        },
    }


def media(payload: object = AUDIO_B64) -> dict[str, Any]:
    return {
        "event": "media",
        "sequenceNumber": "3",
        "streamSid": STREAM,
        "media": {"track": "inbound", "chunk": "2", "timestamp": "20", "payload": payload},
    }


def mark() -> dict[str, Any]:
    return {"event": "mark", "sequenceNumber": "4", "streamSid": STREAM, "mark": {"name": "m1"}}


def user_item(kind: str, digit: str) -> dict[str, Any]:
    return {
        "type": kind,
        "event_id": "event_1",
        "previous_item_id": None,
        "item": {
            "id": "item_1",
            "object": "realtime.item",
            "type": "message",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_text", "text": DTMF_MESSAGE.format(digit=digit)}],
        },
    }


def delta(audio: object = AUDIO_B64) -> dict[str, Any]:
    return {
        "type": "response.output_audio.delta",
        "event_id": "event_2",
        "response_id": "resp_1",
        "item_id": "item_2",
        "output_index": 0,
        "content_index": 0,
        "delta": audio,
    }


def append() -> dict[str, Any]:
    return {"type": "input_audio_buffer.append", "audio": AUDIO_B64}


def lines_of(writer: KeptLines) -> list[dict[str, Any]]:
    return [json.loads(line) for line in writer.text().splitlines()]


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == name]


# -- a byte limit per call -------------------------------------------------------------


def test_a_recording_stops_at_its_byte_limit_with_one_marker_and_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    writer = KeptLines()
    recorder = CallRecorder(writer, config(), keep_audio=False, max_bytes=20_000)
    recorder.record(0, "from_twilio", start())
    for n in range(1000):  # about 200 bytes each: the limit falls somewhere in the middle
        recorder.record(20.0 * n, "from_twilio", media())
    recorder.close()
    text = writer.text()
    *kept, last = text.splitlines(keepends=True)
    assert sum(map(len, kept)) <= 20_000 < sum(map(len, kept)) + 300
    assert json.loads(last)["dir"] == "rest"
    assert json.loads(last)["msg"] == {"_recording": "truncated", "limit": 20_000}
    assert len(last) < 100
    assert recorder.truncated and not recorder.abandoned
    assert recorder.bytes_written == len(text)
    assert recorder.lines_dropped == 1001 - (len(kept) - 1)  # every message not written
    assert writer.closed == [recorder.filename]  # the marker closed it; close() added none
    [warning] = events(caplog, "recording.limit")
    assert warning.levelno == logging.WARNING
    assert warning.fields == {"file": recorder.filename, "limit": 20_000}  # type: ignore[attr-defined]
    fixture = writer.fixture()  # a recording cut short still loads...
    assert fixture.header["limits"]["max_bytes"] == 20_000
    assert fixture.entries[-1].msg["_recording"] == "truncated"
    assert not fixture.entries[-1].is_input  # ...the marker is never fed to the core...
    replay(fixture)  # ...and replays (to a difference), without raising
    assert describe(fixture.entries[-1]) == "recording truncated (limit 20000)"


def test_lines_held_before_start_have_a_limit_too(caplog: pytest.LogCaptureFixture) -> None:
    writer = KeptLines()
    recorder = CallRecorder(writer, config(), keep_audio=False)
    junk = {"event": "junk", "blob": "x" * 10_000}
    for n in range(MAX_EARLY_CHARS // 10_000 + 5):
        recorder.record(n, "from_twilio", junk)
    recorder.record(100, "from_twilio", start())
    recorder.record(120, "from_twilio", media())
    recorder.close()
    entries = writer.fixture().entries
    assert all(e.msg.get("event") == "junk" for e in entries[:-1])
    assert entries[-1].msg == {"_recording": "truncated", "limit": MAX_EARLY_CHARS}
    assert sum(len(line) for line in writer.lines[1:-1]) <= MAX_EARLY_CHARS
    assert recorder.lines_dropped == 5 + 2  # the junk past the limit, the start, the media
    [warning] = events(caplog, "recording.limit")
    assert warning.fields == {"file": recorder.filename, "limit": MAX_EARLY_CHARS}  # type: ignore[attr-defined]


def test_the_byte_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        CallRecorder(KeptLines(), config(), keep_audio=False, max_bytes=0)


# -- one line, one small record ----------------------------------------------------------


def test_an_oversized_message_becomes_a_small_record_of_its_length() -> None:
    writer = KeptLines()
    recorder = CallRecorder(writer, config(), keep_audio=False)
    recorder.record(0, "from_twilio", start())
    recorder.record(5, "from_openai", {"type": "odd.event", "blob": "x" * 4_000_000})
    recorder.record(6, "from_openai", {"blob": "é" * 70_000})  # 6 characters each, escaped
    # A Twilio frame at the default size limit fits, even all non-ASCII.
    recorder.record(7, "from_twilio", {"event": "mark", "pad": "é" * (65_536 // 2 - 100)})
    recorder.close()
    *_, big, wide, frame = lines_of(writer)
    assert big["msg"]["type"] == "odd.event" and big["msg"]["_oversized"] > 4_000_000
    assert set(big["msg"]) == {"type", "_oversized"}
    assert wide["msg"] == {"_oversized": pytest.approx(420_000, abs=100)}
    assert frame["msg"]["event"] == "mark" and "_oversized" not in frame["msg"]
    assert max(map(len, writer.lines)) <= MAX_LINE_CHARS


@pytest.mark.parametrize("keep_audio", [False, True])
def test_a_huge_audio_payload_is_recorded_as_its_length_even_when_audio_is_kept(
    keep_audio: bool,
) -> None:
    writer = KeptLines()
    recorder = CallRecorder(writer, config(), keep_audio=keep_audio)
    recorder.record(0, "from_twilio", start())
    huge = "A" * (MAX_LINE_CHARS // 4 * 4 + 400)
    recorder.record(5, "from_openai", delta(huge))
    recorder.record(6, "from_openai", delta())
    recorder.close()
    *_, big, small = lines_of(writer)
    assert big["msg"]["delta"] == {AUDIO: len(huge) // 4 * 3}
    assert big["msg"]["item_id"] == "item_2"  # the rest of the message is kept
    assert small["msg"]["delta"] == (AUDIO_B64 if keep_audio else {AUDIO: 120})


def test_an_object_where_audio_belongs_is_never_read_back_as_a_length() -> None:
    # The replayer builds `{"_audio_bytes": N}` into N bytes: a caller's object must not pass
    # for one (a terabyte on replay); the core rejects any non-string payload alike.
    writer = KeptLines()
    recorder = CallRecorder(writer, config(), keep_audio=True)
    recorder.record(0, "from_twilio", start())
    recorder.record(5, "from_twilio", media({AUDIO: 10**12}))
    recorder.close()
    assert lines_of(writer)[-1]["msg"]["media"]["payload"] == {"_not_audio": "object"}


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("field", "reason"),
    [(nested(5000), "too_deep"), (10**5000, "not_json"), (float("nan"), "not_json")],
    ids=["deep", "huge-int", "nan"],
)
def test_what_json_cannot_hold_becomes_a_small_record(field: object, reason: str) -> None:
    writer = KeptLines()
    recorder = CallRecorder(writer, config(), keep_audio=False)
    recorder.record(0, "from_twilio", start())
    recorder.record(5, "from_openai", {"type": "odd.event", "x": field})
    recorder.close()
    assert lines_of(writer)[-1]["msg"] == {"type": "odd.event", "_unrecordable": reason}


# -- the writer's backlog, in characters -------------------------------------------------


class PausedWriter(RecordingWriter):
    """A real writer whose thread waits for `go` before writing anything: its backlog
    fills exactly as it would behind a stalled disk."""

    def __init__(self, directory: Path, **kwargs: Any) -> None:
        super().__init__(directory, **kwargs)
        self.go = threading.Event()

    def _run(self) -> None:
        self.go.wait()
        super()._run()

    def drain(self) -> None:
        self.go.set()
        self.stop()  # flushes everything queued, then joins the thread


def test_the_backlog_is_counted_in_characters(tmp_path: Path) -> None:
    writer = PausedWriter(tmp_path, max_backlog_chars=10_000)
    try:
        assert [writer.submit("line", "a.jsonl", "x" * 3000) for _ in range(4)] == [
            True,
            True,
            True,
            False,
        ]
        assert writer.submit("line", "b.jsonl", "y" * 300)  # what still fits is taken
        assert writer.submit("close", "a.jsonl", "z" * 2000)  # a close is never refused
    finally:
        writer.drain()
    assert (tmp_path / "a.jsonl").read_text() == "x" * 9000 + "z" * 2000
    assert writer.backlog_chars == 0


def test_a_call_past_the_backlog_is_abandoned_and_the_others_keep_recording(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = PausedWriter(tmp_path, max_backlog_chars=200_000)
    other = CallRecorder(writer, config(), keep_audio=False)
    flood = CallRecorder(writer, config(), keep_audio=False)
    try:
        other.record(0, "from_twilio", start("CAother", "MZother"))
        other.record(1, "from_twilio", media())
        flood.record(0, "from_twilio", start("CAflood", "MZflood"))
        sent = 0
        while not flood.abandoned:
            flood.record(2, "from_openai", {"type": "junk", "blob": "x" * 20_000})
            sent += 1
        flood.record(3, "from_openai", {"type": "junk"})  # nothing more once abandoned
    finally:
        writer.drain()
    other.record(4, "from_twilio", media())  # the other call goes on, recorded
    other.close()
    flood.close()
    writer.drain()
    assert other.filename and flood.filename
    assert [e.t_ms for e in load(tmp_path / other.filename).entries] == [0, 1, 4]
    cut = load(tmp_path / flood.filename)  # a prefix of the call, then the marker
    assert cut.header["call_sid"] == "CAflood"
    assert cut.entries[-1].msg == {"_recording": "abandoned", "limit": 200_000}
    assert len(cut.entries) - 2 < sent - 1  # its queued lines were skipped, not written
    assert not other.abandoned and flood.lines_dropped == 2
    [error] = events(caplog, "recording.backlog_full")
    assert error.fields == {"file": flood.filename, "limit": 200_000}  # type: ignore[attr-defined]
    assert writer.backlog_chars == 0


# -- file names --------------------------------------------------------------------------


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every recording starts in the same millisecond."""
    moment = datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)

    class Frozen(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Frozen:
            return moment  # type: ignore[return-value]

    monkeypatch.setattr(recording, "datetime", Frozen)


def record_call(writer: RecordingWriter, msg: dict[str, Any], t_ms: float) -> CallRecorder:
    recorder = CallRecorder(writer, config(), keep_audio=False)
    recorder.record(0, "from_twilio", msg)
    recorder.record(t_ms, "from_twilio", media())
    recorder.close()
    return recorder


@pytest.mark.usefixtures("frozen_clock")
def test_two_streams_of_one_call_in_one_millisecond_write_two_files(tmp_path: Path) -> None:
    writer = RecordingWriter(tmp_path)
    first = record_call(writer, start(), 10)
    second = record_call(writer, start(), 20)  # the same CallSid, even the same StreamSid
    writer.stop()
    assert first.filename == f"20250102T030405.678Z_{CALL_SID}_{STREAM}.jsonl"
    assert second.filename == f"20250102T030405.678Z_{CALL_SID}_{STREAM}-2.jsonl"
    assert [e.t_ms for e in load(tmp_path / first.filename).entries] == [0, 10]
    assert [e.t_ms for e in load(tmp_path / second.filename).entries] == [0, 20]


@pytest.mark.usefixtures("frozen_clock")
def test_a_file_already_on_disk_is_never_appended_to(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    taken = tmp_path / f"20250102T030405.678Z_{CALL_SID}_{STREAM}.jsonl"
    taken.write_text("an earlier run's recording\n")
    writer = RecordingWriter(tmp_path)
    recorder = record_call(writer, start(), 10)
    writer.stop()
    assert taken.read_text() == "an earlier run's recording\n"
    actual = tmp_path / f"20250102T030405.678Z_{CALL_SID}_{STREAM}-2.jsonl"
    assert [e.t_ms for e in load(actual).entries] == [0, 10]
    [renamed] = events(caplog, "recording.renamed")
    assert renamed.fields == {"file": recorder.filename, "actual": actual.name}  # type: ignore[attr-defined]


def test_a_stream_that_never_starts_writes_no_file(tmp_path: Path) -> None:
    writer = RecordingWriter(tmp_path / "recordings")
    recorder = CallRecorder(writer, config(), keep_audio=False)
    recorder.record(0, "from_twilio", {"event": "connected", "protocol": "Call"})
    recorder.record(1, "from_twilio", {"_frame_error": "not_json"})
    recorder.record(2, "from_twilio", {"_socket": "closed"})
    recorder.close()
    writer.stop()
    assert recorder.filename is None
    assert list(tmp_path.rglob("*")) == []


@pytest.mark.parametrize(
    "call_sid",
    ["\U0001d400" * 64, "../../" + "x" * 500, "CA 1/2\\3:4*5?6.7", ["CA1"], None],
    ids=["astral", "traversal-and-long", "punctuation", "list", "missing"],
)
def test_a_hostile_call_sid_still_makes_a_short_safe_file_name(
    tmp_path: Path, call_sid: object
) -> None:
    writer = RecordingWriter(tmp_path)
    recorder = record_call(writer, start(call_sid, "MZ\u00e9" * 100), 10)
    writer.stop()
    name = recorder.filename
    assert name is not None and name.isascii() and len(name.encode()) <= 255
    assert all(c.isalnum() or c in "_-." for c in name)
    [path] = tmp_path.iterdir()  # in the directory, not beside it
    assert path.name == name
    head = load(path).header
    assert head["call_sid"] == (call_sid[:64] if isinstance(call_sid, str) else "")
    assert len(head["stream_sid"]) == 64


# -- never raises, never leaks: property tests ---------------------------------------------

#: Values of the shapes the red team used: longer than a line, nested past the recursion
#: limit, an integer JSON cannot print. Drawn by index: hypothesis prints its strategies,
#: and neither a 3000-deep list nor a 5000-digit integer can be printed.
_SPECIAL = (
    "x" * (MAX_LINE_CHARS + 1),
    "A" * (MAX_LINE_CHARS // 4 * 4 + 4),
    10**5000,
    nested(3000),
    "",
    "7",
    "*",
)


def _special(index: int) -> Any:
    return _SPECIAL[index]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.integers(0, len(_SPECIAL) - 1).map(_special),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)

Path_ = tuple[str | int, ...]


def subtrees(value: Any, at: Path_ = (), depth: int = 6) -> list[Path_]:
    """Every path into `value` (not deeper than `depth`)."""
    found = [at]
    if depth and isinstance(value, dict):
        for key, child in value.items():
            found += subtrees(child, (*at, key), depth - 1)
    elif depth and isinstance(value, list):
        for index, child in enumerate(value):
            found += subtrees(child, (*at, index), depth - 1)
    return found


def replaced(value: Any, at: Path_, new: Any) -> Any:
    """`value` with the subtree at `at` replaced by `new` (copied along the path only)."""
    if not at:
        return new
    head, *rest = at
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[head] = replaced(value[head], tuple(rest), new)  # type: ignore[index]
    return copy


@st.composite
def mutated(draw: st.DrawFn, msg: Any, keep: frozenset[Path_] = frozenset()) -> Any:
    """`msg` with one to three random subtrees replaced by arbitrary JSON values."""
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in subtrees(msg) if p not in keep]
        if not paths:
            break
        msg = replaced(msg, draw(st.sampled_from(paths)), draw(json_values))
    return msg


digits = st.sampled_from(KEYS)
ADDED, DONE = "conversation.item.added", "conversation.item.done"
#: A tool whose `card` argument is redacted, and the card number a model might pass it.
CARD = "4111111111111111"
PAY = ToolSpec(name="pay", parameters={"type": "object"}, redact=("card",))
MCP_SECRET = "mcp-header-secret-value"


def _pay_item(kind: str) -> dict[str, Any]:
    item = {
        "type": "function_call",
        "name": "pay",
        "call_id": "c1",
        "arguments": json.dumps({"card": CARD, "amount": 5}),
    }
    if kind == "response.done":
        return {"type": kind, "response": {"id": "r1", "output": [item]}}
    if kind == "response.function_call_arguments.done":
        return {**item, "type": kind}
    return {"type": kind, "item": item}


tool_inputs = st.one_of(
    st.sampled_from(
        [
            "response.output_item.done",
            "conversation.item.done",
            "response.done",
            "response.function_call_arguments.done",
        ]
    ).map(lambda kind: ("from_openai", _pay_item(kind))),
    st.just(
        (
            "from_openai",
            {"type": "response.function_call_arguments.delta", "delta": CARD[:8]},
        )
    ),
    st.just(
        (
            "from_openai",
            {
                "type": "session.updated",
                "session": {
                    "tools": [
                        {
                            "type": "mcp",
                            "server_label": "cal",
                            "headers": {"Authorization": f"Bearer {MCP_SECRET}"},
                            "authorization": MCP_SECRET,
                        }
                    ]
                },
            },
        )
    ),
    st.just(
        (
            "rest",
            {"tool_request": {"call_id": "c1", "name": "pay", "arguments": {"card": CARD}}},
        )
    ),
)
plain_inputs = st.one_of(
    st.tuples(st.just("from_twilio"), st.one_of(st.just(media()), st.just(mark()))),
    st.tuples(st.just("from_twilio"), digits.map(dtmf_msg)),
    st.tuples(st.just("from_twilio"), st.just(start())),
    st.tuples(
        st.just("from_openai"), digits.map(lambda d: user_item("conversation.item.added", d))
    ),
    st.tuples(st.just("from_openai"), digits.map(lambda d: user_item("conversation.item.done", d))),
    st.tuples(st.just("from_openai"), st.just(delta())),
    st.tuples(st.just("to_openai"), st.just(append())),
    st.tuples(st.just("to_openai"), digits.map(lambda d: user_item("conversation.item.create", d))),
)
inputs = st.one_of(plain_inputs, tool_inputs)


@st.composite
def messages(draw: st.DrawFn) -> tuple[str, Any]:
    direction, msg = draw(inputs)
    return direction, draw(st.one_of(st.just(msg), mutated(msg), json_values))


def actions_from(direction: str, msg: Any, params: Any) -> list[Any]:
    if direction == "to_openai":
        return [ToRealtime(msg)]
    if direction == "from_twilio":
        return [ToTwilio(msg), RestRequest("update", params)]
    return [RestRequest(direction, params)]


def _no_constant(name: str) -> None:
    raise AssertionError(f"{name} is not JSON")


def check_written(text: str) -> None:
    """Every line valid JSON within the cap; no key press nor the token anywhere."""
    assert TOKEN not in text
    for key in DTMF_KEYS - {"*"}:
        assert DTMF_MESSAGE.format(digit=key) not in text
    lines = text.split("\n")
    assert lines[-1] == ""
    for line in lines[:-1]:
        assert len(line) <= MAX_LINE_CHARS
        entry = json.loads(line, parse_constant=_no_constant)
        if entry.get("dir") == "from_twilio" and "dtmf" in entry["msg"]:
            assert not any(c in KEYS for c in json.dumps(entry["msg"]["dtmf"]))
    if text:
        parse(lines[:-1])  # the header first, then fixture lines


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    first=mutated(start(), keep=frozenset({(), ("event",)})),
    rest=st.lists(messages(), max_size=6),
    params=json_values,
    keep_audio=st.booleans(),
)
def test_the_recorder_takes_anything_and_writes_only_safe_lines(
    first: Any, rest: list[tuple[str, Any]], params: Any, keep_audio: bool
) -> None:
    writer = KeptLines()
    recorder = CallRecorder(writer, config(functions=(PAY,)), keep_audio=keep_audio)
    recorder.record(0, "from_twilio", first)  # a start, of any shape inside
    for n, (direction, msg) in enumerate(rest, start=1):
        recorder.record(n, direction, msg)
        recorder.record_actions(n, actions_from(direction, msg, params))
    recorder.close()
    assert recorder.filename is not None  # any `start` opens the recording
    check_written(writer.text())


@settings(max_examples=100, deadline=None)
@given(
    tools=st.lists(tool_inputs, min_size=1, max_size=6),
    others=st.lists(plain_inputs, max_size=3),
    keep_audio=st.booleans(),
)
def test_redacted_tool_arguments_and_mcp_secrets_never_reach_a_line(
    tools: list[tuple[str, Any]], others: list[tuple[str, Any]], keep_audio: bool
) -> None:
    writer = KeptLines()
    recorder = CallRecorder(writer, config(functions=(PAY,)), keep_audio=keep_audio)
    recorder.record(0, "from_twilio", start())
    for n, (direction, msg) in enumerate([*tools, *others], start=1):
        recorder.record(n, direction, msg)
    recorder.close()
    text = writer.text()
    check_written(text)
    assert CARD not in text and CARD[:8] not in text and MCP_SECRET not in text


@settings(max_examples=100, deadline=None)
@given(messages=st.lists(messages(), min_size=1, max_size=4), keep_audio=st.booleans())
def test_lines_before_a_start_of_any_shape_are_as_safe(
    messages: list[tuple[str, Any]], keep_audio: bool
) -> None:
    writer = KeptLines()
    recorder = CallRecorder(writer, config(functions=(PAY,)), keep_audio=keep_audio)
    for n, (direction, msg) in enumerate(messages):
        recorder.record(n, direction, msg)
    recorder.close()
    check_written(writer.text())
