"""Resume mode end to end: noise, backchannels and real interruptions over real sockets.

The counterparts of tests/test_resume.py's core scenarios, with the real app on loopback,
the fake Twilio caller playing the bot in real time and sending real audio (sox noises,
espeak-ng speech), and the fake Realtime service's energy VAD taking any of it for speech.
What is checked is what the caller hears and what the model is told, from the fakes'
records: a false turn resumes the paused answer byte for byte from where the caller
stopped hearing it (rewound by at most RESUME_REWIND_MS), and the model never hears the
noise; a real one is cut where the caller was and answered. Causality comes from the
fakes' timelines and synchronous snapshots (`Watch` runs predicates as events happen),
never from sleeps or milliseconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ACCOUNT_SID, AUTH_TOKEN, AppFactory, RunningApp
from tests.fakes.audio import (
    FRAME_BYTES,
    is_speech,
    rms,
    speech,
    synth,
)
from tests.fakes.realtime_server import FakeRealtime, RealtimeConnection, ScriptedResponse
from tests.fakes.twilio_caller import FakeTwilioCall
from tests.fakes.twilio_rest import FakeTwilioRest

pytestmark = pytest.mark.e2e

ANSWER = "Our opening hours are nine to six on weekdays, and ten to four on Saturdays."
SHORT = "Sure, what would you like to know?"
HELLO = "Hello, how can I help?"
BYE = "That is all, thank you. Bye."
GOODBYE = "Thank you so much for calling today. Have a wonderful week. Goodbye!"
CUT_IN = "No, I meant Tuesday."
BACKCHANNEL = "mm-hmm"
DELTA_MS = 100  # the fake's delta size: the granularity of marks
REWIND_MS = 400  # RESUME_REWIND_MS (the default)
TAIL_MS = 300  # HANGUP_TAIL_MS (the default)
KEY = "operator-key-0123456789abcdef"
#: How far past the fake caller's heard bytes a resume may start: the bridge interpolates
#: the heard position continuously between mark echoes (as Twilio plays), while the fake
#: caller counts audio as heard a whole 20 ms frame at a time.
HEARD_SLACK = FRAME_BYTES


def rustle() -> bytes:
    """0.3 s of quiet brown noise (a handset rubbed against a sleeve): loud enough for an
    energy VAD (linear RMS ~860), never a voice to webrtcvad (voiced runs of 80 ms)."""
    return synth("0.3", "brownnoise", "vol", "0.05", "fade", "0.01", "0.3", "0.05")


def loud_burst() -> bytes:
    """0.3 s of loud brown noise (RMS ~8600): webrtcvad, starting from silence, calls such
    an onset voiced (a 340 ms run), so only the empty transcript tells it from a word."""
    return synth("0.3", "brownnoise", "vol", "0.5", "fade", "0.01", "0.3", "0.05")


def after_a_pause(audio: bytes, from_ms: int = 1000, pause_ms: int = 100) -> int:
    """Where (bytes) the first silence of at least `pause_ms` between words after
    `from_ms` ends: a caller interrupted just after it gets the resume rewound into it."""
    block = 10 * 8
    run = 0
    for i in range(from_ms * 8, len(audio) - block + 1, block):
        if rms(audio[i : i + block]) < 50:
            run += 1
        elif run * 10 >= pause_ms:
            return i
        else:
            run = 0
    raise AssertionError("the answer has no pause between words to rewind to")


def said(text: str, **kw: Any) -> ScriptedResponse:
    return ScriptedResponse(audio=speech(text), transcript=text, delta_ms=DELTA_MS, **kw)


@dataclass(frozen=True)
class AtClear:
    """The fake caller's counters at the moment it processed a `clear`."""

    sent: int  # caller audio sent (bytes)
    received: int  # bot audio received (bytes)
    heard: int  # bot audio played (bytes)


def snapshot_at_clear(call: FakeTwilioCall, count: int = 1) -> asyncio.Task[AtClear]:
    """Start watching for the `count`-th clear (before the speech that causes it): the
    predicate runs synchronously when the clear is recorded, so the counters are exact."""

    def at_clear() -> AtClear | None:
        if call.clears < count:
            return None
        return AtClear(len(call.sent_audio), len(call.received_audio), len(call.heard))

    return asyncio.create_task(call.wait_until(at_clear, timeout=60))


def first_speech_frame(audio: bytes) -> int:
    """Index of the first 20 ms frame of `audio` the fake service's energy VAD hears."""
    for i in range(0, len(audio), FRAME_BYTES):
        if is_speech(audio[i : i + FRAME_BYTES]):
            return i // FRAME_BYTES
    raise AssertionError("the fake VAD hears nothing in this audio")


def assert_clear_within_one_frame(call: FakeTwilioCall, audio: bytes, at: AtClear) -> None:
    """The clear reached the caller after the frame that tripped the service's VAD was sent,
    and before the caller had sent more than one frame after it."""
    began = bytes(call.sent_audio).find(audio)
    assert began >= 0 and began % FRAME_BYTES == 0, "the caller's speech starts a frame"
    tripped = began + (first_speech_frame(audio) + 1) * FRAME_BYTES  # end of that frame
    assert tripped <= at.sent <= tripped + FRAME_BYTES


def events_named(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    return [r.fields for r in caplog.records if r.getMessage() == name]  # type: ignore[attr-defined]


async def summary(app: RunningApp, caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    """The bridge's end-of-call line, once every call has been torn down."""
    await app.wait_idle()
    (fields,) = events_named(caplog, "call.summary")
    return fields


async def speech_over_bot(app: RunningApp, verdict: str, reason: str) -> float:
    """`bridge_speech_over_bot_total{verdict,reason}` from the app's `/metrics`."""
    async with httpx.AsyncClient() as client:
        reply = await client.get(
            f"{app.http_url}/metrics", headers={"Authorization": f"Bearer {KEY}"}
        )
    assert reply.status_code == 200, reply.text
    for family in text_string_to_metric_families(reply.text):
        for s in family.samples:
            if s.name == "bridge_speech_over_bot_total" and s.labels == {
                "verdict": verdict,
                "reason": reason,
            }:
                return float(s.value)
    return 0.0


async def connected(realtime: FakeRealtime, *transcripts: str) -> RealtimeConnection:
    """The call's Realtime connection, with the caller's transcripts scripted per commit
    (its own queue: an empty transcript stays empty, as the service's for a cough)."""
    conn = await realtime.wait_connection(timeout=10)
    conn.caller_transcripts = deque(transcripts)
    return conn


def resumed_from(answer: bytes, resumed: bytes) -> int:
    """Where in `answer` the audio resent after the pause starts: `resumed` must be the
    answer's suffix from there, byte for byte."""
    assert resumed, "nothing was resumed"
    start = len(answer) - len(resumed)
    assert start >= 0 and answer[start:] == resumed, "the resumed audio is not the answer's rest"
    return start


async def wait_resumed(call: FakeTwilioCall, answer: bytes, at: AtClear) -> bytes:
    """Once the rest of `answer` has been sent again and played: the audio sent after the
    clear."""
    tail = answer[-DELTA_MS * 8 :]
    await call.wait_until(
        lambda: len(call.received_audio) > at.received and call.received_audio.endswith(tail),
        timeout=30,
    )
    await call.wait_for_playout_idle(timeout=30)
    return bytes(call.received_audio[at.received :])


NOISES = {
    # (the noise, LOCAL_VAD, the verdict's reason, the fake's generation speed)
    "rustle-local_vad": (rustle, "3", "no_voice", 10.0),
    "rustle-no_local_vad": (rustle, "off", "no_words", 10.0),
    "loud_burst-local_vad": (loud_burst, "3", "no_words", 10.0),
    # The answer still being generated: its audio arrives while paused, and after.
    "rustle-live_answer": (rustle, "3", "no_voice", 1.0),
}


@pytest.mark.parametrize(
    ("make_noise", "local_vad", "reason", "speed"), NOISES.values(), ids=NOISES
)
async def test_a_noise_pauses_the_answer_which_then_resumes_byte_for_byte(
    app_with: AppFactory,
    realtime: FakeRealtime,
    caplog: pytest.LogCaptureFixture,
    make_noise: Callable[[], bytes],
    local_vad: str,
    reason: str,
    speed: float,
) -> None:
    noise = make_noise()
    answer = speech(ANSWER)
    realtime.generation_speed = speed
    realtime.add_responses(said(ANSWER), said(SHORT))  # SHORT: never asked for
    pause_end = after_a_pause(answer)
    app = await app_with(local_vad=local_vad, operator_api_key=KEY)
    async with app.call() as call:
        await call.start()
        conn = await connected(realtime, "")
        await call.wait_for_heard(pause_end + 100 * 8, timeout=30)  # the rewind reaches it
        clear = snapshot_at_clear(call)
        await call.say(noise)
        at = await clear
        started = await conn.wait_sent("input_audio_buffer.speech_started", timeout=10)
        assert_clear_within_one_frame(call, noise, at)
        assert at.heard < len(answer)  # paused mid-answer

        # The noise leaves the conversation; the answer goes on from where it was heard.
        deleted = await conn.wait_for("conversation.item.delete", timeout=15)
        assert deleted["item_id"] == started["item_id"]
        assert started["item_id"] not in conn.items
        resumed = await wait_resumed(call, answer, at)
        start = resumed_from(answer, resumed)
        assert at.heard - REWIND_MS * 8 <= start <= at.heard + HEARD_SLACK
        assert bytes(call.heard[at.heard :]) == resumed  # and all of it was played
        assert call.clears == 1
        await call.hangup()

    # Nothing was cancelled, truncated or answered: the model's record stays whole.
    types = conn.types()
    assert "response.cancel" not in types and "conversation.item.truncate" not in types
    assert realtime.truncates == [] and realtime.rejected_truncates == []
    assert types.count("response.create") == 1 and len(conn.responses) == 1  # the greeting
    assert realtime.invalid_events == [] and call.violations == []

    (paused,) = events_named(caplog, "turn.paused")
    (false,) = events_named(caplog, "turn.false")
    (resume,) = events_named(caplog, "turn.resumed")
    assert false["reason"] == reason and not events_named(caplog, "turn.real")
    assert abs(paused["heard_ms"] * 8 - at.heard) <= DELTA_MS * 8
    # The log's numbers are the bytes the caller got.
    assert resume["heard_ms"] == paused["heard_ms"]
    # The log's rewind is the bytes from the resume point to the heard position, in ms.
    assert (resume["heard_ms"] * 8 - start) // 8 == resume["rewind_ms"]
    assert 0 < resume["rewind_ms"] <= REWIND_MS
    if speed > 1:  # all of it had arrived: all of it was sent at the resume
        assert resume["resumed_ms"] == len(resumed) // 8
    else:  # the rest came live, after the resume
        assert 0 < resume["resumed_ms"] < len(resumed) // 8
        assert conn.responses[0].status == "completed"  # never cancelled
    assert start < pause_end and rms(answer[start : start + 80]) < 300  # from the pause
    result = await summary(app, caplog)
    assert result["false_turns"] == 1 and result["resumes"] == 1 and result["barge_ins"] == 0
    assert result["bad_input"] == {}
    assert [t["who"] for t in result["turns"]] == ["bot"]  # the noise is not a caller turn
    assert await speech_over_bot(app, "false", reason) == 1


async def test_a_backchannel_resumes_the_answer_and_is_not_answered(
    app_with: AppFactory, realtime: FakeRealtime, caplog: pytest.LogCaptureFixture
) -> None:
    answer = speech(ANSWER)
    mm_hmm = speech(BACKCHANNEL)
    realtime.add_responses(said(ANSWER), said(SHORT))
    app = await app_with()
    async with app.call() as call:
        await call.start()
        conn = await connected(realtime, BACKCHANNEL)
        await call.wait_for_heard(1200 * 8, timeout=30)
        clear = snapshot_at_clear(call)
        await call.say(mm_hmm)
        at = await clear
        assert_clear_within_one_frame(call, mm_hmm, at)
        started = await conn.wait_sent("input_audio_buffer.speech_started", timeout=10)
        deleted = await conn.wait_for("conversation.item.delete", timeout=15)
        assert deleted["item_id"] == started["item_id"]
        resumed = await wait_resumed(call, answer, at)
        start = resumed_from(answer, resumed)
        assert at.heard - REWIND_MS * 8 <= start <= at.heard + HEARD_SLACK
        await call.hangup()

    types = conn.types()
    assert types.count("response.create") == 1 and len(conn.responses) == 1
    assert "response.cancel" not in types and realtime.truncates == []
    assert [f["reason"] for f in events_named(caplog, "turn.false")] == ["backchannel"]
    result = await summary(app, caplog)
    assert result["false_turns"] == 1 and result["resumes"] == 1 and result["barge_ins"] == 0
    assert result["bad_input"] == {}
    assert [t["who"] for t in result["turns"]] == ["bot"]


async def test_a_real_interruption_is_cut_where_heard_and_answered(
    app_with: AppFactory, realtime: FakeRealtime, caplog: pytest.LogCaptureFixture
) -> None:
    realtime.generation_speed = 1.0  # the answer is still being generated when cut off
    answer = speech(ANSWER)
    cut_in = speech(CUT_IN)
    realtime.add_responses(said(ANSWER), said(SHORT))
    app = await app_with()
    async with app.call() as call:
        await call.start()
        conn = await connected(realtime, CUT_IN)

        def creates_once_committed() -> int | None:
            """response.create's received when the caller's turn is committed (exact:
            the predicate runs as the fake sends the commit)."""
            if "input_audio_buffer.committed" not in conn.sent_types():
                return None
            return conn.types().count("response.create")

        creates_at_commit = asyncio.create_task(conn.wait_until(creates_once_committed, timeout=60))
        await call.wait_for_heard(1500 * 8, timeout=30)
        clear = snapshot_at_clear(call)
        await call.say(cut_in)
        at = await clear
        assert_clear_within_one_frame(call, cut_in, at)
        assert at.heard < len(answer)

        await realtime.wait_until(lambda: realtime.truncates, timeout=15)
        (truncate,) = realtime.truncates
        assert truncate["item_id"] == conn.responses[0].item_id
        assert abs(truncate["audio_end_ms"] * 8 - at.heard) <= DELTA_MS * 8
        assert truncate["audio_end_ms"] * 8 <= at.received  # never past what was sent
        assert truncate["audio_end_ms"] <= truncate["item_audio_ms"]
        types = conn.types()
        assert conn.responses[0].status == "cancelled"
        assert types.index("response.cancel") < types.index("conversation.item.truncate")

        # The bridge answers the turn once it is committed: the next answer plays whole.
        assert await creates_at_commit == 1  # only the greeting's before the commit
        await conn.wait_for("response.create", timeout=15, count=2)
        short = speech(SHORT)
        await call.wait_for_heard(at.heard + len(short), timeout=30)
        await call.wait_for_playout_idle(timeout=10)
        assert bytes(call.heard[at.heard :]) == short  # nothing of the paused answer
        await call.hangup()

    assert conn.responses[1].trigger == "client"
    assert realtime.rejected_truncates == [] and realtime.invalid_events == []
    assert call.violations == [] and call.clears == 1
    (real,) = events_named(caplog, "turn.real")
    assert real["reason"] in ("words", "long_speech")
    assert not events_named(caplog, "turn.false") and not events_named(caplog, "turn.resumed")
    result = await summary(app, caplog)
    assert result["barge_ins"] == 1 and result["false_turns"] == 0 and result["resumes"] == 0
    assert result["bad_input"] == {}
    bot = result["turns"][0]
    assert bot["interrupted"] and abs(bot["heard_ms"] * 8 - at.heard) <= DELTA_MS * 8


@pytest.fixture
async def rest() -> AsyncIterator[FakeTwilioRest]:
    async with FakeTwilioRest(expected_auth=(ACCOUNT_SID, AUTH_TOKEN)) as fake:
        yield fake


async def test_a_noise_over_the_goodbye_resumes_it_and_the_call_still_ends(
    app_with: AppFactory,
    realtime: FakeRealtime,
    rest: FakeTwilioRest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    hello, goodbye = speech(HELLO), speech(GOODBYE)
    end_call = {"name": "end_call", "arguments": {"reason": "the caller is done"}}
    realtime.add_responses(said(HELLO), said(GOODBYE, function_call=end_call), said(SHORT))
    app = await app_with(twilio_account_sid=ACCOUNT_SID, twilio_api_base_url=rest.base_url)
    async with app.call() as call:
        rest.register_call(call)
        await call.start()
        conn = await connected(realtime, BYE, "")
        await call.wait_for_heard(len(hello), timeout=30)
        await call.say(speech(BYE))
        await call.wait_for_heard(len(hello) + 1500 * 8, timeout=30)  # into the goodbye
        clear = snapshot_at_clear(call)
        await call.say(rustle())
        at = await clear
        request = await rest.wait_for_request(timeout=30)
        await call.wait_closed(timeout=10)

    # The goodbye resumed where it was heard and played to its last byte, then the tail.
    received = bytes(call.received_audio)
    start = resumed_from(goodbye, received[at.received :])
    heard_in_goodbye = at.heard - len(hello)
    assert heard_in_goodbye - REWIND_MS * 8 <= start <= heard_in_goodbye + HEARD_SLACK
    assert call.discarded_at_close == 0 and bytes(call.heard).endswith(goodbye[start:])
    last_mark = call.marks_received[-1]
    echoes = [e for e in call.events_of("mark_echoed") if e[2]["name"] == last_mark]
    assert [e[2]["how"] for e in echoes] == ["played"]
    echoed_at = echoes[0][0]
    assert request.time > echoed_at  # the hang-up follows the last echo...
    assert request.time - echoed_at >= TAIL_MS / 1000 - 0.01  # ...by the tail (timer slack)
    assert request.form == {"Status": "completed"}
    # Not called off: no "called off" note, no answer to the noise.
    notes = [e for e in conn.events if e["type"] == "conversation.item.create"]
    assert not any("called off" in str(e) for e in notes)
    assert conn.types().count("response.create") == 2  # the greeting and the goodbye
    assert [f["reason"] for f in events_named(caplog, "turn.false")] == ["no_voice"]
    result = await summary(app, caplog)
    assert result["ended"] == "bot_hung_up" and result["resumes"] == 1
    assert result["bad_input"] == {}
    assert realtime.invalid_events == [] and call.violations == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_in_cancel_mode_the_same_noise_cancels_the_answer(
    app_with: AppFactory, realtime: FakeRealtime, caplog: pytest.LogCaptureFixture
) -> None:
    noise = rustle()
    realtime.add_responses(said(ANSWER), said(SHORT))
    app = await app_with(interrupt_mode="cancel")
    async with app.call() as call:
        await call.start()
        conn = await connected(realtime, "")
        await call.wait_for_heard(1200 * 8, timeout=30)
        clear = snapshot_at_clear(call)
        await call.say(noise)
        at = await clear
        assert_clear_within_one_frame(call, noise, at)
        await realtime.wait_until(lambda: realtime.truncates, timeout=15)
        (truncate,) = realtime.truncates
        assert abs(truncate["audio_end_ms"] * 8 - at.heard) <= DELTA_MS * 8
        # The service answers the noise itself, and the rest of the answer is gone.
        short = speech(SHORT)
        await call.wait_for_heard(at.heard + len(short), timeout=30)
        await call.wait_for_playout_idle(timeout=10)
        assert bytes(call.heard[at.heard :]) == short
        await call.hangup()

    assert "response.cancel" in conn.types() and conn.responses[1].trigger == "vad"
    assert "conversation.item.delete" not in conn.types()
    assert not events_named(caplog, "turn.paused") and not events_named(caplog, "turn.resumed")
    result = await summary(app, caplog)
    assert result["barge_ins"] == 1 and result["false_turns"] == 0
