"""CallSession driven directly with made-up times: inputs in, actions and timers out (no I/O)."""

from __future__ import annotations

import base64
import logging

import pytest

from app.call.actions import (
    CloseRealtime,
    CloseTwilio,
    ConnectRealtime,
    Measure,
    Metric,
    RestRequest,
)
from app.call.outbox import Timer
from app.call.session import START_TIMEOUT_MS, CallSession
from app.call.state import Stage
from app.protocol import realtime as rt
from tests.core import (
    CALL,
    STREAM,
    b64,
    connecting,
    delta,
    fire,
    function_call,
    greeted,
    hear,
    live,
    mark_msg,
    media_msg,
    play,
    quiet,
    realtime,
    response_done,
    rest,
    socket,
    speech_started,
    speech_stopped,
    start_msg,
    to_realtime,
    to_twilio,
    twilio,
)

_STOPPED = "input_audio_buffer.speech_stopped"
#: What one caller frame, `media_msg(b64(160))`, becomes once the call is live.
APPEND = rt.input_audio_append(b64(160))


def test_start_opens_realtime_with_a_ready_deadline() -> None:
    s = CallSession(greeted(realtime_ready_timeout_ms=4000))
    assert s.opened(0) == []
    assert s.out.timers == {Timer.START: START_TIMEOUT_MS} and s.deadline == START_TIMEOUT_MS
    out = twilio(s, 10, start_msg())
    assert out == [ConnectRealtime()]
    assert s.out.timers == {Timer.READY: 4010} and s.deadline == 4010  # START cancelled
    assert (s.call_sid, s.stream_sid) == (CALL, STREAM)


def test_session_update_is_ga_pcmu_and_greeting_follows() -> None:
    s = CallSession(greeted(greeting="Say hello.", tools=("end_call",)))
    twilio(s, 0, start_msg())
    events = to_realtime(socket(s, 5, "openai", "open"))
    assert [e["type"] for e in events] == ["session.update", "response.create"]
    session = events[0]["session"]
    assert session["type"] == "realtime"
    assert session["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert session["audio"]["output"]["format"] == {"type": "audio/pcmu"}
    assert session["audio"]["input"]["turn_detection"]["interrupt_response"] is True
    assert [t["name"] for t in session["tools"]] == ["end_call"]
    assert events[1]["response"]["instructions"].endswith("Say hello.")


def test_no_greeting_means_the_caller_speaks_first() -> None:
    s = CallSession(quiet())
    twilio(s, 0, start_msg())
    assert [e["type"] for e in to_realtime(socket(s, 5, "openai", "open"))] == ["session.update"]


def test_caller_audio_while_connecting_is_kept_in_order_and_flushed() -> None:
    s = CallSession(quiet())
    twilio(s, 0, start_msg())
    frames = [b64(160, byte) for byte in (1, 2, 3)]
    for f in frames:
        assert twilio(s, 1, media_msg(f)) == []
    events = to_realtime(socket(s, 5, "openai", "open"))
    assert [e["audio"] for e in events[1:]] == frames
    # Once live, audio passes straight through as the same string.
    assert to_realtime(twilio(s, 6, media_msg(frames[0]))) == [
        {"type": "input_audio_buffer.append", "audio": frames[0]}
    ]


def test_connect_buffer_is_bounded() -> None:
    s = CallSession(quiet(connect_buffer_ms=40))
    twilio(s, 0, start_msg())
    for byte in range(5):
        twilio(s, 1, media_msg(b64(160, byte)))  # 20 ms each
    appended = to_realtime(socket(s, 5, "openai", "open"))[1:]
    assert [base64.b64decode(e["audio"])[0] for e in appended] == [3, 4]


def test_bot_audio_passes_through_with_a_mark_after_each_delta() -> None:
    s = live(greeted())
    ev = delta("item_a")
    out = to_twilio(realtime(s, 100, ev))
    assert out[0] == {"event": "media", "streamSid": STREAM, "media": {"payload": ev["delta"]}}
    assert out[1]["event"] == "mark" and out[1]["streamSid"] == STREAM


def test_bad_input_is_skipped_and_the_call_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    s = CallSession(greeted())
    with caplog.at_level(logging.WARNING):
        assert twilio(s, 0, media_msg(b64(160))) == []  # before start
        twilio(s, 1, start_msg())
        socket(s, 2, "openai", "open")
        assert twilio(s, 3, media_msg("not base64!")) == []
        assert twilio(s, 4, {"event": "bogus"}) == []
        assert twilio(s, 5, mark_msg("never-sent")) == []
        assert realtime(s, 6, {"type": "response.output_audio.delta", "delta": "%%"}) == []
        assert s.feed(6, "from_twilio", {"_frame_error": "binary_frame"}) == []
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
    assert to_realtime(twilio(s, 7, media_msg(b64(160)))) == [APPEND]  # still flowing


def test_barge_in_clears_cancels_and_truncates_at_the_heard_position() -> None:
    s = live(greeted())
    marks = play(s, 100, "item_a", 30)  # 3 s queued at Twilio
    hear(s, 200, marks[:15])  # 1.5 s played, by 1700
    out = realtime(s, 1750, speech_started("u1"))
    assert to_twilio(out) == [{"event": "clear", "streamSid": STREAM}]
    events = to_realtime(out)
    assert [e["type"] for e in events] == ["response.cancel", "conversation.item.truncate"]
    assert events[1]["item_id"] == "item_a"
    assert 1500 <= events[1]["audio_end_ms"] <= 1600  # within one delta of what played
    # Audio of the cancelled response still in flight is never played.
    assert realtime(s, 1760, delta("item_a")) == []
    # Twilio's echoes of the cleared marks are not played audio.
    for name in marks[15:]:
        twilio(s, 1770, mark_msg(name))
    assert s.playback.items["item_a"].played_ms == 1500
    assert s.barge_ins == 1 and not s.bad_input


def test_barge_in_when_nothing_of_the_item_was_heard_deletes_it() -> None:
    s = live(greeted())
    a = play(s, 100, "item_a", 2)
    play(s, 110, "item_b", 3)
    for name in a:
        twilio(s, 400, mark_msg(name))
    # 600 ms later the echoes for item_b's first chunk have not come back yet.
    events = to_realtime(realtime(s, 400, speech_started("u")))
    assert events[1:] == [{"type": "conversation.item.delete", "item_id": "item_b"}]


def test_speech_while_the_bot_is_silent_sends_nothing() -> None:
    s = live(greeted())
    realtime(s, 80, {"type": "response.done", "response": {"id": "resp_1"}})
    assert realtime(s, 100, speech_started("u")) == []


def test_benign_cancel_error_is_debug_only(caplog: pytest.LogCaptureFixture) -> None:
    s = live(greeted())
    error = {
        "type": "error",
        "error": {"type": "invalid_request_error", "code": "response_cancel_not_active"},
    }
    with caplog.at_level(logging.DEBUG):
        realtime(s, 100, error)
        realtime(s, 101, {"type": "error", "error": {"code": "invalid_value"}})
    levels = [r.levelno for r in caplog.records if r.getMessage() == "realtime.error"]
    assert levels == [logging.DEBUG, logging.WARNING]


def test_min_speech_policy_short_noise_does_not_interrupt() -> None:
    s = live(greeted(interrupt_min_speech_ms=800, vad_prefix_padding_ms=300))
    # Already live: the session is not configured twice.
    assert socket(s, 80, "openai", "open") == []
    play(s, 100, "item_a", 30)
    assert realtime(s, 1000, speech_started("u1", audio_start_ms=700)) == []
    assert s.out.timers == {Timer.CONFIRM: 1000 + 800 + 500}
    assert realtime(s, 1700, speech_stopped("u1", audio_end_ms=1300)) == []
    assert s.out.timers == {}  # the confirmation timer is cancelled
    # The noise's committed item is deleted and not answered; the bot never stopped.
    events = to_realtime(
        realtime(s, 1710, {"type": "input_audio_buffer.committed", "item_id": "u1"})
    )
    assert events == [{"type": "conversation.item.delete", "item_id": "u1"}]
    assert s.playback.playing and s.barge_ins == 0


def test_min_speech_policy_long_speech_interrupts_then_is_answered() -> None:
    s = live(greeted(interrupt_min_speech_ms=800))
    play(s, 100, "item_a", 30)
    realtime(s, 1000, speech_started("u1", audio_start_ms=700))
    assert s.deadline == 2300
    out = fire(s, Timer.CONFIRM)
    assert to_twilio(out) == [{"event": "clear", "streamSid": STREAM}]
    assert [e["type"] for e in to_realtime(out)][:1] == ["response.cancel"]
    realtime(s, 2900, {"type": _STOPPED, "audio_end_ms": 2600})
    # The turn is committed while the cancelled response is not yet done: answer after it.
    commit = {"type": "input_audio_buffer.committed", "item_id": "u1"}
    assert [e["type"] for e in to_realtime(realtime(s, 2910, commit))] == ["response.cancel"]
    done = {"type": "response.done", "response": {"id": "resp_1", "status": "cancelled"}}
    (create,) = to_realtime(realtime(s, 2950, done))
    assert create["type"] == "response.create" and "instructions" not in create["response"]


def test_min_speech_session_leaves_interrupting_and_answering_to_the_bridge() -> None:
    s = CallSession(greeted(interrupt_min_speech_ms=500, turn_detection="semantic_vad"))
    twilio(s, 0, start_msg())
    td = to_realtime(socket(s, 1, "openai", "open"))[0]["session"]["audio"]["input"]
    assert td["turn_detection"]["type"] == "semantic_vad"
    assert td["turn_detection"]["create_response"] is False
    assert td["turn_detection"]["interrupt_response"] is False


def test_not_ready_in_time_closes_the_stream_for_the_fallback() -> None:
    s = CallSession(greeted())
    twilio(s, 0, start_msg())
    socket(s, 100, "openai", "open")
    assert s.deadline == 4000
    out = fire(s, Timer.READY)
    assert (
        CloseTwilio("realtime_unavailable") in out and CloseRealtime("realtime_unavailable") in out
    )
    assert s.done and s.deadline is None


def test_the_caller_is_released_before_the_realtime_socket_is_closed() -> None:
    # A stalled Realtime peer may take its time over the closing handshake; the caller
    # must not wait for it before Twilio can run the fallback.
    s = CallSession(greeted())
    twilio(s, 0, start_msg())
    out = fire(s, Timer.READY)
    kinds = [type(a) for a in out]
    assert kinds.index(CloseTwilio) < kinds.index(CloseRealtime)


def test_session_updated_cancels_the_ready_deadline() -> None:
    s = CallSession(greeted())
    twilio(s, 0, start_msg())
    socket(s, 100, "openai", "open")
    assert Timer.READY in s.out.timers
    assert realtime(s, 200, {"type": "session.updated"}) == []
    assert Timer.READY not in s.out.timers and s.deadline is None
    assert s.advance(4000) == [] and not s.done


def test_realtime_failure_or_loss_closes_the_media_stream() -> None:
    s = CallSession(greeted())
    twilio(s, 0, start_msg())
    assert CloseTwilio("realtime_unavailable") in socket(
        s, 10, "openai", "failed", reason="http_503"
    )
    s2 = live(greeted())
    out = socket(s2, 500, "openai", "closed", code=1006, reason="")
    assert out == [CloseTwilio("realtime_lost")]
    assert s2.out.timers == {}
    assert s2.summary()["ended"] == "failure" and s2.summary()["end_detail"] == "realtime_lost"


def test_caller_hangup_closes_realtime() -> None:
    s = live(greeted())
    out = twilio(s, 900, {"event": "stop", "streamSid": STREAM, "stop": {}})
    assert CloseRealtime("caller_hung_up") in out
    assert not any(isinstance(a, CloseTwilio) for a in out)
    assert s.done and s.summary()["ended"] == "caller_hung_up"


def test_summary_keeps_heard_transcript() -> None:
    s = live(greeted())
    marks = play(s, 100, "item_a", 10)
    realtime(
        s,
        110,
        {"type": "response.output_audio_transcript.done", "item_id": "item_a", "transcript": "Hi"},
    )
    for name in marks[:4]:
        twilio(s, 500, mark_msg(name))
    realtime(s, 500, speech_started("u1"))
    realtime(
        s,
        900,
        {
            "type": "conversation.item.input_audio_transcription.completed",
            "item_id": "u1",
            "transcript": "Wait",
        },
    )
    socket(s, 1000, "twilio", "closed")
    turns = s.summary()["turns"]
    assert turns[0]["who"] == "bot" and turns[0]["text"] == "Hi" and turns[0]["interrupted"]
    assert turns[0]["sent_ms"] == 1000 and 400 <= turns[0]["heard_ms"] <= 500
    assert turns[1] == {"who": "caller", "text": "Wait"}
    assert "text" not in s.summary(with_text=False)["turns"][0]


def test_min_speech_policy_uses_speech_length_without_padding_and_silence() -> None:
    # prefix 300, silence 500: audio_start 700 means speech began at 1000; audio_end 2200
    # means it ended at 1700 (700 ms: noise), 2400 means 1900 (900 ms: a real turn).
    cfg = greeted(
        interrupt_min_speech_ms=800, vad_prefix_padding_ms=300, vad_silence_duration_ms=500
    )
    for end_ms, interrupts in ((2200, False), (2400, True)):
        s = live(cfg)
        play(s, 100, "item_a", 40)
        realtime(s, 1000, {"type": "input_audio_buffer.speech_started", "audio_start_ms": 700})
        out = realtime(s, 1500, {"type": _STOPPED, "audio_end_ms": end_ms})
        assert (to_twilio(out) == [{"event": "clear", "streamSid": STREAM}]) is interrupts


def test_a_stream_that_never_starts_is_closed() -> None:
    s = CallSession(greeted())
    s.opened(0)
    twilio(s, 5, {"event": "connected", "protocol": "Call", "version": "1.0.0"})
    assert s.deadline == START_TIMEOUT_MS
    out = fire(s, Timer.START)
    assert CloseTwilio("no_start") in out and s.done


# -- malformed values and never-heard words --------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        {"type": "error", "error": {"code": []}},
        {**delta("item_a"), "response_id": []},
        {"type": "response.done", "response": {"id": {}, "status": "completed"}},
        {
            "type": "response.done",
            "response": {
                "id": "resp_1",
                "status": "failed",
                "status_details": {"error": {"code": [1]}},
            },
        },
        {
            "type": "conversation.item.input_audio_transcription.completed",
            "item_id": [],
            "transcript": "x",
        },
    ],
    ids=["error.code", "delta.response_id", "done.id", "done.error.code", "transcription.item_id"],
)
def test_malformed_server_values_are_skipped_and_the_call_goes_on(event: dict[str, object]) -> None:
    s = live()
    realtime(s, 100, event)
    assert not s.done
    assert to_realtime(twilio(s, 200, media_msg(b64(160)))) == [APPEND]  # still flowing


def test_words_the_caller_never_heard_are_not_a_plain_bot_turn() -> None:
    s = live()
    play(s, 100, "item_a", 5)
    realtime(s, 200, speech_started("u1"))  # barge-in: resp_1 is cut off
    realtime(s, 210, delta("item_b"))  # a later item of the cut-off answer: dropped
    done = {"type": "response.output_audio_transcript.done", "item_id": "item_b"}
    realtime(s, 220, {**done, "transcript": "Words never heard"})
    deleted = to_realtime(realtime(s, 230, {"type": "response.done", "response": {"id": "resp_1"}}))
    assert deleted == [{"type": "conversation.item.delete", "item_id": "item_b"}]
    socket(s, 300, "twilio", "closed")
    unheard = [t for t in s.summary()["turns"] if t.get("text") == "Words never heard"]
    assert unheard and all(t.get("interrupted") and t["heard_ms"] == 0 for t in unheard)


# -- found in review: states that could crash or get stuck ------------------------------


@pytest.mark.parametrize("rest_credentials", [False, True])
def test_the_time_limit_waits_until_the_call_can_speak(rest_credentials: bool) -> None:
    # MAX_CALL_SECONDS=2 and LAST_WORDS_TIMEOUT_SECONDS=1 are valid settings, and opening
    # may take 3.5 s: the limit must not start an ending (and act on it) before the bot can
    # say a word; once live, the limit, counted from the start, comes due at once.
    extra = {"rest_available": True, "tools": ("end_call",)} if rest_credentials else {}
    s = connecting(quiet(max_call_ms=2000, playout_timeout_ms=1000, **extra))  # opening: 3.5 s
    assert s.advance(3500) == [] and not s.done
    assert Timer.MAX_DURATION not in s.out.timers
    socket(s, 3500, "openai", "open")
    assert s.out.timers[Timer.MAX_DURATION] == 3500  # overdue since 2001: due now
    out = realtime(s, 3510, {"type": "session.updated", "session": {}})
    assert s.ending.stage is Stage.CLOSING  # the wrap-up is asked for, with its 1 s
    assert "conversation.item.create" in [e["type"] for e in to_realtime(out)]
    assert s.out.timers[Timer.LAST_WORDS] == 4500
    acted = s.advance(4600)  # the closing words never come: the ending acts anyway
    if rest_credentials:
        assert any(isinstance(a, RestRequest) for a in acted)
        refused = rest(s, 4700, 400, 21220)
        assert s.done and CloseTwilio("rest_hangup_failed") in refused
    else:
        assert s.done and CloseTwilio("no_rest_credentials") in acted


def test_a_request_queued_behind_a_refused_one_is_still_sent() -> None:
    s = live(quiet())
    realtime(s, 80, response_done("resp_1"))
    dtmf = {"event": "dtmf", "streamSid": "MZ", "dtmf": {"digit": "1"}}
    (first,) = [e for e in to_realtime(twilio(s, 100, dtmf)) if e["type"] == "response.create"]
    assert [e["type"] for e in to_realtime(twilio(s, 110, dtmf))] == [
        "conversation.item.create"  # its answer waits behind the one in flight
    ]
    refusal = {
        "type": "error",
        "error": {"type": "server_error", "code": "server_error", "event_id": first["event_id"]},
    }
    out = to_realtime(realtime(s, 120, refusal))
    assert [e["type"] for e in out] == ["response.create"]  # not stranded


# -- found by the red team and the property tests (tests/test_properties.py) ----------------


def _deep(depth: int = 1000) -> object:
    """A list nested `depth` deep, as a peer may send it (orjson parses up to 1024)."""
    value: object = []
    for _ in range(depth):
        value = [value]
    return value


_MIN_SPEECH = {"interrupt_min_speech_ms": 300}


@pytest.mark.parametrize(
    ("direction", "msg", "reason"),
    [
        ("from_twilio", {"event": _deep()}, "twilio.unknown_event"),
        ("from_twilio", {"event": "mark", "mark": {"name": _deep()}}, "twilio.malformed_mark"),
        ("from_twilio", {"event": "dtmf", "dtmf": {"digit": ["1"]}}, "twilio.malformed_dtmf"),
        ("from_twilio", {"_frame_error": _deep()}, "twilio.frame_error"),
        ("from_openai", {"type": _deep()}, "realtime.event_without_type"),
        ("from_openai", {"type": "error", "error": {"code": _deep()}}, "realtime.malformed_error"),
        ("from_openai", {"type": "error", "error": ["x"]}, "realtime.malformed_error"),
        (
            "from_openai",
            {"type": "response.created", "response": {"id": "r2", "metadata": ["x"]}},
            "realtime.malformed_response_created",
        ),
        (
            "from_openai",
            {"type": "response.done", "response": {"id": "resp_1", "status": {"x": 1}}},
            "realtime.malformed_response_done",
        ),
        (
            "from_openai",
            {"type": "response.output_audio_transcript.done", "item_id": {}, "transcript": "x"},
            "realtime.malformed_transcript",
        ),
        (
            "from_openai",
            {**speech_started(), "item_id": ["u1"]},
            "realtime.malformed_speech_started",
        ),
        (
            "from_openai",
            {**speech_started(), "audio_start_ms": "0"},
            "realtime.malformed_speech_started",
        ),
        ("from_openai", {**delta("item_a"), "response_id": {}}, "realtime.invalid_audio_delta"),
        ("from_openai", {**delta("item_a"), "response_id": None}, "realtime.invalid_audio_delta"),
    ],
    ids=lambda v: v if isinstance(v, str) and "." in v else None,
)
def test_a_value_of_the_wrong_type_skips_its_message_as_bad_input(
    direction: str, msg: dict[str, object], reason: str
) -> None:
    """Checked once, where the message is read (`app.call.inbound`): the message does
    nothing, is counted under its own reason, and the call goes on."""
    s = live(quiet(tools=("end_call",)))
    play(s, 80, "item_a", 2)
    assert s.feed(100, direction, msg) == []
    assert s.bad_input == {reason: 1} and not s.done
    assert s.playback.playing  # nothing was interrupted
    assert to_realtime(twilio(s, 200, media_msg(b64(160)))) == [APPEND]  # still flowing


@pytest.mark.parametrize(
    "item",
    [
        {"name": ["end_call"], "call_id": "call_1"},
        {"name": _deep(), "call_id": "call_1"},
        {"name": "end_call", "call_id": ["call_1"]},
        {"name": "end_call", "call_id": "call_1", "status": ["completed"]},
        {"name": "end_call", "call_id": "call_1", "arguments": {"reason": "bye"}},
    ],
    ids=["name", "deep_name", "call_id", "status", "arguments"],
)
def test_a_function_call_with_a_field_of_the_wrong_type_is_not_answered(
    item: dict[str, object],
) -> None:
    s = live(quiet(tools=("end_call",)))
    ev = {
        "type": "response.output_item.done",
        "response_id": "resp_1",
        "item": {"type": "function_call", "status": "completed", **item},
    }
    assert realtime(s, 100, ev) == []  # no "unknown tool" answer, no ending
    assert s.bad_input == {"realtime.malformed_function_call": 1}
    assert s.ending.stage is Stage.NONE


@pytest.mark.parametrize("arguments", ["[" * 100_000, '{"reason": ' * 5000, "x" * 10_000])
def test_an_end_call_with_arguments_that_cannot_be_read_still_ends_the_call(
    arguments: str,
) -> None:
    """Nested past any parser's depth (json raises RecursionError for it), or too long:
    the arguments are bad, the model's intent is still its tool's name."""
    s = live(quiet(tools=("end_call",), rest_available=True))
    realtime(s, 100, function_call("end_call", arguments=arguments))
    assert s.ending.stage is Stage.SPEAKING
    assert s.bad_input == {"realtime.bad_tool_arguments": 1}


def test_min_speech_a_commit_with_a_malformed_item_id_asks_for_no_answer() -> None:
    """Before: the id was taken for "no id", so a commit of the caller's noise was
    answered as a turn."""
    s = live(quiet(**_MIN_SPEECH))
    realtime(s, 80, response_done("resp_1"))
    ev = {"type": "input_audio_buffer.committed", "item_id": ["u1"]}
    assert realtime(s, 100, ev) == []
    assert s.bad_input == {"realtime.malformed_committed": 1}


@pytest.mark.parametrize(
    "event",
    [
        function_call("end_call"),
        response_done("resp_1", "failed"),
        {"type": "error", "error": {"code": "insufficient_quota", "event_id": "x"}},
        {"type": "input_audio_buffer.committed", "item_id": "u1"},
    ],
    ids=["tool_call", "failed_response", "error", "commit"],
)
@pytest.mark.parametrize("phase", ["waiting_start", "connecting"])
def test_realtime_events_before_the_socket_is_open_are_bad_input(
    event: dict[str, object], phase: str
) -> None:
    """No socket is open to have sent them. Before: a tool call there started an ending
    whose timer then ended the call along a row its phase doesn't have (IllegalTransition:
    a crash), found by the property tests."""
    s = CallSession(quiet(tools=("end_call",), **_MIN_SPEECH))
    s.opened(0)
    if phase == "connecting":
        twilio(s, 1, start_msg())
    for n in range(3):
        assert realtime(s, 10 + n, event) == []
    assert s.bad_input == {"realtime.event_before_open": 3}
    assert s.ending.stage is Stage.NONE and not s.responding
    s.advance(60_000)  # the start or ready timer ends it, along its own row
    ended_by = {"waiting_start": "no_start", "connecting": "realtime_unavailable"}
    assert s.done and s.end_detail == ended_by[phase]


@pytest.mark.parametrize(
    "answer",
    [{"status": "200"}, {"status": [200]}, {"status": True}, "ok", None, {"status": None}],
    ids=["str", "list", "bool", "not_an_object", "none", "null_status"],
)
def test_a_rest_answer_out_of_shape_counts_as_no_answer_and_is_retried(answer: object) -> None:
    s = live(quiet(tools=("end_call",), rest_available=True))
    realtime(s, 100, function_call("end_call"))
    play(s, 110, "item_bye", 1)
    realtime(s, 120, response_done("resp_1"))
    assert any(isinstance(a, RestRequest) for a in fire(s, Timer.LAST_WORDS))
    unreachable = Measure(Metric.REST, labels=("hangup", "unreachable"))
    assert s.feed(200, "rest", {"response": answer}) == [unreachable]
    assert s.bad_input == {"rest.malformed_answer": 1}
    assert s.out.timers[Timer.REST_RETRY] == 700  # retried, as if no answer came
    assert any(isinstance(a, RestRequest) for a in fire(s, Timer.REST_RETRY))


def test_a_barge_in_cuts_off_audio_whose_response_was_never_announced() -> None:
    """`response.created` lost (or bad input): the clear flushed that response's audio and
    the cancel stops it, so its chunks still on their way must not start playing again
    (found by the property tests: invariant (c))."""
    s = live(quiet())
    play(s, 100, "item_z", 3, response="resp_9")  # resp_9 never had a response.created
    out = to_twilio(realtime(s, 200, speech_started()))
    assert [m["event"] for m in out] == ["clear"]
    assert to_twilio(realtime(s, 210, delta("item_z", response="resp_9"))) == []
    assert to_twilio(realtime(s, 220, delta("item_y", response="resp_9"))) == []
