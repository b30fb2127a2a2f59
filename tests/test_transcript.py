"""Transcript on its own: the summary's turns, with and without their text."""

from __future__ import annotations

from app.call.transcript import AssistantTurn, Transcript


def conversation() -> Transcript:
    t = Transcript()
    hello = t.assistant("item_1")
    hello.text, hello.sent_ms, hello.heard_ms = "Hello, how can I help?", 2000, 2000
    t.caller("u1", "What time is it?")
    cut = t.assistant("item_2")
    cut.text, cut.sent_ms, cut.heard_ms, cut.interrupted = "It is ten past", 1500, 420, True
    t.caller("u2", "Thanks.")
    return t


def test_to_list_with_text() -> None:
    assert conversation().to_list(with_text=True) == [
        {"who": "bot", "sent_ms": 2000, "heard_ms": 2000, "text": "Hello, how can I help?"},
        {"who": "caller", "text": "What time is it?"},
        {
            "who": "bot",
            "sent_ms": 1500,
            "heard_ms": 420,
            "interrupted": True,
            "text": "It is ten past",
        },
        {"who": "caller", "text": "Thanks."},
    ]


def test_to_list_without_text_keeps_only_the_numbers() -> None:
    assert conversation().to_list(with_text=False) == [
        {"who": "bot", "sent_ms": 2000, "heard_ms": 2000},
        {"who": "caller"},
        {"who": "bot", "sent_ms": 1500, "heard_ms": 420, "interrupted": True},
        {"who": "caller"},
    ]


def test_heard_defaults_to_sent_until_known() -> None:
    t = Transcript()
    t.assistant("item_1").sent_ms = 800  # heard not known: all of it, as far as we know
    t.assistant("item_2").sent_ms, t.assistant("item_2").heard_ms = 800, 0  # known: nothing
    rows = t.to_list(with_text=False)
    assert rows == [
        {"who": "bot", "sent_ms": 800, "heard_ms": 800},
        {"who": "bot", "sent_ms": 800, "heard_ms": 0},
    ]


def test_a_new_assistant_turn_starts_empty() -> None:
    t = Transcript()
    assert t.assistant("item_1") == AssistantTurn("item_1", "", 0, None, False)
    assert t.to_list(with_text=True) == [{"who": "bot", "sent_ms": 0, "heard_ms": 0, "text": ""}]


def test_an_assistant_turn_is_one_per_item_in_first_seen_order() -> None:
    t = Transcript()
    first = t.assistant("item_1")
    t.caller("u1", "Hi")
    assert t.assistant("item_1") is first  # the same turn, not a new one at the end
    t.assistant("item_2")
    assert [getattr(turn, "item_id", None) for turn in t.turns] == ["item_1", "u1", "item_2"]


def test_every_caller_turn_is_kept_in_the_place_it_was_committed() -> None:
    t = Transcript()
    t.caller("u1", "Yes")
    t.caller_committed("u2")
    t.assistant("item_1").text = "Great."
    t.caller("u2", "No, wait")  # transcribed after the answer began: still before it
    t.caller("u2", "No, wait.")  # a second transcription of one turn corrects it
    t.caller_committed("u3")  # never transcribed: left out
    assert [(r["who"], r["text"]) for r in t.to_list(with_text=True)] == [
        ("caller", "Yes"),
        ("caller", "No, wait."),
        ("bot", "Great."),
    ]
