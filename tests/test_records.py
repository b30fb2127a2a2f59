"""Call records from the core's state (`app.records`): what was said, what was heard."""

from __future__ import annotations

from datetime import UTC, datetime

from app.records import call_record, heard_text, iso, model_of, unanswered_record
from tests.core import (
    dtmf_msg,
    hear,
    live,
    play,
    quiet,
    realtime,
    speech_started,
    stop_msg,
    twilio,
)

OPENED = datetime(2026, 12, 2, 9, 30, 0, 250_000, tzinfo=UTC)


def test_heard_text_is_the_said_text_cut_at_a_word_near_the_heard_share() -> None:
    text = "Our opening hours are nine to six"  # 33 characters
    assert heard_text(text, 3300, 3300) == text
    assert heard_text(text, 3300, 9000) == text  # never more than said
    assert heard_text(text, 3300, 1700) == "Our opening hours"  # 17 of 33: ends on a word
    assert heard_text(text, 3300, 1500) == "Our opening"  # mid-word: back to the last one
    assert heard_text(text, 3300, 200) == ""  # not even the first word
    assert heard_text(text, 0, 0) == ""  # cut off before any audio: nothing heard
    assert heard_text("", 1000, 500) == ""


def test_times_are_iso_utc_with_milliseconds() -> None:
    assert iso(OPENED) == "2026-12-02T09:30:00.250Z"
    assert model_of("wss://api.openai.com/v1/realtime?model=gpt-realtime") == "gpt-realtime"
    assert model_of("ws://127.0.0.1:9/v1/realtime") is None


def test_a_call_record_holds_said_and_heard_per_turn_and_never_the_digits() -> None:
    s = live(quiet())
    marks = play(s, 100, "item_a", 20)
    hear(s, 100, marks[:8])
    done = {"type": "response.output_audio_transcript.done", "item_id": "item_a"}
    realtime(s, 150, {**done, "response_id": "resp_1", "transcript": "One two three four five"})
    realtime(s, 900, speech_started())  # barge-in at 0.8 s of 2 s
    twilio(s, 1000, dtmf_msg("7"))
    twilio(s, 3001, stop_msg())
    record = call_record(s, OPENED, summary=s.summary(), model="gpt-realtime", recording="x.jsonl")
    assert record["call_sid"] == s.call_sid and record["direction"] == "inbound"
    assert record["started_at"] == "2026-12-02T09:30:00.251Z"  # `start` came at 1 ms
    assert record["ended_at"] == "2026-12-02T09:30:03.251Z"
    assert (record["outcome"], record["duration_s"]) == ("caller_hung_up", 3.0)
    assert record["barge_ins"] == 1 and record["barge_in_reaction_ms"] == [0]
    (bot,) = record["turns"]
    assert bot == {
        "who": "bot",
        "sent_ms": 2000,
        "heard_ms": 800,
        "interrupted": True,
        "text": "One two three four five",
        "heard_text": "One two",
    }
    assert record["unheard_audio_ms"] == 1200 and record["key_presses"] == 1
    assert "7" not in str({k: v for k, v in record.items() if k not in ("call_sid",)})
    assert record["recording"] == "x.jsonl" and record["model"] == "gpt-realtime"
    quiet_record = call_record(s, OPENED, summary=s.summary(), model=None, with_text=False)
    assert all("text" not in t and "heard_text" not in t for t in quiet_record["turns"])


def test_a_call_turned_away_is_a_record_without_turns() -> None:
    params = {"CallSid": "CA1", "From": "+15550001", "To": "+15550002"}
    record = unanswered_record(params, OPENED, outcome="busy", detail="at_capacity")
    assert (record["call_sid"], record["from"], record["to"]) == ("CA1", "+15550001", "+15550002")
    assert record["started_at"] == record["ended_at"] == "2026-12-02T09:30:00.250Z"
    assert (record["outcome"], record["end_detail"], record["turns"]) == ("busy", "at_capacity", [])
