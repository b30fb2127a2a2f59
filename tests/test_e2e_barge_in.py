"""Barge-in end to end: the fake caller hears the bot in real time and cuts in with speech.

What is checked is causality and accuracy, not speed: the bot is silenced with `clear`,
its response cancelled, and its item truncated to what the fake caller had actually
heard when the clear reached it (within one 100 ms delta), never rejected by the service.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import AppFactory, RunningApp
from tests.fakes.audio import speech, tone
from tests.fakes.realtime_server import FakeRealtime, ScriptedResponse
from tests.fakes.twilio_caller import FakeTwilioCall

pytestmark = pytest.mark.e2e

LONG_1 = (
    "Our opening hours are nine to six on weekdays, and ten to four on Saturdays. "
    "We are closed on Sundays."
)
LONG_2 = (
    "Of course. Our shop is on the high street, next to the station, and parking is "
    "free after six in the evening."
)
SHORT = "Sure, what would you like to know?"
CUT_IN = "Sorry, can I ask something else?"
DELTA_MS = 100  # the fake's delta size: the granularity of marks


def script(*texts: str) -> list[ScriptedResponse]:
    return [ScriptedResponse(audio=speech(t), transcript=t, delta_ms=DELTA_MS) for t in texts]


async def summary(app: RunningApp, caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    """The bridge's end-of-call line, once every call has been torn down."""
    await app.wait_idle()
    (record,) = [r for r in caplog.records if r.getMessage() == "call.summary"]
    return record.fields  # type: ignore[attr-defined,no-any-return]


async def cut_in_after(call: FakeTwilioCall, heard_bytes: int, audio: bytes, clears: int) -> int:
    """Once the caller has heard `heard_bytes`, speak; return the heard bytes at the clear."""
    await call.wait_for_heard(heard_bytes, timeout=30)
    await call.say(audio)
    await call.wait_for_clear(timeout=10, count=clears)
    return call.heard_bytes_at_clear[clears - 1]


async def test_barge_in_clears_cancels_and_truncates_to_what_was_heard(
    app_with: AppFactory, realtime: FakeRealtime, caplog: pytest.LogCaptureFixture
) -> None:
    realtime.add_responses(*script(LONG_1, SHORT))
    app = await app_with(interrupt_mode="cancel")  # at once (resume mode: test_e2e_noise.py)
    async with app.call() as call:
        await call.start()
        conn = await realtime.wait_connection()
        at_clear = await cut_in_after(call, 1500 * 8, speech(CUT_IN), clears=1)
        heard_ms = at_clear / 8
        answer_ms = len(speech(LONG_1)) / 8
        assert 1500 <= heard_ms < answer_ms  # the bot was cut off mid-answer

        await realtime.wait_until(lambda: realtime.truncates)
        types = conn.types()
        assert types.index("response.cancel") < types.index("conversation.item.truncate")
        (truncate,) = realtime.truncates
        assert truncate["item_id"] == conn.responses[0].item_id
        assert truncate["content_index"] == 0
        assert abs(truncate["audio_end_ms"] - heard_ms) <= DELTA_MS
        assert truncate["audio_end_ms"] <= truncate["item_audio_ms"]

        # The next answer plays whole, and nothing of the cancelled one after the clear.
        short = speech(SHORT)
        await call.wait_for_heard(at_clear + len(short), timeout=30)
        await call.wait_for_playout_idle(timeout=10)
        assert bytes(call.heard[at_clear:]) == short
        await call.hangup()
        await conn.wait_closed()

    assert realtime.rejected_truncates == [] and realtime.invalid_events == []
    assert call.violations == []
    # Echoes returned by the clear were not counted as played audio.
    bot_turn = (await summary(app, caplog))["turns"][0]
    assert bot_turn["interrupted"] and abs(bot_turn["heard_ms"] - heard_ms) <= DELTA_MS
    assert (await summary(app, caplog))["barge_ins"] == 1


async def test_second_barge_in_with_late_clear_echoes_is_just_as_accurate(
    app_with: AppFactory, realtime: FakeRealtime, caplog: pytest.LogCaptureFixture
) -> None:
    realtime.add_responses(*script(LONG_1, LONG_2, SHORT))
    app = await app_with()
    async with app.call() as call:
        call.hold_clear_echoes = True  # the first clear's echoes come back late
        await call.start()
        conn = await realtime.wait_connection()
        first = await cut_in_after(call, 1500 * 8, speech(CUT_IN), clears=1)

        # The second answer is playing when the first clear's echoes finally arrive.
        await call.wait_for_heard(first + 500 * 8, timeout=30)
        late = await call.release_clear_echoes()
        assert late, "the first clear left marks pending"
        second = await cut_in_after(call, first + 1500 * 8, speech(CUT_IN), clears=2)

        await realtime.wait_until(lambda: len(realtime.truncates) == 2)
        truncate = realtime.truncates[1]
        assert truncate["item_id"] == conn.responses[1].item_id
        heard_ms = (second - first) / 8  # all heard since the first clear is the 2nd answer
        assert abs(truncate["audio_end_ms"] - heard_ms) <= DELTA_MS
        await call.hangup()
        await conn.wait_closed()

    assert realtime.rejected_truncates == [] and realtime.invalid_events == []
    result = await summary(app, caplog)
    assert result["barge_ins"] == 2
    assert "twilio.unknown_mark" not in result["bad_input"]
    second_turn = [t for t in result["turns"] if t["who"] == "bot"][1]
    assert abs(second_turn["heard_ms"] - heard_ms) <= DELTA_MS


async def test_min_speech_policy_a_short_noise_does_not_interrupt(
    app_with: AppFactory, realtime: FakeRealtime, caplog: pytest.LogCaptureFixture
) -> None:
    answer = speech(LONG_1)
    realtime.add_responses(*script(LONG_1))
    app = await app_with(interrupt_min_speech_ms=1000)
    async with app.call() as call:
        await call.start()
        conn = await realtime.wait_connection()
        update = await conn.wait_for("session.update")
        td = update["session"]["audio"]["input"]["turn_detection"]
        assert td["interrupt_response"] is False and td["create_response"] is False
        await call.wait_for_heard(1000 * 8, timeout=30)
        await call.say(tone(300))  # a door slams
        started = await conn.wait_sent("input_audio_buffer.speech_started", timeout=10)
        # The noise's input item is removed from the conversation, and never answered.
        deleted = await conn.wait_for("conversation.item.delete", timeout=10)
        assert deleted["item_id"] == started["item_id"]
        await call.wait_for_heard(len(answer), timeout=30)
        await call.wait_for_playout_idle(timeout=10)
        assert call.clears == 0
        assert bytes(call.heard) == answer  # the bot said everything, uninterrupted
        assert conn.types().count("response.create") == 1  # only the greeting
        await call.hangup()
    assert realtime.invalid_events == []
    assert any(r.getMessage() == "turn.noise_ignored" for r in caplog.records)


async def test_min_speech_policy_long_speech_interrupts_and_is_answered(
    app_with: AppFactory, realtime: FakeRealtime
) -> None:
    realtime.add_responses(*script(LONG_1, SHORT))
    app = await app_with(interrupt_min_speech_ms=1000)
    async with app.call() as call:
        await call.start()
        conn = await realtime.wait_connection()
        await call.wait_for_heard(1000 * 8, timeout=30)
        said_at = len(call.heard)
        await call.say(speech(CUT_IN))
        await call.wait_for_clear(timeout=15)
        at_clear = call.heard_bytes_at_clear[0]
        # The bot kept talking while the caller's speech was not yet confirmed.
        assert at_clear - said_at >= 1000 * 8
        await realtime.wait_until(lambda: realtime.truncates)
        (truncate,) = realtime.truncates
        assert abs(truncate["audio_end_ms"] - at_clear / 8) <= DELTA_MS
        # The bridge, not the service, answers the turn once it is over.
        short = speech(SHORT)
        await call.wait_for_heard(at_clear + len(short), timeout=30)
        await call.wait_for_playout_idle(timeout=10)
        assert bytes(call.heard[at_clear:]) == short
        assert conn.types().count("response.create") == 2  # the greeting, then the answer
        assert conn.responses[1].trigger == "client"
        await call.hangup()
    assert realtime.rejected_truncates == [] and realtime.invalid_events == []
