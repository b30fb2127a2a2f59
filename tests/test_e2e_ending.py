"""Ending calls end to end: hang-up and transfer after the last word, over real sockets.

The fake Twilio REST server ends the fake media stream on a successful update, as
Twilio does, so the whole sequence (goodbye playing, REST update, `stop`, close) runs for
real. Causality is asserted from the fakes' timelines: the REST request is never sent
before the last byte of the goodbye has been played to the caller.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import ACCOUNT_SID, AUTH_TOKEN, AppFactory, RunningApp
from tests.fakes.audio import speech
from tests.fakes.realtime_server import FakeRealtime, ScriptedResponse
from tests.fakes.twilio_caller import FakeTwilioCall
from tests.fakes.twilio_rest import FakeTwilioRest

pytestmark = pytest.mark.e2e

HELLO = "Hello, how can I help?"
GOODBYE = "Thanks for calling, goodbye!"
HANDOFF = "I am transferring you to a colleague now."
LONG_GOODBYE = (
    "Thank you so much for calling today. It was a pleasure to help you, and I hope you "
    "have a wonderful rest of your week. Goodbye!"
)
BYE = "That is all, thank you. Bye."
CUT_IN = "Wait, one more thing please."
TRANSFER_TO = "+15550007777"


@pytest.fixture
async def rest() -> AsyncIterator[FakeTwilioRest]:
    async with FakeTwilioRest(expected_auth=(ACCOUNT_SID, AUTH_TOKEN)) as fake:
        yield fake


def said(text: str, **kw: Any) -> ScriptedResponse:
    return ScriptedResponse(audio=speech(text), transcript=text, **kw)


def tool(name: str) -> dict[str, Any]:
    return {"name": name, "arguments": {"reason": "the caller is done"}}


async def start_app(app_with: AppFactory, rest: FakeTwilioRest, **overrides: Any) -> RunningApp:
    return await app_with(  # type: ignore[no-any-return]
        twilio_account_sid=ACCOUNT_SID, twilio_api_base_url=rest.base_url, **overrides
    )


def played_at(call: FakeTwilioCall, heard_bytes: int) -> float:
    """Loop time at which the caller had heard `heard_bytes` in all."""
    for t, kind, details in call.events:
        if kind == "played" and details["heard"] >= heard_bytes:
            return t
    raise AssertionError(f"the caller never heard {heard_bytes} bytes")


def received_after(call: FakeTwilioCall, nbytes: int) -> float:
    """Loop time at which bot audio beyond the first `nbytes` reached the caller."""
    total = 0
    for t, kind, details in call.events:
        if kind == "media":
            total += details["bytes"]
            if total > nbytes:
                return t
    raise AssertionError(f"the caller never received more than {nbytes} bytes")


async def summary(app: RunningApp, caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    """The bridge's end-of-call line, once every call has been torn down."""
    await app.wait_idle()
    (record,) = [r for r in caplog.records if r.getMessage() == "call.summary"]
    return record.fields  # type: ignore[attr-defined,no-any-return]


async def test_hang_up_comes_after_the_last_byte_of_the_goodbye(
    app_with: AppFactory,
    realtime: FakeRealtime,
    rest: FakeTwilioRest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    realtime.add_responses(said(HELLO), said(GOODBYE, function_call=tool("end_call")))
    app = await start_app(app_with, rest, last_words_timeout_seconds=20)
    async with app.call() as call:
        rest.register_call(call)
        await call.start()
        conn = await realtime.wait_connection()
        update = await conn.wait_for("session.update")
        assert [t["name"] for t in update["session"]["tools"]] == ["end_call"]
        await call.wait_for_heard(len(speech(HELLO)), timeout=20)
        await call.say(speech(BYE))
        request = await rest.wait_for_request(timeout=30)
        await call.wait_closed(timeout=10)
        await conn.wait_closed(timeout=10)

    assert request.path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls/{call.call_sid}.json"
    assert request.form == {"Status": "completed"}
    everything = len(speech(HELLO)) + len(speech(GOODBYE))
    assert len(call.heard) == everything and call.discarded_at_close == 0
    assert request.time >= played_at(call, everything)  # never before the last byte
    assert request.time - played_at(call, everything) < 5  # promptly, not on a timeout
    output = await conn.wait_for("conversation.item.create")
    assert output["item"]["type"] == "function_call_output"
    assert not any(r.getMessage() == "ending.playout_timeout" for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert (await summary(app, caplog))["ended"] == "bot_hung_up"
    assert realtime.invalid_events == [] and call.violations == []


async def test_transfer_dials_after_the_hand_off_sentence(
    app_with: AppFactory,
    realtime: FakeRealtime,
    rest: FakeTwilioRest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    realtime.add_responses(said(HELLO), said(HANDOFF, function_call=tool("transfer_call")))
    app = await start_app(app_with, rest, transfer_number=TRANSFER_TO)
    async with app.call() as call:
        rest.register_call(call)
        await call.start()
        conn = await realtime.wait_connection()
        update = await conn.wait_for("session.update")
        assert {t["name"] for t in update["session"]["tools"]} == {"end_call", "transfer_call"}
        await call.wait_for_heard(len(speech(HELLO)), timeout=20)
        await call.say(speech("Can I talk to a person?"))
        request = await rest.wait_for_request(timeout=30)
        await call.wait_closed(timeout=10)

    dial = ET.fromstring(request.form["Twiml"]).find("Dial")
    assert dial is not None and dial.text == TRANSFER_TO
    everything = len(speech(HELLO)) + len(speech(HANDOFF))
    assert call.discarded_at_close == 0
    assert request.time >= played_at(call, everything)
    assert (await summary(app, caplog))["ended"] == "transferred"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_barge_in_during_the_goodbye_calls_the_hang_up_off(
    app_with: AppFactory, realtime: FakeRealtime, rest: FakeTwilioRest
) -> None:
    realtime.add_responses(
        said(HELLO), said(LONG_GOODBYE, function_call=tool("end_call")), said(HELLO)
    )
    app = await start_app(app_with, rest)
    async with app.call() as call:
        rest.register_call(call)
        await call.start()
        conn = await realtime.wait_connection()
        hello = len(speech(HELLO))
        await call.wait_for_heard(hello, timeout=20)
        await call.say(speech(BYE))
        await call.wait_for_heard(hello + 1500 * 8, timeout=30)  # into the goodbye
        await call.say(speech(CUT_IN))
        await call.wait_for_clear(timeout=10)
        told = await conn.wait_for(
            "conversation.item.create",
            timeout=10,
            predicate=lambda e: e["item"].get("role") == "system",
        )
        assert "called off" in told["item"]["content"][0]["text"]
        # The conversation goes on: the next answer plays in full, and nobody hangs up.
        at_clear = call.heard_bytes_at_clear[0]
        await call.wait_for_heard(at_clear + hello, timeout=30)
        await call.wait_for_playout_idle(timeout=10)
        assert rest.requests == [] and not call.closed.is_set()
        await call.hangup()


async def test_a_5xx_from_rest_is_retried(
    app_with: AppFactory,
    realtime: FakeRealtime,
    rest: FakeTwilioRest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rest.script(503, 500)
    realtime.add_responses(said(GOODBYE, function_call=tool("end_call")))
    app = await start_app(app_with, rest)
    async with app.call() as call:
        rest.register_call(call)
        await call.start()
        await rest.wait_for_request(timeout=30, count=3)
        await call.wait_closed(timeout=10)
    requests = rest.requests
    assert [r.status for r in requests] == [503, 500, 200]
    assert requests[1].time - requests[0].time >= 0.5  # backed off, not hammered
    assert (await summary(app, caplog))["ended"] == "bot_hung_up"


async def test_a_rest_failure_still_ends_the_call(
    app_with: AppFactory,
    realtime: FakeRealtime,
    rest: FakeTwilioRest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rest.script(400)
    realtime.add_responses(said(GOODBYE, function_call=tool("end_call")))
    app = await start_app(app_with, rest)
    async with app.call() as call:
        await call.start()
        await rest.wait_for_request(timeout=30)
        # The bridge closes the stream itself, so Twilio runs the fallback TwiML.
        await call.wait_closed(timeout=10)
        assert call.close_code == 1000
    result = await summary(app, caplog)
    assert result["ended"] == "failure" and result["end_detail"] == "rest_hangup_failed"
    assert any(r.getMessage() == "ending.rest_failed" and r.call_sid for r in caplog.records)


async def test_max_duration_wraps_up_then_hangs_up_after_the_last_word(
    app_with: AppFactory,
    realtime: FakeRealtime,
    rest: FakeTwilioRest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    realtime.add_responses(said(HELLO), said(GOODBYE))
    app = await start_app(app_with, rest, max_call_seconds=3, silence_reprompt_seconds=0)
    async with app.call() as call:
        rest.register_call(call)
        await call.start()
        conn = await realtime.wait_connection()
        told = await conn.wait_for(
            "conversation.item.create",
            timeout=10,
            predicate=lambda e: e["item"].get("role") == "system",
        )
        assert "maximum length" in told["item"]["content"][0]["text"]
        request = await rest.wait_for_request(timeout=30)
        await call.wait_closed(timeout=10)
    everything = len(speech(HELLO)) + len(speech(GOODBYE))
    assert request.form == {"Status": "completed"}
    assert request.time >= played_at(call, everything)
    assert (await summary(app, caplog))["ended"] == "max_duration"


async def test_silence_reprompts_then_a_polite_hang_up(
    app_with: AppFactory,
    realtime: FakeRealtime,
    rest: FakeTwilioRest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    check = "Are you still there?"
    realtime.add_responses(said(HELLO), said(check), said(GOODBYE))
    app = await start_app(app_with, rest, silence_reprompt_seconds=1, silence_max_reprompts=1)
    async with app.call() as call:
        rest.register_call(call)
        await call.start()
        conn = await realtime.wait_connection()
        request = await rest.wait_for_request(timeout=30)
        await call.wait_closed(timeout=10)
    prompts = [e for e in conn.events if e["type"] == "conversation.item.create"]
    assert len(prompts) == 2  # one reprompt, then the goodbye instruction
    hello, reprompt = len(speech(HELLO)), len(speech(check))
    # Silence is counted from the end of playback (1 s setting), not from the end of
    # generation, which the fake service finishes long before the greeting has played.
    assert received_after(call, hello) - played_at(call, hello) >= 1.0
    assert call.discarded_at_close == 0
    assert request.time >= played_at(call, hello + reprompt + len(speech(GOODBYE)))
    result = await summary(app, caplog)
    assert result["reprompts"] == 1 and result["ended"] == "bot_hung_up"


async def test_a_key_press_reaches_the_model(
    app_with: AppFactory, realtime: FakeRealtime, caplog: pytest.LogCaptureFixture
) -> None:
    app = await app_with(bot_greeting="")
    async with app.call() as call:
        await call.start()
        conn = await realtime.wait_connection()
        await conn.wait_for("session.update")
        await call.send_dtmf("7")
        item = await conn.wait_for("conversation.item.create", timeout=10)
        assert item["item"]["content"][0]["text"] == "The caller pressed 7 on their keypad."
        await conn.wait_for("response.create", timeout=10)
        await call.hangup()
    rendered = " ".join(
        f"{r.getMessage()} {getattr(r, 'fields', '')}"
        for r in caplog.records
        if r.name.startswith("app")
    )
    assert "twilio.dtmf" in rendered
    assert "'7'" not in rendered and "digit" not in rendered  # key presses are not logged
