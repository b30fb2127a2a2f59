"""TurnPolicy on its own: does the caller's speech stop the bot, and is it a turn at all?"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.call.turns import Start, Stop, TurnPolicy, Utterance

PREFIX, SILENCE = 300, 500


def immediate() -> TurnPolicy:
    return TurnPolicy(0, PREFIX, SILENCE)


def min_speech(ms: int = 800) -> TurnPolicy:
    return TurnPolicy(ms, PREFIX, SILENCE)


# -- interrupt at once ----------------------------------------------------------------------


def test_immediate_policy_interrupts_at_the_first_speech_over_the_bot() -> None:
    p = immediate()
    assert p.automatic
    assert p.speech_started("u1", 700, bot_audible=True) is Start.INTERRUPT
    assert p.current == Utterance("u1", 700, over_bot=True, interrupted=True)
    assert p.confirmed() is False  # already interrupted
    assert p.speech_stopped(800) is Stop.TURN  # however short
    assert p.current is None and not p.noise_items


def test_immediate_policy_speech_while_the_bot_is_silent_is_a_turn() -> None:
    p = immediate()
    assert p.speech_started("u1", 0, bot_audible=False) is Start.NOTHING
    assert p.current == Utterance("u1", 0, over_bot=False)
    assert p.speech_stopped(10) is Stop.TURN


# -- interrupt after N ms of speech ------------------------------------------------------------


def test_min_speech_policy_waits_over_the_bot() -> None:
    p = min_speech(800)
    assert not p.automatic
    assert p.confirm_after_ms == 800 + SILENCE
    assert p.speech_started("u1", 700, bot_audible=True) is Start.WAIT
    assert p.current is not None and not p.current.interrupted


def test_confirmed_interrupts_once() -> None:
    p = min_speech()
    p.speech_started("u1", 700, bot_audible=True)
    assert p.confirmed() is True
    assert p.current is not None and p.current.interrupted
    assert p.confirmed() is False  # a second timer can't interrupt twice
    # Already interrupted: its end is a plain turn, whatever its length.
    assert p.speech_stopped(0) is Stop.TURN
    assert not p.noise_items


def test_confirmed_without_speech_over_the_bot_is_false() -> None:
    p = min_speech()
    assert p.confirmed() is False  # nobody is speaking
    p.speech_started("u1", 0, bot_audible=False)
    assert p.confirmed() is False  # the bot was silent: nothing to interrupt
    p.speech_stopped(100)
    assert p.confirmed() is False  # the speech is over


def test_min_speech_policy_speech_while_the_bot_is_silent_is_a_turn() -> None:
    p = min_speech()
    assert p.speech_started("u1", 0, bot_audible=False) is Start.NOTHING
    assert p.speech_stopped(SILENCE + PREFIX + 1) is Stop.TURN  # 1 ms: still a turn
    assert not p.noise_items


def test_speech_stopped_without_a_start_is_a_turn() -> None:
    assert min_speech().speech_stopped(5000) is Stop.TURN


@pytest.mark.parametrize(
    ("start_ms", "end_ms", "outcome"),
    [
        # Speech began at start + 300 (prefix padding), ended at end - 500 (silence window).
        (700, 700 + PREFIX + 800 + SILENCE, Stop.TURN_INTERRUPT),  # exactly 800 ms
        (700, 700 + PREFIX + 799 + SILENCE, Stop.NOISE),  # 1 ms short
        (700, 2200, Stop.NOISE),  # 1000..1700: 700 ms
        (700, 2400, Stop.TURN_INTERRUPT),  # 1000..1900: 900 ms
        (0, 1600, Stop.TURN_INTERRUPT),  # 300..1100: 800 ms
        (0, 1000, Stop.NOISE),  # without padding and silence it would have been 1000 ms
    ],
)
def test_speech_length_leaves_out_prefix_padding_and_silence_window(
    start_ms: int, end_ms: int, outcome: Stop
) -> None:
    p = min_speech(800)
    p.speech_started("u1", start_ms, bot_audible=True)
    assert p.speech_stopped(end_ms) is outcome
    assert ("u1" in p.noise_items) is (outcome is Stop.NOISE)


@given(
    min_ms=st.integers(1, 5000),
    prefix=st.integers(0, 1000),
    silence=st.integers(0, 2000),
    start=st.integers(0, 10**6),
    spoken=st.integers(-3000, 10_000),
)
def test_speech_length_arithmetic(
    min_ms: int, prefix: int, silence: int, start: int, spoken: int
) -> None:
    p = TurnPolicy(min_ms, prefix, silence)
    assert p.confirm_after_ms == min_ms + silence
    p.speech_started("u", start, bot_audible=True)
    outcome = p.speech_stopped(start + prefix + spoken + silence)
    assert outcome is (Stop.TURN_INTERRUPT if spoken >= min_ms else Stop.NOISE)


def test_noise_items_collect_every_noise_with_an_item_id() -> None:
    p = min_speech(800)
    for item in ("n1", "n2"):
        p.speech_started(item, 0, bot_audible=True)
        assert p.speech_stopped(900) is Stop.NOISE
    p.speech_started(None, 0, bot_audible=True)  # noise without an item: nothing to delete
    assert p.speech_stopped(900) is Stop.NOISE
    p.speech_started("", 0, bot_audible=True)
    assert p.speech_stopped(900) is Stop.NOISE
    p.speech_started("t1", 0, bot_audible=True)  # a real turn is not noise
    assert p.speech_stopped(5000) is Stop.TURN_INTERRUPT
    assert p.noise_items == {"n1", "n2"}


def test_a_new_start_replaces_the_current_utterance() -> None:
    p = min_speech()
    p.speech_started("u1", 0, bot_audible=True)
    p.speech_started("u2", 100, bot_audible=False)
    assert p.current == Utterance("u2", 100, over_bot=False)
    assert p.speech_stopped(200) is Stop.TURN  # u2 began while the bot was silent
