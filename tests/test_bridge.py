"""The live driver in-process: the real app and bridge, both sockets replaced by doubles.

The loopback end-to-end tests (tests/test_e2e_*.py) run the same code over real sockets;
these use the transport seam (`tests/fakes/realtime_transport.py`) to pin down what only a
controlled clock or a controlled peer can show: the recorded clock is the one the core ran
on, a slow leg never stalls the other, events the core ignores are never parsed.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import pytest
from twilio.request_validator import RequestValidator

from app.bridge import Bridge
from app.call.config import CallConfig
from app.call.playback import PlaybackTracker
from app.call.session import IGNORED_EVENTS, CallSession
from app.main import create_app
from app.recording import CallRecorder
from app.replay import replay, report
from app.twilio_socket import MAX_BACKLOG_CHARS, TwilioSocket
from tests.conftest import AUTH_TOKEN, make_settings
from tests.core import (
    CALL,
    STREAM,
    b64,
    delta,
    mark_msg,
    media_msg,
    quiet,
    realtime,
    response_created,
    speech_started,
    start_msg,
    stop_msg,
)
from tests.core import live as live_session
from tests.fakes.realtime_transport import AsgiWebsocket, MockTransport, ScriptedLink
from tests.fakes.recording import KeptLines

QUIET = {"bot_greeting": "", "silence_reprompt_seconds": 0, "max_call_seconds": 0}


async def _call(
    transport: MockTransport, ws: AsgiWebsocket, **settings: Any
) -> tuple[asyncio.Task[None], ScriptedLink, Bridge]:
    """The real app, in-process: a media stream opened by `ws` and started."""
    app = create_app(make_settings(openai_api_key="sk-unused-key", **settings), transport=transport)
    task = asyncio.create_task(app(ws.scope, ws.receive, ws.send))
    ws.client_send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
    ws.client_send(start_msg())
    link = await transport.link()
    assert link.types()[0] == "session.update"
    link.push({"type": "session.updated", "session": {}})
    (bridge,) = app.state.bridge.calls
    return task, link, bridge


async def test_a_whole_call_in_process(caplog: pytest.LogCaptureFixture) -> None:
    transport, ws = MockTransport(), AsgiWebsocket()
    # Cancel mode: the caller's speech over the bot interrupts at once (resume mode's
    # barge-in waits for a verdict: tests/test_resume.py, tests/test_e2e_noise.py).
    task, link, _ = await _call(transport, ws, **QUIET, interrupt_mode="cancel")
    # Caller audio passes through as the same string.
    frames = [b64(160, byte) for byte in (1, 2, 3)]
    for payload in frames:
        ws.client_send(media_msg(payload))
    await link.wait_for("input_audio_buffer.append", count=3)
    assert [e["audio"] for e in link.sent if e["type"] == "input_audio_buffer.append"] == frames
    # The bot's audio comes back as media + mark, in order, byte for byte.
    link.push(response_created("resp_1"))
    deltas = [delta("item_a", response="resp_1") for _ in range(4)]
    for ev in deltas:
        link.push(ev)
    await ws.wait_until(lambda: len(ws.frames()) == 8)
    sent = ws.frames()
    assert [f["event"] for f in sent] == ["media", "mark"] * 4
    assert [f["media"]["payload"] for f in sent[::2]] == [d["delta"] for d in deltas]
    assert all(f["streamSid"] == STREAM for f in sent)
    # Two chunks are heard, then the caller cuts in: clear, cancel, truncate at 200 ms.
    for mark in sent[1:4:2]:
        ws.client_send(mark_msg(mark["mark"]["name"]))
    await ws.handled()  # the echoes have been read (they have no output of their own)
    link.push(speech_started())
    await ws.wait_until(lambda: ws.frames()[-1]["event"] == "clear")
    truncate = await link.wait_for("conversation.item.truncate")
    assert link.types()[-2] == "response.cancel"
    assert 200 <= truncate["audio_end_ms"] <= 300
    ws.client_send(stop_msg())
    await asyncio.wait_for(task, 5)
    assert link.closed
    (summary,) = [r for r in caplog.records if r.getMessage() == "call.summary"]
    fields = summary.fields  # type: ignore[attr-defined]
    assert fields["ended"] == "caller_hung_up" and fields["barge_ins"] == 1
    assert fields["caller_audio_ms"] == 60 and fields["audio_dropped"] == 0


async def test_a_bad_signature_refuses_the_upgrade() -> None:
    transport = MockTransport()
    ws = AsgiWebsocket({"x-twilio-signature": "forged"})
    app = create_app(
        make_settings(
            openai_api_key="sk-unused-key",
            twilio_auth_token=AUTH_TOKEN,
            public_base_url="https://bridge.example.com",
        ),
        transport=transport,
    )
    await asyncio.wait_for(app(ws.scope, ws.receive, ws.send), 5)
    assert ws.outgoing == [{"type": "websocket.close", "code": 1008}]
    assert not transport.links
    # The same upgrade, signed over the public stream URL, is accepted.
    url = "wss://bridge.example.com/media-stream"
    good = AsgiWebsocket(
        {"x-twilio-signature": RequestValidator(AUTH_TOKEN).compute_signature(url, {})}
    )
    task = asyncio.create_task(app(good.scope, good.receive, good.send))
    await good.wait_until(lambda: good.accepted)
    good.client_close()
    await asyncio.wait_for(task, 5)


async def test_a_realtime_peer_not_reading_loses_caller_audio_never_the_downlink(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport, ws = MockTransport(), AsgiWebsocket()
    task, link, _ = await _call(transport, ws, **QUIET)
    link.paused = True  # its write buffer is over the bound
    for byte in range(10):
        ws.client_send(media_msg(b64(160, byte)))
    await ws.handled()
    # The bot's audio still reaches the caller meanwhile.
    link.push(response_created("resp_1"))
    link.push(delta("item_a", response="resp_1"))
    await ws.wait_until(lambda: [f["event"] for f in ws.frames()] == ["media", "mark"])
    link.paused = False
    ws.client_send(media_msg(b64(160, 99)))
    appended = await link.wait_for("input_audio_buffer.append")
    assert base64.b64decode(appended["audio"])[0] == 99  # the ten frames were dropped
    ws.client_send(stop_msg())
    await asyncio.wait_for(task, 5)
    events = [r.getMessage() for r in caplog.records]
    assert events.count("realtime.audio_dropped") == 1  # logged once per episode
    assert events.count("realtime.audio_resumed") == 1
    (summary,) = [r for r in caplog.records if r.getMessage() == "call.summary"]
    assert summary.fields["audio_dropped"] == 10  # type: ignore[attr-defined]


async def test_a_caller_side_that_stops_reading_ends_the_call_not_the_process(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport, ws = MockTransport(), AsgiWebsocket()
    task, link, _ = await _call(transport, ws, **QUIET)
    link.push(response_created("resp_1"))
    ws.writable.clear()  # Twilio's side of the socket stops taking frames
    chunk = delta("item_a", n=8000, response="resp_1")  # 1 s of audio, ~10.7 k characters
    pushed = 0
    while not link.closed:
        link.push(chunk)
        pushed += 1
        assert pushed * 10_700 < 2 * MAX_BACKLOG_CHARS, "the backlog must be bounded"
    await asyncio.wait_for(task, 10)  # the writer is given up on after a bounded wait
    (summary,) = [r for r in caplog.records if r.getMessage() == "call.summary"]
    fields = summary.fields  # type: ignore[attr-defined]
    assert fields["ended"] == "failure" and fields["end_detail"] == "twilio_stalled"
    assert any(r.getMessage() == "twilio.stalled" for r in caplog.records)


@pytest.mark.parametrize("recorded", [False, True])
async def test_events_the_core_ignores_are_not_even_parsed_unless_recorded(
    recorded: bool, tmp_path: Path
) -> None:
    transport, ws = MockTransport(), AsgiWebsocket()
    extra = {"record_dir": tmp_path} if recorded else {}
    task, link, bridge = await _call(transport, ws, **QUIET, **extra)
    # Not JSON past their first bytes: parsed, these would be bad input.
    link.push_raw(b'{"type":"response.output_audio_transcript.delta",\x00 not json')
    link.push_raw(b'{"type":"rate_limits.updated" ...')
    link.push_raw(b"not json at all")
    assert bridge.session.bad_input == {"realtime.not_json": 3 if recorded else 1}
    ws.client_send(stop_msg())
    await asyncio.wait_for(task, 5)


def test_every_ignored_event_changes_nothing_in_a_live_call() -> None:
    def record(s: CallSession) -> dict[str, Any]:
        return {**s.summary(), "deadline": s.deadline, "responding": s.responding}

    for kind in sorted(IGNORED_EVENTS):
        s = live_session(quiet())
        before = record(s)
        ev = {"type": kind, "item_id": "item_x", "response_id": "resp_1", "delta": "AAAA"}
        assert realtime(s, 100, ev) == [], kind
        assert record(s) == before, kind
        assert not s.bad_input, kind


async def test_a_call_ended_by_shutdown_logs_with_its_call_ids(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Once `start` arrives, every line of that call carries its SIDs, also those the
    drain causes from its own task (found in review)."""
    transport, ws = MockTransport(), AsgiWebsocket()
    task, _, bridge = await _call(transport, ws, **QUIET)
    bridge.shutdown()  # as `app.lifecycle.Drain._drain` does: from a task not the call's
    await asyncio.wait_for(task, 5)
    ended = [r for r in caplog.records if r.getMessage() == "call.ended_by_shutdown"]
    assert ended, "the call was ended by shutdown"
    assert getattr(ended[0], "call_sid", None) == CALL
    closing = [r for r in caplog.records if r.getMessage() == "twilio.closing"]
    assert closing and getattr(closing[0], "call_sid", None) == CALL


# -- one clock: what the live core saw is what the recording says --------------------------


class Clock:
    """Seconds, set by the test."""

    def __init__(self, start: float) -> None:
        self.t = start

    def at_ms(self, ms: float) -> None:
        self.t = 1000.0 + ms / 1000.0

    def __call__(self) -> float:
        return self.t


async def test_a_recording_made_live_replays_even_where_a_microsecond_decides() -> None:
    """The times below are chosen so that the barge-in's heard position lands exactly on a
    millisecond boundary in recorded (microsecond) time but 0.2 us short of it in raw
    float time: had the live core run on the raw clock while the recording rounded it, the
    live truncate (162 ms) and its replay (163 ms) would differ, which is the bug that
    made recordings fail to replay in one run of two."""
    raw = PlaybackTracker()  # two 100 ms chunks sent, the first heard, on the raw clock
    first = raw.sent(100.0004, "item_a", 800)
    raw.sent(100.0004, "item_a", 800)
    raw.echo(200.0004, first)
    heard_raw = raw.heard(263.0002)
    assert heard_raw is not None and heard_raw.ms == 162

    cfg: CallConfig = quiet()
    clock = Clock(1000.0)
    writer = KeptLines()
    transport, ws = MockTransport(), AsgiWebsocket()
    twilio = TwilioSocket(ws.receive, ws.send)
    await twilio.accept()
    bridge = Bridge(
        twilio,
        CallSession(cfg),
        transport,
        recorder=CallRecorder(writer, cfg, keep_audio=False),
        clock=clock,
    )
    task = asyncio.create_task(bridge.run())
    clock.at_ms(1.0003)
    ws.client_send(start_msg())
    link = await transport.link()
    clock.at_ms(50.0007)
    link.push({"type": "session.updated", "session": {}})
    link.push(response_created("resp_1"))
    clock.at_ms(100.0004)
    link.push(delta("item_a", response="resp_1"))
    link.push(delta("item_a", response="resp_1"))
    await ws.wait_until(lambda: len(ws.frames()) == 4)
    clock.at_ms(200.0004)
    ws.client_send(mark_msg(ws.frames()[1]["mark"]["name"]))
    await ws.handled()  # the echo was handled at 200.0004 ms
    clock.at_ms(263.0002)
    link.push(speech_started())
    truncate = await link.wait_for("conversation.item.truncate")
    assert truncate["audio_end_ms"] == 163  # heard at 263.000 - 200.000 = 63 ms past 100 ms
    clock.at_ms(400.0001)
    ws.client_send(stop_msg())
    await asyncio.wait_for(task, 5)

    fixture = writer.fixture()
    assert all(round(e.t_ms, 3) == e.t_ms for e in fixture.entries)
    result = replay(fixture)
    assert result.ok, report(result)
    (replayed,) = [e for e in result.replayed if e.msg.get("type") == "conversation.item.truncate"]
    assert replayed.msg["audio_end_ms"] == 163


# -- frames nested past what anything but orjson could parse --------------------------------


def _deep_frame(depth: int, where: str) -> str:
    """A frame with a value nested `depth` deep, as raw JSON text (orjson's limit: 1024)."""
    deep = "[" * depth + "]" * depth
    return {
        "twilio": '{"event":"mark","streamSid":"' + STREAM + '","mark":{"name":' + deep + "}}",
        "twilio_top": deep,
        "openai": '{"type":"error","error":{"type":"server_error","code":' + deep + "}}",
        "openai_top": deep,
    }[where]


@pytest.mark.parametrize("recorded", [False, True], ids=["unrecorded", "recorded"])
@pytest.mark.parametrize(
    ("where", "depth", "kinds"),
    [
        ("twilio", 1000, {"twilio.malformed_mark"}),  # parsed: the core skips it
        ("twilio_top", 1000, {"twilio.not_an_object"}),
        ("twilio", 100_000, {"twilio.oversized_frame", "twilio.not_json"}),  # never parsed
        ("openai", 1000, {"realtime.malformed_error"}),
        ("openai_top", 1000, {"realtime.not_an_object"}),
        ("openai", 100_000, {"realtime.not_json"}),  # past orjson's depth limit
    ],
)
async def test_a_frame_nested_deep_from_either_side_is_skipped_and_the_call_goes_on(
    where: str,
    depth: int,
    kinds: set[str],
    recorded: bool,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before: a value nested 1000 deep reached `str()` in the core (an error code, an
    unknown event's name), which recursed past the interpreter's limit: `bridge.crashed`."""
    transport, ws = MockTransport(), AsgiWebsocket()
    extra = {"record_dir": tmp_path} if recorded else {}
    task, link, bridge = await _call(transport, ws, **QUIET, **extra)
    frame = _deep_frame(depth, where)
    if where.startswith("twilio"):
        ws.client_send(frame)
        await ws.handled()
    else:
        link.push_raw(frame.encode())
    (kind,) = bridge.session.bad_input  # reported once, as one kind of bad input
    assert kind in kinds and bridge.session.bad_input[kind] == 1
    assert not bridge.session.done
    # The call goes on: audio still flows both ways.
    ws.client_send(media_msg(b64(160)))
    await link.wait_for("input_audio_buffer.append")
    link.push(response_created("resp_1"))
    link.push(delta("item_a", response="resp_1"))
    await ws.wait_until(lambda: [f["event"] for f in ws.frames()] == ["media", "mark"])
    ws.client_send(stop_msg())
    await asyncio.wait_for(task, 5)
    assert not any(r.getMessage() == "bridge.crashed" for r in caplog.records)
