"""The core's figures for operators (`app.call.measures`): what each measures, and when."""

from __future__ import annotations

from app.call.actions import Action, Measure, Metric
from app.call.outbox import Timer
from app.call.session import CallSession
from tests.core import (
    dtmf_msg,
    fire,
    function_call,
    hear,
    live,
    mark_msg,
    play,
    quiet,
    realtime,
    response_created,
    response_done,
    rest,
    speech_started,
    speech_stopped,
    twilio,
)


def measures(actions: list[Action]) -> list[Measure]:
    return [a for a in actions if isinstance(a, Measure)]


def test_heard_latency_runs_from_the_turns_end_to_the_answers_first_echo() -> None:
    s = live(quiet())
    realtime(s, 1000, speech_started())
    assert measures(realtime(s, 2000, speech_stopped())) == []
    realtime(s, 2100, response_created("resp_2"))
    marks = play(s, 2300, "item_answer", 3, response="resp_2")  # sent, not yet heard
    assert s.measures.latencies_ms == []
    out = twilio(s, 2450, mark_msg(marks[0]))  # the first chunk has played
    assert measures(out) == [Measure(Metric.RESPONSE_LATENCY, 0.45)]
    later = [m for name in marks[1:] for m in measures(twilio(s, 2600, mark_msg(name)))]
    assert later == []  # once per turn
    assert s.measures.latencies_ms == [450]
    assert s.summary()["heard_latency_ms"] == 450


def test_the_greeting_answers_no_turn_and_the_answer_is_the_next_response() -> None:
    s = live(quiet())
    greeting = play(s, 100, "item_greeting", 2)  # the greeting, before any caller turn
    assert measures(hear(s, 100, greeting) and s.out.take()) == []
    realtime(s, 400, response_done("resp_1"))
    realtime(s, 500, speech_started())
    realtime(s, 900, speech_stopped())
    realtime(s, 950, response_created("resp_2"))
    answer = play(s, 1000, "item_answer", 2, response="resp_2")
    first = measures(twilio(s, 1100, mark_msg(answer[0])))
    assert first == [Measure(Metric.RESPONSE_LATENCY, 0.2)]
    assert measures(twilio(s, 1200, mark_msg(answer[1]))) == []  # once per turn


def test_a_turn_whose_answer_fails_is_unanswered_and_a_reprompt_answers_nothing() -> None:
    s = live(quiet(silence_reprompt_ms=1000))
    realtime(s, 80, response_done("resp_1"))
    realtime(s, 100, speech_started())
    realtime(s, 500, speech_stopped())
    realtime(s, 550, response_created("resp_2"))
    realtime(s, 600, response_done("resp_2", status="failed"))  # no audio: no answer
    assert measures(fire(s, Timer.SILENCE)) == [Measure(Metric.REPROMPT)]
    realtime(s, 2000, response_created("resp_3"))
    reprompt = play(s, 2100, "item_reprompt", 1, response="resp_3")
    assert measures(twilio(s, 2300, mark_msg(reprompt[0]))) == []
    assert s.measures.latencies_ms == [] and s.summary()["heard_latency_ms"] is None


def test_an_answer_to_a_key_press_is_not_an_answer_to_speech() -> None:
    s = live(quiet())
    realtime(s, 100, speech_started())
    realtime(s, 500, speech_stopped())
    twilio(s, 520, dtmf_msg("5"))  # the caller pressed a key before any answer came
    realtime(s, 550, response_created("resp_2"))
    answer = play(s, 600, "item_a", 1, response="resp_2")
    assert measures(twilio(s, 800, mark_msg(answer[0]))) == []


def test_an_answer_cut_before_it_was_heard_answers_nothing() -> None:
    s = live(quiet())
    realtime(s, 100, speech_started())
    realtime(s, 500, speech_stopped())
    realtime(s, 550, response_created("resp_2"))
    marks = play(s, 600, "item_a", 5, response="resp_2")
    realtime(s, 650, speech_started("u2"))  # barge-in before the first echo
    assert measures(twilio(s, 700, mark_msg(marks[0]))) == []  # a cleared echo
    assert s.measures.latencies_ms == []
    realtime(s, 900, speech_stopped("u2"))
    realtime(s, 950, response_created("resp_3"))
    again = play(s, 1000, "item_b", 1, response="resp_3")
    assert measures(twilio(s, 1200, mark_msg(again[0]))) == [Measure(Metric.RESPONSE_LATENCY, 0.3)]


def test_a_barge_in_reports_its_reaction_and_the_audio_never_heard() -> None:
    s = live(quiet())
    marks = play(s, 100, "item_a", 20)  # 2 s sent
    hear(s, 100, marks[:5])  # 0.5 s heard by 600
    out = realtime(s, 600, speech_started())
    assert measures(out) == [
        Measure(Metric.BARGE_IN, 0.0),  # the clear went out with the same input
        Measure(Metric.TRUNCATED_AUDIO, 1.5),
    ]
    assert s.measures.reactions_ms == [0] and s.measures.unheard_ms == 1500
    assert s.transcript.turns[0].heard_ms == 500  # type: ignore[union-attr]
    assert s.summary()["unheard_audio_ms"] == 1500


def test_under_min_speech_the_reaction_is_the_confirmation_time() -> None:
    s = live(quiet(interrupt_min_speech_ms=400))
    marks = play(s, 100, "item_a", 20)
    hear(s, 100, marks[:2])
    assert measures(realtime(s, 300, speech_started())) == []  # not yet a barge-in
    out = fire(s, Timer.CONFIRM)
    [barge] = [m for m in measures(out) if m.metric is Metric.BARGE_IN]
    assert barge.value == (s.measures.reactions_ms[0] / 1000) > 0.3


def test_rest_answers_and_tool_calls_are_counted_with_their_results() -> None:
    s = live(quiet(tools=("end_call",), rest_available=True))
    out = realtime(s, 100, function_call("end_call"))
    assert measures(out) == [Measure(Metric.TOOL_CALL, labels=("end_call", "ok"))]
    realtime(s, 110, response_done("resp_1"))
    fire(s, Timer.LAST_WORDS)  # no words came: the hang-up is requested
    assert measures(rest(s, 200, 503)) == [Measure(Metric.REST, labels=("hangup", "error"))]
    fire(s, Timer.REST_RETRY)
    assert measures(rest(s, 900, 200)) == [Measure(Metric.REST, labels=("hangup", "ok"))]
    assert [r["result"] for r in s.measures.rest] == ["error", "ok"]
    assert s.measures.tool_calls == [{"name": "end_call", "ok": True, "result": "ok", "ms": 0}]


def test_an_unknown_tool_is_an_error_and_talking_over_a_goodbye_calls_it_off() -> None:
    s = live(quiet(tools=("end_call",), rest_available=True))
    out = realtime(s, 100, function_call("order_pizza"))
    # The model's invented name is in the record, not a metric label of its own.
    assert measures(out) == [Measure(Metric.TOOL_CALL, labels=("unknown", "error"))]
    assert s.measures.tool_calls[0]["name"] == "order_pizza"
    realtime(s, 110, function_call("end_call", call_id="call_2"))
    marks = play(s, 120, "item_bye", 10)
    hear(s, 120, marks[:2])
    out = realtime(s, 400, speech_started())
    assert Measure(Metric.ENDING_CALLED_OFF, labels=("hangup",)) in measures(out)


def test_reprompts_and_realtime_errors_are_counted() -> None:
    s = live(quiet(silence_reprompt_ms=1000))
    realtime(s, 80, response_done("resp_1"))
    assert measures(fire(s, Timer.SILENCE)) == [Measure(Metric.REPROMPT)]
    error = {"type": "error", "error": {"type": "server_error", "code": "overloaded"}}
    assert measures(realtime(s, 3000, error)) == [
        Measure(Metric.REALTIME_ERROR, labels=("overloaded",))
    ]


def test_audio_frames_never_produce_a_measure() -> None:
    """The audio path stays free of metrics: caller frames and bot deltas emit none."""
    s: CallSession = live(quiet())
    assert s.caller_audio("AAAA")
    actions = realtime(s, 100, {**response_created("resp_2")})
    assert measures(actions) == []
    for _ in range(50):
        assert s.bot_audio(200, {"delta": "AAAA", "item_id": "i", "response_id": "resp_1"})
    assert measures(s.out.take()) == []


def test_turns_are_in_spoken_order_though_the_transcription_comes_after_the_answer() -> None:
    s = live(quiet())
    realtime(s, 100, speech_started("u1"))
    realtime(s, 500, speech_stopped("u1"))
    realtime(s, 510, {"type": "input_audio_buffer.committed", "item_id": "u1"})
    realtime(s, 550, response_created("resp_2"))
    play(s, 600, "item_answer", 1, response="resp_2")
    done = {"type": "response.output_audio_transcript.done", "item_id": "item_answer"}
    realtime(s, 650, {**done, "response_id": "resp_2", "transcript": "Nine to five."})
    transcribed = {
        "type": "conversation.item.input_audio_transcription.completed",
        "item_id": "u1",
        "content_index": 0,
        "transcript": "When are you open?",
    }
    realtime(s, 900, transcribed)  # after the answer's audio began
    committed = {"type": "input_audio_buffer.committed", "item_id": "u2"}
    realtime(s, 1000, committed)  # a turn never transcribed is left out
    turns = s.summary()["turns"]
    assert [(t["who"], t["text"]) for t in turns] == [
        ("caller", "When are you open?"),
        ("bot", "Nine to five."),
    ]
