"""Call fixtures: every file in tests/fixtures/calls/ is a test; recordings replay as made.

Drop a recorded call (RECORD_DIR) into tests/fixtures/calls/ and it becomes a test case
named after the file, with no code to write.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from app.recording_lines import AUDIO
from app.replay import Entry, Fixture, load, replay, report
from tests.conftest import API_KEY, AUTH_TOKEN, make_settings, serve
from tests.fakes.audio import speech
from tests.fakes.realtime_server import FakeRealtime, RealtimeConnection, ScriptedResponse
from tests.fakes.twilio_caller import FakeTwilioCall

LIBRARY = Path(__file__).parent / "fixtures" / "calls"
FIXTURES = sorted(LIBRARY.glob("*.jsonl"))


def test_the_library_is_not_empty() -> None:
    assert len(FIXTURES) >= 12


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_recorded_call_replays(path: Path) -> None:
    result = replay(load(path))
    if not result.ok:
        pytest.fail(report(result), pytrace=False)
    assert sum(result.counts().values()) > 0


# -- a corrupted recording fails, pointing at the message ------------------------------


def corrupt(name: str, change: Callable[[Entry], Entry | None]) -> tuple[Fixture, int]:
    """Load a library fixture and change one recorded output; return it and its line."""
    fixture = load(LIBRARY / f"{name}.jsonl")
    for i, e in enumerate(fixture.entries):
        changed = change(e)
        if changed is not None:
            fixture.entries[i] = changed
            return fixture, e.line
    raise AssertionError("nothing to corrupt")


def test_a_truncate_off_by_a_second_fails_with_a_diff_at_it() -> None:
    def later(e: Entry) -> Entry | None:
        if e.msg.get("type") == "conversation.item.truncate":
            return Entry(
                e.t_ms, e.dir, {**e.msg, "audio_end_ms": e.msg["audio_end_ms"] + 1000}, e.line
            )
        return None

    fixture, line = corrupt("barge_in", later)
    result = replay(fixture)
    assert not result.ok
    text = report(result)
    assert "to_openai/control" in text and f"(line {line})" in text
    assert ">>" in text.split(f"(line {line})")[0].splitlines()[-1]


def test_a_missing_clear_fails() -> None:
    fixture = load(LIBRARY / "barge_in.jsonl")
    fixture.entries = [e for e in fixture.entries if e.msg.get("event") != "clear"]
    result = replay(fixture)
    assert not result.ok
    assert any(m.direction == "to_twilio/control" for m in result.mismatches)
    assert '"event": "clear"' in report(result)


def test_a_hang_up_that_comes_too_early_fails() -> None:
    def earlier(e: Entry) -> Entry | None:
        if e.dir == "rest" and "request" in e.msg:
            return Entry(e.t_ms - 1000, e.dir, e.msg, e.line)
        return None

    fixture, line = corrupt("end_call", earlier)
    result = replay(fixture)
    assert not result.ok
    (mismatch,) = [m for m in result.mismatches if m.direction == "rest/control"]
    assert "another time (+1000 ms)" in mismatch.why
    assert f"(line {line})" in report(result)


# -- a recording made by a running server replays without any edit ---------------------


During = Callable[[FakeTwilioCall, RealtimeConnection], Awaitable[None]]


async def record_one_call(tmp_path: Path, during: During | None = None, **settings: object) -> Path:
    """Record one real call through a running server (greeting, then `during`, then the
    caller speaks and hangs up); return the fixture file the server wrote."""
    hello = speech("Hello, how can I help?")
    record_dir = tmp_path / "recordings"
    async with FakeRealtime([ScriptedResponse(audio=hello, transcript="Hello")]) as rt:
        app_settings = make_settings(
            openai_api_key=API_KEY,
            openai_realtime_url=rt.url,
            public_base_url="https://bridge.example.com",
            twilio_auth_token=AUTH_TOKEN,
            record_dir=str(record_dir),
            **settings,
        )
        async with serve(app_settings) as app:
            async with app.call() as call:
                await call.start()
                conn = await rt.wait_connection()
                await call.wait_for_heard(len(hello), timeout=20)
                if during is not None:
                    await during(call, conn)
                await call.say(speech("Thanks."))
                await call.hangup()
            await app.wait_idle()
    # The server has stopped, which flushes and closes the recording.
    (path,) = list(record_dir.glob("*.jsonl"))
    assert call.call_sid in path.name
    return path


@pytest.mark.e2e
async def test_a_call_recorded_by_the_server_replays_green(tmp_path: Path) -> None:
    path = await record_one_call(tmp_path)
    lines = path.read_text().splitlines()
    head = json.loads(lines[0])
    assert head["fixture"] == 1 and head["audio"] == "lengths" and "config" in head
    assert head["versions"]["realtime_protocol"] == "ga"
    # The caller's voice is not in the file: payloads are replaced by their lengths.
    assert AUDIO in path.read_text() and '"payload":"' not in path.read_text()
    result = replay(load(path))
    assert result.ok, report(result)
    assert {e.dir for e in load(path).entries} >= {"from_twilio", "to_twilio", "to_openai"}


@pytest.mark.e2e
async def test_recordings_can_keep_the_audio_and_still_replay(tmp_path: Path) -> None:
    path = await record_one_call(tmp_path, record_audio=True)
    assert json.loads(path.read_text().splitlines()[0])["audio"] == "kept"
    assert '"payload":"' in path.read_text()
    assert replay(load(path)).ok


@pytest.mark.e2e
async def test_a_recording_that_cannot_be_written_never_stops_the_call(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recordings = tmp_path / "recordings"
    hello = speech("Hello, how can I help?")
    async with FakeRealtime([ScriptedResponse(audio=hello, transcript="Hello")]) as rt:
        app_settings = make_settings(
            openai_api_key=API_KEY,
            openai_realtime_url=rt.url,
            public_base_url="https://bridge.example.com",
            twilio_auth_token=AUTH_TOKEN,
            record_dir=str(recordings),
        )
        async with serve(app_settings) as app:
            # Usable at start (checked then), gone by the time a call comes: a file now
            # stands where the directory was (a volume unmounted, a disk replaced).
            recordings.rmdir()
            recordings.write_text("a file where the recordings directory should be")
            async with app.call() as call:
                await call.start()
                await call.wait_for_heard(len(hello), timeout=20)  # the call goes on
                await call.hangup()
            await app.wait_idle()
    failures = [r for r in caplog.records if r.getMessage() == "recording.write_failed"]
    assert len(failures) == 1 and failures[0].levelno == logging.ERROR
