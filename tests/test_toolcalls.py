"""Business tools in the call core: from the model's `function_call` to the answer, sans I/O.

Each rule of `app.call.toolcalls` has a test here; the same behaviours over real sockets
are in `tests/test_e2e_tools.py`.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.call.actions import Action, CancelTool, Measure, Metric, RestRequest, RunTool
from app.call.outbox import Timer
from app.call.session import CallSession
from app.call.setup import session_update
from app.call.toolcalls import MAX_TOOL_ROUNDS, TIMEOUT_GRACE_MS, redacted_arguments
from app.call.toolspec import ToolSpec
from app.recording_lines import action_record, redact
from tests.core import (
    delta,
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
    speech_started,
    speech_stopped,
    start_msg,
    to_realtime,
    to_twilio,
    twilio,
)
from tests.fakes.realtime_server import CLIENT_EVENT_ADAPTER

ORDER = ToolSpec(
    name="lookup_order",
    description="Look up an order.",
    parameters={
        "type": "object",
        "properties": {"order_id": {"type": "string"}, "card": {"type": "string"}},
        "required": ["order_id"],
        "additionalProperties": False,
    },
    redact=("card",),
)
BOOK = ToolSpec(name="book", description="Book a slot.", on_interrupt="cancel")
SLOW = ToolSpec(name="slow", description="Slow.", filler_after_ms=1500, filler_text="Hold on.")
CALENDAR = {
    "type": "mcp",
    "server_label": "calendar",
    "server_url": "https://mcp.example.com/mcp",
    "allowed_tools": ["find_slot"],
    "require_approval": {"always": {"tool_names": ["book_slot"]}},
    "headers": {"Authorization": "Bearer ${CAL_TOKEN}"},
}


def tooled(**overrides: Any) -> CallSession:
    cfg = quiet(functions=(ORDER, BOOK, SLOW), mcp_servers=(CALENDAR,), **overrides)
    return live(cfg)


def call(name: str, call_id: str, arguments: Any, response: str = "resp_1") -> dict[str, Any]:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return function_call(name, call_id, arguments=text, response_id=response)


def result(call_id: str, name: str, output: Any, result: str = "ok") -> dict[str, Any]:
    return {
        "tool_result": {
            "call_id": call_id,
            "name": name,
            "result": result,
            "output": json.dumps(output),
            "detail": "",
            "ms": 10,
        }
    }


def runs(actions: list[Action]) -> list[RunTool]:
    return [a for a in actions if isinstance(a, RunTool)]


def types(actions: list[Action]) -> list[str]:
    return [e["type"] for e in to_realtime(actions)]


def outputs(actions: list[Action]) -> list[tuple[str, Any]]:
    return [
        (e["item"]["call_id"], json.loads(e["item"]["output"]))
        for e in to_realtime(actions)
        if e["type"] == "conversation.item.create" and e["item"]["type"] == "function_call_output"
    ]


def measures(actions: list[Action], metric: Metric) -> list[Measure]:
    return [a for a in actions if isinstance(a, Measure) and a.metric is metric]


# -- the session's tools --------------------------------------------------------------------


def test_session_update_offers_function_tools_and_mcp_servers_and_validates() -> None:
    cfg = quiet(
        functions=(ORDER,),
        mcp_servers=(CALENDAR,),
        reasoning_effort="low",
        parallel_tool_calls=True,
    )
    update = session_update(cfg)
    CLIENT_EVENT_ADAPTER.validate_python(update)
    tools = update["session"]["tools"]
    assert [t.get("name") or t.get("server_label") for t in tools] == [
        *cfg.tools,
        "lookup_order",
        "calendar",
    ]
    assert tools[-1]["headers"] == {"Authorization": "Bearer ${CAL_TOKEN}"}  # filled on send
    assert update["session"]["reasoning"] == {"effort": "low"}
    assert update["session"]["parallel_tool_calls"] is True
    plain = session_update(quiet())["session"]
    assert "reasoning" not in plain and "parallel_tool_calls" not in plain


# -- one call -------------------------------------------------------------------------------


def test_a_completed_call_runs_and_its_output_is_answered_after_the_response() -> None:
    s = tooled()
    out = realtime(s, 100, call("lookup_order", "c1", {"order_id": "A7"}))
    [run] = runs(out)
    assert (run.call_id, run.name, run.arguments) == ("c1", "lookup_order", {"order_id": "A7"})
    assert run.timeout_ms == ORDER.timeout_ms
    assert types(realtime(s, 120, response_done("resp_1"))) == []  # still running
    out = s.feed(400, "rest", result("c1", "lookup_order", {"status": "shipped"}))
    assert outputs(out) == [("c1", {"status": "shipped"})]
    assert types(out) == ["conversation.item.create", "response.create"]
    [record] = s.measures.tool_calls
    assert record["name"] == "lookup_order" and record["ok"] and record["ms"] == 300
    assert [m.labels for m in measures(out, Metric.TOOL_CALL)] == [("lookup_order", "ok")]
    assert [m.value for m in measures(out, Metric.TOOL_DURATION)] == [0.3]


def test_a_result_before_the_response_is_done_waits_for_it() -> None:
    s = tooled()
    realtime(s, 100, call("lookup_order", "c1", {"order_id": "A7"}))
    out = s.feed(150, "rest", result("c1", "lookup_order", {"ok": True}))
    assert types(out) == ["conversation.item.create"]  # the output at once, no answer yet
    assert types(realtime(s, 200, response_done("resp_1"))) == ["response.create"]


def test_invalid_arguments_never_run_and_the_model_learns_what_is_wrong_without_values() -> None:
    s = tooled()
    out = realtime(s, 100, call("lookup_order", "c1", {"card": "4111111111111111", "x": 1}))
    assert runs(out) == []
    [(call_id, output)] = outputs(out)
    assert call_id == "c1" and output["error"] == "invalid arguments"
    text = json.dumps(output)
    assert "required" in text and "additionalProperties" in text
    assert "4111" not in text
    assert s.measures.tool_calls[0]["arguments"]["card"] == "***"
    assert types(realtime(s, 120, response_done("resp_1"))) == ["response.create"]


def test_arguments_that_are_not_a_json_object_are_an_error_output() -> None:
    s = tooled()
    for n, text in enumerate(["[1]", '{"order_id": ', '"x"']):
        out = realtime(s, 100 + n, call("lookup_order", f"c{n}", text, response=f"r{n}"))
        assert runs(out) == []
        assert outputs(out)[0][1]["error"] == "invalid arguments"


def test_an_incomplete_call_from_a_cut_off_response_never_runs() -> None:
    s = tooled()
    out = realtime(s, 100, function_call("lookup_order", "c1", status="incomplete"))
    assert runs(out) == [] and outputs(out) == []
    assert s.measures.tool_calls[0]["result"] == "cancelled"
    assert types(realtime(s, 120, response_done("resp_1", "cancelled"))) == []


def test_a_call_to_a_tool_not_offered_gets_an_error_output_and_an_answer() -> None:
    s = tooled()
    out = realtime(s, 100, call("drop_tables", "c1", {}))
    assert runs(out) == [] and outputs(out) == [("c1", {"error": "unknown tool"})]
    assert types(realtime(s, 120, response_done("resp_1"))) == ["response.create"]


def test_a_result_for_no_running_call_is_bad_input_and_sends_nothing() -> None:
    s = tooled()
    out = s.feed(100, "rest", result("nope", "lookup_order", {}))
    assert types(out) == [] and s.bad_input == {"rest.unexpected_tool_result": 1}


def test_a_malformed_result_becomes_an_error_output() -> None:
    s = tooled()
    realtime(s, 100, call("lookup_order", "c1", {"order_id": "A"}))
    realtime(s, 110, response_done("resp_1"))
    bad = {"tool_result": {"call_id": "c1", "result": "great", "output": 7}}
    out = s.feed(200, "rest", bad)
    assert outputs(out) == [("c1", {"error": "the tool failed"})]
    assert s.bad_input == {"rest.malformed_tool_result": 1}


# -- parallel calls -------------------------------------------------------------------------


def test_parallel_calls_run_at_once_and_outputs_go_in_call_order_with_one_answer() -> None:
    s = tooled()
    first = runs(realtime(s, 100, call("lookup_order", "c1", {"order_id": "A"})))
    second = runs(realtime(s, 101, call("slow", "c2", {})))
    assert [r.call_id for r in first + second] == ["c1", "c2"]  # both running
    realtime(s, 110, response_done("resp_1"))
    out = s.feed(200, "rest", result("c2", "slow", {"n": 2}))
    assert types(out) == []  # c1 comes first
    out = s.feed(300, "rest", result("c1", "lookup_order", {"n": 1}))
    assert outputs(out) == [("c1", {"n": 1}), ("c2", {"n": 2})]
    assert types(out).count("response.create") == 1


# -- barge-in while a tool runs -----------------------------------------------------------------


def talking_while_tool_runs(tool: str) -> CallSession:
    """The bot says "let me check" (heard in part) while `tool` runs; the caller cuts in."""
    s = tooled()
    names = play(s, 80, "it1", 5)
    realtime(s, 100, call(tool, "c1", {"order_id": "A"} if tool == "lookup_order" else {}))
    realtime(s, 120, response_done("resp_1"))
    hear(s, 120, names[:2])
    return s


def test_barge_in_cancels_a_cancel_tool_and_no_unwanted_turn_follows() -> None:
    s = talking_while_tool_runs("book")
    out = realtime(s, 400, speech_started("u2", 3000))
    assert [a.call_id for a in out if isinstance(a, CancelTool)] == ["c1"]
    assert "clear" in [m["event"] for m in to_twilio(out)]
    assert outputs(out)[0][1]["error"].startswith("cancelled")
    assert "response.create" not in types(out)
    assert s.measures.tool_calls[0]["result"] == "cancelled"
    late = s.feed(600, "rest", result("c1", "book", {"booked": True}))
    assert types(late) == []  # its late result is moot


def test_barge_in_lets_a_continue_tool_deliver_without_starting_a_turn() -> None:
    s = talking_while_tool_runs("lookup_order")
    out = realtime(s, 400, speech_started("u2", 3000))
    assert [a for a in out if isinstance(a, CancelTool)] == []
    out = s.feed(600, "rest", result("c1", "lookup_order", {"status": "shipped"}))
    assert outputs(out) == [("c1", {"status": "shipped"})]
    assert "response.create" not in types(out)  # the caller's own turn gets the answer


def test_a_result_while_the_caller_speaks_is_seen_by_their_turns_answer() -> None:
    s = tooled()
    realtime(s, 100, call("lookup_order", "c1", {"order_id": "A"}))
    realtime(s, 110, response_done("resp_1"))
    realtime(s, 300, speech_started("u2", 300))
    out = s.feed(500, "rest", result("c1", "lookup_order", {"status": "shipped"}))
    assert outputs(out) and "response.create" not in types(out)  # in view of the turn
    out = realtime(s, 900, speech_stopped("u2", 900))
    assert "response.create" not in types(out)  # the service answers the turn itself


def test_a_result_after_the_callers_turn_is_still_spoken() -> None:
    """ "Uh-huh" while the tool runs: the service answers that turn first; the result
    that comes later gets its own answer (it is never lost)."""
    s = tooled(silence_reprompt_ms=0)
    realtime(s, 100, call("lookup_order", "c1", {"order_id": "A"}))
    realtime(s, 110, response_done("resp_1"))
    realtime(s, 300, speech_started("u2", 300))
    realtime(s, 900, speech_stopped("u2", 900))
    realtime(s, 950, response_created("resp_2"))  # the service's answer to "uh-huh"
    realtime(s, 1200, response_done("resp_2"))
    out = s.feed(1500, "rest", result("c1", "lookup_order", {"status": "shipped"}))
    assert types(out) == ["conversation.item.create", "response.create"]


def test_a_result_while_the_turns_answer_is_generated_is_answered_after_it() -> None:
    s = tooled()
    realtime(s, 100, call("lookup_order", "c1", {"order_id": "A"}))
    realtime(s, 110, response_done("resp_1"))
    realtime(s, 300, speech_started("u2", 300))
    realtime(s, 900, speech_stopped("u2", 900))
    realtime(s, 950, response_created("resp_2"))
    out = s.feed(1000, "rest", result("c1", "lookup_order", {"status": "shipped"}))
    assert types(out) == ["conversation.item.create"]  # never two responses at once
    assert types(realtime(s, 1200, response_done("resp_2"))) == ["response.create"]


def test_a_barge_in_on_the_filler_drops_the_answer_queued_behind_it() -> None:
    s = tooled()
    realtime(s, 100, call("slow", "c1", {}))
    realtime(s, 110, response_done("resp_1"))
    filler = next(e for e in to_realtime(fire(s, Timer.TOOL_FILLER)) if "response" in e)
    realtime(s, 1650, response_created("resp_f", filler["response"]["metadata"]))
    names = play(s, 1700, "it_f", 10, response="resp_f")
    hear(s, 1700, names[:2])
    s.feed(1950, "rest", result("c1", "slow", {"done": True}))  # the answer waits
    realtime(s, 2000, speech_started("u2", 2000))  # the caller cuts the filler off
    out = realtime(s, 2050, response_done("resp_f", "cancelled"))
    assert "response.create" not in types(out)  # not over the caller: their turn sees it


def test_a_run_the_driver_never_answers_is_given_up_by_the_core() -> None:
    s = tooled(silence_reprompt_ms=0)
    realtime(s, 100, call("lookup_order", "c1", {"order_id": "A"}))
    realtime(s, 110, response_done("resp_1"))
    deadline = s.out.timers[Timer.TOOL_DEADLINE]
    assert deadline == 100 + ORDER.timeout_ms + TIMEOUT_GRACE_MS
    out = fire(s, Timer.TOOL_DEADLINE)
    assert [a.call_id for a in out if isinstance(a, CancelTool)] == ["c1"]
    assert outputs(out) == [("c1", {"error": "the tool did not answer in time"})]
    assert "response.create" in types(out)
    assert s.measures.tool_calls[0]["result"] == "timeout"
    assert types(s.feed(deadline + 500, "rest", result("c1", "lookup_order", {}))) == []


def test_a_model_looping_on_tools_is_made_to_answer_without_one() -> None:
    s = tooled()
    rid = "resp_1"
    for n in range(MAX_TOOL_ROUNDS + 1):
        realtime(s, 100 + n * 100, call("lookup_order", f"c{n}", {"order_id": "A"}, rid))
        realtime(s, 110 + n * 100, response_done(rid))
        out = s.feed(150 + n * 100, "rest", result(f"c{n}", "lookup_order", {"status": "?"}))
        [ask] = [e for e in to_realtime(out) if e["type"] == "response.create"]
        looping = n == MAX_TOOL_ROUNDS
        assert (ask["response"].get("tool_choice") == "none") is looping
        rid = f"resp_{n + 2}"
        realtime(s, 160 + n * 100, response_created(rid, ask["response"]["metadata"]))


def test_a_call_item_after_its_response_is_done_is_still_answered() -> None:
    s = tooled()
    realtime(s, 100, response_done("resp_1"))
    out = realtime(s, 110, call("drop_tables", "c1", {}))  # out of order
    assert outputs(out) and "response.create" in types(out)


def test_goodbye_with_a_booking_hangs_up_once_the_booking_is_done() -> None:
    """ "Booked, goodbye": `book` and `end_call` in one response; the caller hears it all
    before the tool answers: the hang-up waits for the tool."""
    s = tooled(tools=("end_call",), rest_available=True)
    names = play(s, 80, "it1", 5)
    realtime(s, 100, call("book", "c1", {}))
    realtime(s, 101, call("end_call", "c2", {"reason": "done"}))
    realtime(s, 110, response_done("resp_1"))
    hear(s, 110, names[:-1])
    out = twilio(s, 700, mark_msg(names[-1]))  # the last word is heard
    assert not [a for a in out if isinstance(a, RestRequest)]
    out = s.feed(900, "rest", result("c1", "book", {"booked": True}))
    assert [call_id for call_id, _ in outputs(out)] == ["c1", "c2"]  # in call order
    assert [a.params for a in out if isinstance(a, RestRequest)] == [{"Status": "completed"}]


def test_an_end_call_from_an_interrupted_response_never_hangs_up() -> None:
    s = tooled(tools=("end_call",), rest_available=True)
    names = play(s, 80, "it1", 5)
    hear(s, 80, names[:2])
    realtime(s, 300, speech_started("u2", 3000))  # the caller cuts the goodbye off
    out = realtime(s, 320, call("end_call", "c9", {"reason": "bye"}))
    assert outputs(out) == [("c9", {"error": "not done: the caller interrupted"})]
    assert s.ending.stage.value == "none"
    assert s.measures.tool_calls[-1]["result"] == "cancelled"


# -- min-speech: the answer waits to know whether it was a turn ---------------------------------


def coughing_over_the_bot(s: CallSession) -> None:
    """The bot talks ("let me look that up...") while the tool runs; a sound starts."""
    names = play(s, 80, "it1", 30)
    realtime(s, 100, call("lookup_order", "c1", {"order_id": "A"}))
    realtime(s, 110, response_done("resp_1"))
    hear(s, 110, names[:3])
    realtime(s, 450, speech_started("u2", 450))


def test_under_min_speech_noise_during_the_flush_still_gets_the_answer() -> None:
    s = tooled(interrupt_min_speech_ms=400)
    coughing_over_the_bot(s)
    out = s.feed(500, "rest", result("c1", "lookup_order", {"status": "shipped"}))
    assert outputs(out) and "response.create" not in types(out)  # owed: turn or noise?
    out = realtime(s, 1100, speech_stopped("u2", 450 + 300 + 100 + 500))  # 100 ms: noise
    assert "response.create" in types(out)


def test_under_min_speech_a_real_turn_during_the_flush_takes_the_answer() -> None:
    s = tooled(interrupt_min_speech_ms=400)
    coughing_over_the_bot(s)
    s.feed(500, "rest", result("c1", "lookup_order", {"status": "shipped"}))
    out = realtime(s, 1400, speech_stopped("u2", 450 + 300 + 600 + 500))  # 600 ms: a turn
    assert "response.create" not in types(out)  # the turn is answered when it commits


# -- fillers ----------------------------------------------------------------------------------


def test_a_slow_tool_gets_a_filler_that_calls_no_tool_and_then_the_answer() -> None:
    s = tooled()
    realtime(s, 100, call("slow", "c1", {}))
    realtime(s, 110, response_done("resp_1"))
    assert s.out.timers[Timer.TOOL_FILLER] == 1600
    out = fire(s, Timer.TOOL_FILLER)
    [filler] = [e for e in to_realtime(out) if e["type"] == "response.create"]
    assert filler["response"]["tool_choice"] == "none"
    assert '"Hold on."' in filler["response"]["instructions"]
    realtime(s, 1650, response_created("resp_f", filler["response"]["metadata"]))
    names = play(s, 1700, "it_f", 3, response="resp_f")
    out = s.feed(1800, "rest", result("c1", "slow", {"done": True}))
    assert types(out) == ["conversation.item.create"]  # never two responses at once
    assert types(realtime(s, 1900, response_done("resp_f"))) == ["response.create"]
    hear(s, 1900, names)


def test_a_filler_not_yet_started_is_withdrawn_when_the_answer_is_ready() -> None:
    s = tooled()
    realtime(s, 100, call("slow", "c1", {}))
    realtime(s, 110, response_done("resp_1"))
    out = fire(s, Timer.TOOL_FILLER)
    filler = next(e for e in to_realtime(out) if e["type"] == "response.create")
    out = s.feed(1610, "rest", result("c1", "slow", {"done": True}))
    assert types(out) == ["conversation.item.create"]  # the answer waits behind the filler
    out = realtime(s, 1620, response_created("resp_f", filler["response"]["metadata"]))
    assert types(out) == ["response.cancel"]  # never said
    out = realtime(s, 1630, response_done("resp_f", "cancelled"))
    assert types(out) == ["response.create"]  # the answer


def test_no_filler_over_the_bot_and_the_wait_restarts_once_the_line_is_quiet() -> None:
    s = tooled()
    names = play(s, 80, "it1", 30)  # three seconds of "let me look that up for you..."
    realtime(s, 100, call("slow", "c1", {}))
    realtime(s, 110, response_done("resp_1"))
    out = fire(s, Timer.TOOL_FILLER)
    assert "response.create" not in types(out)
    assert Timer.TOOL_FILLER not in s.out.timers
    quiet_at = hear(s, 110, names)  # the bot's last word is heard: the line is quiet
    assert s.out.timers[Timer.TOOL_FILLER] == quiet_at + SLOW.filler_after_ms
    out = fire(s, Timer.TOOL_FILLER)
    assert "response.create" in types(out)


def test_a_call_ending_with_a_tool_running_cancels_it_and_records_it() -> None:
    s = tooled()
    realtime(s, 100, call("lookup_order", "c1", {"order_id": "A"}))
    out = twilio(s, 200, {"event": "stop", "streamSid": s.stream_sid, "stop": {}})
    assert [a.call_id for a in out if isinstance(a, CancelTool)] == ["c1"]
    assert s.measures.tool_calls[0]["result"] == "cancelled"
    assert Timer.TOOL_FILLER not in s.out.timers


def test_waiting_for_a_tool_is_not_the_callers_silence() -> None:
    s = tooled(silence_reprompt_ms=2000)
    realtime(s, 100, call("lookup_order", "c1", {"order_id": "A"}))
    realtime(s, 110, response_done("resp_1"))
    assert Timer.SILENCE not in s.out.timers
    s.feed(5000, "rest", result("c1", "lookup_order", {"status": "shipped"}, result="timeout"))
    assert Timer.SILENCE not in s.out.timers  # the answer is asked for: not silent yet


def test_a_key_press_while_a_tool_runs_takes_the_turn() -> None:
    s = tooled(dtmf_to_model=True)
    realtime(s, 100, call("lookup_order", "c1", {"order_id": "A"}))
    realtime(s, 110, response_done("resp_1"))
    out = twilio(s, 200, {"event": "dtmf", "streamSid": s.stream_sid, "dtmf": {"digit": "1"}})
    assert "response.create" in types(out)  # the key press is answered
    out = s.feed(300, "rest", result("c1", "lookup_order", {"status": "shipped"}))
    assert outputs(out) and "response.create" not in types(out)


# -- MCP ----------------------------------------------------------------------------------------


def test_mcp_calls_are_recorded_and_failures_counted() -> None:
    s = tooled()
    realtime(s, 100, {"type": "response.mcp_call.in_progress", "item_id": "m1", "output_index": 0})
    item = {
        "type": "mcp_call",
        "id": "m1",
        "name": "find_slot",
        "server_label": "calendar",
        "arguments": "{}",
        "output": '{"slots": []}',
    }
    realtime(s, 350, {"type": "response.output_item.done", "response_id": "resp_1", "item": item})
    realtime(s, 360, {"type": "conversation.item.done", "item": item})  # once only
    [record] = s.measures.tool_calls
    assert record == {
        "name": "calendar.find_slot",
        "ok": True,
        "result": "ok",
        "ms": 250,
        "server": "calendar",
    }
    out = realtime(s, 400, {"type": "mcp_list_tools.failed", "item_id": "l1"})
    assert [m.labels for m in measures(out, Metric.MCP_ERROR)] == [("calendar", "list_tools")]
    failed = {**item, "id": "m2", "output": None, "error": {"type": "http_error", "code": 500}}
    realtime(s, 500, {"type": "response.output_item.done", "response_id": "r2", "item": failed})
    assert s.measures.tool_calls[-1]["detail"] == "http_error"
    assert s.bad_input == {}


def test_an_mcp_approval_request_is_denied_and_the_model_tells_the_caller() -> None:
    s = tooled()
    item = {
        "type": "mcp_approval_request",
        "id": "ap1",
        "name": "book_slot",
        "server_label": "calendar",
        "arguments": "{}",
    }
    out = realtime(s, 100, {"type": "conversation.item.done", "item": item})
    [deny] = [e for e in to_realtime(out) if e["type"] == "conversation.item.create"]
    assert deny["item"]["approve"] is False and deny["item"]["approval_request_id"] == "ap1"
    realtime(s, 110, {"type": "response.output_item.done", "response_id": "resp_1", "item": item})
    assert "response.create" in types(realtime(s, 120, response_done("resp_1")))
    assert s.measures.tool_calls == [
        {
            "name": "calendar.book_slot",
            "ok": False,
            "result": "error",
            "ms": 0,
            "detail": "approval_denied",
            "server": "calendar",
        }
    ]


def test_unknown_and_odd_mcp_events_never_break_the_call() -> None:
    s = tooled()
    for ev in (
        {"type": "mcp_list_tools.something_new", "item_id": "x"},
        {"type": "response.mcp_call_arguments.delta", "item_id": "x", "delta": "{"},
        {"type": "response.mcp_call.completed", "item_id": ["not", "a", "string"]},
    ):
        realtime(s, 100, ev)
    assert s.bad_input == {"realtime.malformed_mcp_event": 1}
    names = play(s, 200, "it1", 2)
    twilio(s, 400, mark_msg(names[0]))
    assert not s.done


# -- fixtures: redaction and replayable records ---------------------------------------------------


def test_redacted_arguments_never_reach_a_fixture_line() -> None:
    redactions = {"lookup_order": ORDER}
    args = json.dumps({"order_id": "A7", "card": "4111111111111111"})
    item = {"type": "function_call", "name": "lookup_order", "call_id": "c1", "arguments": args}
    for direction, msg in (
        ("from_openai", {"type": "response.output_item.done", "item": item}),
        ("from_openai", {"type": "conversation.item.done", "item": item}),
        ("from_openai", {"type": "response.done", "response": {"id": "r", "output": [item]}}),
        ("from_openai", {**item, "type": "response.function_call_arguments.done"}),
        ("from_openai", {"type": "response.function_call_arguments.delta", "delta": "4111"}),
    ):
        text = json.dumps(redact(direction, msg, redactions))
        assert "4111" not in text, msg["type"]
    run = RunTool("c1", "lookup_order", {"order_id": "A7", "card": "4111111111111111"}, 8000)
    direction, line = action_record(run)  # type: ignore[misc]
    clean = redact(direction, line, redactions)
    assert clean["tool_request"]["arguments"] == {"order_id": "A7", "card": "***"}


STRICT = ToolSpec(
    name="pay",
    parameters={
        "type": "object",
        "properties": {"card": {"type": "string", "pattern": "^[0-9]{16}$"}},
        "required": ["card"],
    },
    redact=("card",),
)


def paying(card: str, *, replaying: bool) -> list[Action]:
    return paying_text(json.dumps({"card": card}), replaying=replaying)


@pytest.mark.parametrize("card", ["4111111111111111", "12"])
def test_a_redacted_argument_replays_as_the_live_call_decided(card: str) -> None:
    """The fixture holds `***` (valid) or `***!` (invalid) for the card: a replaying core
    takes that verdict, so it asks for the run, or answers the error, exactly as live."""
    live_out = paying(card, replaying=False)
    recorded = redacted_arguments(STRICT, json.dumps({"card": card}))
    assert card not in json.dumps(recorded)
    replay_out = paying(json.loads(recorded)["card"], replaying=True)  # type: ignore[arg-type]
    assert [type(a) for a in replay_out] == [type(a) for a in live_out]
    assert outputs(replay_out) == outputs(live_out)
    assert bool(runs(live_out)) is (card != "12")
    if card == "12":
        assert outputs(live_out)[0][1]["problems"] == ["$.card: invalid (redacted)"]


def test_a_live_call_never_trusts_the_redaction_marker() -> None:
    for marker in ("***", "***!"):
        out = paying(marker, replaying=False)
        assert runs(out) == []  # checked like any value: not 16 digits
        assert outputs(out)[0][1]["problems"] == ["$.card: invalid (redacted)"]


def test_non_object_arguments_of_a_redacted_tool_replay_alike() -> None:
    for text in ("[1]", '"4111111111111111"', "{", "null"):
        live = outputs(paying_text(text, replaying=False))
        recorded = redacted_arguments(STRICT, text)
        assert "4111" not in str(recorded)
        assert outputs(paying_text(str(recorded), replaying=True)) == live


def paying_text(text: str, *, replaying: bool) -> list[Action]:
    s = CallSession(quiet(functions=(STRICT,)), replaying=replaying)
    s.opened(0)
    twilio(s, 1, start_msg())
    s.feed(50, "from_openai", {"_socket": "open"})
    realtime(s, 60, {"type": "session.updated", "session": {}})
    return realtime(s, 100, function_call("pay", "c1", arguments=text))


def test_deeply_nested_arguments_are_an_error_output_not_a_crash() -> None:
    s = tooled()
    text = '{"order_id": ' + "[" * 5000 + "]" * 5000 + "}"
    out = realtime(s, 100, call("lookup_order", "c1", text))
    assert runs(out) == [] and outputs(out)[0][1]["error"] == "invalid arguments"
    assert not s.done


def test_an_audio_delta_of_the_answer_plays_after_the_tool() -> None:
    s = tooled()
    realtime(s, 100, call("lookup_order", "c1", {"order_id": "A"}))
    realtime(s, 110, response_done("resp_1"))
    out = s.feed(300, "rest", result("c1", "lookup_order", {"status": "shipped"}))
    ask = next(e for e in to_realtime(out) if e["type"] == "response.create")
    realtime(s, 350, response_created("resp_2", ask["response"]["metadata"]))
    media = to_twilio(realtime(s, 400, delta("it2", response="resp_2")))
    assert [m["event"] for m in media] == ["media", "mark"]


def test_a_goodbye_waiting_for_a_silent_tool_still_hangs_up_in_bounded_time() -> None:
    s = tooled(tools=("end_call",), rest_available=True)
    names = play(s, 80, "it1", 5)
    realtime(s, 100, call("book", "c1", {}))
    realtime(s, 101, call("end_call", "c2", {"reason": "done"}))
    realtime(s, 110, response_done("resp_1"))
    hear(s, 110, names)
    deadline = min(s.out.timers[Timer.TOOL_DEADLINE], s.out.timers[Timer.LAST_WORDS])
    out = s.advance(deadline)
    assert [a.params for a in out if isinstance(a, RestRequest)] == [{"Status": "completed"}]
