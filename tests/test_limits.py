"""The per-call limits, in-process: the real app and bridge with both sockets as doubles.

What a public number needs bounded per call (README "Security"): caller audio faster than
real time, a stream that goes quiet, the size of each frame to Twilio, one stream per call,
and the number of calls. The loopback tests of the connection-level limits are in
`tests/test_e2e_limits.py`.
"""

from __future__ import annotations

import asyncio
import base64
import xml.etree.ElementTree as ET
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from app.main import BridgeApp, create_app
from app.protocol import twilio as tw
from tests.conftest import make_settings
from tests.core import CALL, b64, delta, media_msg, response_created, start_msg, stop_msg
from tests.fakes.realtime_transport import AsgiWebsocket, MockTransport, ScriptedLink

QUIET = {"bot_greeting": "", "silence_reprompt_seconds": 0, "max_call_seconds": 0}


def _app(transport: MockTransport, **settings: Any) -> BridgeApp:
    return create_app(
        make_settings(openai_api_key="sk-unused-key", **{**QUIET, **settings}),
        transport=transport,
    )


async def _start(
    app: BridgeApp, transport: MockTransport, call_sid: str = CALL
) -> tuple[AsgiWebsocket, asyncio.Task[None], ScriptedLink]:
    ws = AsgiWebsocket()
    task = asyncio.create_task(app(ws.scope, ws.receive, ws.send))
    ws.client_send(start_msg(call_sid))
    link = await transport.link()
    link.push({"type": "session.updated", "session": {}})
    await ws.handled()
    return ws, task, link


def _summary(caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    (summary,) = [r for r in caplog.records if r.getMessage() == "call.summary"]
    return summary.fields  # type: ignore[attr-defined, no-any-return]


async def test_caller_audio_faster_than_real_time_is_dropped_past_the_burst(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = MockTransport()
    app = _app(transport, caller_audio_burst_seconds=1.0)
    ws, task, link = await _start(app, transport)
    loop = asyncio.get_running_loop()
    began = loop.time()
    for i in range(500):  # 10 s of audio, sent as fast as the socket takes it
        ws.client_send(media_msg(b64(160, i % 256)))
    await ws.handled()
    elapsed = loop.time() - began
    appended = [e for e in link.sent if e["type"] == "input_audio_buffer.append"]
    # The burst (1 s = 50 frames, 5 % to spare), plus what real time allowed meanwhile.
    assert 50 <= len(appended) <= 53 + int(elapsed * 53)
    first = [base64.b64decode(e["audio"])[0] for e in appended[:50]]
    assert first == list(range(50))  # in order: the oldest audio went through
    ws.client_send(stop_msg())
    await asyncio.wait_for(task, 5)
    summary = _summary(caplog)
    assert summary["audio_flooded"] == 500 - len(appended)
    floods = [r.fields for r in caplog.records if r.getMessage() == "twilio.audio_flood"]  # type: ignore[attr-defined]
    dropped = summary["audio_flooded"]
    assert [f["dropped"] for f in floods] == [2**k for k in range(dropped.bit_length())]
    assert summary["caller_audio_ms"] == len(appended) * 20  # dropped audio isn't billed
    assert app.state.bridge.hits.counts["caller_audio"] == 1  # one call hit the limit


async def test_caller_audio_at_real_time_is_never_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The allowance refills at the real-time rate: a clock-paced caller loses nothing."""
    transport = MockTransport()
    app = _app(transport, caller_audio_burst_seconds=0.2)
    ws, task, link = await _start(app, transport)
    loop = asyncio.get_running_loop()
    began = loop.time()
    for i in range(40):  # 0.8 s of audio, each frame no earlier than its time
        await asyncio.sleep(max(0.0, began + i * 0.02 - loop.time()))  # a caller's pace
        ws.client_send(media_msg(b64(160, i)))
    await link.wait_for("input_audio_buffer.append", count=40)
    ws.client_send(stop_msg())
    await asyncio.wait_for(task, 5)
    assert _summary(caplog)["audio_flooded"] == 0


async def test_speech_held_back_by_a_stall_passes_when_it_arrives_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Behind real time is not ahead of it: after a 1.5 s network stall, the 1.5 s of
    speech it held back (plus the burst) all arrive together and all go through."""
    transport = MockTransport()
    app = _app(transport, caller_audio_burst_seconds=0.5)
    ws, task, link = await _start(app, transport)
    await asyncio.sleep(1.5)  # the stall: Twilio's frames are held up somewhere
    for i in range(100):  # 2 s of audio at once: 1.5 s held back + 0.5 s of burst
        ws.client_send(media_msg(b64(160, i)))
    await link.wait_for("input_audio_buffer.append", count=100)
    ws.client_send(stop_msg())
    await asyncio.wait_for(task, 5)
    assert _summary(caplog)["audio_flooded"] == 0


async def test_a_stream_that_goes_quiet_ends_its_call(caplog: pytest.LogCaptureFixture) -> None:
    transport = MockTransport()
    app = _app(transport, stream_idle_seconds=1)
    ws, task, link = await _start(app, transport)
    ws.client_send(media_msg(b64(160)))
    # Nothing more from Twilio: the call ends by itself, with both sockets closed.
    await asyncio.wait_for(task, 10)
    assert link.closed and ws.closed
    summary = _summary(caplog)
    assert summary["ended"] == "failure" and summary["end_detail"] == "twilio_idle"
    idle = next(r for r in caplog.records if r.getMessage() == "twilio.idle")
    assert idle.fields["quiet_s"] >= 1  # type: ignore[attr-defined]
    assert app.state.bridge.hits.counts["twilio_idle"] == 1


async def test_a_long_bot_delta_goes_to_twilio_as_frames_of_bounded_size() -> None:
    transport = MockTransport()
    app = _app(transport)
    ws, task, link = await _start(app, transport)
    link.push(response_created("resp_1"))
    big = delta("item_a", n=30_000, response="resp_1")  # 40 000 base64 characters
    link.push(big)
    await ws.wait_until(lambda: [f["event"] for f in ws.frames()][-1:] == ["mark"])
    frames = ws.frames()
    assert [f["event"] for f in frames] == ["media", "media", "media", "mark"]
    payloads = [f["media"]["payload"] for f in frames[:-1]]
    assert all(len(p) <= tw.MAX_MEDIA_CHARS for p in payloads)
    assert "".join(payloads) == big["delta"]
    # Each part decodes on its own (Twilio plays frames one by one), into its share of the audio.
    parts = [base64.b64decode(p, validate=True) for p in payloads]
    assert b"".join(parts) == base64.b64decode(big["delta"]) and all(parts)
    ws.client_send(stop_msg())
    await asyncio.wait_for(task, 5)


async def test_a_second_stream_for_a_live_call_is_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = MockTransport()
    app = _app(transport)
    first, first_task, link = await _start(app, transport)
    second = AsgiWebsocket()
    second_task = asyncio.create_task(app(second.scope, second.receive, second.send))
    second.client_send(start_msg(CALL))
    await asyncio.wait_for(second_task, 5)  # refused: closed, nothing opened for it
    assert len(transport.links) == 1
    refused = [r for r in caplog.records if r.getMessage() == "stream.refused"]
    assert [r.fields["reason"] for r in refused] == ["duplicate_call"]  # type: ignore[attr-defined]
    assert app.state.bridge.hits.counts["duplicate_call"] == 1
    # The first call goes on.
    first.client_send(media_msg(b64(160, 7)))
    appended = await link.wait_for("input_audio_buffer.append")
    assert base64.b64decode(appended["audio"])[0] == 7
    first.client_send(stop_msg())
    await asyncio.wait_for(first_task, 5)
    # Once it is over, its CallSid is free again (a reconnecting stream is served).
    again, again_task, _ = await _start(app, transport)
    again.client_send(stop_msg())
    await asyncio.wait_for(again_task, 5)


def _client(app: BridgeApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def test_streams_that_never_prove_a_call_hold_no_slot() -> None:
    """A replayed upgrade, over and over, opens streams that never send a valid `start`:
    they don't make the process full, and the real call still gets in."""
    transport = MockTransport()
    app = _app(transport, max_concurrent_calls=1)
    idle = [AsgiWebsocket() for _ in range(3)]
    tasks = [asyncio.create_task(app(ws.scope, ws.receive, ws.send)) for ws in idle]
    for ws in idle:
        await ws.wait_until(lambda ws=ws: ws.accepted)
    assert ET.fromstring((await _webhook(app)).text)[0].tag == "Connect"
    ws, task, _ = await _start(app, transport)
    assert ET.fromstring((await _webhook(app)).text)[0].tag == "Reject"  # now it is full
    for other in idle:
        other.client_close()
    ws.client_send(stop_msg())
    await asyncio.wait_for(asyncio.gather(task, *tasks), 5)


async def _webhook(app: BridgeApp, **params: str) -> httpx.Response:
    async with _client(app) as client:
        return await client.post(
            "/incoming-call",
            content=urlencode({"CallSid": "CA" + "5" * 32, **params}),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )


@pytest.mark.parametrize("fallback", [None, "+15550009999"])
async def test_when_full_the_webhook_answers_busy_and_a_stream_is_refused(
    fallback: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    transport = MockTransport()
    app = _app(transport, max_concurrent_calls=1, fallback_number=fallback)
    ws, task, _ = await _start(app, transport)
    busy = ET.fromstring((await _webhook(app)).text)
    if fallback is None:
        assert [(el.tag, el.get("reason")) for el in busy] == [("Reject", "busy")]
    else:  # the overflow goes to the people behind the fallback number
        assert [el.tag for el in busy] == ["Say", "Dial"] and busy[1].text == fallback
    extra = AsgiWebsocket()
    await asyncio.wait_for(app(extra.scope, extra.receive, extra.send), 5)
    assert extra.outgoing == [{"type": "websocket.close", "code": 1008}]  # before accept
    assert len(transport.links) == 1
    assert app.state.bridge.hits.counts["calls"] == 2
    ws.client_send(stop_msg())
    await asyncio.wait_for(task, 5)
    # A slot is free again: the webhook connects the next call.
    free = ET.fromstring((await _webhook(app)).text)
    assert free[0].tag == "Connect"


async def test_the_driver_skips_a_frame_over_the_limit_under_any_server(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """uvicorn refuses such a frame itself (`app.server_guard`); under another server the
    bridge still skips it, and the call goes on."""
    transport = MockTransport()
    app = _app(transport, twilio_max_frame_bytes=4096)
    ws, task, link = await _start(app, transport)
    ws.client_send('{"event":"media","pad":"' + "A" * 5000 + '"}')
    ws.client_send(media_msg(b64(160, 3)))
    appended = await link.wait_for("input_audio_buffer.append")
    assert base64.b64decode(appended["audio"])[0] == 3
    reasons = [
        r.fields.get("reason")  # type: ignore[attr-defined]
        for r in caplog.records
        if r.getMessage() == "bad_input"
    ]
    assert "oversized_frame" in reasons
    ws.client_send(stop_msg())
    await asyncio.wait_for(task, 5)
