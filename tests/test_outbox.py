"""The outbox on its own: the timer contract, client events held until the socket opens,
bad-input reporting."""

from __future__ import annotations

import base64
import logging

import pytest

from app.call.actions import Action, CloseTwilio, ConnectRealtime, ToRealtime, ToTwilio
from app.call.outbox import BAD_LOG_EVERY, BAD_LOG_FIRST, Outbox, Timer
from app.protocol import realtime as rt
from app.protocol import twilio as tw
from tests.core import STREAM, b64

SESSION = {"type": "session.update", "session": {"type": "realtime"}}


# -- timers -----------------------------------------------------------------------------


def test_setting_a_timer_replaces_the_one_of_the_same_name() -> None:
    out = Outbox(5000)
    assert out.deadline is None
    out.set_timer(Timer.READY, 100)
    out.set_timer(Timer.READY, 50)
    assert out.timers == {Timer.READY: 50} and out.deadline == 50
    out.set_timer(Timer.READY, 200)  # later: the earlier deadline is gone with it
    assert out.timers == {Timer.READY: 200} and out.deadline == 200


def test_the_deadline_is_the_earliest_timer() -> None:
    out = Outbox(5000)
    out.set_timer(Timer.MAX_DURATION, 60_000)
    out.set_timer(Timer.SILENCE, 8000)
    out.set_timer(Timer.READY, 4000)
    assert out.deadline == 4000
    out.cancel_timer(Timer.READY)
    assert out.deadline == 8000
    out.cancel_timer(Timer.READY)  # not set: nothing changes
    assert out.deadline == 8000
    out.set_timer(Timer.SILENCE, 70_000)
    assert out.deadline == 60_000
    out.cancel_timer(Timer.MAX_DURATION)
    out.cancel_timer(Timer.SILENCE)
    assert out.deadline is None and out.timers == {}


def test_pop_due_fires_in_deadline_order_each_with_its_own_deadline() -> None:
    out = Outbox(5000)
    out.set_timer(Timer.SILENCE, 30)
    out.set_timer(Timer.READY, 10)
    out.set_timer(Timer.CONFIRM, 20)
    assert out.pop_due(9) is None
    assert out.pop_due(25) == (Timer.READY, 10)
    assert out.deadline == 20
    assert out.pop_due(25) == (Timer.CONFIRM, 20)
    assert out.pop_due(25) is None  # SILENCE is at 30
    assert out.pop_due(30) == (Timer.SILENCE, 30)  # due at its deadline exactly
    assert out.pop_due(10**9) is None and out.deadline is None


def test_timers_with_the_same_deadline_pop_in_the_order_they_were_first_set() -> None:
    out = Outbox(5000)
    out.set_timer(Timer.LAST_WORDS, 100)
    out.set_timer(Timer.STOP_GRACE, 100)
    out.set_timer(Timer.CONFIRM, 100)
    out.set_timer(Timer.LAST_WORDS, 100)  # replaced: keeps its place
    popped = [out.pop_due(100) for _ in range(3)]
    assert popped == [(Timer.LAST_WORDS, 100), (Timer.STOP_GRACE, 100), (Timer.CONFIRM, 100)]
    assert out.pop_due(100) is None


def test_cancel_all_timers() -> None:
    out = Outbox(5000)
    for i, timer in enumerate(Timer):
        out.set_timer(timer, 100 + i)
    assert len(out.timers) == len(Timer) and out.deadline == 100
    out.cancel_all_timers()
    assert out.timers == {} and out.deadline is None and out.pop_due(10**9) is None


# -- actions and client events held until the socket is open ------------------------------


def test_actions_come_out_in_order_and_once() -> None:
    out = Outbox(5000)
    out.emit(ConnectRealtime())
    out.twilio(tw.clear(STREAM))  # Twilio messages are never held
    out.emit(CloseTwilio("x"))
    assert out.take() == [ConnectRealtime(), ToTwilio(tw.clear(STREAM)), CloseTwilio("x")]
    assert out.take() == []


def test_client_events_are_held_until_the_socket_opens_then_follow_the_session_update() -> None:
    out = Outbox(5000)
    held = [
        rt.input_audio_append(b64(160, 1)),
        rt.user_text("The caller pressed 3 on their keypad."),
        rt.input_audio_append(b64(160, 2)),
        rt.response_create(None, "bridge_response_1"),
    ]
    for event in held:
        out.realtime(event)
    out.twilio(tw.clear(STREAM))
    assert out.take() == [ToTwilio(tw.clear(STREAM))]
    out.open_realtime(SESSION)
    assert out.take() == [ToRealtime(SESSION), *map(ToRealtime, held)]
    # Once open, client events go out at once.
    out.realtime(rt.response_cancel())
    assert out.take() == [ToRealtime(rt.response_cancel())]


def test_opening_with_nothing_held_sends_only_the_session_update() -> None:
    out = Outbox(5000)
    out.open_realtime(SESSION)
    assert out.take() == [ToRealtime(SESSION)]


def _first_bytes(actions: list[Action]) -> list[int]:
    return [
        base64.b64decode(a.msg["audio"])[0]
        for a in actions
        if isinstance(a, ToRealtime) and a.msg["type"] == "input_audio_buffer.append"
    ]


def test_held_audio_keeps_only_the_most_recent_connect_buffer() -> None:
    out = Outbox(40)  # 40 ms: 320 bytes of mu-law
    out.realtime(rt.user_text("first"))
    for byte in range(5):
        out.realtime(rt.input_audio_append(b64(160, byte)))  # 20 ms each
        if byte == 2:
            out.realtime(rt.user_text("middle"))
    out.open_realtime(SESSION)
    actions = out.take()
    assert _first_bytes(actions) == [3, 4]
    # Only audio is dropped: other events are all kept, in order.
    kinds = [a.msg["type"] for a in actions if isinstance(a, ToRealtime)]
    assert kinds == [
        "session.update",
        "conversation.item.create",
        "conversation.item.create",
        "input_audio_buffer.append",
        "input_audio_buffer.append",
    ]


@pytest.mark.parametrize(("frames", "kept"), [(2, [0, 1]), (3, [1, 2])])
def test_held_audio_exactly_at_the_bound_is_kept(frames: int, kept: list[int]) -> None:
    out = Outbox(40)
    for byte in range(frames):
        out.realtime(rt.input_audio_append(b64(160, byte)))
    out.open_realtime(SESSION)
    assert _first_bytes(out.take()) == kept


def test_held_audio_is_counted_in_decoded_bytes() -> None:
    out = Outbox(1)  # 8 bytes
    out.realtime(rt.input_audio_append(b64(5, 1)))  # "AQEBAQE=": 5 bytes, padded
    out.realtime(rt.input_audio_append(b64(3, 2)))  # 8 bytes in all: kept
    out.realtime(rt.input_audio_append(b64(1, 3)))  # 9: the oldest goes
    out.open_realtime(SESSION)
    assert _first_bytes(out.take()) == [2, 3]


def test_audio_after_the_socket_opens_is_never_dropped() -> None:
    out = Outbox(0)
    out.open_realtime(SESSION)
    out.take()
    for byte in range(3):
        out.realtime(rt.input_audio_append(b64(160, byte)))
    assert _first_bytes(out.take()) == [0, 1, 2]


# -- bad input ------------------------------------------------------------------------------


def test_bad_input_is_counted_and_its_log_throttled(caplog: pytest.LogCaptureFixture) -> None:
    assert (BAD_LOG_FIRST, BAD_LOG_EVERY) == (5, 100)
    out = Outbox(5000)
    with caplog.at_level(logging.WARNING, logger="app.call"):
        for _ in range(250):
            out.bad("twilio", "unknown_mark", mark="m")
        for _ in range(3):
            out.bad("realtime", "invalid_audio_delta")
    assert out.bad_input == {"twilio.unknown_mark": 250, "realtime.invalid_audio_delta": 3}
    logged = [(r.fields["reason"], r.fields["count"]) for r in caplog.records]  # type: ignore[attr-defined]
    assert logged == [
        *(("unknown_mark", n) for n in (1, 2, 3, 4, 5, 100, 200)),
        *(("invalid_audio_delta", n) for n in (1, 2, 3)),
    ]
    first = caplog.records[0]
    assert first.getMessage() == "bad_input" and first.levelno == logging.WARNING
    assert first.fields == {  # type: ignore[attr-defined]
        "source": "twilio",
        "reason": "unknown_mark",
        "count": 1,
        "mark": "m",
    }
    assert out.take() == []  # bad input is only reported: it sends nothing
