"""BargeIn on its own: an outbox, a playback tracker and a transcript, no session."""

from __future__ import annotations

import logging

import pytest

from app.call.actions import ToRealtime, ToTwilio
from app.call.bargein import BargeIn, Interruption
from app.call.outbox import Outbox
from app.call.playback import Heard, PlaybackTracker
from app.call.transcript import Transcript
from app.protocol import realtime as rt
from app.protocol import twilio as tw
from tests.core import STREAM, outbox, to_realtime

CHUNK = 800  # 100 ms of mu-law


def parts() -> tuple[BargeIn, Outbox, PlaybackTracker, Transcript]:
    out, playback, transcript = outbox(), PlaybackTracker(), Transcript()
    return BargeIn(out, playback, transcript), out, playback, transcript


def send(playback: PlaybackTracker, now: float, item: str, chunks: int) -> list[str]:
    return [playback.sent(now, item, CHUNK) for _ in range(chunks)]


def echo(playback: PlaybackTracker, names: list[str], start: float, step: float = 100) -> float:
    """Echo `names` `step` ms apart after `start`; returns the last echo's time."""
    now = start
    for name in names:
        now += step
        playback.echo(now, name)
    return now


def test_clear_then_cancel_then_truncate_at_the_heard_position() -> None:
    barge, out, playback, transcript = parts()
    marks = send(playback, 0, "item_a", 30)
    at = echo(playback, marks[:15], 0)  # 1.5 s played, the last echo at 1500
    result = barge.interrupt(at + 50, STREAM)  # interpolated: 50 ms into the next chunk
    assert result == Interruption(audible=True, heard=Heard("item_a", 1550), unheard_ms=1450)
    assert out.take() == [
        ToTwilio(tw.clear(STREAM)),
        ToRealtime(rt.response_cancel()),
        ToRealtime(rt.item_truncate("item_a", 1550)),
    ]
    assert barge.count == 1 and not playback.playing
    turn = transcript.assistant("item_a")
    assert turn.interrupted and turn.heard_ms == 1550


def test_the_truncate_never_passes_the_audio_sent_for_the_item() -> None:
    barge, out, playback, transcript = parts()
    playback.sent(0, "item_a", 803)  # 100 ms and 3 bytes, never echoed
    barge.interrupt(10_000, STREAM)  # the clock says 10 s: only 100 ms were sent
    events = to_realtime(out.take())
    assert events[-1] == rt.item_truncate("item_a", 100)
    assert playback.items["item_a"].sent_ms == 100
    assert transcript.assistant("item_a").heard_ms == 100


def test_an_item_of_which_nothing_was_heard_is_deleted() -> None:
    barge, out, playback, transcript = parts()
    a = send(playback, 0, "item_a", 2)
    send(playback, 10, "item_b", 3)
    echo(playback, a, 100)  # item_a played out at 300; item_b is next, not yet heard
    result = barge.interrupt(300, STREAM)
    assert result.heard == Heard("item_b", 0)
    events = to_realtime(out.take())
    assert events == [rt.response_cancel(), rt.item_delete("item_b")]
    assert transcript.assistant("item_b").interrupted
    assert transcript.assistant("item_b").heard_ms == 0
    # item_a was heard in full before: not touched.
    assert not transcript.assistant("item_a").interrupted
    assert transcript.assistant("item_a").heard_ms is None


def test_several_queued_items_truncate_the_heard_one_and_delete_the_rest() -> None:
    barge, out, playback, transcript = parts()
    a = send(playback, 0, "item_a", 5)
    send(playback, 0, "item_b", 2)
    send(playback, 0, "item_c", 1)
    at = echo(playback, a[:2], 0)  # 200 ms of item_a heard
    barge.interrupt(at, STREAM)
    actions = out.take()
    assert actions[0] == ToTwilio(tw.clear(STREAM))
    assert to_realtime(actions) == [
        rt.response_cancel(),
        rt.item_truncate("item_a", 200),
        rt.item_delete("item_b"),
        rt.item_delete("item_c"),
    ]
    assert [t.item_id for t in transcript.turns] == ["item_a", "item_b", "item_c"]
    rows = [(t.interrupted, t.heard_ms) for t in map(transcript.assistant, ("item_a", "item_b"))]
    assert rows == [(True, 200), (True, 0)]
    assert (
        transcript.assistant("item_c").interrupted and transcript.assistant("item_c").heard_ms == 0
    )
    assert barge.count == 1  # one barge-in, however many items it cut


def test_a_silent_bot_is_only_cancelled(caplog: pytest.LogCaptureFixture) -> None:
    barge, out, playback, transcript = parts()
    marks = send(playback, 0, "item_a", 2)
    echo(playback, marks, 0)  # everything sent has been heard
    with caplog.at_level(logging.INFO, logger="app.call"):
        result = barge.interrupt(500, STREAM)
    assert result == Interruption(audible=False, heard=None)
    assert out.take() == [ToRealtime(rt.response_cancel())]  # no clear, no truncate
    assert barge.count == 0
    assert not transcript.assistant("item_a").interrupted
    assert [r.getMessage() for r in caplog.records] == ["turn.response_dropped"]


def test_each_audible_interruption_counts_once(caplog: pytest.LogCaptureFixture) -> None:
    barge, out, playback, _ = parts()
    with caplog.at_level(logging.INFO, logger="app.call"):
        send(playback, 0, "item_a", 3)
        barge.interrupt(50, STREAM)
        barge.interrupt(60, STREAM)  # nothing left to hear: not a barge-in
        send(playback, 100, "item_b", 3)
        barge.interrupt(150, STREAM)
    assert barge.count == 2
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["turn.barge_in", "turn.response_dropped", "turn.barge_in"]
    clears = [a for a in out.take() if isinstance(a, ToTwilio)]
    assert clears == [ToTwilio(tw.clear(STREAM))] * 2


def test_the_cleared_marks_echo_as_cleared_after_an_interruption() -> None:
    barge, _, playback, _ = parts()
    marks = send(playback, 0, "item_a", 4)
    echo(playback, marks[:1], 0)
    barge.interrupt(150, STREAM)
    assert {playback.echo(200, m).value for m in marks[1:]} == {"cleared"}
    assert playback.items["item_a"].played_ms == 100
