"""CallSession driven directly with a fake clock: messages in, actions out (no I/O)."""

from __future__ import annotations

import base64
import logging
from typing import Any

import pytest

from app.call.actions import (
    Action,
    CancelTimer,
    CloseRealtime,
    CloseTwilio,
    ConnectRealtime,
    SetTimer,
    ToRealtime,
    ToTwilio,
)
from app.call.config import CallConfig
from app.call.session import (
    CONFIRM_TIMER,
    READY_TIMER,
    START_TIMEOUT_MS,
    START_TIMER,
    CallSession,
)
from tests.fakes.realtime_server import CLIENT_EVENT_ADAPTER

STREAM, CALL = "MZ" + "0" * 32, "CA" + "1" * 32


def b64(n: int, byte: int = 0x55) -> str:
    return base64.b64encode(bytes([byte]) * n).decode()


def start_msg() -> dict[str, Any]:
    return {
        "event": "start",
        "sequenceNumber": "1",
        "streamSid": STREAM,
        "start": {
            "streamSid": STREAM,
            "callSid": CALL,
            "accountSid": "AC" + "2" * 32,
            "tracks": ["inbound"],
            "customParameters": {"CallSid": CALL, "From": "+15550001111"},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
    }


def media_msg(payload: str) -> dict[str, Any]:
    return {
        "event": "media",
        "streamSid": STREAM,
        "media": {"track": "inbound", "payload": payload},
    }


def mark_msg(name: str) -> dict[str, Any]:
    return {"event": "mark", "streamSid": STREAM, "mark": {"name": name}}


def delta(item: str, n: int = 800, response: str = "resp_1") -> dict[str, Any]:
    return {
        "type": "response.output_audio.delta",
        "response_id": response,
        "item_id": item,
        "output_index": 0,
        "content_index": 0,
        "delta": b64(n),
    }


def to_realtime(actions: list[Action]) -> list[dict[str, Any]]:
    events = [a.msg for a in actions if isinstance(a, ToRealtime)]
    for event in events:
        CLIENT_EVENT_ADAPTER.validate_python(event)  # every client event is valid GA
    return events


def to_twilio(actions: list[Action]) -> list[dict[str, Any]]:
    return [a.msg for a in actions if isinstance(a, ToTwilio)]


def live(config: CallConfig | None = None) -> CallSession:
    s = CallSession(config or CallConfig())
    s.twilio_message(0, {"event": "connected", "protocol": "Call", "version": "1.0.0"})
    s.twilio_message(1, start_msg())
    s.realtime_open(50)
    s.realtime_message(60, {"type": "session.updated", "session": {}})
    s.realtime_message(70, {"type": "response.created", "response": {"id": "resp_1"}})
    return s


def play(s: CallSession, now: float, item: str, chunks: int, response: str = "resp_1") -> list[str]:
    """Send `chunks` 100 ms deltas; return the mark names the core asked Twilio to echo."""
    names = []
    for _ in range(chunks):
        out = to_twilio(s.realtime_message(now, delta(item, response=response)))
        assert [m["event"] for m in out] == ["media", "mark"]
        names.append(out[1]["mark"]["name"])
    return names


def test_start_opens_realtime_with_a_ready_deadline() -> None:
    s = CallSession(CallConfig(realtime_ready_timeout_ms=4000))
    assert s.opened(0) == [SetTimer(START_TIMER, START_TIMEOUT_MS)]
    out = s.twilio_message(10, start_msg())
    assert out == [CancelTimer(START_TIMER), ConnectRealtime(), SetTimer(READY_TIMER, 4010)]
    assert (s.call_sid, s.stream_sid) == (CALL, STREAM)


def test_session_update_is_ga_pcmu_and_greeting_follows() -> None:
    s = CallSession(CallConfig(greeting="Say hello.", tools=("end_call",)))
    s.twilio_message(0, start_msg())
    events = to_realtime(s.realtime_open(5))
    assert [e["type"] for e in events] == ["session.update", "response.create"]
    session = events[0]["session"]
    assert session["type"] == "realtime"
    assert session["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert session["audio"]["output"]["format"] == {"type": "audio/pcmu"}
    assert session["audio"]["input"]["turn_detection"]["interrupt_response"] is True
    assert [t["name"] for t in session["tools"]] == ["end_call"]
    assert events[1]["response"]["instructions"].endswith("Say hello.")


def test_no_greeting_means_the_caller_speaks_first() -> None:
    s = CallSession(CallConfig(greeting=""))
    s.twilio_message(0, start_msg())
    assert [e["type"] for e in to_realtime(s.realtime_open(5))] == ["session.update"]


def test_caller_audio_while_connecting_is_kept_in_order_and_flushed() -> None:
    s = CallSession(CallConfig(greeting=""))
    s.twilio_message(0, start_msg())
    frames = [b64(160, byte) for byte in (1, 2, 3)]
    for f in frames:
        assert s.twilio_message(1, media_msg(f)) == []
    events = to_realtime(s.realtime_open(5))
    assert [e["audio"] for e in events[1:]] == frames
    # Once live, audio passes straight through as the same string.
    assert to_realtime(s.twilio_message(6, media_msg(frames[0]))) == [
        {"type": "input_audio_buffer.append", "audio": frames[0]}
    ]


def test_connect_buffer_is_bounded() -> None:
    s = CallSession(CallConfig(greeting="", connect_buffer_ms=40))
    s.twilio_message(0, start_msg())
    for byte in range(5):
        s.twilio_message(1, media_msg(b64(160, byte)))  # 20 ms each
    appended = to_realtime(s.realtime_open(5))[1:]
    assert [base64.b64decode(e["audio"])[0] for e in appended] == [3, 4]


def test_bot_audio_passes_through_with_a_mark_after_each_delta() -> None:
    s = live()
    ev = delta("item_a")
    out = to_twilio(s.realtime_message(100, ev))
    assert out[0] == {"event": "media", "streamSid": STREAM, "media": {"payload": ev["delta"]}}
    assert out[1]["event"] == "mark" and out[1]["streamSid"] == STREAM


def test_bad_input_is_skipped_and_the_call_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    s = CallSession(CallConfig())
    with caplog.at_level(logging.WARNING):
        assert s.twilio_message(0, media_msg(b64(160))) == []  # before start
        s.twilio_message(1, start_msg())
        s.realtime_open(2)
        assert s.twilio_message(3, media_msg("not base64!")) == []
        assert s.twilio_message(4, {"event": "bogus"}) == []
        assert s.twilio_message(5, mark_msg("never-sent")) == []
        assert s.realtime_message(6, {"type": "response.output_audio.delta", "delta": "%%"}) == []
        assert s.bad_twilio_frame("binary_frame") == []
    assert not s.done
    assert set(s.bad_input) == {
        "twilio.media_before_start",
        "twilio.invalid_audio_payload",
        "twilio.unknown_event",
        "twilio.unknown_mark",
        "realtime.invalid_audio_delta",
        "twilio.binary_frame",
    }
    assert sum("bad_input" in r.getMessage() for r in caplog.records) == 6
    assert to_realtime(s.twilio_message(7, media_msg(b64(160))))  # still flowing


def test_barge_in_clears_cancels_and_truncates_at_the_heard_position() -> None:
    s = live()
    marks = play(s, 100, "item_a", 30)  # 3 s queued at Twilio
    for i, name in enumerate(marks[:15]):
        s.twilio_message(200 + 100 * (i + 1), mark_msg(name))  # 1.5 s played
    out = s.realtime_message(1750, {"type": "input_audio_buffer.speech_started", "item_id": "u1"})
    assert to_twilio(out) == [{"event": "clear", "streamSid": STREAM}]
    events = to_realtime(out)
    assert [e["type"] for e in events] == ["response.cancel", "conversation.item.truncate"]
    assert events[1]["item_id"] == "item_a"
    assert 1500 <= events[1]["audio_end_ms"] <= 1600  # within one delta of what played
    # Audio of the cancelled response still in flight is never played.
    assert s.realtime_message(1760, delta("item_a")) == []
    # Twilio's echoes of the cleared marks are not played audio.
    for name in marks[15:]:
        s.twilio_message(1770, mark_msg(name))
    assert s.playback.items["item_a"].played_ms == 1500
    assert s.barge_ins == 1 and not s.bad_input


def test_barge_in_when_nothing_of_the_item_was_heard_deletes_it() -> None:
    s = live()
    a = play(s, 100, "item_a", 2)
    play(s, 110, "item_b", 3)
    for name in a:
        s.twilio_message(400, mark_msg(name))
    # 600 ms later the echoes for item_b's first chunk have not come back yet.
    events = to_realtime(
        s.realtime_message(400, {"type": "input_audio_buffer.speech_started", "item_id": "u"})
    )
    assert events[1:] == [{"type": "conversation.item.delete", "item_id": "item_b"}]


def test_speech_while_the_bot_is_silent_sends_nothing() -> None:
    s = live()
    s.realtime_message(80, {"type": "response.done", "response": {"id": "resp_1"}})
    out = s.realtime_message(100, {"type": "input_audio_buffer.speech_started", "item_id": "u"})
    assert out == []


def test_benign_cancel_error_is_debug_only(caplog: pytest.LogCaptureFixture) -> None:
    s = live()
    error = {
        "type": "error",
        "error": {"type": "invalid_request_error", "code": "response_cancel_not_active"},
    }
    with caplog.at_level(logging.DEBUG):
        s.realtime_message(100, error)
        s.realtime_message(101, {"type": "error", "error": {"code": "invalid_value"}})
    levels = [r.levelno for r in caplog.records if r.getMessage() == "realtime.error"]
    assert levels == [logging.DEBUG, logging.WARNING]


def test_min_speech_policy_short_noise_does_not_interrupt() -> None:
    cfg = CallConfig(interrupt_min_speech_ms=800, vad_prefix_padding_ms=300)
    s = live(cfg)
    assert s.realtime_open(0) == []  # already live: the session is not configured twice
    play(s, 100, "item_a", 30)
    started = {"type": "input_audio_buffer.speech_started", "item_id": "u1", "audio_start_ms": 700}
    out = s.realtime_message(1000, started)
    assert out == [SetTimer(CONFIRM_TIMER, 1000 + 800 + 500)]
    stopped = {"type": "input_audio_buffer.speech_stopped", "item_id": "u1", "audio_end_ms": 1300}
    assert s.realtime_message(1700, stopped) == [CancelTimer(CONFIRM_TIMER)]
    # The noise's committed item is deleted and not answered; the bot never stopped.
    events = to_realtime(
        s.realtime_message(1710, {"type": "input_audio_buffer.committed", "item_id": "u1"})
    )
    assert events == [{"type": "conversation.item.delete", "item_id": "u1"}]
    assert s.playback.playing and s.barge_ins == 0


def test_min_speech_policy_long_speech_interrupts_then_is_answered() -> None:
    cfg = CallConfig(interrupt_min_speech_ms=800)
    s = live(cfg)
    play(s, 100, "item_a", 30)
    started = {"type": "input_audio_buffer.speech_started", "item_id": "u1", "audio_start_ms": 700}
    s.realtime_message(1000, started)
    out = s.timer(2300, CONFIRM_TIMER)
    assert to_twilio(out) == [{"event": "clear", "streamSid": STREAM}]
    assert [e["type"] for e in to_realtime(out)][:1] == ["response.cancel"]
    s.realtime_message(2900, {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 2600})
    # The turn is committed while the cancelled response is not yet done: answer after it.
    commit = {"type": "input_audio_buffer.committed", "item_id": "u1"}
    assert [e["type"] for e in to_realtime(s.realtime_message(2910, commit))] == ["response.cancel"]
    done = {"type": "response.done", "response": {"id": "resp_1", "status": "cancelled"}}
    (create,) = to_realtime(s.realtime_message(2950, done))
    assert create["type"] == "response.create" and "instructions" not in create["response"]


def test_min_speech_session_leaves_interrupting_and_answering_to_the_bridge() -> None:
    s = CallSession(CallConfig(interrupt_min_speech_ms=500, turn_detection="semantic_vad"))
    s.twilio_message(0, start_msg())
    td = to_realtime(s.realtime_open(1))[0]["session"]["audio"]["input"]["turn_detection"]
    assert td["type"] == "semantic_vad"
    assert td["create_response"] is False and td["interrupt_response"] is False


def test_not_ready_in_time_closes_the_stream_for_the_fallback() -> None:
    s = CallSession(CallConfig())
    s.twilio_message(0, start_msg())
    s.realtime_open(100)
    out = s.timer(4000, READY_TIMER)
    assert (
        CloseTwilio("realtime_unavailable") in out and CloseRealtime("realtime_unavailable") in out
    )
    assert s.done


def test_the_caller_is_released_before_the_realtime_socket_is_closed() -> None:
    # A stalled Realtime peer may take its time over the closing handshake; the caller
    # must not wait for it before Twilio can run the fallback.
    s = CallSession(CallConfig())
    s.twilio_message(0, start_msg())
    out = s.timer(4000, READY_TIMER)
    kinds = [type(a) for a in out]
    assert kinds.index(CloseTwilio) < kinds.index(CloseRealtime)


def test_session_updated_cancels_the_ready_deadline() -> None:
    s = CallSession(CallConfig())
    s.twilio_message(0, start_msg())
    s.realtime_open(100)
    assert s.realtime_message(200, {"type": "session.updated"}) == [CancelTimer(READY_TIMER)]
    assert s.timer(4000, READY_TIMER) == []


def test_realtime_failure_or_loss_closes_the_media_stream() -> None:
    s = CallSession(CallConfig())
    s.twilio_message(0, start_msg())
    assert CloseTwilio("realtime_unavailable") in s.realtime_failed(10, "http_503")
    s2 = live()
    out = s2.realtime_closed(500, 1006, "")
    assert [a for a in out if not isinstance(a, CancelTimer)] == [CloseTwilio("realtime_lost")]
    assert s2.summary()["ended"] == "failure" and s2.summary()["end_detail"] == "realtime_lost"


def test_caller_hangup_closes_realtime() -> None:
    s = live()
    out = s.twilio_message(900, {"event": "stop", "streamSid": STREAM, "stop": {}})
    assert CloseRealtime("caller_hung_up") in out
    assert not any(isinstance(a, CloseTwilio) for a in out)
    assert s.done and s.summary()["ended"] == "caller_hung_up"


def test_summary_keeps_heard_transcript() -> None:
    s = live()
    marks = play(s, 100, "item_a", 10)
    s.realtime_message(
        110,
        {"type": "response.output_audio_transcript.done", "item_id": "item_a", "transcript": "Hi"},
    )
    for name in marks[:4]:
        s.twilio_message(500, mark_msg(name))
    s.realtime_message(500, {"type": "input_audio_buffer.speech_started", "item_id": "u1"})
    s.realtime_message(
        900,
        {
            "type": "conversation.item.input_audio_transcription.completed",
            "item_id": "u1",
            "transcript": "Wait",
        },
    )
    s.twilio_closed(1000)
    turns = s.summary()["turns"]
    assert turns[0]["who"] == "bot" and turns[0]["text"] == "Hi" and turns[0]["interrupted"]
    assert turns[0]["sent_ms"] == 1000 and 400 <= turns[0]["heard_ms"] <= 500
    assert turns[1] == {"who": "caller", "text": "Wait"}
    assert "text" not in s.summary(with_text=False)["turns"][0]


def test_min_speech_policy_uses_speech_length_without_padding_and_silence() -> None:
    # prefix 300, silence 500: audio_start 700 means speech began at 1000; audio_end 2200
    # means it ended at 1700 (700 ms: noise), 2400 means 1900 (900 ms: a real turn).
    cfg = CallConfig(
        interrupt_min_speech_ms=800, vad_prefix_padding_ms=300, vad_silence_duration_ms=500
    )
    for end_ms, interrupts in ((2200, False), (2400, True)):
        s = live(cfg)
        play(s, 100, "item_a", 40)
        started = {"type": "input_audio_buffer.speech_started", "audio_start_ms": 700}
        s.realtime_message(1000, started)
        stopped = {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": end_ms}
        out = s.realtime_message(1500, stopped)
        assert (to_twilio(out) == [{"event": "clear", "streamSid": STREAM}]) is interrupts


def test_a_stream_that_never_starts_is_closed() -> None:
    s = CallSession(CallConfig())
    s.opened(0)
    s.twilio_message(5, {"event": "connected", "protocol": "Call", "version": "1.0.0"})
    out = s.timer(START_TIMEOUT_MS, START_TIMER)
    assert CloseTwilio("no_start") in out and s.done
