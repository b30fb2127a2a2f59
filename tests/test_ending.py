"""Endings and nudges in the core: tools, last words, REST outcomes, silence, limits, DTMF."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from app.call.actions import Action, CloseRealtime, CloseTwilio, RestRequest, SetTimer
from app.call.bargein import CONFIRM_TIMER
from app.call.config import CallConfig
from app.call.ending import PLAYOUT_TIMER, RETRY_TIMER, STOP_GRACE_TIMER
from app.call.nudges import MAX_DURATION_TIMER, SILENCE_TIMER
from app.call.session import CallSession
from tests.test_session import STREAM, delta, live, mark_msg, play, start_msg, to_realtime

TOOLS = CallConfig(
    tools=("end_call", "transfer_call"), rest_available=True, transfer_number="+15550001234"
)


def function_call(name: str, status: str = "completed", response: str = "resp_1") -> dict[str, Any]:
    return {
        "type": "response.output_item.done",
        "response_id": response,
        "output_index": 1,
        "item": {
            "id": "item_fc",
            "type": "function_call",
            "status": status,
            "name": name,
            "call_id": "call_1",
            "arguments": '{"reason": "caller said bye"}',
        },
    }


def done(response: str = "resp_1", status: str = "completed") -> dict[str, Any]:
    return {"type": "response.done", "response": {"id": response, "status": status}}


def rests(actions: list[Action]) -> list[RestRequest]:
    return [a for a in actions if isinstance(a, RestRequest)]


def echo_all(s: CallSession, now: float, names: list[str]) -> list[Action]:
    out: list[Action] = []
    for name in names:
        out += s.twilio_message(now, mark_msg(name))
    return out


def test_hang_up_comes_only_after_the_last_word_has_played() -> None:
    s = live(TOOLS)
    marks = play(s, 100, "item_a", 10)  # "Goodbye, have a nice day."
    out = s.realtime_message(110, function_call("end_call"))
    (output,) = to_realtime(out)
    assert (
        output["item"]["type"] == "function_call_output" and output["item"]["call_id"] == "call_1"
    )
    out = s.realtime_message(120, done())
    assert not rests(out) and SetTimer(PLAYOUT_TIMER, 120 + 30_000) in out
    assert not rests(echo_all(s, 500, marks[:-1]))  # 900 ms played: not yet
    out = s.twilio_message(1100, mark_msg(marks[-1]))
    assert rests(out) == [RestRequest("hangup", {"Status": "completed"})]
    out = s.rest_result(1300, 200, None, "")
    assert CloseRealtime("bot_hung_up") in out and SetTimer(STOP_GRACE_TIMER, 4300) in out
    assert not any(isinstance(a, CloseTwilio) for a in out)
    # Twilio ends the stream after the REST update: the expected end, not a failure.
    s.realtime_closed(1310, 1000, "")
    out = s.twilio_message(1400, {"event": "stop", "streamSid": STREAM})
    assert not any(isinstance(a, CloseTwilio) for a in out)
    assert s.done and s.summary()["ended"] == "bot_hung_up"


def test_a_tool_call_without_words_asks_for_closing_words_first() -> None:
    s = live(TOOLS)
    s.realtime_message(100, function_call("transfer_call"))
    events = to_realtime(s.realtime_message(110, done()))
    assert events[-1]["type"] == "response.create"
    assert "transferring" in events[-1]["response"]["instructions"]
    s.realtime_message(120, {"type": "response.created", "response": {"id": "resp_2"}})
    marks = play(s, 130, "item_b", 5, response="resp_2")
    assert not rests(s.realtime_message(140, done("resp_2")))
    (request,) = rests(echo_all(s, 700, marks))
    dial = ET.fromstring(request.params["Twiml"]).find("Dial")
    assert request.kind == "transfer" and dial is not None and dial.text == "+15550001234"


def test_an_interrupted_function_call_is_not_run() -> None:
    s = live(TOOLS)
    assert s.realtime_message(100, function_call("end_call", status="incomplete")) == []
    assert not s.ending.active


def test_barge_in_during_the_goodbye_calls_the_hang_up_off() -> None:
    s = live(TOOLS)
    marks = play(s, 100, "item_a", 20)
    s.realtime_message(110, function_call("end_call"))
    s.realtime_message(120, done())
    echo_all(s, 500, marks[:5])
    out = s.realtime_message(600, {"type": "input_audio_buffer.speech_started", "item_id": "u"})
    told = [e for e in to_realtime(out) if e["type"] == "conversation.item.create"]
    assert told and "called off" in told[0]["item"]["content"][0]["text"]
    assert not s.ending.active
    assert not rests(echo_all(s, 700, marks[5:]))  # cleared echoes: nothing happens
    assert not rests(s.timer(40_000, PLAYOUT_TIMER))


def test_rest_5xx_is_retried_with_backoff_and_20404_counts_as_done() -> None:
    s = live(TOOLS)
    s.realtime_message(100, function_call("end_call"))
    s.realtime_message(110, done())
    s.realtime_message(115, {"type": "response.created", "response": {"id": "resp_2"}})
    s.realtime_message(120, done("resp_2"))  # closing words: nothing audible, act now
    assert SetTimer(RETRY_TIMER, 130 + 500) in s.rest_result(130, 503, 20503, "busy")
    assert rests(s.timer(630, RETRY_TIMER)) == [RestRequest("hangup", {"Status": "completed"})]
    assert SetTimer(RETRY_TIMER, 640 + 1000) in s.rest_result(640, 429, None, "slow down")
    assert rests(s.timer(1640, RETRY_TIMER))
    out = s.rest_result(1700, 404, 20404, "not found")
    assert CloseRealtime("bot_hung_up") in out


def test_other_rest_failures_end_the_call_through_the_media_stream() -> None:
    s = live(TOOLS)
    s.realtime_message(100, function_call("end_call"))
    s.realtime_message(110, done())
    s.realtime_message(115, {"type": "response.created", "response": {"id": "resp_2"}})
    s.realtime_message(120, done("resp_2"))
    out = s.rest_result(130, 401, 20003, "auth")
    assert CloseTwilio("rest_hangup_failed") in out
    assert s.summary()["ended"] == "failure"


def test_last_words_wait_is_bounded() -> None:
    s = live(TOOLS)
    play(s, 100, "item_a", 10)
    s.realtime_message(110, function_call("end_call"))
    s.realtime_message(120, done())
    # Twilio never echoes the last mark: after the bound, act anyway.
    assert rests(s.timer(30_120, PLAYOUT_TIMER))


def test_silence_reprompts_count_from_playout_then_hang_up_politely() -> None:
    cfg = CallConfig(
        silence_reprompt_ms=8000, silence_max_reprompts=1, rest_available=True, greeting=""
    )
    s = live(cfg)
    marks = play(s, 100, "item_a", 10)
    assert SetTimer(SILENCE_TIMER, 200 + 8000) not in s.realtime_message(200, done())
    out = echo_all(s, 1100, marks)  # the greeting has finished playing at 1100
    assert SetTimer(SILENCE_TIMER, 1100 + 8000) in out
    events = to_realtime(s.timer(9100, SILENCE_TIMER))
    assert [e["type"] for e in events] == ["conversation.item.create", "response.create"]
    s.realtime_message(9110, {"type": "response.created", "response": {"id": "resp_2"}})
    m2 = play(s, 9120, "item_b", 5, response="resp_2")
    s.realtime_message(9130, done("resp_2"))
    assert SetTimer(SILENCE_TIMER, 9700 + 8000) in echo_all(s, 9700, m2)
    events = to_realtime(s.timer(17_700, SILENCE_TIMER))
    assert "goodbye" in events[-1]["response"]["instructions"]
    s.realtime_message(17_710, {"type": "response.created", "response": {"id": "resp_3"}})
    m3 = play(s, 17_720, "item_c", 3, response="resp_3")
    s.realtime_message(17_730, done("resp_3"))
    assert rests(echo_all(s, 18_100, m3))
    assert s.summary()["reprompts"] == 1


def test_caller_speech_resets_the_silence_clock() -> None:
    s = live(CallConfig(silence_reprompt_ms=5000, greeting=""))
    s.realtime_message(100, done())
    out = s.realtime_message(200, {"type": "input_audio_buffer.speech_started", "item_id": "u"})
    assert any(getattr(a, "name", "") == SILENCE_TIMER for a in out)  # cancelled


def test_max_duration_wraps_up_and_ends_after_the_last_word() -> None:
    cfg = CallConfig(max_call_ms=60_000, rest_available=True)
    s = CallSession(cfg)
    out = s.twilio_message(1, start_msg())
    assert SetTimer(MAX_DURATION_TIMER, 60_001) in out
    s.realtime_open(10)
    (told,) = to_realtime(s.timer(60_001, MAX_DURATION_TIMER))
    assert told["item"]["role"] == "system"
    # The greeting is still active: the wrap-up response is asked for after it.
    s.realtime_message(60_010, {"type": "response.created", "response": {"id": "resp_g"}})
    assert to_realtime(s.realtime_message(60_020, done("resp_g")))[-1]["type"] == "response.create"
    s.realtime_message(60_030, {"type": "response.created", "response": {"id": "resp_w"}})
    marks = play(s, 60_040, "item_w", 4, response="resp_w")
    s.realtime_message(60_050, done("resp_w"))
    assert rests(echo_all(s, 60_500, marks))
    s.rest_result(60_600, 200, None, "")
    s.twilio_closed(60_700)
    assert s.summary()["ended"] == "max_duration"


def test_dtmf_reaches_the_model_and_digits_are_validated() -> None:
    s = live(CallConfig(greeting=""))
    s.realtime_message(100, done())
    dtmf = {"event": "dtmf", "streamSid": STREAM, "dtmf": {"track": "inbound_track", "digit": "5"}}
    events = to_realtime(s.twilio_message(200, dtmf))
    assert events[0]["item"]["content"][0]["text"] == "The caller pressed 5 on their keypad."
    assert events[1]["type"] == "response.create" and "instructions" not in events[1]["response"]
    bad = {"event": "dtmf", "streamSid": STREAM, "dtmf": {"digit": "55x"}}
    assert s.twilio_message(300, bad) == [] and "twilio.malformed_dtmf" in s.bad_input
    off = live(CallConfig(greeting="", dtmf_to_model=False))
    assert to_realtime(off.twilio_message(200, dtmf)) == []


def test_caller_speaking_before_the_goodbye_is_audible_calls_the_hang_up_off() -> None:
    s = live(TOOLS)
    s.realtime_message(100, function_call("end_call"))
    s.realtime_message(110, done())  # no words: the bridge asks for the goodbye
    s.realtime_message(120, {"type": "response.created", "response": {"id": "resp_2"}})
    # The caller speaks before any of the goodbye is heard; the service cancels it.
    s.realtime_message(130, {"type": "input_audio_buffer.speech_started", "item_id": "u"})
    assert not s.ending.active
    assert not rests(s.realtime_message(140, done("resp_2", status="cancelled")))


def test_min_speech_last_words_wait_for_the_callers_unclassified_speech() -> None:
    cfg = CallConfig(
        tools=("end_call",), rest_available=True, interrupt_min_speech_ms=1000, greeting=""
    )
    for end_ms, hangs_up in ((1900, True), (3500, False)):
        s = live(cfg)
        marks = play(s, 100, "item_a", 10)
        s.realtime_message(110, function_call("end_call"))
        s.realtime_message(120, done())
        echo_all(s, 500, marks[:8])
        started = {"type": "input_audio_buffer.speech_started", "audio_start_ms": 700}
        s.realtime_message(800, started)  # over the goodbye, not yet classified
        assert not rests(echo_all(s, 1100, marks[8:]))  # last word played: wait
        stopped = {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": end_ms}
        out = s.realtime_message(1200, stopped)
        assert bool(rests(out)) is hangs_up  # noise: hang up now; a real turn: called off
        assert s.ending.active is hangs_up


def test_the_time_limit_survives_one_barge_in_then_is_hard() -> None:
    s = live(CallConfig(max_call_ms=60_000, rest_available=True, greeting=""))
    s.realtime_message(100, done())

    def wrap_up(now: float, rid: str) -> list[str]:
        s.timer(now, MAX_DURATION_TIMER)
        s.realtime_message(now + 1, {"type": "response.created", "response": {"id": rid}})
        return play(s, now + 2, f"item_{rid}", 20, response=rid)

    wrap_up(60_000, "resp_w1")
    out = s.realtime_message(60_500, {"type": "input_audio_buffer.speech_started"})
    assert SetTimer(MAX_DURATION_TIMER, 60_500 + 60_000) in out  # one grace period
    assert not s.ending.active and not rests(out)
    s.realtime_message(60_510, done("resp_w1", status="cancelled"))
    wrap_up(120_500, "resp_w2")
    out = s.realtime_message(121_000, {"type": "input_audio_buffer.speech_started"})
    assert rests(out) == [RestRequest("hangup", {"Status": "completed"})]  # hard limit


def test_a_refused_response_request_is_retried_after_the_active_one() -> None:
    s = live(CallConfig(greeting=""))
    s.realtime_message(100, done())
    dtmf = {"event": "dtmf", "streamSid": STREAM, "dtmf": {"digit": "1"}}
    create = to_realtime(s.twilio_message(200, dtmf))[-1]
    busy = {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "code": "conversation_already_has_active_response",
            "event_id": create["event_id"],
        },
    }
    vad = {"id": "resp_vad", "metadata": None}  # the service's own response (server VAD)
    s.realtime_message(210, {"type": "response.created", "response": vad})
    assert s.realtime_message(211, busy) == []
    again = to_realtime(s.realtime_message(300, done("resp_vad")))
    assert [e["type"] for e in again] == ["response.create"]
    ours = {"id": "resp_2", "metadata": again[0]["response"]["metadata"]}
    s.realtime_message(310, {"type": "response.created", "response": ours})
    s.realtime_message(400, done("resp_2"))
    assert not s.responding  # recognised as ours: no request is left waiting


def test_failing_responses_hand_the_call_to_the_fallback() -> None:
    s = live(CallConfig(greeting=""))
    quota = {
        "type": "response.done",
        "response": {
            "id": "resp_1",
            "status": "failed",
            "status_details": {"error": {"type": "requests", "code": "insufficient_quota"}},
        },
    }
    out = s.realtime_message(100, quota)
    assert CloseTwilio("responses_failing") in out
    assert s.summary()["ended"] == "failure"
    # Transient failures: the first is survived, two in a row are not.
    s2 = live(CallConfig(greeting=""))
    transient = {"type": "response.done", "response": {"id": "resp_1", "status": "failed"}}
    assert not any(isinstance(a, CloseTwilio) for a in s2.realtime_message(100, transient))
    s2.realtime_message(110, {"type": "response.created", "response": {"id": "resp_2"}})
    out = s2.realtime_message(120, {**transient, "response": {"id": "resp_2", "status": "failed"}})
    assert CloseTwilio("responses_failing") in out


def test_a_key_press_while_connecting_reaches_the_model_once_the_socket_opens() -> None:
    s = CallSession(CallConfig(greeting="Greet."))
    s.twilio_message(0, start_msg())
    dtmf = {"event": "dtmf", "streamSid": STREAM, "dtmf": {"digit": "3"}}
    assert to_realtime(s.twilio_message(50, dtmf)) == []  # nothing to send it on yet
    events = to_realtime(s.realtime_open(200))
    kinds = [e["type"] for e in events]
    assert kinds == ["session.update", "conversation.item.create", "response.create"]
    assert "pressed 3" in events[1]["item"]["content"][0]["text"]
    # The key press is answered; the greeting is not queued behind it.
    s.realtime_message(210, {"type": "response.created", "response": events[2]["response"]})
    assert not to_realtime(s.realtime_message(900, done("resp_x")))


def test_min_speech_caller_speaking_before_the_goodbye_is_audible_calls_it_off() -> None:
    cfg = CallConfig(tools=("end_call",), rest_available=True, interrupt_min_speech_ms=800)
    s = live(cfg)
    s.realtime_message(100, function_call("end_call"))
    s.realtime_message(110, done())  # no words yet: closing words requested
    started = {"type": "input_audio_buffer.speech_started", "audio_start_ms": 100}
    s.realtime_message(120, started)  # the bot is silent: this is a turn
    assert not s.ending.active
    # The goodbye asked for is withdrawn: cancelled as it starts, its audio never played.
    meta = {"bridge_request": "bridge_response_2"}
    started_resp = {"id": "resp_2", "metadata": meta}
    cancel = to_realtime(
        s.realtime_message(130, {"type": "response.created", "response": started_resp})
    )
    assert cancel == [{"type": "response.cancel"}]
    assert s.realtime_message(140, delta("item_b", response="resp_2")) == []
    assert not rests(s.realtime_message(150, done("resp_2", status="cancelled")))


def test_a_confirmed_turn_after_the_last_word_calls_the_ending_off() -> None:
    cfg = CallConfig(tools=("end_call",), rest_available=True, interrupt_min_speech_ms=800)
    s = live(cfg)
    marks = play(s, 100, "item_a", 5)
    s.realtime_message(110, function_call("end_call"))
    s.realtime_message(120, done())
    s.realtime_message(300, {"type": "input_audio_buffer.speech_started", "audio_start_ms": 0})
    assert not rests(echo_all(s, 600, marks))  # last word played while the caller talks
    assert s.ending.waiting_for_caller
    s.timer(1600, CONFIRM_TIMER)  # ...and the caller is still talking: a real turn
    assert not s.ending.active
    assert not rests(s.timer(30_120, PLAYOUT_TIMER))


def test_nothing_left_to_play_at_response_done_still_waits_for_the_caller() -> None:
    cfg = CallConfig(tools=("end_call",), rest_available=True, interrupt_min_speech_ms=800)
    s = live(cfg)
    marks = play(s, 100, "item_a", 5)
    s.realtime_message(110, function_call("end_call"))
    s.realtime_message(300, {"type": "input_audio_buffer.speech_started", "audio_start_ms": 0})
    echo_all(s, 600, marks)  # played out before the response is even done
    assert not rests(s.realtime_message(650, done()))
    assert s.ending.waiting_for_caller


def test_calling_the_time_limit_off_withdraws_its_queued_wrap_up() -> None:
    s = live(CallConfig(max_call_ms=60_000, rest_available=True, greeting=""))
    s.realtime_message(100, done())
    s.realtime_message(59_000, {"type": "response.created", "response": {"id": "resp_a"}})
    play(s, 59_010, "item_a", 30, response="resp_a")
    s.timer(60_000, MAX_DURATION_TIMER)  # the answer is still active: wrap-up queued
    s.realtime_message(60_100, {"type": "input_audio_buffer.speech_started"})  # barge-in
    after = to_realtime(s.realtime_message(60_200, done("resp_a", status="cancelled")))
    assert not [e for e in after if e["type"] == "response.create"]  # no goodbye now


def test_a_failing_closing_response_ends_the_call_without_also_acting() -> None:
    s = live(TOOLS)
    s.realtime_message(100, function_call("transfer_call"))
    s.realtime_message(110, done())
    s.realtime_message(120, {"type": "response.created", "response": {"id": "resp_2"}})
    failed = {
        "type": "response.done",
        "response": {
            "id": "resp_2",
            "status": "failed",
            "status_details": {"error": {"code": "insufficient_quota"}},
        },
    }
    out = s.realtime_message(130, failed)
    assert not rests(out) and CloseTwilio("responses_failing") in out


def test_a_refused_greeting_is_dropped_when_the_service_answers_by_itself() -> None:
    s = CallSession(CallConfig(greeting="Greet."))
    s.twilio_message(0, start_msg())
    create = to_realtime(s.realtime_open(10))[-1]
    vad = {"id": "resp_vad", "metadata": None}
    s.realtime_message(20, {"type": "response.created", "response": vad})
    refusal = {
        "type": "error",
        "error": {
            "code": "conversation_already_has_active_response",
            "event_id": create["event_id"],
        },
    }
    s.realtime_message(21, refusal)
    assert not to_realtime(s.realtime_message(900, done("resp_vad")))  # no late greeting
