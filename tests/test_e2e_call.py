"""End to end over loopback: fake Twilio caller <-> real app (uvicorn) <-> fake Realtime.

The fake caller streams 20 ms frames in real time and plays the bot's audio out at
8 bytes/ms, echoing marks as Twilio does; the fake service speaks the GA protocol and
validates every client event against the `openai` package's types.
"""

from __future__ import annotations

import asyncio
import base64
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from app.security import stream_token
from tests.conftest import ACCOUNT_SID, AUTH_TOKEN, AppFactory, make_settings, serve
from tests.fakes.audio import silence, speech
from tests.fakes.realtime_server import FakeRealtime, ScriptedResponse

pytestmark = pytest.mark.e2e

GREETING = "Hello, thanks for calling. How can I help you today?"
QUESTION = "What are your opening hours on Saturday?"


def twilio_post(
    app_url: str, public_base: str, params: dict[str, str], token: str
) -> httpx.Request:
    sig = RequestValidator(token).compute_signature(public_base + "/incoming-call", params)
    return httpx.Request(
        "POST",
        app_url + "/incoming-call",
        content=urlencode(params),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": sig,
        },
    )


async def test_webhook_returns_connect_stream_with_parameters_and_fallback(
    app_with: AppFactory,
) -> None:
    app = await app_with(fallback_number="+15550009999", fallback_message="We are sorry.")
    params = {"CallSid": "CA" + "3" * 32, "From": "+15551230000", "To": "+15559870000"}
    async with httpx.AsyncClient() as client:
        resp = await client.send(twilio_post(app.http_url, app.public_base, params, AUTH_TOKEN))
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("application/xml")
        root = ET.fromstring(resp.text)
        connect_el, say, dial = list(root)
        assert connect_el.tag == "Connect" and say.tag == "Say" and dial.tag == "Dial"
        stream = connect_el.find("Stream")
        assert stream is not None
        assert stream.get("url") == "wss://bridge.example.com/media-stream"
        got = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
        token = got.pop("StreamToken")  # on by default whenever signatures are checked
        assert token == stream_token(AUTH_TOKEN, params["CallSid"], params)
        assert got == params  # the call's data, and nothing else
        assert say.text == "We are sorry." and dial.text == "+15550009999"

        bad = twilio_post(app.http_url, app.public_base, params, "wrong-token-xxxxxxxx")
        assert (await client.send(bad)).status_code == 403
        unsigned = twilio_post(app.http_url, app.public_base, params, AUTH_TOKEN)
        del unsigned.headers["X-Twilio-Signature"]
        assert (await client.send(unsigned)).status_code == 403


async def test_without_an_openai_key_callers_get_an_apology_not_a_crash() -> None:
    async with serve(make_settings(apology_message="Not set up.")) as app:
        async with httpx.AsyncClient() as client:
            assert (await client.get(app.http_url + "/healthz")).json() == {"status": "ok"}
            assert (await client.get(app.http_url + "/readyz")).status_code == 200
            resp = await client.post(app.http_url + "/incoming-call", data={"CallSid": "CA1"})
        root = ET.fromstring(resp.text)
        assert [el.tag for el in root] == ["Say", "Hangup"]
        assert root[0].text == "Not set up."


async def test_media_stream_upgrade_needs_a_valid_signature(app_with: AppFactory) -> None:
    app = await app_with()
    for headers in ({}, {"X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl"}):
        with pytest.raises(InvalidStatus) as info:
            async with connect(app.ws_url, additional_headers=headers):
                pass
        assert info.value.response.status_code == 403


@pytest.mark.parametrize(
    "forgery", ["no_token", "token_of_another_call", "other_account", "another_caller"]
)
async def test_a_stream_must_belong_to_the_call_it_claims(
    app_with: AppFactory, realtime: FakeRealtime, forgery: str, tmp_path: Path
) -> None:
    """A valid upgrade signature is the same for every call: by default (signatures on)
    the `start` must prove the call, and the call's data (the caller's number, the
    dialled number that picks the agent) as the webhook put it in the TwiML."""
    app = await app_with(twilio_account_sid=ACCOUNT_SID, record_dir=str(tmp_path))
    call_sid = "CA" + "5" * 32
    real = {"From": "+15551230000", "To": "+15559870000"}
    params = {
        "no_token": {"StreamToken": ""},
        "token_of_another_call": {"StreamToken": stream_token(AUTH_TOKEN, "CA" + "9" * 32)},
        "other_account": {},
        "another_caller": {
            "StreamToken": stream_token(AUTH_TOKEN, call_sid, real),
            **real,
            "From": "+15550006666",  # the token vouches for +15551230000
        },
    }[forgery]
    extra = {"account_sid": "AC" + "b" * 32} if forgery == "other_account" else {}
    async with app.call(call_sid=call_sid, custom_parameters=params, **extra) as call:
        await call.start()
        await call.wait_closed(timeout=5)
    assert realtime.connections == []  # nothing was opened (or paid for) for it
    await app.wait_idle()
    app.state.recordings.stop()  # flush: a refused stream is not a call, nothing is written
    assert os.listdir(tmp_path) == []


async def test_with_stream_tokens_the_twiml_carries_the_calls_token_and_its_stream_works(
    app_with: AppFactory, realtime: FakeRealtime
) -> None:
    app = await app_with()
    params = {"CallSid": "CA" + "4" * 32, "From": "+15551230000", "To": "+15559870000"}
    async with httpx.AsyncClient() as client:
        resp = await client.send(twilio_post(app.http_url, app.public_base, params, AUTH_TOKEN))
    stream = ET.fromstring(resp.text).find("Connect/Stream")
    assert stream is not None
    got = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert got.pop("StreamToken") == stream_token(AUTH_TOKEN, params["CallSid"], params)
    # Twilio passes the TwiML's parameters on: that stream is accepted.
    async with app.call(call_sid=params["CallSid"], custom_parameters=got) as call:
        await call.start()
        await (await realtime.wait_connection()).wait_for("session.update")
        await call.hangup()


async def test_greeting_plays_byte_identical_with_a_mark_after_each_delta(
    app_with: AppFactory, realtime: FakeRealtime
) -> None:
    greeting = speech(GREETING)
    realtime.add_responses(ScriptedResponse(audio=greeting, transcript=GREETING))
    app = await app_with()
    async with app.call() as call:
        await call.start()
        conn = await realtime.wait_connection()
        update = await conn.wait_for("session.update")
        session = update["session"]
        assert session["type"] == "realtime"
        assert session["audio"]["input"]["format"] == {"type": "audio/pcmu"}
        assert session["audio"]["output"]["format"] == {"type": "audio/pcmu"}
        assert conn.headers.get("authorization", "").startswith("Bearer ")
        assert "openai-beta" not in {k.lower() for k in conn.headers}
        await call.wait_for_heard(len(greeting), timeout=20)
        await call.wait_for_playout_idle(timeout=5)
        assert bytes(call.heard) == greeting
        # Each media message is followed by its own mark, and every mark was echoed as played.
        kinds = [m["event"] for m in call.received_messages]
        assert kinds == ["media", "mark"] * (len(kinds) // 2)
        assert len(set(call.marks_received)) == len(call.marks_received)
        assert {how for _, how in call.marks_echoed} <= {"played", "immediate"}
        await call.hangup()
        await conn.wait_closed(timeout=5)
    assert call.violations == []
    assert realtime.invalid_events == [] and realtime.problems == []


async def test_caller_audio_reaches_realtime_byte_identical_and_in_order(
    app_with: AppFactory, realtime: FakeRealtime
) -> None:
    app = await app_with(bot_greeting="")
    question = speech(QUESTION)
    async with app.call() as call:
        await call.start()
        conn = await realtime.wait_connection()
        await conn.wait_for("session.update")
        await call.say(question)
        await call.say(silence(200))
        await conn.wait_until(lambda: len(conn.appended_audio) >= len(call.sent_audio) - 3200)
        sent = bytes(call.sent_audio)
        got = bytes(conn.appended_audio)
        # Everything Twilio sent arrived as sent (frames still in flight may be missing).
        assert sent.startswith(got) and len(got) >= len(sent) - 3200
        assert question in got
        await call.hangup()
    assert realtime.invalid_events == []


async def test_caller_hangup_closes_the_realtime_socket(
    app_with: AppFactory, realtime: FakeRealtime
) -> None:
    app = await app_with()
    async with app.call() as call:
        await call.start()
        conn = await realtime.wait_connection()
        await conn.wait_for("session.update")
        await call.close()  # a bare close, no `stop`: the same end for the bridge
        await conn.wait_closed(timeout=5)
    await app.wait_idle()
    async with httpx.AsyncClient() as client:
        ready = (await client.get(app.http_url + "/readyz")).json()
    assert ready["calls"] == 0


@pytest.mark.parametrize("mode", ["refuse", "hang_handshake", "silent"])
async def test_realtime_unreachable_closes_the_stream_within_five_seconds(
    app_with: AppFactory, realtime: FakeRealtime, mode: str
) -> None:
    setattr(realtime, mode, True)
    app = await app_with(realtime_connect_timeout_seconds=2)
    async with app.call() as call:
        await call.start()
        # The contract's bound: no caller waits in silence more than 5 s.
        await call.wait_closed(timeout=5)
        assert call.close_code == 1000


async def test_a_black_holed_realtime_service_never_leaves_the_caller_over_5_s(
    app_with: AppFactory, realtime: FakeRealtime
) -> None:
    """Accepted, then nothing: no events, no pongs, no closing handshake."""
    realtime.stall_on_connect = True
    app = await app_with()  # the default 4 s readiness deadline
    async with app.call() as call:
        await call.start()
        await call.wait_closed(timeout=5)
        assert call.close_code == 1000


async def test_a_realtime_service_that_stalls_mid_call_is_noticed_within_5_s(
    app_with: AppFactory, realtime: FakeRealtime
) -> None:
    app = await app_with(bot_greeting="")
    async with app.call() as call:
        await call.start()
        conn = await realtime.wait_connection()
        await conn.wait_for("session.update")
        conn.stall()  # half-open TCP: the service just stops answering, pings included
        await call.wait_closed(timeout=5)


async def test_realtime_dropping_mid_call_closes_the_stream(
    app_with: AppFactory, realtime: FakeRealtime
) -> None:
    app = await app_with()
    async with app.call() as call:
        await call.start()
        conn = await realtime.wait_connection()
        await conn.wait_for("session.update")
        await conn.drop()
        await call.wait_closed(timeout=5)


async def test_bad_input_from_either_side_is_survived(
    app_with: AppFactory, realtime: FakeRealtime, caplog: pytest.LogCaptureFixture
) -> None:
    app = await app_with(bot_greeting="")
    async with app.call() as call:
        media = {"event": "media", "streamSid": call.stream_sid, "media": {"payload": "AAAA"}}
        await call.send_raw(__import__("json").dumps(media))  # media before start
        await call.start()
        conn = await realtime.wait_connection()
        await conn.wait_for("session.update")
        await call.send_raw("this is not json")
        await call.send_raw(b"\x00\x01binary")
        await call.send_raw('{"event": "wiggle"}')
        await call.send_raw('["an", "array"]')
        bad_audio = {"event": "media", "streamSid": call.stream_sid, "media": {"payload": "@@"}}
        await call.send_raw(__import__("json").dumps(bad_audio))
        await conn.send_raw("garbage from the service")
        await conn.send(
            {"type": "error", "error": {"type": "server_error", "message": "Something broke"}}
        )
        # The call goes on: audio still flows both ways. The caller's turn is answered by
        # the bridge's own request (a response forced while the turn is still to be
        # committed would be a second answer, cut off at the commit).
        reply = speech("Yes, I am here.")
        realtime.add_responses(ScriptedResponse(audio=reply, transcript="Yes"))
        before = len(conn.appended_audio)
        await call.say(speech("Are you still there?"))
        await conn.wait_until(lambda: len(conn.appended_audio) > before + 8000)
        await conn.wait_for("response.create", timeout=10)
        await call.wait_for_heard(len(reply), timeout=20)
        await call.hangup()
    reasons = {
        getattr(r, "fields", {}).get("reason")
        for r in caplog.records
        if r.getMessage() == "bad_input"
    }
    assert {
        "media_before_start",
        "not_json",
        "binary_frame",
        "unknown_event",
        "not_an_object",
        "invalid_audio_payload",
    } <= reasons
    bad = [r for r in caplog.records if r.getMessage() == "bad_input"]
    assert all(getattr(r, "call_sid", None) == call.call_sid for r in bad[1:])
    assert any(r.getMessage() == "realtime.error" for r in caplog.records)


async def test_two_concurrent_calls_never_mix_audio(
    app_with: AppFactory, realtime: FakeRealtime
) -> None:
    voices = [speech("This is the first caller."), speech("And here is the second one.")]
    answers = [speech("Answer for caller one."), speech("Answer number two, different.")]
    realtime.add_responses(*(ScriptedResponse(audio=a, transcript="a") for a in answers))
    # The caller speaks first: a greeting being made as they start would be speech over
    # the bot (resume mode judges it a turn, as the service's auto-interrupt would).
    app = await app_with(bot_greeting="")

    async def one_call(i: int) -> tuple[bytes, bytes, bytes]:
        async with app.call() as call:
            await call.start()
            await call.say(voices[i])
            await call.wait_for_heard(min(map(len, answers)), timeout=20)
            await call.wait_for_playout_idle(timeout=20)
            await call.hangup()
            return bytes(call.sent_audio), bytes(call.heard), call.call_sid.encode()

    results = await asyncio.gather(one_call(0), one_call(1))
    await realtime.wait_until(lambda: all(c.closed.is_set() for c in realtime.connections))
    assert len(realtime.connections) == 2
    for conn in realtime.connections:
        heard_on_conn = b"".join(
            base64.b64decode(e["delta"])
            for e in conn.sent
            if e["type"] == "response.output_audio.delta"
        )
        matches = [r for r in results if r[1] == heard_on_conn]
        assert len(matches) == 1, "each call hears exactly its own connection's audio"
        sent, _, _ = matches[0]
        assert sent.startswith(bytes(conn.appended_audio))
        assert voices[results.index(matches[0])] in bytes(conn.appended_audio)
    assert results[0][1] != results[1][1]


async def test_calls_leave_no_task_socket_or_memory_behind(
    app_with: AppFactory, realtime: FakeRealtime, caplog: pytest.LogCaptureFixture
) -> None:
    """Ten calls, ended every way there is; afterwards the process holds nothing of them."""
    import gc
    import logging
    import tracemalloc

    app = await app_with(bot_greeting="", log_level="WARNING")
    caplog.set_level(logging.WARNING)  # captured records would hold call data alive
    baseline_tasks = len(asyncio.all_tasks())

    async def one_call(i: int) -> None:
        async with app.call() as call:
            await call.start()
            conn = await realtime.wait_connection()
            await conn.wait_for("session.update")
            await call.say(silence(100))
            if i % 3 == 0:
                await call.hangup()
            elif i % 3 == 1:
                await call.close()
            else:
                await conn.drop()
                await call.wait_closed(timeout=5)
        await app.wait_idle()

    await one_call(0)  # warm-up: imports, caches, first-connection allocations
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i in range(1, 10):
        await one_call(i)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    app_growth = sum(
        stat.size_diff
        for stat in after.compare_to(before, "filename")
        if "/app/" in str(stat.traceback)
    )
    top = [str(x) for x in after.compare_to(before, "lineno") if "/app/" in str(x.traceback)][:8]
    assert app_growth < 64 * 1024, f"app code kept {app_growth} bytes after 9 calls: {top}"
    assert not app.state.calls
    assert all(c.closed.is_set() for c in realtime.connections)
    # Only the fakes' own tasks may remain; nothing the bridge started outlives its call.
    leftovers = [t for t in asyncio.all_tasks() if "/app/" in str(t.get_coro())]
    assert leftovers == [], leftovers
    assert len(asyncio.all_tasks()) <= baseline_tasks + 2
