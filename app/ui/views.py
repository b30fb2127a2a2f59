"""What the call viewer's templates show, computed from call records (pure functions).

Kept out of the templates so they stay markup, and out of the routes so they can be tested
without a server: times in UTC, durations, a bot turn's said text split at what was heard.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

DASH = "\u2014"


def when(value: object) -> str:
    """An ISO 8601 time as `2026-11-21 14:06:06 UTC` (as given when it isn't one)."""
    if not isinstance(value, str) or not value:
        return DASH
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: object) -> str:
    """`42.3 s`, `3 min 05 s`, or a dash."""
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return DASH
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


def millis(value: object) -> str:
    """`640 ms`, or a dash when not measured."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return DASH
    return f"{round(value)} ms"


def usage(value: object) -> str:
    """Token usage as `input 120, output 340, total 460` (a dash when none; values that
    are not counts, such as a nested breakdown, are left out)."""
    if not isinstance(value, dict):
        return DASH
    parts = []
    for name, count in value.items():
        if isinstance(count, int | float) and not isinstance(count, bool):
            label = str(name).removesuffix("_tokens").replace("_", " ")
            parts.append(f"{label} {count}")
    return ", ".join(parts) or DASH


@dataclass(frozen=True, slots=True)
class TurnView:
    """One transcript turn as shown: who, the heard and unheard parts, the timings."""

    who: str
    has_text: bool
    heard: str
    unheard: str
    interrupted: bool
    sent_ms: int | None
    heard_ms: int | None

    @property
    def css(self) -> str:
        """The `<li>`'s classes: `turn caller`, `turn bot`, `turn bot interrupted`."""
        return f"turn {self.who}" + (" interrupted" if self.interrupted else "")


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def turn_view(turn: dict[str, Any]) -> TurnView:
    """A record's turn for the transcript. A bot turn's said `text` is split at its
    `heard_text` when that is a prefix of it (else all of it counts as heard: the record
    doesn't say otherwise); the caller's words are all heard."""
    who = "bot" if turn.get("who") == "bot" else "caller"
    text = turn.get("text")
    has_text = isinstance(text, str)
    said = text if isinstance(text, str) else ""
    heard, unheard = said, ""
    if who == "bot" and has_text:
        prefix = turn.get("heard_text")
        if isinstance(prefix, str) and said.startswith(prefix):
            heard, unheard = prefix, said[len(prefix) :]
    return TurnView(
        who=who,
        has_text=has_text,
        heard=heard,
        unheard=unheard,
        interrupted=who == "bot" and bool(turn.get("interrupted")),
        sent_ms=_int(turn.get("sent_ms")),
        heard_ms=_int(turn.get("heard_ms")),
    )
