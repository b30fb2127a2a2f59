"""Resume mode in the core: speech over the bot pauses it; a false turn resumes the answer
where the caller stopped hearing it, a real one interrupts it (`app.call.falseturn`).

Sans-I/O scenarios: every input is a message as the sockets deliver it, and every check is
on what the core sends. The end-to-end counterparts (real sockets, real speech and noise)
are in tests/test_e2e_noise.py.
"""

from __future__ import annotations

import base64
from typing import Any

from app.call.actions import CheckVoice, Measure, Metric, RestRequest
from app.call.backchannel import is_backchannel, phrases_for
from app.call.falseturn import TRANSCRIPT_WAIT_MS, VOICE_WINDOW_MS
from app.call.outbox import Timer
from app.call.playback import Chunk
from app.call.resume import plan
from app.call.session import CallSession
from app.call.setup import session_update
from app.call.state import Stage
from tests.core import (
    RESUME,
    STREAM,
    dtmf_msg,
    fire,
    function_call,
    greeted,
    hear,
    live,
    mark_msg,
    realtime,
    response_done,
    rest,
    speech_started,
    speech_stopped,
    to_realtime,
    to_twilio,
    twilio,
)

CHUNK = 800  # bytes of a 100 ms delta


def audio(i: int, n: int = CHUNK) -> bytes:
    """Chunk `i`'s audio: loud, and different from every other chunk's."""
    return bytes(((i * 37 + k) % 96) for k in range(n))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def delta(item: str, data: bytes, response: str = "resp_1") -> dict[str, Any]:
    return {
        "type": "response.output_audio.delta",
        "response_id": response,
        "item_id": item,
        "output_index": 0,
        "content_index": 0,
        "delta": b64(data),
    }


def resume_call(**overrides: Any) -> CallSession:
    """A live call in resume mode, without the local detector unless asked for."""
    return live(greeted(**{**RESUME, "local_vad": None, **overrides}))


def deciding(chunks: int = 30, at: float = 650) -> CallSession:
    """Resume mode with the local detector: the bot says `chunks` deltas, the caller's
    speech starts at `at` and its decision time (INTERRUPT_DECIDE_MS later) has come."""
    s = resume_call(local_vad=3)
    speak(s, 100, [audio(i) for i in range(chunks)])
    realtime(s, at, speech_started("u1"))
    fire(s, Timer.DECIDE)
    return s


def speak(s: CallSession, now: float, chunks: list[bytes], item: str = "item_a") -> list[str]:
    names = []
    for data in chunks:
        out = to_twilio(realtime(s, now, delta(item, data)))
        assert [m["event"] for m in out] == ["media", "mark"]
        names.append(out[1]["mark"]["name"])
    return names


def media_bytes(actions: list[Any]) -> bytes:
    return b"".join(
        base64.b64decode(m["media"]["payload"]) for m in to_twilio(actions) if m["event"] == "media"
    )


def driver(s: CallSession, now: float, out: list[Any]) -> list[Any]:
    """`out`, plus what follows once its `FindPause` is answered as the live driver does
    (`app.pauses.resume_point`, the driver's own code)."""
    from app.call.actions import FindPause
    from app.pauses import resume_point

    more = list(out)
    for q in [a for a in out if isinstance(a, FindPause)]:
        at = resume_point(q.chunks, q.heard, q.rewind_ms)
        more += s.feed(now, "rest", {"pause": {"item_id": q.item_id, "resume_at": at}})
    return more


def committed(item: str) -> dict[str, Any]:
    return {"type": "input_audio_buffer.committed", "item_id": item}


def transcribed(item: str, text: str) -> dict[str, Any]:
    return {
        "type": "conversation.item.input_audio_transcription.completed",
        "item_id": item,
        "content_index": 0,
        "transcript": text,
    }


def verdicts(actions: list[Any]) -> list[tuple[str, ...]]:
    return [a.labels for a in actions if isinstance(a, Measure) and a.metric is Metric.FALSE_TURN]


def test_the_session_leaves_cancelling_and_answering_to_the_bridge() -> None:
    td = session_update(greeted(**RESUME))["session"]["audio"]["input"]["turn_detection"]
    assert td["interrupt_response"] is False and td["create_response"] is False


def test_noise_pauses_at_once_and_resumes_the_unheard_rest_byte_for_byte() -> None:
    s = resume_call(resume_rewind_ms=0)
    chunks = [audio(i) for i in range(30)]
    marks = speak(s, 100, chunks)
    hear(s, 100, marks[:15])  # 1.5 s heard by 1600
    out = realtime(s, 1650, speech_started("u1", audio_start_ms=1000))
    # Stopped at once, but nothing is cancelled, truncated or deleted yet.
    assert to_twilio(out) == [{"event": "clear", "streamSid": STREAM}]
    assert to_realtime(out) == []
    assert s.out.timers[Timer.DECIDE] == 1650 + 1000
    # The rest of the answer arrives while paused: held, not played.
    late = audio(99)
    assert realtime(s, 1700, delta("item_a", late)) == []
    for name in marks[15:]:  # the cleared marks' echoes are not played audio
        twilio(s, 1710, mark_msg(name))
    realtime(s, 1900, speech_stopped("u1", audio_end_ms=1900))
    assert to_realtime(realtime(s, 1900, committed("u1"))) == []
    assert s.out.timers[Timer.WORDS] == 1900 + TRANSCRIPT_WAIT_MS
    out = realtime(s, 2000, transcribed("u1", ""))
    # A false turn: the noise leaves the conversation, unanswered, and the answer goes on
    # exactly where the caller stopped hearing it (1500 ms in), byte for byte.
    assert to_realtime(out) == [{"type": "conversation.item.delete", "item_id": "u1"}]
    heard_at = 1500 * 8 + 50 * 8  # 50 ms of interpolation between the echo and the clear
    heard_at -= (heard_at - 15 * CHUNK) % 3  # cut in base64 text: 3 bytes a 4-char step
    rest_of_answer = b"".join(chunks)[heard_at:] + late
    assert media_bytes(out) == rest_of_answer
    assert verdicts(out) == [("false", "no_words")]
    assert s.barge_ins == 0 and s.false_turn_count == 1
    # The resumed audio has marks of its own, played like any other.
    resumed = [m["mark"]["name"] for m in to_twilio(out) if m["event"] == "mark"]
    hear(s, 2000, resumed)
    assert not s.playback.playing
    assert s.playback.items["item_a"].played == len(b"".join(chunks)) + len(late)
    # The model's record of its answer stays whole: no truncate was ever sent.
    realtime(s, 5000, response_done("resp_1"))
    assert s.transcript.assistant("item_a").interrupted is False


def test_a_backchannel_resumes_and_is_never_answered() -> None:
    s = resume_call()
    marks = speak(s, 100, [audio(i) for i in range(20)])
    hear(s, 100, marks[:5])
    realtime(s, 650, speech_started("u1", audio_start_ms=300))
    realtime(s, 700, response_done("resp_1"))
    realtime(s, 1500, speech_stopped("u1", audio_end_ms=1400))
    realtime(s, 1500, committed("u1"))
    out = driver(s, 1600, realtime(s, 1600, transcribed("u1", "Mm-hmm.")))
    assert verdicts(out) == [("false", "backchannel")]
    assert {"type": "conversation.item.delete", "item_id": "u1"} in to_realtime(out)
    assert "response.create" not in [e["type"] for e in to_realtime(out)]
    assert media_bytes(out)  # the answer goes on
    # Nor is it in the call's transcript: the model never heard it, and neither does the record.
    turns = s.transcript.to_list(True)
    assert turns and all(t["who"] == "bot" for t in turns)


def test_words_interrupt_for_real_truncating_at_what_was_heard() -> None:
    s = resume_call()
    marks = speak(s, 100, [audio(i) for i in range(30)])
    hear(s, 100, marks[:12])  # 1.2 s heard, the last echo at 1300
    realtime(s, 1350, speech_started("u1", audio_start_ms=900))
    realtime(s, 1800, speech_stopped("u1", audio_end_ms=1700))
    realtime(s, 1800, committed("u1"))
    out = realtime(s, 1900, transcribed("u1", "No, I meant Tuesday"))
    events = to_realtime(out)
    # The response is still active: cancelled; the item truncated where the caller was
    # when the bot stopped (1.2 s + 50 ms interpolated), not where the words came.
    assert [e["type"] for e in events] == ["response.cancel", "conversation.item.truncate"]
    assert events[1] == {
        "type": "conversation.item.truncate",
        "item_id": "item_a",
        "content_index": 0,
        "audio_end_ms": 1250,
    }
    assert verdicts(out) == [("real", "words")]
    assert s.barge_ins == 1
    # The bridge answers once the cancelled response is done.
    out = realtime(s, 1950, response_done("resp_1", status="cancelled"))
    assert [e["type"] for e in to_realtime(out)] == ["response.create"]


def test_speech_that_goes_on_is_a_turn_by_the_decision_time() -> None:
    s = resume_call()
    speak(s, 100, [audio(i) for i in range(30)])
    realtime(s, 500, response_done("resp_1"))
    realtime(s, 600, speech_started("u1"))
    out = fire(s, Timer.DECIDE)  # at 1600, no speech_stopped yet
    assert verdicts(out) == [("real", "long_speech")]
    events = to_realtime(out)
    # The response was done: "not active" is the expected answer to the contract's cancel.
    assert [e["type"] for e in events] == ["response.cancel", "conversation.item.truncate"]
    # Its commit is answered at once.
    realtime(s, 2500, speech_stopped("u1", audio_end_ms=2400))
    out = realtime(s, 2500, committed("u1"))
    assert [e["type"] for e in to_realtime(out)] == ["response.create"]


def test_with_the_local_detector_a_fan_resumes_while_the_service_still_hears_speech() -> None:
    s = resume_call(local_vad=3)
    marks = speak(s, 100, [audio(i) for i in range(30)])
    hear(s, 100, marks[:5])
    realtime(s, 650, speech_started("u1"))
    out = fire(s, Timer.DECIDE)
    assert [a for a in out if isinstance(a, CheckVoice)] == [
        CheckVoice(VOICE_WINDOW_MS, at_decision=True)
    ]
    report = {"window_ms": 1500, "voiced_ms": 0, "tail_voiced_ms": 0, "longest_voiced_ms": 0}
    out = driver(s, 1650, s.feed(1650, "rest", {"voice": {**report, "at_decision": True}}))
    assert verdicts(out) == [("false", "no_voice")]
    assert media_bytes(out)
    # When the fan stops, its item is deleted at commit, not answered.
    realtime(s, 3000, speech_stopped("u1", audio_end_ms=3000))
    out = realtime(s, 3000, committed("u1"))
    assert to_realtime(out) == [{"type": "conversation.item.delete", "item_id": "u1"}]


def test_with_the_local_detector_a_voice_that_goes_on_is_a_turn() -> None:
    s = deciding(chunks=30, at=650)
    report = {"voiced_ms": 900, "tail_voiced_ms": 300, "longest_voiced_ms": 600}
    one_talker = {**report, "level_spread_db": 9.5, "at_decision": True}
    out = s.feed(1650, "rest", {"voice": one_talker})
    assert verdicts(out) == [("real", "long_speech")]


def test_with_the_local_detector_a_steady_sound_that_goes_on_waits_for_its_words() -> None:
    """A loud fan (or a television's babble) is voiced to webrtcvad, but its level is
    steady: it is not taken for a turn before its words come."""
    s = deciding(chunks=30, at=650)
    fan = {"voiced_ms": 920, "tail_voiced_ms": 300, "longest_voiced_ms": 920}
    out = s.feed(1650, "rest", {"voice": {**fan, "level_spread_db": 3.5, "at_decision": True}})
    assert verdicts(out) == [] and s.out.timers[Timer.DECIDE] == 1650 + 1000
    realtime(s, 2600, speech_stopped("u1", audio_end_ms=2600))
    s.feed(2600, "rest", {"voice": {**fan, "level_spread_db": 4.0, "at_decision": False}})
    realtime(s, 2600, committed("u1"))
    out = driver(s, 2900, realtime(s, 2900, transcribed("u1", "")))
    assert verdicts(out) == [("false", "no_words")] and media_bytes(out)


def test_with_the_local_detector_a_voice_that_ended_waits_for_its_words() -> None:
    s = deciding(chunks=30, at=650)
    report = {"voiced_ms": 500, "tail_voiced_ms": 0, "longest_voiced_ms": 500}
    out = s.feed(1650, "rest", {"voice": {**report, "at_decision": True}})
    assert verdicts(out) == [] and s.out.timers[Timer.DECIDE] == 1650 + 1000
    out = realtime(s, 1700, speech_stopped("u1", audio_end_ms=1500))
    assert [a for a in out if isinstance(a, CheckVoice)] == [
        CheckVoice(VOICE_WINDOW_MS, at_decision=False)
    ]
    out = s.feed(1700, "rest", {"voice": {**report, "at_decision": False}})
    assert verdicts(out) == []
    realtime(s, 1700, committed("u1"))
    out = realtime(s, 1800, transcribed("u1", "okay"))
    assert verdicts(out) == [("false", "backchannel")]


def test_without_words_the_duration_decides() -> None:
    s = resume_call(transcription_model=None)
    speak(s, 100, [audio(i) for i in range(30)])
    realtime(s, 600, speech_started("u1", audio_start_ms=200))
    # 200 + 300 prefix = speech at 500; ends 500 ms before 1150: 150 ms of it.
    out = realtime(s, 1100, speech_stopped("u1", audio_end_ms=1150))
    assert verdicts(out) == [("false", "short")]
    realtime(s, 1800, speech_started("u2", audio_start_ms=1500))
    out = realtime(s, 2600, speech_stopped("u2", audio_end_ms=2800))  # 500 ms of speech
    assert verdicts(out) == [("real", "duration")]


def test_no_transcript_in_time_falls_back_on_the_duration() -> None:
    s = resume_call()
    speak(s, 100, [audio(i) for i in range(30)])
    realtime(s, 600, speech_started("u1", audio_start_ms=200))
    realtime(s, 1100, speech_stopped("u1", audio_end_ms=1150))
    realtime(s, 1100, committed("u1"))
    out = fire(s, Timer.WORDS)
    assert verdicts(out) == [("false", "short")]
    assert {"type": "conversation.item.delete", "item_id": "u1"} in to_realtime(out)


def test_a_key_press_while_paused_is_a_turn() -> None:
    s = resume_call()
    marks = speak(s, 100, [audio(i) for i in range(30)])
    hear(s, 100, marks[:3])
    realtime(s, 450, speech_started("u1"))
    out = twilio(s, 500, dtmf_msg("5"))
    assert verdicts(out) == [("real", "key")]
    assert "conversation.item.truncate" in [e["type"] for e in to_realtime(out)]


def test_the_resume_rewinds_to_the_last_pause_between_words() -> None:
    quiet_gap = bytes([0xFF]) * 400  # 50 ms of mu-law silence
    chunks = [audio(0), audio(1)[:400] + quiet_gap, audio(2), audio(3), audio(4)]
    s = resume_call(resume_rewind_ms=400)
    marks = speak(s, 100, chunks)
    hear(s, 100, marks[:2])  # chunk 2 playing, 0 ms in, at 300
    out = realtime(s, 400, speech_started("u1"))  # heard 200 + 100 interpolated = 300 ms
    realtime(s, 700, speech_stopped("u1", audio_end_ms=900))
    realtime(s, 700, committed("u1"))
    out = driver(s, 800, realtime(s, 800, transcribed("u1", "")))
    whole = b"".join(chunks)
    # The pause ends at 200 ms (byte 1600); the resume starts 20 ms before its end (less
    # the byte that keeps the cut on a 3-byte step of the chunk's base64).
    resumed = media_bytes(out)
    assert resumed == whole[1600 - 160 - 1 :]


def test_without_a_pause_the_driver_resumes_a_frame_before_where_it_was_heard() -> None:
    from app.pauses import resume_point

    data = audio(7, 1600)
    held = [Chunk("i", 800, 800, b64(data[800:]))]
    played = [Chunk("i", 0, 800, b64(data[:800]))]
    assert resume_point([*played, *held], 1200, rewind_ms=400) == 1200 - 160
    resumed = plan("i", 1200, 1200 - 160, played, held)
    assert resumed.rewind_ms == 20
    assert b"".join(base64.b64decode(c.payload) for c in resumed.chunks) == data[1200 - 160 :]
    # Cut in the base64 text, at a multiple of 3 bytes into the chunk: nothing decoded.
    odd = plan("i", 1200, 1000, played, held)
    assert b"".join(base64.b64decode(c.payload) for c in odd.chunks) == data[998:]
    # Audio the driver can't read has no pause in it.
    assert resume_point([Chunk("i", 0, 1600, "not base64!")], 1200, 400) == 1040


def test_a_noise_over_the_goodbye_does_not_call_off_the_hang_up() -> None:
    s = resume_call(rest_available=True, tools=("end_call",))
    marks = speak(s, 100, [audio(i) for i in range(10)])
    realtime(s, 150, function_call("end_call", "call_1"))
    realtime(s, 200, response_done("resp_1"))
    assert s.ending.stage is Stage.PLAYING_OUT
    now = hear(s, 100, marks[:4])
    realtime(s, now + 10, speech_started("u1"))  # a cough during "goodbye"
    realtime(s, now + 300, speech_stopped("u1", audio_end_ms=900))
    realtime(s, now + 300, committed("u1"))
    out = driver(s, now + 400, realtime(s, now + 400, transcribed("u1", "")))
    assert s.ending.stage is Stage.PLAYING_OUT  # not called off
    resumed = [m["mark"]["name"] for m in to_twilio(out) if m["event"] == "mark"]
    now = hear(s, now + 400, resumed)
    # The last mark echo starts the tail; the hang-up follows it, not the echo.
    assert s.ending.stage is Stage.TAIL
    assert s.out.timers[Timer.HANGUP_TAIL] == now + RESUME["hangup_tail_ms"]
    out = fire(s, Timer.HANGUP_TAIL)
    assert [type(a) for a in out if isinstance(a, RestRequest)] == [RestRequest]
    assert s.ending.stage is Stage.REST
    rest(s, now + 500, 200)
    assert s.ending.stage is Stage.DONE


def test_words_over_the_goodbye_call_the_hang_up_off() -> None:
    s = resume_call(rest_available=True, tools=("end_call",))
    marks = speak(s, 100, [audio(i) for i in range(10)])
    realtime(s, 150, function_call("end_call", "call_1"))
    realtime(s, 200, response_done("resp_1"))
    now = hear(s, 100, marks[:4])
    realtime(s, now + 10, speech_started("u1"))
    realtime(s, now + 300, speech_stopped("u1", audio_end_ms=900))
    realtime(s, now + 300, committed("u1"))
    out = realtime(s, now + 400, transcribed("u1", "wait, one more thing"))
    assert s.ending.stage is Stage.NONE
    assert [e["type"] for e in to_realtime(out)][-1] == "response.create"


def test_the_echo_guard_lets_the_bot_talk_on_until_there_are_words() -> None:
    s = resume_call(echo_guard_ms=500)
    marks = speak(s, 100, [audio(i) for i in range(30)])
    out = realtime(s, 300, speech_started("u1"))  # 200 ms after the bot's audio started
    assert to_twilio(out) == [] and s.playback.playing  # no pause
    realtime(s, 900, speech_stopped("u1", audio_end_ms=900))
    realtime(s, 900, committed("u1"))
    out = realtime(s, 950, transcribed("u1", ""))  # its own echo: no words
    assert verdicts(out) == [("false", "no_words")]
    assert to_twilio(out) == [] and s.playback.playing
    hear(s, 1000, marks[:12])
    # Later speech is past the guard: it pauses at once.
    out = realtime(s, 2300, speech_started("u2"))
    assert to_twilio(out) == [{"event": "clear", "streamSid": STREAM}]


def test_the_echo_guard_knows_the_bots_own_words() -> None:
    s = resume_call(echo_guard_ms=500)
    speak(s, 100, [audio(i) for i in range(30)])
    realtime(
        s,
        150,
        {
            "type": "response.output_audio_transcript.done",
            "item_id": "item_a",
            "response_id": "resp_1",
            "output_index": 0,
            "content_index": 0,
            "transcript": "Our opening hours are nine to six on weekdays.",
        },
    )
    realtime(s, 300, speech_started("u1"))  # its echo, 200 ms after the audio started
    realtime(s, 900, speech_stopped("u1", audio_end_ms=900))
    realtime(s, 900, committed("u1"))
    out = realtime(s, 950, transcribed("u1", "opening hours are nine to six"))
    assert verdicts(out) == [("false", "echo")] and s.playback.playing


def test_the_echo_guard_still_lets_words_interrupt() -> None:
    s = resume_call(echo_guard_ms=500)
    speak(s, 100, [audio(i) for i in range(30)])
    realtime(s, 300, speech_started("u1"))
    realtime(s, 900, speech_stopped("u1", audio_end_ms=900))
    realtime(s, 900, committed("u1"))
    out = realtime(s, 950, transcribed("u1", "stop please"))
    assert to_twilio(out) == [{"event": "clear", "streamSid": STREAM}]
    assert "conversation.item.truncate" in [e["type"] for e in to_realtime(out)]


def test_speech_while_the_bot_is_silent_is_answered_by_the_bridge() -> None:
    s = resume_call()
    realtime(s, 80, response_done("resp_1"))
    assert realtime(s, 100, speech_started("u1")) == []
    realtime(s, 900, speech_stopped("u1", audio_end_ms=900))
    out = realtime(s, 900, committed("u1"))
    assert [e["type"] for e in to_realtime(out)] == ["response.create"]


def test_backchannel_lists() -> None:
    en = phrases_for("en", None)
    assert is_backchannel("Mm-hmm.", en) and is_backchannel("Okay, okay!", en)
    assert is_backchannel("yeah right", en) and is_backchannel("Mmm", en)
    assert not is_backchannel("okay, but what about Tuesday?", en)
    assert not is_backchannel("", en)
    assert is_backchannel("vale", phrases_for("es-ES", None))
    assert is_backchannel("d'accord", phrases_for(None, None))  # every language
    assert phrases_for("en", "sure thing, uh-huh") == ("sure thing", "uh huh")
    assert not is_backchannel("yeah", phrases_for("en", "sure thing"))


# -- tools while speech over the bot is judged ----------------------------------------------


def _tooled_resume() -> CallSession:
    """Resume mode, with the business tools of tests/test_toolcalls.py; the bot says "let
    me check" (heard in part) while `book` (on_interrupt = cancel) runs."""
    from tests.test_toolcalls import BOOK, ORDER, call

    s = live(greeted(**RESUME, local_vad=None, functions=(ORDER, BOOK)))
    names = speak(s, 80, [audio(i) for i in range(5)], item="it1")
    realtime(s, 100, call("book", "c1", {}))
    realtime(s, 120, response_done("resp_1"))
    hear(s, 120, names[:2])
    return s


def test_a_cancel_tool_survives_a_cough_and_its_answer_waits_for_the_verdict() -> None:
    from app.call.actions import CancelTool
    from tests.test_toolcalls import result

    s = _tooled_resume()
    out = realtime(s, 400, speech_started("u2"))
    assert [a for a in out if isinstance(a, CancelTool)] == []  # not yet: judged first
    out = s.feed(450, "rest", result("c1", "book", {"booked": True}))
    assert "response.create" not in [e["type"] for e in to_realtime(out)]  # it waits
    realtime(s, 800, speech_stopped("u2", audio_end_ms=900))
    realtime(s, 800, committed("u2"))
    out = driver(s, 900, realtime(s, 900, transcribed("u2", "")))
    types = [e["type"] for e in to_realtime(out)]
    # Noise: its item goes, the answer resumes, and the booking's answer is asked for.
    assert types == ["conversation.item.delete", "response.create"]
    assert media_bytes(out)


def test_a_cancel_tool_is_cancelled_by_a_real_turn() -> None:
    from app.call.actions import CancelTool

    s = _tooled_resume()
    realtime(s, 400, speech_started("u2"))
    realtime(s, 800, speech_stopped("u2", audio_end_ms=900))
    realtime(s, 800, committed("u2"))
    out = realtime(s, 900, transcribed("u2", "actually, cancel that"))
    assert [a.call_id for a in out if isinstance(a, CancelTool)] == ["c1"]
    assert s.measures.tool_calls[0]["result"] == "cancelled"


def test_the_end_of_a_fan_already_judged_noise_is_no_turn() -> None:
    from app.call.actions import CancelTool

    s = _tooled_resume()
    realtime(s, 400, speech_started("u2"))
    realtime(s, 800, speech_stopped("u2", audio_end_ms=900))
    realtime(s, 800, committed("u2"))
    realtime(s, 900, transcribed("u2", ""))
    # A late, repeated end of the same speech changes nothing: no tool cancelled.
    out = realtime(s, 950, speech_stopped("u2", audio_end_ms=950))
    assert [a for a in out if isinstance(a, CancelTool)] == [] and to_realtime(out) == []


def test_a_real_turn_after_an_echo_guarded_goodbye_played_out_calls_it_off() -> None:
    s = resume_call(rest_available=True, tools=("end_call",), echo_guard_ms=2000)
    marks = speak(s, 100, [audio(i) for i in range(3)])
    realtime(s, 150, function_call("end_call", "call_1"))
    realtime(s, 200, response_done("resp_1"))
    realtime(s, 250, speech_started("u1"))  # guarded: the goodbye plays on
    hear(s, 250, marks)
    assert s.ending.stage is Stage.WAITING_FOR_CALLER
    realtime(s, 900, speech_stopped("u1", audio_end_ms=900))
    realtime(s, 900, committed("u1"))
    realtime(s, 950, transcribed("u1", "wait, I have another question"))
    assert s.ending.stage is Stage.NONE


def test_no_answer_stays_paused_past_the_limit() -> None:
    """The service calls it speech and never hears it end; the detector hears a steady
    sound, never one talker: at the limit the answer resumes."""
    from app.call.falseturn import JUDGE_LIMIT_MS

    s = resume_call(local_vad=3)
    speak(s, 100, [audio(i) for i in range(60)])
    realtime(s, 650, speech_started("u1"))
    assert s.out.timers[Timer.JUDGE_LIMIT] == 650 + JUDGE_LIMIT_MS
    steady = {"voiced_ms": 1500, "tail_voiced_ms": 300, "longest_voiced_ms": 1500}
    # Asked again every INTERRUPT_DECIDE_MS: still a steady sound, never a verdict.
    asked = 0
    while s.out.timers.get(Timer.DECIDE, 1e9) < 650 + JUDGE_LIMIT_MS:
        now = s.out.timers[Timer.DECIDE]
        fire(s, Timer.DECIDE)
        report = {**steady, "level_spread_db": 0.2, "at_decision": True}
        assert verdicts(s.feed(now, "rest", {"voice": report})) == []
        asked += 1
    assert asked == 3
    out = driver(s, 650 + JUDGE_LIMIT_MS, fire(s, Timer.JUDGE_LIMIT))
    assert verdicts(out) == [("false", "steady")] and media_bytes(out)


def test_the_service_cancelling_the_paused_answer_itself_is_a_turn() -> None:
    s = resume_call()
    marks = speak(s, 100, [audio(i) for i in range(20)])
    hear(s, 100, marks[:5])
    realtime(s, 650, speech_started("u1"))
    done = response_done(
        "resp_1",
        status="cancelled",
        status_details={"type": "cancelled", "reason": "turn_detected"},
    )
    out = realtime(s, 660, done)
    assert verdicts(out) == [("real", "service")]
    assert "conversation.item.truncate" in [e["type"] for e in to_realtime(out)]
    assert s.held is None and not s.playback.playing


# -- the second pass: what the review found --------------------------------------------------


def test_a_cough_then_real_words_is_judged_by_the_words() -> None:
    s = resume_call()
    speak(s, 100, [audio(i) for i in range(40)])
    realtime(s, 600, speech_started("u1"))
    realtime(s, 900, speech_stopped("u1", audio_end_ms=900))
    realtime(s, 900, committed("u1"))
    realtime(s, 1000, speech_started("u2"))  # the caller starts really talking
    out = realtime(s, 1200, transcribed("u1", ""))  # the cough's transcript: nothing
    assert verdicts(out) == []  # says nothing about u2
    out = realtime(s, 1500, transcribed("u2", "wait, I need to change my order"))
    assert verdicts(out) == [("real", "words")]


def test_a_real_turn_is_answered_once_the_caller_has_stopped() -> None:
    s = resume_call()
    speak(s, 100, [audio(i) for i in range(40)])
    realtime(s, 500, response_done("resp_1"))
    realtime(s, 600, speech_started("u1"))
    realtime(s, 900, speech_stopped("u1", audio_end_ms=900))
    realtime(s, 900, committed("u1"))
    realtime(s, 1000, speech_started("u2"))
    out = realtime(s, 1100, transcribed("u1", "Wait."))
    assert verdicts(out) == [("real", "words")]
    assert "response.create" not in [e["type"] for e in to_realtime(out)]  # still talking
    realtime(s, 1800, speech_stopped("u2", audio_end_ms=1800))
    out = realtime(s, 1800, committed("u2"))
    assert [e["type"] for e in to_realtime(out)] == ["response.create"]  # one answer


def test_a_number_is_an_answer_not_a_backchannel() -> None:
    s = resume_call()
    speak(s, 100, [audio(i) for i in range(40)])
    realtime(s, 600, speech_started("u1"))
    realtime(s, 1200, speech_stopped("u1", audio_end_ms=1200))
    realtime(s, 1200, committed("u1"))
    assert verdicts(realtime(s, 1300, transcribed("u1", "4567."))) == [("real", "words")]


def test_the_detector_never_unhears_a_voice() -> None:
    """semantic_vad ends a turn late: by then the detector's window holds only silence."""
    s = resume_call(local_vad=3, turn_detection="semantic_vad")
    speak(s, 100, [audio(i) for i in range(40)])
    realtime(s, 600, speech_started("u1"))
    fire(s, Timer.DECIDE)
    voice = {"voiced_ms": 800, "tail_voiced_ms": 0, "longest_voiced_ms": 780}
    assert verdicts(s.feed(1600, "rest", {"voice": {**voice, "at_decision": True}})) == []
    fire(s, Timer.DECIDE)
    silence = {"voiced_ms": 0, "tail_voiced_ms": 0, "longest_voiced_ms": 0}
    assert verdicts(s.feed(2600, "rest", {"voice": {**silence, "at_decision": True}})) == []
    realtime(s, 2800, speech_stopped("u1", audio_end_ms=2800))
    assert verdicts(s.feed(2800, "rest", {"voice": {**silence, "at_decision": False}})) == []
    realtime(s, 2800, committed("u1"))
    assert verdicts(realtime(s, 2900, transcribed("u1", "Wait, stop"))) == [("real", "words")]


def test_unreadable_frames_are_no_report() -> None:
    s = deciding(chunks=40, at=600)
    bad = {"window_ms": 1500, "voiced_ms": 0, "tail_voiced_ms": 0, "longest_voiced_ms": 0}
    out = s.feed(1600, "rest", {"voice": {**bad, "skipped": 60, "at_decision": True}})
    assert verdicts(out) == [("real", "long_speech")]  # as without a detector


def test_the_limit_takes_a_talker_for_a_turn_and_spares_an_echo_guarded_one() -> None:
    s = deciding(chunks=60, at=600)
    talker = {"voiced_ms": 900, "tail_voiced_ms": 300, "longest_voiced_ms": 600}
    report = {**talker, "level_spread_db": 8.0, "at_decision": True}
    assert verdicts(s.feed(1600, "rest", {"voice": report})) == [("real", "long_speech")]
    guarded = resume_call(echo_guard_ms=500)
    speak(guarded, 100, [audio(i) for i in range(60)])
    realtime(guarded, 200, speech_started("u1"))  # over the bot's first words: guarded
    assert verdicts(fire(guarded, Timer.DECIDE)) == []  # no "long speech" for an echo
    assert verdicts(fire(guarded, Timer.JUDGE_LIMIT)) == []  # nothing paused: no limit
    assert guarded.playback.playing and guarded.false_turns is not None
    assert guarded.false_turns.pending


def test_bad_item_ids_in_speech_events_are_skipped_not_fatal() -> None:
    s = resume_call()
    speak(s, 100, [audio(i) for i in range(20)])
    bad = {"type": "input_audio_buffer.speech_started", "audio_start_ms": 0, "item_id": ["x"]}
    realtime(s, 300, bad)
    stop = {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 5, "item_id": ["x"]}
    realtime(s, 400, stop)
    assert not s.done


def test_speech_while_the_answer_is_only_coming_is_no_barge_in() -> None:
    s = resume_call()
    realtime(s, 300, speech_started("u1"))  # resp_1 is being generated, nothing heard
    realtime(s, 350, delta("item_a", audio(1)))  # held
    realtime(s, 700, speech_stopped("u1", audio_end_ms=700))
    realtime(s, 700, committed("u1"))
    realtime(s, 800, transcribed("u1", "hello?"))
    assert s.barge_ins == 0 and s.measures.unheard_ms == 0


def test_a_caller_hanging_up_on_the_goodbyes_tail_still_ends_as_the_bots_hang_up() -> None:
    from tests.core import stop_msg

    s = resume_call(rest_available=True, tools=("end_call",))
    marks = speak(s, 100, [audio(i) for i in range(3)])
    realtime(s, 150, function_call("end_call", "call_1"))
    realtime(s, 200, response_done("resp_1"))
    now = hear(s, 200, marks)
    assert s.ending.stage is Stage.TAIL
    twilio(s, now + 100, stop_msg())
    assert s.done and s.end_reason == "bot_hung_up"
