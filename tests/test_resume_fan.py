"""Resume mode in the core: speech judged no turn *before* it stops (a fan the local
detector calls no voice while the service still hears speech). When it does stop, what
waited for the caller's speech to end goes on, as after any noise: a tool's answer held
back for it is given, and last words that have played go on to the hang-up.

Sans-I/O, like tests/test_resume.py (whose fan scenario this continues).
"""

from __future__ import annotations

import json
from typing import Any

from app.call.falseturn import VOICE_WINDOW_MS
from app.call.outbox import Timer
from app.call.session import CallSession
from app.call.state import Stage
from app.call.toolspec import ToolSpec
from tests.core import (
    RESUME,
    fire,
    function_call,
    greeted,
    hear,
    live,
    play,
    quiet,
    realtime,
    response_created,
    response_done,
    speech_started,
    speech_stopped,
    to_realtime,
)

LOOKUP = ToolSpec(name="lookup_order", description="Look up an order.")
#: The detector's report on a fan: no voiced audio at all.
NO_VOICE = {"window_ms": VOICE_WINDOW_MS, "voiced_ms": 0, "tail_voiced_ms": 0}


def judged_a_fan_at_the_decision(s: CallSession, now: float) -> None:
    """The decision time comes with the fan still going; the detector hears no voice."""
    fire(s, Timer.DECIDE)
    report = {**NO_VOICE, "longest_voiced_ms": 0, "at_decision": True}
    s.feed(now, "rest", {"voice": report})
    assert s.false_turn_count == 1 and s.turns.current is not None  # still "speaking"


def types(actions: list[Any]) -> list[str]:
    return [e["type"] for e in to_realtime(actions)]


def test_a_tools_answer_held_back_during_a_fan_is_given_when_it_stops() -> None:
    s = live(quiet(functions=(LOOKUP,), **RESUME, local_vad=3))
    names = play(s, 80, "it1", 30)  # "let me check" while the lookup runs
    args = json.dumps({"order_id": "A"})
    realtime(s, 100, function_call("lookup_order", "c1", arguments=args))
    realtime(s, 120, response_done("resp_1"))
    hear(s, 120, names[:2])
    realtime(s, 400, speech_started("u2", 3000))  # a fan starts over the bot
    output = {"call_id": "c1", "name": "lookup_order", "result": "ok", "output": "{}"}
    out = s.feed(600, "rest", {"tool_result": {**output, "detail": "", "ms": 10}})
    assert types(out) == ["conversation.item.create"]  # its answer waits for the speech
    judged_a_fan_at_the_decision(s, 1400)
    out = realtime(s, 3000, speech_stopped("u2", 5000))
    assert types(out) == ["response.create"]  # the fan is gone: the tool's answer is said
    out = realtime(s, 3000, {"type": "input_audio_buffer.committed", "item_id": "u2"})
    assert types(out) == ["conversation.item.delete"]


def test_a_fan_over_the_goodbye_lets_the_hang_up_go_ahead_when_it_stops() -> None:
    s = live(greeted(**RESUME, local_vad=3, rest_available=True, tools=("end_call",)))
    realtime(s, 50, response_created("resp_1"))
    realtime(s, 60, speech_started("u1"))  # a fan, before the goodbye is audible
    judged_a_fan_at_the_decision(s, 1070)
    names = play(s, 1100, "it1", 10)
    realtime(s, 1150, function_call("end_call", "call_1"))
    realtime(s, 1200, response_done("resp_1"))
    now = hear(s, 1200, names)
    assert s.ending.stage is Stage.WAITING_FOR_CALLER  # the fan goes on after the goodbye
    realtime(s, now + 500, speech_stopped("u1", 3000))
    # Not called off (nor left to the last-words timeout): the tail, then the hang-up.
    assert s.ending.stage is Stage.TAIL
    assert s.out.timers[Timer.HANGUP_TAIL] == now + 500 + RESUME["hangup_tail_ms"]
