"""Nudges on its own: the silence and time-limit timers, and key presses."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from app.call.nudges import (
    DTMF_MESSAGE,
    MAX_DURATION_GRACE_MS,
    SILENCE_GOODBYE,
    WRAP_UP,
    Nudges,
    Silence,
)
from app.call.outbox import Outbox, Timer
from app.protocol import realtime as rt
from tests.core import config, outbox, to_realtime


def nudges(**overrides: Any) -> tuple[Nudges, Outbox]:
    out = outbox()
    return Nudges(out, config(**overrides)), out


def texts(out: Outbox) -> list[str]:
    return [e["item"]["content"][0]["text"] for e in to_realtime(out.take())]


# -- the time limit -------------------------------------------------------------------------


def test_the_time_limit_runs_from_the_start_and_is_never_due_before_the_call_can_speak() -> None:
    n, out = nudges(max_call_ms=60_000)
    n.call_started(1000, now=1200)
    assert out.timers == {Timer.MAX_DURATION: 61_000}
    late, out = nudges(max_call_ms=2000)
    late.call_started(1000, now=3500)  # the Realtime session opened after the limit
    assert out.timers == {Timer.MAX_DURATION: 3500}
    off, out = nudges(max_call_ms=0)
    off.call_started(1000, now=1200)
    assert out.timers == {}


def test_at_the_time_limit_the_model_is_told_to_wrap_up() -> None:
    n, out = nudges(max_call_ms=60_000, silence_reprompt_ms=5000)
    n.maybe_arm(50_000, quiet=True)
    assert Timer.SILENCE in out.timers
    assert n.max_duration(60_000, ending_active=False) is True
    assert to_realtime(out.take()) == [rt.system_text(WRAP_UP)]
    assert out.timers == {}  # no reprompt on top of the wrap-up, no second limit


def test_the_time_limit_is_postponed_while_another_ending_is_active() -> None:
    n, out = nudges(max_call_ms=60_000)
    assert n.max_duration(60_000, ending_active=True) is False
    assert out.take() == []  # nothing said
    assert out.timers == {Timer.MAX_DURATION: 60_000 + MAX_DURATION_GRACE_MS}


def test_the_grace_period_is_granted_once() -> None:
    n, out = nudges(max_call_ms=60_000)
    assert n.grant_grace(61_000) is True
    assert out.timers == {Timer.MAX_DURATION: 61_000 + MAX_DURATION_GRACE_MS}
    out.cancel_all_timers()
    assert n.grant_grace(121_000) is False
    assert out.timers == {}  # no second grace timer


# -- silence --------------------------------------------------------------------------------


def test_maybe_arm_sets_the_silence_timer_only_when_quiet_and_only_once() -> None:
    n, out = nudges(silence_reprompt_ms=8000)
    n.maybe_arm(100, quiet=False)
    assert out.timers == {}
    n.maybe_arm(200, quiet=True)
    assert out.timers == {Timer.SILENCE: 8200}
    n.maybe_arm(900, quiet=True)  # already armed: the clock is not restarted
    assert out.timers == {Timer.SILENCE: 8200}


def test_no_silence_timer_when_reprompts_are_off() -> None:
    n, out = nudges(silence_reprompt_ms=0)
    n.maybe_arm(100, quiet=True)
    assert out.timers == {}


def test_disarm_and_caller_activity_stop_the_silence_clock() -> None:
    n, out = nudges(silence_reprompt_ms=8000)
    n.maybe_arm(0, quiet=True)
    n.disarm()
    assert out.timers == {}
    n.maybe_arm(1000, quiet=True)  # armed again, from the new time
    assert out.timers == {Timer.SILENCE: 9000}
    n.caller_active()
    assert out.timers == {}


def test_a_busy_silence_timer_does_nothing_and_can_be_armed_again() -> None:
    n, out = nudges(silence_reprompt_ms=8000)
    n.maybe_arm(0, quiet=True)
    out.pop_due(8000)
    assert n.silence(busy=True) is Silence.NOTHING
    assert out.take() == [] and n.reprompts == 0
    n.maybe_arm(9000, quiet=True)
    assert out.timers == {Timer.SILENCE: 17_000}


def test_reprompts_then_a_goodbye_after_silence_max_reprompts() -> None:
    n, out = nudges(silence_reprompt_ms=8000, silence_max_reprompts=2)
    assert n.silence(busy=False) is Silence.REPROMPT
    assert n.silence(busy=False) is Silence.REPROMPT
    reprompt = texts(out)
    assert len(reprompt) == 2 and reprompt[0] == reprompt[1] != SILENCE_GOODBYE
    assert (n.reprompts, n.reprompts_total) == (2, 2)
    assert n.silence(busy=False) is Silence.GOODBYE
    assert texts(out) == [SILENCE_GOODBYE]
    assert n.reprompts_total == 2  # the goodbye is not a reprompt


def test_caller_activity_starts_the_reprompt_count_over() -> None:
    n, _ = nudges(silence_reprompt_ms=8000, silence_max_reprompts=1)
    assert n.silence(busy=False) is Silence.REPROMPT
    n.caller_active()
    assert n.reprompts == 0
    assert n.silence(busy=False) is Silence.REPROMPT  # not the goodbye yet
    assert n.silence(busy=False) is Silence.GOODBYE
    assert n.reprompts_total == 2


def test_a_reprompt_limit_of_zero_never_hangs_up() -> None:
    n, out = nudges(silence_reprompt_ms=8000, silence_max_reprompts=0)
    outcomes = {n.silence(busy=False) for _ in range(50)}
    assert outcomes == {Silence.REPROMPT}
    assert n.reprompts_total == 50
    assert SILENCE_GOODBYE not in texts(out)


# -- key presses ----------------------------------------------------------------------------


@pytest.mark.parametrize("digit", list("0123456789*#ABCD"))
def test_every_valid_key_reaches_the_model(digit: str) -> None:
    n, out = nudges(dtmf_to_model=True)
    assert n.dtmf(digit, committed=False) is True
    assert to_realtime(out.take()) == [rt.user_text(DTMF_MESSAGE.format(digit=digit))]
    assert not out.bad_input


@pytest.mark.parametrize("digit", ["55", "x", "", "E", "a", 5, None, ["1"]])
def test_a_malformed_key_is_bad_input(digit: object) -> None:
    n, out = nudges(silence_reprompt_ms=8000)
    n.silence(busy=False)
    n.maybe_arm(0, quiet=True)
    out.take()
    assert n.dtmf(digit, committed=False) is False
    assert out.bad_input == {"twilio.malformed_dtmf": 1}
    assert out.take() == []  # the model is told nothing
    assert n.reprompts == 1 and Timer.SILENCE in out.timers  # not caller activity


@pytest.mark.parametrize(("to_model", "committed"), [(False, False), (True, True), (False, True)])
def test_a_key_is_not_forwarded_when_off_or_too_late(
    to_model: bool, committed: bool, caplog: pytest.LogCaptureFixture
) -> None:
    n, out = nudges(dtmf_to_model=to_model, silence_reprompt_ms=8000)
    n.silence(busy=False)
    n.maybe_arm(0, quiet=True)
    out.take()
    with caplog.at_level(logging.INFO, logger="app.call"):
        assert n.dtmf("7", committed=committed) is False
    assert out.take() == []
    assert n.reprompts == 0 and out.timers == {}  # still caller activity
    (record,) = [r for r in caplog.records if r.getMessage() == "twilio.dtmf"]
    assert record.fields == {"forwarded": False}  # type: ignore[attr-defined]


def test_a_forwarded_key_is_logged_as_forwarded(caplog: pytest.LogCaptureFixture) -> None:
    n, _ = nudges()
    with caplog.at_level(logging.INFO, logger="app.call"):
        n.dtmf("7", committed=False)
    (record,) = [r for r in caplog.records if r.getMessage() == "twilio.dtmf"]
    assert record.fields == {"forwarded": True}  # type: ignore[attr-defined]


def test_digits_are_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    n, out = nudges()
    with caplog.at_level(logging.DEBUG):
        for digit in "7#B":
            n.dtmf(digit, committed=False)
        n.dtmf("7", committed=True)
        n.dtmf("9876x", committed=False)  # malformed: logged as bad input, without it
    records = caplog.records
    assert records, "the key presses are logged"
    assert "twilio.malformed_dtmf" in out.bad_input
    for r in records:
        rendered = f"{r.getMessage()} {getattr(r, 'fields', '')}"
        for secret in ("7", "#", "B", "9876"):
            assert secret not in rendered, rendered
