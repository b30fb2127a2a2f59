"""The conversation as the caller experienced it, for the end-of-call summary.

Each assistant turn keeps its transcript with how much of its audio was sent to the
caller and how much was actually heard (cut short by a barge-in, or played in full);
each caller turn keeps its transcription. Noise that was not a turn is left out.

Turns are in the order they were spoken. A caller turn takes its place when its audio is
committed, before the bot answers it; its transcription arrives later, usually after the
answer's first audio, and fills that place. A place never filled (transcription off, or
the item deleted) is left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class AssistantTurn:
    item_id: str
    text: str = ""
    sent_ms: int = 0
    heard_ms: int | None = None  # None until known (played out, or cut by a barge-in)
    interrupted: bool = False


@dataclass(slots=True)
class CallerTurn:
    item_id: str
    text: str | None  # None until its transcription arrives


@dataclass(slots=True)
class Transcript:
    turns: list[AssistantTurn | CallerTurn] = field(default_factory=list)
    _assistant: dict[str, AssistantTurn] = field(default_factory=dict)
    _caller: dict[str, CallerTurn] = field(default_factory=dict)

    def assistant(self, item_id: str) -> AssistantTurn:
        turn = self._assistant.get(item_id)
        if turn is None:
            turn = self._assistant[item_id] = AssistantTurn(item_id)
            self.turns.append(turn)
        return turn

    def caller_committed(self, item_id: str) -> None:
        """The caller's turn `item_id` was committed: its place in the order."""
        if item_id not in self._caller:
            turn = self._caller[item_id] = CallerTurn(item_id, None)
            self.turns.append(turn)

    def caller(self, item_id: str, text: str) -> None:
        """The transcription of the caller's turn `item_id`."""
        turn = self._caller.get(item_id)
        if turn is None:
            turn = self._caller[item_id] = CallerTurn(item_id, text)
            self.turns.append(turn)
        else:
            turn.text = text

    def to_list(self, with_text: bool) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for t in self.turns:
            if isinstance(t, AssistantTurn):
                row: dict[str, Any] = {
                    "who": "bot",
                    "sent_ms": t.sent_ms,
                    "heard_ms": t.sent_ms if t.heard_ms is None else t.heard_ms,
                }
                if t.interrupted:
                    row["interrupted"] = True
            elif t.text is None:
                continue  # never transcribed
            else:
                row = {"who": "caller"}
            if with_text:
                row["text"] = t.text
            out.append(row)
        return out
