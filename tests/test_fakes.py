"""Self-tests of the test doubles in ``tests/fakes``, against plain clients and each other.

They prove the fakes behave like the real services (wire shapes, error texts, timing rules)
so that end-to-end tests built on them are honest.  No test here touches the app.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import pytest
from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.fakes.audio import (
    FRAME_BYTES,
    decode,
    is_speech,
    linear_to_ulaw,
    ms,
    silence,
    speech,
    speech_ratio,
    tone,
)
from tests.fakes.realtime_client import (
    API_KEY,
    connect_to,
    recv,
    recv_until,
    send,
)
from tests.fakes.realtime_server import FakeRealtime, ScriptedResponse
from tests.fakes.twilio_caller import FakeTwilioCall
from tests.fakes.twilio_rest import FakeTwilioRest, RestReply

GA_SESSION_UPDATE: dict[str, Any] = {
    "type": "session.update",
    "session": {
        "type": "realtime",
        "instructions": "You are a phone agent.",
        "output_modalities": ["audio"],
        "audio": {
            "input": {
                "format": {"type": "audio/pcmu"},
                "noise_reduction": {"type": "near_field"},
                "transcription": {"model": "gpt-4o-mini-transcribe", "language": "en"},
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0.5,
                    "prefix_padding_ms": 300,
                    "silence_duration_ms": 500,
                    "create_response": False,
                    "interrupt_response": True,
                    "idle_timeout_ms": 8000,
                },
            },
            "output": {"format": {"type": "audio/pcmu"}, "voice": "marin", "speed": 1.0},
        },
        "tools": [
            {
                "type": "function",
                "name": "end_call",
                "description": "Hang up.",
                "parameters": {"type": "object", "properties": {}},
            }
        ],
        "tool_choice": "auto",
    },
}
SPOKEN = "Hello, I would like to book a table for two people tomorrow evening."


def _session_update(**turn_detection: Any) -> dict[str, Any]:
    """The GA session.update above, with turn_detection fields overridden."""
    ev = json.loads(json.dumps(GA_SESSION_UPDATE))
    ev["session"]["audio"]["input"]["turn_detection"].update(turn_detection)
    return ev


# ---------------------------------------------------------------------------- audio


def test_speech_is_real_spoken_audio() -> None:
    audio = speech(SPOKEN)
    assert ms(audio) > 500
    assert audio != silence(ms(audio))
    assert speech_ratio(audio) > 0.4
    frames = [audio[i : i + FRAME_BYTES] for i in range(0, len(audio), FRAME_BYTES)]
    assert any(is_speech(f) for f in frames)
    assert not is_speech(silence(20))
    assert speech(SPOKEN) == audio  # served from the cache, identical


def test_mulaw_codec_and_helpers() -> None:
    assert decode(bytes([0xFF, 0x7F, 0x00, 0x80])) == [0, 0, -32124, 32124]
    for code in range(256):
        if code != 0x7F:  # negative zero encodes as positive zero
            assert linear_to_ulaw(decode(bytes([code]))[0]) == code
    assert silence(20) == b"\xff" * 160
    assert ms(silence(123)) == 123
    assert is_speech(tone(20)) and speech_ratio(tone(200)) == 1.0


# ---------------------------------------------------------------------------- realtime


@pytest.fixture
async def rt() -> AsyncIterator[FakeRealtime]:
    async with FakeRealtime() as fake:
        yield fake


async def test_realtime_accepts_valid_ga_session_update(rt: FakeRealtime) -> None:
    async with await connect_to(rt) as ws:
        created = await recv(ws)
        assert created["type"] == "session.created"
        assert created["session"]["type"] == "realtime" and created["session"]["id"]
        await send(ws, GA_SESSION_UPDATE)
        updated = await recv(ws)
        assert updated["type"] == "session.updated"
        assert updated["session"]["audio"]["input"]["format"] == {"type": "audio/pcmu"}
        assert updated["session"]["audio"]["output"]["voice"] == "marin"
        assert updated["session"]["tools"][0]["name"] == "end_call"
        conn = await rt.wait_connection()
        assert (await conn.wait_for("session.update", timeout=5))["session"]["type"] == "realtime"
        assert conn.headers["Authorization"] == f"Bearer {API_KEY}"
        assert conn.model == "gpt-realtime"
    assert rt.invalid_events == []
    assert rt.problems == []


async def test_realtime_flags_invalid_events(rt: FakeRealtime) -> None:
    beta = {
        "type": "session.update",
        "session": {"modalities": ["text", "audio"], "input_audio_format": "g711_ulaw"},
    }
    stray = _session_update()
    stray["session"]["input_audio_format"] = "g711_ulaw"
    async with await connect_to(rt) as ws:
        await recv(ws)
        await send(ws, beta)
        err = await recv(ws)
        assert err["type"] == "error"
        assert err["error"]["type"] == "invalid_request_error"
        assert err["error"]["code"] == "missing_required_parameter"
        await send(ws, stray)  # GA shape plus a beta field: the real API rejects unknowns
        err = await recv(ws)
        assert err["error"]["code"] == "unknown_parameter"
        assert err["error"]["param"] == "session.input_audio_format"
        await ws.send("not json")
        assert (await recv(ws))["error"]["code"] == "invalid_json"
        await send(ws, {"type": "response.cancel", "event_id": "evt_1"})  # valid: not flagged
        await recv(ws)
    assert [e["event"] for e in rt.invalid_events] == [beta, stray, "not json"]
    assert "unknown parameter" in rt.invalid_events[1]["error"]
    conn = rt.connections[0]
    assert conn.types() == ["response.cancel"]


async def test_realtime_rejects_beta_header(rt: FakeRealtime) -> None:
    async with await connect_to(rt, **{"OpenAI-Beta": "realtime=v1"}) as ws:
        err = await recv(ws)
        assert err["error"]["code"] == "beta_api_shape_disabled"
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4000
    assert await rt.connections[0].wait_closed() == 4000


async def test_realtime_auth_refusal_and_stop_accepting() -> None:
    async with FakeRealtime(expected_key=API_KEY) as fake:
        with pytest.raises(InvalidStatus) as bad_key:
            await connect(fake.url, additional_headers={"Authorization": "Bearer wrong"})
        assert bad_key.value.response.status_code == 401
        with pytest.raises(InvalidStatus) as no_key:
            await connect(fake.url)
        assert no_key.value.response.status_code == 401
        fake.refuse = True
        with pytest.raises(InvalidStatus) as refused:
            await connect_to(fake)
        assert refused.value.response.status_code == 503
        fake.refuse = False
        async with await connect_to(fake) as live:
            await recv(live)
            fake.stop_accepting()
            with pytest.raises(OSError):
                await connect_to(fake)
            await send(live, {"type": "input_audio_buffer.clear"})  # old call still works
            assert (await recv(live))["type"] == "input_audio_buffer.cleared"
        assert [h["status"] for h in fake.handshakes] == [401, 401, 503, 101]


async def test_scripted_response_follows_ga_sequence() -> None:
    audio = tone(1050)
    script = ScriptedResponse(audio=audio, transcript="Hello there, how can I help?")
    async with FakeRealtime([script]) as fake, await connect_to(fake) as ws:
        await recv(ws)
        await send(ws, _session_update())
        await recv(ws)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await send(ws, {"type": "response.create"})
        events = await recv_until(ws, "rate_limits.updated")
        elapsed = loop.time() - t0
    types = [e["type"] for e in events]
    assert types[:5] == [
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
        "response.output_audio.delta",
    ]
    first_done = types.index("response.output_audio.done")
    assert set(types[4:first_done]) == {
        "response.output_audio.delta",
        "response.output_audio_transcript.delta",
    }
    assert types[first_done:] == [
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
        "rate_limits.updated",
    ]
    deltas = [e for e in events if e["type"] == "response.output_audio.delta"]
    assert b"".join(base64.b64decode(e["delta"]) for e in deltas) == audio
    assert {len(base64.b64decode(e["delta"])) for e in deltas[:-1]} == {800}
    words = "".join(e["delta"] for e in events if e["type"].endswith("transcript.delta"))
    assert words == script.transcript
    item_id = deltas[0]["item_id"]
    assert all(e["output_index"] == 0 and e["content_index"] == 0 for e in deltas)
    done = events[-2]["response"]
    assert done["status"] == "completed" and done["usage"]["output_tokens"] > 0
    assert done["output"][0]["id"] == item_id
    assert fake.item_audio_ms == {item_id: 1050}
    assert elapsed < 0.7  # generated faster than real time (10x: ~0.1 s for 1.05 s of audio)
    assert fake.invalid_events == [] and fake.problems == []


async def test_response_cancel_and_create_conflicts() -> None:
    script = ScriptedResponse(audio=tone(3000), transcript="a long answer " * 5)
    async with FakeRealtime([script], generation_speed=1.0) as fake, await connect_to(fake) as ws:
        await recv(ws)
        await send(ws, {"type": "response.cancel", "event_id": "evt_cancel_1"})
        err = (await recv(ws))["error"]
        assert err == {
            "type": "invalid_request_error",
            "code": "response_cancel_not_active",
            "message": "Cancellation failed: no active response found",
            "param": None,
            "event_id": "evt_cancel_1",
        }
        await send(ws, {"type": "response.create"})
        await recv_until(ws, "response.output_audio.delta")
        await send(ws, {"type": "response.create", "event_id": "evt_again"})
        err = (await recv_until(ws, "error"))[-1]["error"]
        assert err["code"] == "conversation_already_has_active_response"
        assert err["event_id"] == "evt_again"
        await send(ws, {"type": "response.cancel"})
        events = await recv_until(ws, "rate_limits.updated")
    types = [e["type"] for e in events]
    tail = types[types.index("response.output_audio.done") :]
    assert tail == [
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
        "rate_limits.updated",
    ]
    done = events[-2]["response"]
    assert done["status"] == "cancelled"
    assert done["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    assert done["output"][0]["status"] == "incomplete"
    item_ms = fake.item_audio_ms[done["output"][0]["id"]]
    assert 0 < item_ms < 3000
    assert fake.connections[0].responses[0].status == "cancelled"


async def test_truncate_checks_item_audio_length() -> None:
    script = [ScriptedResponse(audio=tone(1000), transcript="Hi")]
    async with FakeRealtime(script) as fake, await connect_to(fake) as ws:
        await recv(ws)
        await send(ws, {"type": "response.create"})
        events = await recv_until(ws, "response.done")
        item_id = events[-1]["response"]["output"][0]["id"]
        await send(
            ws,
            {
                "type": "conversation.item.truncate",
                "event_id": "evt_t1",
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": 1500,
            },
        )
        err = (await recv_until(ws, "error"))[-1]["error"]
        assert err == {
            "type": "invalid_request_error",
            "code": "invalid_value",
            "message": "Audio content of 1000ms is already shorter than 1500ms",
            "param": "audio_end_ms",
            "event_id": "evt_t1",
        }
        trunc = {"item_id": item_id, "content_index": 0, "audio_end_ms": 600}
        await send(ws, {"type": "conversation.item.truncate", **trunc})
        ok = await recv(ws)
        assert ok["type"] == "conversation.item.truncated"
        assert {k: ok[k] for k in trunc} == trunc
        await send(ws, {**trunc, "type": "conversation.item.truncate", "item_id": "item_x"})
        assert (await recv(ws))["type"] == "error"
    assert [t["audio_end_ms"] for t in fake.truncates] == [600]
    assert [t["audio_end_ms"] for t in fake.rejected_truncates] == [1500, 600]
    assert fake.rejected_truncates[0]["item_audio_ms"] == 1000


async def test_vad_detects_speech_in_appended_audio() -> None:
    caller = silence(400) + speech(SPOKEN) + silence(800)
    async with (
        FakeRealtime(caller_transcripts=["book a table"]) as fake,
        await connect_to(fake) as ws,
    ):
        await recv(ws)
        await send(ws, _session_update(create_response=False))
        await recv(ws)
        for i in range(0, len(caller), 160):
            chunk = base64.b64encode(caller[i : i + 160]).decode()
            await send(ws, {"type": "input_audio_buffer.append", "audio": chunk})
        events = await recv_until(ws, "conversation.item.input_audio_transcription.completed")
        conn = fake.connections[0]
    types = [e["type"] for e in events]
    assert types == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
        "conversation.item.input_audio_transcription.completed",
    ]
    started, stopped, committed = events[0], events[1], events[2]
    assert 100 <= started["audio_start_ms"] <= 400  # 400 ms lead-in minus 300 ms padding
    assert started["item_id"] == stopped["item_id"] == committed["item_id"]
    frames = [caller[i : i + 160] for i in range(0, len(caller), 160)]
    last_speech_end_ms = 20 * (1 + max(i for i, f in enumerate(frames) if is_speech(f)))
    assert stopped["audio_end_ms"] == last_speech_end_ms + 500  # silence_duration_ms later
    assert events[-1]["transcript"] == "book a table"
    assert bytes(conn.appended_audio) == caller
    assert not any(e["type"] == "response.created" for e in conn.sent)
    assert fake.invalid_events == [] and fake.problems == []


async def test_a_connection_can_have_its_own_script_and_late_empty_transcripts() -> None:
    """Opt-in knobs (the noise benchmark runs concurrent calls): a connection's own script
    and caller transcripts, where "" stays an empty transcript (a cough), instead of the
    server's shared ones; and transcripts that come `transcription_delay_ms` late."""
    caller = speech(SPOKEN) + silence(800)
    async with (
        FakeRealtime(caller_transcripts=["shared"], transcription_delay_ms=200) as fake,
        await connect_to(fake) as ws,
    ):
        await recv(ws)
        conn = await fake.wait_connection()
        conn.caller_transcripts = deque([""])
        conn.script = deque([ScriptedResponse(audio=tone(100), transcript="mine")])
        await send(ws, _session_update(create_response=True))
        await recv(ws)
        for i in range(0, len(caller), 160):
            chunk = base64.b64encode(caller[i : i + 160]).decode()
            await send(ws, {"type": "input_audio_buffer.append", "audio": chunk})
        events = await recv_until(ws, "conversation.item.input_audio_transcription.completed")
    types = [e["type"] for e in events]
    # The answer was generated (and done) well before the transcript came.
    assert types.index("input_audio_buffer.committed") < types.index("response.done")
    assert types.index("response.done") < len(types) - 1
    assert events[-1]["transcript"] == ""
    assert [r.script.transcript for r in conn.responses] == ["mine"]
    assert list(fake.caller_transcripts) == ["shared"] and not fake.script
    assert fake.invalid_events == [] and fake.problems == []


async def test_vad_barge_in_cancels_and_answers() -> None:
    script = [
        ScriptedResponse(audio=tone(4000), transcript="a long greeting"),
        ScriptedResponse(audio=tone(300), transcript="Sure."),
    ]
    async with FakeRealtime(script, generation_speed=1.0) as fake, await connect_to(fake) as ws:
        await recv(ws)
        await send(ws, _session_update(create_response=True))
        await recv(ws)
        conn = await fake.wait_connection()
        first = await conn.start_response()
        await recv_until(ws, "response.output_audio.delta")
        caller = speech("Stop, wait a moment.") + silence(700)
        audio = base64.b64encode(caller).decode()
        await send(ws, {"type": "input_audio_buffer.append", "audio": audio})
        events = await recv_until(ws, "response.created")
        second = await conn.wait_sent("response.done", count=2)
    types = [e["type"] for e in events]
    started = types.index("input_audio_buffer.speech_started")
    cancelled = next(e for e in events if e["type"] == "response.done")
    assert started < types.index("response.done") < types.index("input_audio_buffer.committed")
    assert cancelled["response"]["status_details"]["reason"] == "turn_detected"
    assert first.status == "cancelled" and first.audio_ms_sent < 4000
    assert second["response"]["status"] == "completed"
    assert conn.responses[1].trigger == "vad"


async def test_function_call_response() -> None:
    script = ScriptedResponse(
        audio=tone(200),
        transcript="Goodbye!",
        function_call={"name": "end_call", "arguments": {"reason": "done"}, "call_id": "call_1"},
    )
    async with FakeRealtime([script]) as fake, await connect_to(fake) as ws:
        await recv(ws)
        await send(ws, {"type": "response.create"})
        events = await recv_until(ws, "response.done")
    args_done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert args_done["name"] == "end_call" and args_done["call_id"] == "call_1"
    assert json.loads(args_done["arguments"]) == {"reason": "done"}
    assert args_done["output_index"] == 1
    item_done = [e for e in events if e["type"] == "response.output_item.done"][-1]
    assert item_done["item"]["type"] == "function_call"
    assert item_done["item"]["status"] == "completed"
    output = events[-1]["response"]["output"]
    assert [o["type"] for o in output] == ["message", "function_call"]
    assert fake.invalid_events == []


async def test_realtime_failure_modes(rt: FakeRealtime) -> None:
    async with await connect_to(rt) as ws:
        await recv(ws)
        conn = await rt.wait_connection()
        await conn.send_raw("}{ garbage")
        assert await ws.recv() == "}{ garbage"
        await conn.send({"type": "input_audio_buffer.cleared"})
        assert (await recv(ws))["type"] == "input_audio_buffer.cleared"
        waiter = asyncio.create_task(conn.wait_until(lambda: len(conn.appended_audio) > 0))
        audio = base64.b64encode(silence(20)).decode()
        await send(ws, {"type": "input_audio_buffer.append", "audio": audio})
        assert await waiter is True  # a boolean predicate's False is "not yet"
        assert conn.appended_audio == silence(20)
        await conn.drop()
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is None  # no close frame: abrupt TCP close
    await conn.wait_closed()
    async with await connect_to(rt) as ws2:
        await recv(ws2)
        conn2 = await rt.wait_connection()
        await conn2.drop(1011, "server error")
        with pytest.raises(ConnectionClosed) as closed2:
            await ws2.recv()
        assert closed2.value.rcvd is not None and closed2.value.rcvd.code == 1011


async def test_realtime_hung_handshake_and_silent_service() -> None:
    async with FakeRealtime(hang_handshake=True) as fake:
        with pytest.raises(TimeoutError):
            await connect(
                fake.url, additional_headers={"Authorization": "Bearer k"}, open_timeout=0.2
            )
        assert len(fake.handshakes) == 1 and fake.connections == []
    async with FakeRealtime(silent=True) as fake, await connect_to(fake) as ws:
        await send(ws, {"type": "response.create"})
        conn = await fake.wait_connection()
        await conn.wait_for("response.create")
        assert conn.sent == [] and conn.responses == []
        await conn.send({"type": "input_audio_buffer.cleared"})
        assert (await recv(ws))["type"] == "input_audio_buffer.cleared"


async def test_realtime_refuse_at_start() -> None:
    async with FakeRealtime(refuse=True) as fake:
        with pytest.raises(InvalidStatus) as refused:
            await connect_to(fake)
        assert refused.value.response.status_code == 503
        assert fake.connections == []


# ---------------------------------------------------------------------------- Twilio call


class MiniBridge:
    """A minimal media-stream server: records what the call sends, sends what a test says."""

    def __init__(self) -> None:
        self.received: list[Any] = []
        self.ws: ServerConnection | None = None
        self.cond = asyncio.Condition()
        self.port = 0
        self.upgrade_headers: dict[str, str] = {}

    async def handler(self, ws: ServerConnection) -> None:
        self.ws = ws
        assert ws.request is not None
        self.upgrade_headers = dict(ws.request.headers.raw_items())
        async with self.cond:
            self.cond.notify_all()
        async for message in ws:
            async with self.cond:
                self.received.append(json.loads(message))
                self.cond.notify_all()

    async def wait_for(self, event: str, count: int = 1) -> dict[str, Any]:
        def nth() -> dict[str, Any] | None:
            hits = [m for m in self.received if m.get("event") == event]
            return hits[count - 1] if len(hits) >= count else None

        async with asyncio.timeout(5), self.cond:
            await self.cond.wait_for(lambda: nth() is not None)
        result = nth()
        assert result is not None
        return result

    async def send(self, msg: dict[str, Any] | str | bytes) -> None:
        assert self.ws is not None
        await self.ws.send(msg if isinstance(msg, str | bytes) else json.dumps(msg))

    def media_msg(self, sid: str, audio: bytes) -> dict[str, Any]:
        return {
            "event": "media",
            "streamSid": sid,
            "media": {"payload": base64.b64encode(audio).decode()},
        }


@pytest.fixture
async def bridge() -> AsyncIterator[MiniBridge]:
    mini = MiniBridge()
    async with serve(mini.handler, "127.0.0.1", 0) as server:
        mini.port = next(iter(server.sockets)).getsockname()[1]
        yield mini


@pytest.fixture
async def call(bridge: MiniBridge) -> AsyncIterator[FakeTwilioCall]:
    url = f"ws://127.0.0.1:{bridge.port}/media-stream"
    async with FakeTwilioCall(
        url, custom_parameters={"tenant": "t1"}, headers={"X-Twilio-Signature": "sig"}
    ) as c:
        await c.start()
        await bridge.wait_for("start")
        yield c


async def test_call_sends_twilio_start_and_paced_media(
    bridge: MiniBridge, call: FakeTwilioCall
) -> None:
    assert bridge.upgrade_headers["X-Twilio-Signature"] == "sig"
    assert bridge.received[0] == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    assert bridge.received[1] == {
        "event": "start",
        "sequenceNumber": "1",
        "streamSid": call.stream_sid,
        "start": {
            "accountSid": call.account_sid,
            "streamSid": call.stream_sid,
            "callSid": call.call_sid,
            "tracks": ["inbound"],
            "customParameters": {"tenant": "t1"},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
    }
    assert call.call_sid.startswith("CA") and len(call.call_sid) == 34
    loop = asyncio.get_running_loop()
    await bridge.wait_for("media", 1)
    t1 = loop.time()
    await bridge.wait_for("media", 26)
    elapsed = loop.time() - t1
    assert 0.45 < elapsed < 1.5  # 25 frames of 20 ms, sent in real time
    media = [m for m in bridge.received if m["event"] == "media"][:26]
    for n, m in enumerate(media):
        assert m["sequenceNumber"] == str(n + 2)
        assert m["media"]["chunk"] == str(n + 1)
        assert m["media"]["timestamp"] == str(n * 20)
        assert m["media"]["track"] == "inbound"
        assert base64.b64decode(m["media"]["payload"]) == silence(20)


async def test_call_say_sends_audio_in_real_time(bridge: MiniBridge, call: FakeTwilioCall) -> None:
    audio = tone(300)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await call.say(audio)
    assert loop.time() - t0 >= 0.26
    assert audio in bytes(call.sent_audio)
    sent_count = len([m for m in call.sent_messages if m["event"] == "media"])
    await bridge.wait_for("media", sent_count)
    got = b"".join(
        base64.b64decode(m["media"]["payload"]) for m in bridge.received if m["event"] == "media"
    )
    assert audio in got and len(got) % 160 == 0


async def test_mark_echoed_after_its_audio_played(bridge: MiniBridge, call: FakeTwilioCall) -> None:
    sid = call.stream_sid
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for piece in (tone(100), tone(250), tone(50)):  # "any size" messages, 400 ms in total
        await bridge.send(bridge.media_msg(sid, piece))
    await bridge.send({"event": "mark", "streamSid": sid, "mark": {"name": "m1"}})
    echo = await bridge.wait_for("mark")
    assert loop.time() - t0 >= 0.38
    assert echo == {
        "event": "mark",
        "sequenceNumber": echo["sequenceNumber"],
        "streamSid": sid,
        "mark": {"name": "m1"},
    }
    _, _, details = await call.wait_for_mark_echo("m1")
    assert details == {"name": "m1", "how": "played", "heard": 3200}
    assert bytes(call.heard) == tone(100) + tone(250) + tone(50)
    await bridge.send({"event": "mark", "streamSid": sid, "mark": {"name": "m2"}})
    await bridge.wait_for("mark", 2)
    assert call.marks_echoed == [("m1", "played"), ("m2", "immediate")]
    assert call.violations == []


async def test_clear_drops_audio_and_flushes_marks(
    bridge: MiniBridge, call: FakeTwilioCall
) -> None:
    sid = call.stream_sid
    await bridge.send(bridge.media_msg(sid, tone(2000)))
    await bridge.send({"event": "mark", "streamSid": sid, "mark": {"name": "a"}})
    await bridge.send(bridge.media_msg(sid, tone(1000)))
    await bridge.send({"event": "mark", "streamSid": sid, "mark": {"name": "b"}})
    await call.wait_for_heard(1600)
    await bridge.send({"event": "clear", "streamSid": sid})
    first, second = await bridge.wait_for("mark", 1), await bridge.wait_for("mark", 2)
    assert [first["mark"]["name"], second["mark"]["name"]] == ["a", "b"]
    assert call.marks_cleared == ["a", "b"]
    assert call.marks_echoed == [("a", "cleared"), ("b", "cleared")]
    at_clear = call.heard_bytes_at_clear[0]
    assert 1600 <= at_clear < 16000
    assert call.cleared_bytes == [24000 - at_clear]
    assert call.queued_bytes == 0
    assert await call.wait_for_playout_idle() == at_clear
    # Audio after the clear plays normally.
    await bridge.send(bridge.media_msg(sid, tone(100)))
    await bridge.send({"event": "mark", "streamSid": sid, "mark": {"name": "c"}})
    await call.wait_for_mark_echo("c")
    assert len(call.heard) == at_clear + 800
    assert call.violations == []


async def test_call_records_protocol_violations(bridge: MiniBridge, call: FakeTwilioCall) -> None:
    sid = call.stream_sid
    good = bridge.media_msg(sid, tone(20))
    bad: list[Any] = [
        b"\x00\x01binary",
        "not json",
        {"event": "speak", "streamSid": sid},
        {**good, "streamSid": "MZ" + "0" * 32},
        {**good, "sequenceNumber": "5"},
        {"event": "media", "streamSid": sid, "media": {"payload": "@@notbase64@@"}},
        {"event": "media", "streamSid": sid, "media": {"payload": ""}},
        {"event": "mark", "streamSid": sid, "mark": {"name": "x", "extra": 1}},
        {"event": "clear", "streamSid": sid, "media": {}},
    ]
    for msg in bad:
        await bridge.send(msg if isinstance(msg, str | bytes) else json.dumps(msg))
    await bridge.send(good)
    await call.wait_for_event("media")
    assert len(call.violations) == len(bad)
    assert len(call.received_audio) == 160


async def test_call_hangup_and_server_close(bridge: MiniBridge, call: FakeTwilioCall) -> None:
    await call.send_dtmf("5")
    dtmf = await bridge.wait_for("dtmf")
    assert dtmf["dtmf"] == {"track": "inbound_track", "digit": "5"}
    await call.hangup()
    stop = await bridge.wait_for("stop")
    assert stop["stop"] == {"accountSid": call.account_sid, "callSid": call.call_sid}
    assert stop["streamSid"] == call.stream_sid
    assert await call.wait_closed() == 1000


async def test_call_sees_server_close(bridge: MiniBridge, call: FakeTwilioCall) -> None:
    assert bridge.ws is not None
    await bridge.ws.close(1000, "bye")
    assert await call.wait_closed() == 1000
    assert call.close_reason == "bye"
    assert call.events_of("closed")[0][2]["code"] == 1000


# ---------------------------------------------------------------------------- Twilio REST

ACCOUNT_SID = "AC" + "1" * 32
CALL_SID = "CA" + "2" * 32


def _client(rest: FakeTwilioRest) -> Client:
    client = Client(ACCOUNT_SID, "auth-token")
    client.api.base_url = rest.base_url
    return client


async def test_rest_records_call_update() -> None:
    async with FakeTwilioRest() as rest:
        client = _client(rest)
        call = await asyncio.to_thread(lambda: client.calls(CALL_SID).update(status="completed"))
        assert call.sid == CALL_SID and call.status == "completed"
        req = await rest.wait_for_request()
        assert req.method == "POST"
        assert req.path == f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls/{CALL_SID}.json"
        assert req.form == {"Status": "completed"}
        assert req.auth == (ACCOUNT_SID, "auth-token")
        assert req.call_sid == CALL_SID and req.status == 200
        twiml = "<Response><Dial>+15550100</Dial></Response>"
        await asyncio.to_thread(lambda: client.calls(CALL_SID).update(twiml=twiml))
        second = await rest.wait_for_request(count=2)
        assert second.form == {"Twiml": twiml}


async def test_rest_scripted_failure_then_success() -> None:
    async with FakeTwilioRest([503, RestReply(200)]) as rest:
        client = _client(rest)
        with pytest.raises(TwilioRestException) as failed:
            await asyncio.to_thread(lambda: client.calls(CALL_SID).update(status="completed"))
        assert failed.value.status == 503 and failed.value.code == 20503
        ok = await asyncio.to_thread(lambda: client.calls(CALL_SID).update(status="completed"))
        assert ok.status == "completed"
        assert [r.status for r in rest.requests] == [503, 200]
        assert rest.requests[0].response["code"] == 20503


async def test_rest_auth_and_unknown_path() -> None:
    async with FakeTwilioRest(expected_auth=(ACCOUNT_SID, "right")) as rest:
        with pytest.raises(TwilioRestException) as denied:
            await asyncio.to_thread(lambda: _client(rest).calls(CALL_SID).fetch())
        assert denied.value.status == 401 and denied.value.code == 20003
        client = Client(ACCOUNT_SID, "right")
        client.api.base_url = rest.base_url
        with pytest.raises(TwilioRestException) as missing:
            await asyncio.to_thread(lambda: client.calls("CA-bad").update(status="completed"))
        assert missing.value.status == 404 and missing.value.code == 20404
        fetched = await asyncio.to_thread(lambda: client.calls(CALL_SID).fetch())
        assert fetched.sid == CALL_SID and rest.requests[-1].method == "GET"


async def test_rest_update_ends_registered_call(bridge: MiniBridge, call: FakeTwilioCall) -> None:
    async with FakeTwilioRest() as rest:
        rest.register_call(call)
        client = Client(call.account_sid, "tok")
        client.api.base_url = rest.base_url
        await asyncio.to_thread(lambda: client.calls(call.call_sid).update(status="completed"))
        stop = await bridge.wait_for("stop")
        assert stop["stop"]["callSid"] == call.call_sid
        assert await call.wait_closed() == 1000
