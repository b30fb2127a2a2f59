"""Endings and nudges in the core: tools, last words, REST outcomes, silence, limits, DTMF."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import pytest

from app.call.actions import Action, CloseRealtime, CloseTwilio, Measure, Metric, RestRequest
from app.call.ending import MAX_ARGUMENTS_CHARS, REST_BACKOFF_MS, STOP_GRACE_MS, tool_reason
from app.call.nudges import MAX_DURATION_GRACE_MS
from app.call.outbox import Timer
from app.call.session import CallSession
from app.call.state import Stage
from tests.core import (
    STREAM,
    delta,
    fire,
    function_call,
    greeted,
    live,
    mark_msg,
    play,
    quiet,
    realtime,
    response_done,
    rest,
    socket,
    start_msg,
    to_realtime,
    twilio,
)

TOOLS = greeted(
    tools=("end_call", "transfer_call"), rest_available=True, transfer_number="+15550001234"
)
LAST_WORDS_MS = TOOLS.playout_timeout_ms
HANG_UP = RestRequest("hangup", {"Status": "completed"})


def created(rid: str) -> dict[str, Any]:
    """`response.created` without metadata: taken for ours when one of ours is in flight."""
    return {"type": "response.created", "response": {"id": rid}}


def speech(start_ms: int | None = None) -> dict[str, Any]:
    ev: dict[str, Any] = {"type": "input_audio_buffer.speech_started"}
    if start_ms is not None:
        ev["audio_start_ms"] = start_ms
    return ev


def rests(actions: list[Action]) -> list[RestRequest]:
    return [a for a in actions if isinstance(a, RestRequest)]


def echo_all(s: CallSession, now: float, names: list[str]) -> list[Action]:
    out: list[Action] = []
    for name in names:
        out += twilio(s, now, mark_msg(name))
    return out


def test_hang_up_comes_only_after_the_last_word_has_played() -> None:
    s = live(TOOLS)
    marks = play(s, 100, "item_a", 10)  # "Goodbye, have a nice day."
    out = realtime(s, 110, function_call("end_call"))
    (output,) = to_realtime(out)
    assert (
        output["item"]["type"] == "function_call_output" and output["item"]["call_id"] == "call_1"
    )
    out = realtime(s, 120, response_done("resp_1"))
    # The bound counts from when the 1000 ms still queued will have played.
    assert not rests(out) and s.out.timers[Timer.LAST_WORDS] == 120 + 1000 + LAST_WORDS_MS
    assert not rests(echo_all(s, 500, marks[:-1]))  # 900 ms played: not yet
    out = twilio(s, 1100, mark_msg(marks[-1]))
    assert rests(out) == [HANG_UP]
    assert Timer.LAST_WORDS not in s.out.timers
    out = rest(s, 1300, 200)
    assert CloseRealtime("bot_hung_up") in out
    assert s.out.timers == {Timer.STOP_GRACE: 1300 + STOP_GRACE_MS} == {Timer.STOP_GRACE: 4300}
    assert not any(isinstance(a, CloseTwilio) for a in out)
    # Twilio ends the stream after the REST update: the expected end, not a failure.
    socket(s, 1310, "openai", "closed", code=1000, reason="")
    out = twilio(s, 1400, {"event": "stop", "streamSid": STREAM})
    assert not any(isinstance(a, CloseTwilio) for a in out)
    assert s.done and s.summary()["ended"] == "bot_hung_up"


def test_a_tool_call_without_words_asks_for_closing_words_first() -> None:
    s = live(TOOLS)
    realtime(s, 100, function_call("transfer_call"))
    events = to_realtime(realtime(s, 110, response_done("resp_1")))
    assert events[-1]["type"] == "response.create"
    assert "transferring" in events[-1]["response"]["instructions"]
    realtime(s, 120, created("resp_2"))
    marks = play(s, 130, "item_b", 5, response="resp_2")
    assert not rests(realtime(s, 140, response_done("resp_2")))
    (request,) = rests(echo_all(s, 700, marks))
    dial = ET.fromstring(request.params["Twiml"]).find("Dial")
    assert request.kind == "transfer" and dial is not None and dial.text == "+15550001234"


def test_an_interrupted_function_call_is_not_run() -> None:
    s = live(TOOLS)
    cancelled = Measure(Metric.TOOL_CALL, labels=("end_call", "cancelled"))
    assert realtime(s, 100, function_call("end_call", status="incomplete")) == [cancelled]
    assert not s.ending.active


def test_barge_in_during_the_goodbye_calls_the_hang_up_off() -> None:
    s = live(TOOLS)
    marks = play(s, 100, "item_a", 20)
    realtime(s, 110, function_call("end_call"))
    realtime(s, 120, response_done("resp_1"))
    echo_all(s, 500, marks[:5])
    out = realtime(s, 600, {**speech(), "item_id": "u"})
    told = [e for e in to_realtime(out) if e["type"] == "conversation.item.create"]
    assert told and "called off" in told[0]["item"]["content"][0]["text"]
    assert not s.ending.active
    assert not rests(echo_all(s, 700, marks[5:]))  # cleared echoes: nothing happens
    assert Timer.LAST_WORDS not in s.out.timers  # the last-words wait is over
    assert not rests(s.advance(40_000))


def test_rest_5xx_is_retried_with_backoff_and_20404_counts_as_done() -> None:
    s = live(TOOLS)
    realtime(s, 100, function_call("end_call"))
    realtime(s, 110, response_done("resp_1"))
    realtime(s, 115, created("resp_2"))
    # The closing words: nothing audible, act now.
    assert rests(realtime(s, 120, response_done("resp_2")))
    assert not rests(rest(s, 130, 503, 20503, "busy"))
    assert s.out.timers[Timer.REST_RETRY] == 130 + 500 == 130 + REST_BACKOFF_MS[0]
    assert rests(fire(s, Timer.REST_RETRY)) == [HANG_UP]  # at 630
    assert not rests(rest(s, 640, 429, None, "slow down"))
    assert s.out.timers[Timer.REST_RETRY] == 640 + 1000 == 640 + REST_BACKOFF_MS[1]
    assert rests(fire(s, Timer.REST_RETRY))  # at 1640
    out = rest(s, 1700, 404, 20404, "not found")
    assert CloseRealtime("bot_hung_up") in out


def test_other_rest_failures_end_the_call_through_the_media_stream() -> None:
    s = live(TOOLS)
    realtime(s, 100, function_call("end_call"))
    realtime(s, 110, response_done("resp_1"))
    realtime(s, 115, created("resp_2"))
    realtime(s, 120, response_done("resp_2"))
    out = rest(s, 130, 401, 20003, "auth")
    assert CloseTwilio("rest_hangup_failed") in out
    assert s.summary()["ended"] == "failure"


def test_last_words_wait_is_bounded() -> None:
    s = live(TOOLS)
    play(s, 100, "item_a", 10)
    realtime(s, 110, function_call("end_call"))
    realtime(s, 120, response_done("resp_1"))
    # Twilio never echoes the last mark: after the bound, act anyway. The bound is the
    # audio still to play (1000 ms queued) plus LAST_WORDS_TIMEOUT_SECONDS, so a long
    # goodbye (or voicemail) generated faster than real time is never cut by it.
    assert s.deadline == 120 + 1000 + LAST_WORDS_MS == 31_120
    assert rests(fire(s, Timer.LAST_WORDS))


def test_silence_reprompts_count_from_playout_then_hang_up_politely() -> None:
    s = live(quiet(silence_reprompt_ms=8000, silence_max_reprompts=1, rest_available=True))
    marks = play(s, 100, "item_a", 10)
    realtime(s, 200, response_done("resp_1"))
    assert Timer.SILENCE not in s.out.timers  # generated, but not yet heard
    echo_all(s, 1100, marks)  # the greeting has finished playing at 1100
    assert s.out.timers[Timer.SILENCE] == 1100 + 8000
    events = to_realtime(fire(s, Timer.SILENCE))  # at 9100
    assert [e["type"] for e in events] == ["conversation.item.create", "response.create"]
    realtime(s, 9110, created("resp_2"))
    m2 = play(s, 9120, "item_b", 5, response="resp_2")
    realtime(s, 9130, response_done("resp_2"))
    echo_all(s, 9700, m2)
    assert s.out.timers[Timer.SILENCE] == 9700 + 8000
    events = to_realtime(fire(s, Timer.SILENCE))  # at 17_700
    assert "goodbye" in events[-1]["response"]["instructions"]
    realtime(s, 17_710, created("resp_3"))
    m3 = play(s, 17_720, "item_c", 3, response="resp_3")
    realtime(s, 17_730, response_done("resp_3"))
    assert rests(echo_all(s, 18_100, m3))
    assert s.summary()["reprompts"] == 1


def test_caller_speech_resets_the_silence_clock() -> None:
    s = live(quiet(silence_reprompt_ms=5000))
    realtime(s, 100, response_done("resp_1"))
    assert s.out.timers[Timer.SILENCE] == 5100
    realtime(s, 200, {**speech(), "item_id": "u"})
    assert Timer.SILENCE not in s.out.timers  # cancelled


def test_max_duration_wraps_up_and_ends_after_the_last_word() -> None:
    s = CallSession(greeted(max_call_ms=60_000, rest_available=True))
    twilio(s, 1, start_msg())
    socket(s, 10, "openai", "open")
    assert s.out.timers[Timer.MAX_DURATION] == 60_001  # counted from the start
    realtime(s, 20, {"type": "session.updated"})  # else the ready timer ends the call first
    (told,) = to_realtime(fire(s, Timer.MAX_DURATION))  # at 60_001
    assert told["item"]["role"] == "system"
    # The greeting is still active: the wrap-up response is asked for after it.
    realtime(s, 60_010, created("resp_g"))
    after_greeting = to_realtime(realtime(s, 60_020, response_done("resp_g")))
    assert after_greeting[-1]["type"] == "response.create"
    realtime(s, 60_030, created("resp_w"))
    marks = play(s, 60_040, "item_w", 4, response="resp_w")
    realtime(s, 60_050, response_done("resp_w"))
    assert rests(echo_all(s, 60_500, marks))
    rest(s, 60_600, 200)
    socket(s, 60_700, "twilio", "closed")
    assert s.summary()["ended"] == "max_duration"


def test_dtmf_reaches_the_model_and_digits_are_validated() -> None:
    s = live(quiet())
    realtime(s, 100, response_done("resp_1"))
    dtmf = {"event": "dtmf", "streamSid": STREAM, "dtmf": {"track": "inbound_track", "digit": "5"}}
    events = to_realtime(twilio(s, 200, dtmf))
    assert events[0]["item"]["content"][0]["text"] == "The caller pressed 5 on their keypad."
    assert events[1]["type"] == "response.create" and "instructions" not in events[1]["response"]
    bad = {"event": "dtmf", "streamSid": STREAM, "dtmf": {"digit": "55x"}}
    assert twilio(s, 300, bad) == [] and "twilio.malformed_dtmf" in s.bad_input
    off = live(quiet(dtmf_to_model=False))
    assert to_realtime(twilio(off, 200, dtmf)) == []


def test_caller_speaking_before_the_goodbye_is_audible_calls_the_hang_up_off() -> None:
    s = live(TOOLS)
    realtime(s, 100, function_call("end_call"))
    realtime(s, 110, response_done("resp_1"))  # no words: the bridge asks for the goodbye
    realtime(s, 120, created("resp_2"))
    # The caller speaks before any of the goodbye is heard; the service cancels it.
    realtime(s, 130, {**speech(), "item_id": "u"})
    assert not s.ending.active
    assert not rests(realtime(s, 140, response_done("resp_2", status="cancelled")))


def test_min_speech_last_words_wait_for_the_callers_unclassified_speech() -> None:
    cfg = quiet(tools=("end_call",), rest_available=True, interrupt_min_speech_ms=1000)
    for end_ms, hangs_up in ((1900, True), (3500, False)):
        s = live(cfg)
        marks = play(s, 100, "item_a", 10)
        realtime(s, 110, function_call("end_call"))
        realtime(s, 120, response_done("resp_1"))
        echo_all(s, 500, marks[:8])
        realtime(s, 800, speech(700))  # over the goodbye, not yet classified
        assert not rests(echo_all(s, 1100, marks[8:]))  # last word played: wait
        stopped = {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": end_ms}
        out = realtime(s, 1200, stopped)
        assert bool(rests(out)) is hangs_up  # noise: hang up now; a real turn: called off
        assert s.ending.active is hangs_up


def test_the_time_limit_survives_one_barge_in_then_is_hard() -> None:
    s = live(quiet(max_call_ms=60_000, rest_available=True))
    realtime(s, 100, response_done("resp_1"))

    def wrap_up(at: float, rid: str) -> list[str]:
        assert s.out.timers[Timer.MAX_DURATION] == at
        fire(s, Timer.MAX_DURATION)
        realtime(s, at + 1, created(rid))
        return play(s, at + 2, f"item_{rid}", 20, response=rid)

    wrap_up(60_001, "resp_w1")  # the call started at 1
    out = realtime(s, 60_500, speech())
    assert s.out.timers[Timer.MAX_DURATION] == 60_500 + MAX_DURATION_GRACE_MS  # one grace
    assert not s.ending.active and not rests(out)
    realtime(s, 60_510, response_done("resp_w1", status="cancelled"))
    wrap_up(120_500, "resp_w2")
    out = realtime(s, 121_000, speech())
    assert rests(out) == [HANG_UP]  # hard limit


def test_a_refused_response_request_is_retried_after_the_active_one() -> None:
    s = live(quiet())
    realtime(s, 100, response_done("resp_1"))
    dtmf = {"event": "dtmf", "streamSid": STREAM, "dtmf": {"digit": "1"}}
    create = to_realtime(twilio(s, 200, dtmf))[-1]
    busy = {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "code": "conversation_already_has_active_response",
            "event_id": create["event_id"],
        },
    }
    vad = {"id": "resp_vad", "metadata": None}  # the service's own response (server VAD)
    realtime(s, 210, {"type": "response.created", "response": vad})
    refused = Measure(Metric.REALTIME_ERROR, labels=("conversation_already_has_active_response",))
    assert realtime(s, 211, busy) == [refused]  # counted, nothing sent
    again = to_realtime(realtime(s, 300, response_done("resp_vad")))
    assert [e["type"] for e in again] == ["response.create"]
    ours = {"id": "resp_2", "metadata": again[0]["response"]["metadata"]}
    realtime(s, 310, {"type": "response.created", "response": ours})
    realtime(s, 400, response_done("resp_2"))
    assert not s.responding  # recognised as ours: no request is left waiting


def test_failing_responses_hand_the_call_to_the_fallback() -> None:
    s = live(quiet())
    quota = response_done(
        "resp_1",
        "failed",
        status_details={"error": {"type": "requests", "code": "insufficient_quota"}},
    )
    out = realtime(s, 100, quota)
    assert CloseTwilio("responses_failing") in out
    assert s.summary()["ended"] == "failure"
    # Transient failures: the first is survived, two in a row are not.
    s2 = live(quiet())
    out = realtime(s2, 100, response_done("resp_1", "failed"))
    assert not any(isinstance(a, CloseTwilio) for a in out)
    realtime(s2, 110, created("resp_2"))
    out = realtime(s2, 120, response_done("resp_2", "failed"))
    assert CloseTwilio("responses_failing") in out


def test_a_key_press_while_connecting_reaches_the_model_once_the_socket_opens() -> None:
    s = CallSession(quiet(greeting="Greet."))
    twilio(s, 0, start_msg())
    dtmf = {"event": "dtmf", "streamSid": STREAM, "dtmf": {"digit": "3"}}
    assert to_realtime(twilio(s, 50, dtmf)) == []  # nothing to send it on yet
    events = to_realtime(socket(s, 200, "openai", "open"))
    kinds = [e["type"] for e in events]
    assert kinds == ["session.update", "conversation.item.create", "response.create"]
    assert "pressed 3" in events[1]["item"]["content"][0]["text"]
    # The key press is answered; the greeting is not queued behind it.
    ours = {"id": "resp_k", **events[2]["response"]}
    realtime(s, 210, {"type": "response.created", "response": ours})
    assert not to_realtime(realtime(s, 900, response_done("resp_k")))
    assert not s.responding


def test_min_speech_caller_speaking_before_the_goodbye_is_audible_calls_it_off() -> None:
    s = live(greeted(tools=("end_call",), rest_available=True, interrupt_min_speech_ms=800))
    realtime(s, 100, function_call("end_call"))
    # No words yet: the closing words are requested.
    (create,) = to_realtime(realtime(s, 110, response_done("resp_1")))
    meta = create["response"]["metadata"]
    assert meta == {"bridge_request": "bridge_response_2"}  # the greeting was the first
    realtime(s, 120, speech(100))  # the bot is silent: this is a turn
    assert not s.ending.active
    # The goodbye asked for is withdrawn: cancelled as it starts, its audio never played.
    started_resp = {"id": "resp_2", "metadata": meta}
    cancel = to_realtime(realtime(s, 130, {"type": "response.created", "response": started_resp}))
    assert cancel == [{"type": "response.cancel"}]
    assert realtime(s, 140, delta("item_b", response="resp_2")) == []
    assert not rests(realtime(s, 150, response_done("resp_2", status="cancelled")))


def test_a_confirmed_turn_after_the_last_word_calls_the_ending_off() -> None:
    s = live(greeted(tools=("end_call",), rest_available=True, interrupt_min_speech_ms=800))
    marks = play(s, 100, "item_a", 5)
    realtime(s, 110, function_call("end_call"))
    realtime(s, 120, response_done("resp_1"))
    realtime(s, 300, speech(0))
    assert not rests(echo_all(s, 600, marks))  # last word played while the caller talks
    assert s.ending.waiting_for_caller
    assert s.out.timers[Timer.CONFIRM] == 300 + 800 + 500
    fire(s, Timer.CONFIRM)  # ...and the caller is still talking: a real turn
    assert not s.ending.active
    assert Timer.LAST_WORDS not in s.out.timers
    assert not rests(s.advance(120 + LAST_WORDS_MS))


def test_nothing_left_to_play_at_response_done_still_waits_for_the_caller() -> None:
    s = live(greeted(tools=("end_call",), rest_available=True, interrupt_min_speech_ms=800))
    marks = play(s, 100, "item_a", 5)
    realtime(s, 110, function_call("end_call"))
    realtime(s, 300, speech(0))
    echo_all(s, 600, marks)  # played out before the response is even done
    assert not rests(realtime(s, 650, response_done("resp_1")))
    assert s.ending.waiting_for_caller and s.ending.stage is Stage.WAITING_FOR_CALLER


def test_calling_the_time_limit_off_withdraws_its_queued_wrap_up() -> None:
    s = live(quiet(max_call_ms=60_000, rest_available=True))
    realtime(s, 100, response_done("resp_1"))
    realtime(s, 59_000, created("resp_a"))
    play(s, 59_010, "item_a", 30, response="resp_a")
    fire(s, Timer.MAX_DURATION)  # the answer is still active: wrap-up queued
    realtime(s, 60_100, speech())  # barge-in
    after = to_realtime(realtime(s, 60_200, response_done("resp_a", status="cancelled")))
    assert not [e for e in after if e["type"] == "response.create"]  # no goodbye now


def test_a_failing_closing_response_ends_the_call_without_also_acting() -> None:
    s = live(TOOLS)
    realtime(s, 100, function_call("transfer_call"))
    realtime(s, 110, response_done("resp_1"))
    realtime(s, 120, created("resp_2"))
    failed = response_done(
        "resp_2", "failed", status_details={"error": {"code": "insufficient_quota"}}
    )
    out = realtime(s, 130, failed)
    assert not rests(out) and CloseTwilio("responses_failing") in out


def test_a_refused_greeting_is_dropped_when_the_service_answers_by_itself() -> None:
    s = CallSession(quiet(greeting="Greet."))
    twilio(s, 0, start_msg())
    create = to_realtime(socket(s, 10, "openai", "open"))[-1]
    vad = {"id": "resp_vad", "metadata": None}
    realtime(s, 20, {"type": "response.created", "response": vad})
    refusal = {
        "type": "error",
        "error": {
            "code": "conversation_already_has_active_response",
            "event_id": create["event_id"],
        },
    }
    realtime(s, 21, refusal)
    assert not to_realtime(realtime(s, 900, response_done("resp_vad")))  # no late greeting


def test_a_goodbye_whose_response_never_finishes_is_bounded() -> None:
    # A tool call naming no response (or a response.done that never comes) must not leave
    # the ending waiting for good, with the time limit postponing itself behind it.
    cfg = quiet(max_call_ms=60_000, rest_available=True, tools=("end_call",))
    s = live(cfg)
    ev = function_call("end_call")
    ev.pop("response_id")
    realtime(s, 80, ev)
    assert s.ending.stage is Stage.SPEAKING
    assert s.out.timers[Timer.LAST_WORDS] == 80 + cfg.playout_timeout_ms
    out = s.advance(80 + cfg.playout_timeout_ms)
    assert s.ending.committed and any(isinstance(a, RestRequest) for a in out)


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        ('{"reason": "the caller is done"}', "the caller is done"),
        (None, "unspecified"),
        ("{}", "unspecified"),
        ('{"reason": ""}', "unspecified"),
        ('{"reason": ["a", "b"]}', "unspecified"),  # not a string: not printed
        ('{"reason": ' + "[" * 900 + "]" * 900 + "}", "unspecified"),
        ('["reason"]', "unspecified"),
        ('{"reason": "' + "x" * 300 + '"}', "x" * 200),
        ("not json", None),
        ('{"reason": "cut', None),  # an interrupted call's arguments
        ("[" * 100_000, None),  # json: RecursionError, not ValueError
        ('{"a":' * 2000 + "1" + "}" * 2000, None),  # past orjson's depth limit
        ('{"reason": "' + "x" * MAX_ARGUMENTS_CHARS + '"}', None),  # too long to read
    ],
    ids=lambda v: None,
)
def test_tool_reason_reads_the_models_arguments_and_never_raises(
    arguments: str | None, reason: str | None
) -> None:
    assert tool_reason(arguments) == reason
