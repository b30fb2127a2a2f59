"""The opening of an outbound call (`app.call.opening`), through the call core: the bot
greets after the callee's hello or a short silence, waits for answering-machine detection,
hangs up on a machine, or leaves the voicemail after the beep and hangs up after its last
word. Pure core scenarios: inputs in, actions out, made-up times."""

from __future__ import annotations

from typing import Any

import pytest

from app.call.actions import Action, RestRequest
from app.call.opening import DEFAULT_OUTBOUND_GREETING, Opening, Step
from app.call.outbox import Timer
from app.call.session import GREET_AFTER_OPEN_MS, CallSession
from app.call.state import Stage
from tests.core import (
    CANCEL,
    RESUME,
    config,
    dtmf_msg,
    fire,
    function_call,
    hear,
    mark_msg,
    play,
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

GREETING = "Say hello to Ada and remind her of tomorrow's appointment."
MESSAGE = "Hi Ada, this is Example Clinic: your appointment is tomorrow at nine."


def outbound(detection: str = "off", **overrides: Any) -> CallSession:
    """An outbound call whose Realtime session just opened (nothing said yet)."""
    cfg = config(
        direction="outbound",
        machine_detection=detection,
        voicemail_message=MESSAGE if detection == "voicemail" else "",
        **{
            "greeting": GREETING,
            "silence_reprompt_ms": 10_000,
            "max_call_ms": 0,
            "rest_available": True,
            **RESUME,
            **overrides,
        },
    )
    s = CallSession(cfg)
    s.opened(0)
    twilio(s, 1, start_msg(To="+15550002222"))
    opened = to_realtime(socket(s, 50, "openai", "open"))
    update = opened[0]
    assert update["type"] == "session.update"
    turns = update["session"]["audio"]["input"]["turn_detection"]
    # Until it opens, the service neither answers the callee nor interrupts.
    assert turns["create_response"] is False and turns["interrupt_response"] is False
    assert not [e for e in opened if e["type"] == "response.create"]
    realtime(s, 60, {"type": "session.updated", "session": {}})
    return s


def committed(item: str) -> dict[str, Any]:
    return {"type": "input_audio_buffer.committed", "item_id": item, "previous_item_id": None}


def hello(s: CallSession, t: float, item: str = "u1") -> list[dict[str, Any]]:
    """The callee says "Hello?" from `t` for 600 ms; the client events that follow."""
    out = to_realtime(realtime(s, t, speech_started(item, int(t))))
    out += to_realtime(realtime(s, t + 600, speech_stopped(item, int(t + 600))))
    out += to_realtime(realtime(s, t + 610, committed(item)))
    return out


def creates(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == "response.create"]


def verdict(s: CallSession, t: float, answered_by: str) -> list[Action]:
    return s.feed(t, "rest", {"answered_by": answered_by})


def rest_requests(actions: list[Action]) -> list[RestRequest]:
    return [a for a in actions if isinstance(a, RestRequest)]


# -- no detection -------------------------------------------------------------------------


def test_the_greeting_waits_for_the_hello_and_answers_it() -> None:
    s = outbound()
    assert Timer.GREET in s.out.timers
    assert to_realtime(realtime(s, 300, speech_started("u1", 300))) == []
    out = to_realtime(realtime(s, 900, speech_stopped("u1", 900)))
    assert creates(out) == []  # not over the end of their hello: at its commit
    out = to_realtime(realtime(s, 910, committed("u1")))
    [create] = creates(out)
    assert GREETING in create["response"]["instructions"]
    assert Timer.GREET not in s.out.timers
    assert s.opening.how == "hello" and s.opening.open


def test_nobody_speaks_the_bot_greets_after_the_silence() -> None:
    s = outbound()
    assert s.out.timers[Timer.GREET] == 1 + s.config.greet_silence_ms
    [create] = creates(to_realtime(fire(s, Timer.GREET)))
    assert GREETING in create["response"]["instructions"]
    assert s.opening.how == "silence"
    # The hello that comes later is an ordinary turn, answered as any.
    assert not s.opening.deaf


def test_a_hello_still_going_when_the_silence_is_over_is_waited_for() -> None:
    s = outbound()
    realtime(s, 1400, speech_started("u1", 1400))
    assert creates(to_realtime(fire(s, Timer.GREET))) == []
    realtime(s, 2200, speech_stopped("u1", 2200))
    assert len(creates(to_realtime(realtime(s, 2210, committed("u1"))))) == 1


def test_no_greeting_of_its_own_the_bot_still_speaks_first() -> None:
    s = outbound(greeting="")
    [create] = creates(to_realtime(fire(s, Timer.GREET)))
    assert DEFAULT_OUTBOUND_GREETING in create["response"]["instructions"]


def test_cancel_mode_gets_its_own_turns_back_once_open() -> None:
    s = outbound(**CANCEL)
    out = hello(s, 200)
    updates = [e for e in out if e["type"] == "session.update"]
    assert [
        u["session"]["audio"]["input"]["turn_detection"]["create_response"] for u in updates
    ] == [True]
    assert out.index(updates[0]) < out.index(creates(out)[0])


def test_a_key_press_before_the_hello_opens_the_call() -> None:
    s = outbound()
    out = to_realtime(twilio(s, 400, dtmf_msg("1")))
    assert len(creates(out)) == 1 and s.opening.how == "hello"


def test_the_silence_clock_does_not_run_before_the_opening() -> None:
    s = outbound("voicemail")
    realtime(s, 200, speech_started("u1", 200))
    realtime(s, 9000, speech_stopped("u1", 9000))
    assert Timer.SILENCE not in s.out.timers  # a reprompt would talk to the machine


# -- detection ----------------------------------------------------------------------------


def test_with_detection_the_hello_waits_for_the_verdict_and_a_human_is_greeted() -> None:
    s = outbound("hangup")
    assert creates(hello(s, 200)) == []
    [create] = creates(to_realtime(verdict(s, 2100, "human")))
    assert GREETING in create["response"]["instructions"]
    assert s.opening.answered_by == "human"
    assert s.summary()["answered_by"] == "human"


def test_no_verdict_in_time_is_taken_for_a_human() -> None:
    s = outbound("hangup")
    hello(s, 200)
    assert s.out.timers[Timer.DETECTION] == 1 + s.config.amd_wait_ms
    assert len(creates(to_realtime(fire(s, Timer.DETECTION)))) == 1


def test_a_machine_under_hangup_is_hung_up_on_without_a_word() -> None:
    s = outbound("hangup")
    realtime(s, 200, speech_started("u1", 200))  # "You have reached..."
    actions = verdict(s, 1800, "machine_start")
    assert creates(to_realtime(actions)) == []
    [request] = rest_requests(actions)
    assert request.kind == "hangup" and request.params == {"Status": "completed"}
    rest(s, 1900, 200)
    twilio(s, 2000, {"event": "stop", "streamSid": s.stream_sid, "stop": {}})
    assert s.done and s.summary()["ended"] == "machine"
    assert s.summary()["answered_by"] == "machine_start"


def test_a_late_machine_verdict_hangs_up_even_after_the_greeting() -> None:
    s = outbound("hangup")
    fire(s, Timer.DETECTION)  # greeted, taken for a human
    assert s.opening.open
    assert len(rest_requests(verdict(s, 5200, "machine_start"))) == 1


def test_a_fax_is_hung_up_on() -> None:
    s = outbound("voicemail")
    assert len(rest_requests(verdict(s, 3000, "fax"))) == 1


def test_voicemail_after_the_beep_then_the_hang_up_after_its_last_word() -> None:
    s = outbound("voicemail")
    realtime(s, 300, speech_started("u1", 300))  # the machine's greeting
    # Past the usual wait: a human would have been called one by now, so this is a
    # machine still talking: the bot keeps waiting for its beep.
    assert creates(to_realtime(fire(s, Timer.DETECTION))) == []
    assert s.out.timers[Timer.DETECTION] == 1 + s.config.amd_limit_ms
    realtime(s, 9000, speech_stopped("u1", 9000))
    assert creates(to_realtime(realtime(s, 9010, committed("u1")))) == []
    [create] = creates(to_realtime(verdict(s, 9800, "machine_end_beep")))
    assert MESSAGE in create["response"]["instructions"]
    realtime(s, 9850, {"type": "response.created", "response": {"id": "resp_vm"}})
    names = play(s, 9900, "vm1", 20, response="resp_vm")
    # The recorder's own sounds are nobody's turn: no clear, no pause, nothing called off.
    out = realtime(s, 10_500, speech_started("u2", 10_500))
    assert to_twilio(out) == [] and to_realtime(out) == []
    realtime(
        s, 10_600, {"type": "response.done", "response": {"id": "resp_vm", "status": "completed"}}
    )
    now = hear(s, 10_600, names[:-1])
    actions = twilio(s, now + 100, mark_msg(names[-1]))
    assert rest_requests(actions) == []  # the tail of the last word first
    [request] = rest_requests(fire(s, Timer.HANGUP_TAIL))
    assert request.params == {"Status": "completed"}
    rest(s, now + 500, 200)
    assert s.summary()["answered_by"] == "machine_end_beep"
    twilio(s, now + 600, {"event": "stop", "streamSid": s.stream_sid, "stop": {}})
    assert s.summary()["ended"] == "voicemail"
    assert s.bad_input == {}


def test_voicemail_mode_greets_at_the_limit_without_a_verdict() -> None:
    s = outbound("voicemail")
    fire(s, Timer.DETECTION)
    assert len(creates(to_realtime(fire(s, Timer.DETECTION)))) == 1
    assert s.opening.how == "silence"


def test_a_bad_verdict_is_skipped_and_counted() -> None:
    s = outbound("hangup")
    assert verdict(s, 500, "robot") == []
    assert s.bad_input == {"rest.bad_answered_by": 1}
    assert s.opening.waiting


def test_an_inbound_call_ignores_a_verdict() -> None:
    s = CallSession(config(greeting="", **CANCEL))
    s.opened(0)
    twilio(s, 1, start_msg())
    socket(s, 50, "openai", "open")
    assert rest_requests(verdict(s, 100, "machine_start")) == []
    assert not s.done


@pytest.mark.parametrize(
    ("detection", "answered_by", "step"),
    [
        ("hangup", "human", Step.NOTHING),  # the hello hasn't come, the silence isn't over
        ("hangup", "machine_end_beep", Step.HANG_UP),
        ("voicemail", "machine_start", Step.NOTHING),
        ("voicemail", "machine_end_silence", Step.VOICEMAIL),
        ("voicemail", "unknown", Step.NOTHING),
    ],
)
def test_verdict_table(detection: str, answered_by: str, step: Step) -> None:
    opening = Opening(
        outbound=True,
        machine_detection=detection,
        greet_silence_ms=1500,
        amd_wait_ms=4000,
        amd_limit_ms=33_000,
    )
    assert opening.verdict(answered_by) is step
    assert opening.verdict("human") is Step.NOTHING  # only the first verdict counts


# -- found in review ----------------------------------------------------------------------


def connecting_outbound(detection: str, **overrides: Any) -> CallSession:
    """An outbound call whose Realtime socket is still opening."""
    cfg = config(
        direction="outbound",
        machine_detection=detection,
        voicemail_message=MESSAGE,
        greeting=GREETING,
        rest_available=True,
        **{"silence_reprompt_ms": 0, "max_call_ms": 0, **RESUME, **overrides},
    )
    s = CallSession(cfg)
    s.opened(0)
    twilio(s, 1, start_msg(To="+15550002222"))
    return s


def test_a_verdict_before_the_session_opens_is_acted_on_as_it_opens() -> None:
    s = connecting_outbound("hangup")
    assert verdict(s, 30, "machine_start") == []  # nothing can be done yet
    actions = socket(s, 2500, "openai", "open")
    [request] = rest_requests(actions)
    assert request.params == {"Status": "completed"}
    assert creates(to_realtime(actions)) == []


def test_a_human_verdict_before_the_session_opens_is_not_waited_for_again() -> None:
    s = connecting_outbound("voicemail")
    verdict(s, 30, "human")
    socket(s, 2500, "openai", "open")
    assert not s.opening.waiting and Timer.DETECTION not in s.out.timers
    assert len(creates(hello(s, 2600))) == 1  # greeted at the hello, not after 33 s


def test_a_slow_session_open_does_not_greet_over_a_buffered_hello() -> None:
    s = connecting_outbound("off")
    socket(s, 3000, "openai", "open")  # past the silence already
    assert s.out.timers[Timer.GREET] == 3000 + GREET_AFTER_OPEN_MS
    realtime(s, 3100, speech_started("u1", 400))  # the hello the service buffered
    assert creates(to_realtime(fire(s, Timer.GREET))) == []


def test_a_machine_found_during_an_ending_can_no_longer_call_it_off() -> None:
    s = outbound("hangup", **CANCEL, tools=("end_call",))
    fire(s, Timer.DETECTION)  # taken for a human: greeted
    realtime(s, 5000, {"type": "response.created", "response": {"id": "resp_1"}})
    names = play(s, 5010, "b1", 5)
    realtime(s, 5020, function_call("end_call"))  # "goodbye"
    verdict(s, 5100, "machine_start")  # the ending hangs up anyway
    out = realtime(s, 5200, speech_started("u9", 5200))  # the machine talks over it
    assert to_twilio(out) == []  # no barge-in: nobody is there
    realtime(s, 5300, response_done("resp_1"))
    assert s.ending.stage is Stage.PLAYING_OUT  # not called off
    hear(s, 5300, names[:-1])
    [request] = rest_requests(twilio(s, 5900, mark_msg(names[-1])))  # after the last word
    assert request.params == {"Status": "completed"}


def test_machine_start_under_voicemail_still_waits_for_the_beep() -> None:
    s = outbound("voicemail")
    assert verdict(s, 2000, "machine_start") == []
    assert s.opening.waiting and s.opening.answered_by is None
    [create] = creates(to_realtime(verdict(s, 9000, "machine_end_beep")))
    assert MESSAGE in create["response"]["instructions"]
