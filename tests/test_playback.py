"""PlaybackTracker: what the caller has heard, from mark echoes only (pure unit tests)."""

from __future__ import annotations

from app.call.playback import Echo, Heard, PlaybackTracker, mark_generation

CHUNK = 800  # 100 ms of mu-law


def send(tr: PlaybackTracker, now: float, item: str, n: int = 1) -> list[str]:
    return [tr.sent(now, item, CHUNK) for _ in range(n)]


def test_echoes_in_order_advance_played_per_item() -> None:
    tr = PlaybackTracker()
    marks = send(tr, 0, "item_a", 3)
    assert tr.playing
    assert tr.items["item_a"].sent_ms == 300
    assert tr.echo(100, marks[0]) is Echo.PLAYED
    assert tr.items["item_a"].played_ms == 100
    assert tr.echo(200, marks[1]) is Echo.PLAYED
    assert tr.echo(300, marks[2]) is Echo.PLAYED
    assert tr.items["item_a"].played_ms == 300
    assert not tr.playing
    assert tr.heard(300) is None


def test_mark_names_are_unique_and_carry_item_and_generation() -> None:
    tr = PlaybackTracker()
    a = send(tr, 0, "item_a", 2)
    tr.clear()
    b = send(tr, 10, "item_b", 2)
    assert len(set(a + b)) == 4
    assert all("item_a" in m and mark_generation(m) == 0 for m in a)
    assert all("item_b" in m and mark_generation(m) == 1 for m in b)
    assert mark_generation("not-ours") is None


def test_a_later_echo_implies_the_earlier_chunks_played() -> None:
    tr = PlaybackTracker()
    marks = send(tr, 0, "item_a", 3)
    assert tr.echo(200, marks[1]) is Echo.PLAYED
    assert tr.items["item_a"].played_ms == 200
    # The skipped echo arriving afterwards is no longer pending: not counted twice.
    assert tr.echo(201, marks[0]) is Echo.UNKNOWN
    assert tr.items["item_a"].played_ms == 200


def test_clear_with_several_pending_marks_counts_none_as_played() -> None:
    tr = PlaybackTracker()
    marks = send(tr, 0, "item_a", 5)
    tr.echo(100, marks[0])
    queued = tr.clear()
    assert queued == ["item_a"]
    assert not tr.playing
    for name in marks[1:]:
        assert tr.echo(150, name) is Echo.CLEARED
    assert tr.items["item_a"].played_ms == 100
    assert tr.items["item_a"].sent_ms == 500


def test_cleared_echoes_arriving_late_while_next_item_plays() -> None:
    tr = PlaybackTracker()
    old = send(tr, 0, "item_a", 4)
    tr.echo(100, old[0])
    tr.clear()
    new = send(tr, 1000, "item_b", 3)
    # Late echoes of the first clear interleave with real echoes of item_b.
    assert tr.echo(1050, old[1]) is Echo.CLEARED
    assert tr.echo(1100, new[0]) is Echo.PLAYED
    assert tr.echo(1110, old[2]) is Echo.CLEARED
    assert tr.echo(1111, old[3]) is Echo.CLEARED
    assert tr.items["item_b"].played_ms == 100
    assert tr.items["item_a"].played_ms == 100
    assert tr.heard(1150) == Heard("item_b", 150)
    # Even once forgotten, an old generation's echo is recognised from its name.
    assert tr.echo(1200, old[1]) is Echo.CLEARED


def test_barge_in_before_any_audio_of_the_item_played() -> None:
    tr = PlaybackTracker()
    a = send(tr, 0, "item_a", 2)
    send(tr, 50, "item_b", 2)  # queued behind item_a
    tr.echo(100, a[0])
    tr.echo(200, a[1])
    heard = tr.heard(200)
    assert heard == Heard("item_b", 0)
    assert tr.clear() == ["item_b"]


def test_heard_interpolates_but_never_passes_the_next_unechoed_mark() -> None:
    tr = PlaybackTracker()
    marks = send(tr, 0, "item_a", 3)
    assert tr.heard(40) == Heard("item_a", 40)
    # The first echo is late (network): position stops at the first mark, not beyond.
    assert tr.heard(180) == Heard("item_a", 100)
    tr.echo(180, marks[0])
    assert tr.heard(230) == Heard("item_a", 150)


def test_heard_never_exceeds_audio_sent_for_the_item() -> None:
    tr = PlaybackTracker()
    tr.sent(0, "item_a", 803)  # odd sizes: floor, never round up
    heard = tr.heard(10_000)
    assert heard is not None
    assert heard.ms <= tr.items["item_a"].sent_ms == 100


def test_playback_restarts_from_the_send_time_after_an_underrun() -> None:
    tr = PlaybackTracker()
    (m,) = send(tr, 0, "item_a")
    tr.echo(100, m)
    # Generation was slower than playback: Twilio's queue ran empty for 400 ms.
    send(tr, 500, "item_a")
    assert tr.heard(550) == Heard("item_a", 150)


def test_unknown_marks_are_reported() -> None:
    tr = PlaybackTracker()
    send(tr, 0, "item_a")
    assert tr.echo(1, "item_a.g0.m99") is Echo.UNKNOWN
    assert tr.echo(1, "garbage") is Echo.UNKNOWN
    assert tr.playing
