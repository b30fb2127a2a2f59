"""A call record checked and turned into a `calls` row, at the moment it is submitted.

Why at submit time: a record that can never be written (no CallSid, a start time that is
not a time, a value JSON can't hold) should be reported once, at once, and never take a
turn in the writer's retries; and the row is a JSON snapshot, so a caller that keeps
changing its dict afterwards can't change what gets stored.

Only what a row can't do without is strict: the CallSid (the key) and `started_at` (the
order of every listing). The other columns are copies for filtering; a missing or odd
value there leaves the column NULL (the record itself keeps it), rather than losing a
call because a secondary field had an unexpected type.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from app.store.schema import INDEXED_TEXT_CHARS, as_utc

#: An escaped NUL in JSON text: `\u0000` not itself preceded by an escaped backslash.
_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


class InvalidRecord(ValueError):
    """A record that can never be stored; the message says why (never its contents)."""


@dataclass(slots=True)
class Row:
    """One record ready to insert: its key and the column values."""

    call_sid: str
    values: dict[str, Any]


def call_sid_of(record: object) -> str | None:
    """The record's CallSid when it has a usable one (for log lines), else None."""
    if isinstance(record, dict):
        sid = record.get("call_sid")
        if isinstance(sid, str) and sid:
            return sid[:INDEXED_TEXT_CHARS]
    return None


def parse_time(value: object, field: str) -> datetime:
    """An ISO 8601 time (`2026-12-02T01:21:17.123Z`) as an aware UTC datetime."""
    if not isinstance(value, str):
        raise InvalidRecord(f"{field} is not an ISO 8601 string")
    try:
        return as_utc(datetime.fromisoformat(value))
    except ValueError:
        raise InvalidRecord(f"{field} is not an ISO 8601 time") from None


def _text(value: object) -> str | None:
    if isinstance(value, str):
        return value[:INDEXED_TEXT_CHARS]
    return None


def _full_text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and -(2**31) <= value < 2**31:
        return value
    return None


def _float(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _snapshot(record: dict[str, Any]) -> dict[str, Any]:
    """The record as it will read back: a JSON round trip (strict JSON: no NaN).

    The engine writes and reads the column with orjson (engine.py), which can't write
    every value the standard library can (an integer outside 64 bits, a lone surrogate
    in a text): such a record is refused here, at submit, rather than lost at its write."""
    try:
        text = json.dumps(record, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidRecord(f"not JSON-serialisable ({type(exc).__name__})") from None
    if _NUL.search(text):  # PostgreSQL's JSONB has no NUL; SQLite would take it
        raise InvalidRecord("contains a NUL character, which JSONB can't store")
    snapshot: dict[str, Any] = json.loads(text)
    try:
        orjson.dumps(snapshot)
    except orjson.JSONEncodeError as exc:
        raise InvalidRecord(f"not storable as JSON ({exc})") from None
    return snapshot


def to_row(record: object) -> Row:
    """`record` as a row of `calls`; InvalidRecord when it can't ever be one."""
    if not isinstance(record, dict):
        raise InvalidRecord("not a dict")
    call_sid = record.get("call_sid")
    if not isinstance(call_sid, str) or not call_sid:
        raise InvalidRecord("call_sid is missing or not a non-empty string")
    if len(call_sid) > INDEXED_TEXT_CHARS:
        raise InvalidRecord(f"call_sid is longer than {INDEXED_TEXT_CHARS} characters")
    started_at = parse_time(record.get("started_at"), "started_at")
    try:
        ended_at: datetime | None = parse_time(record.get("ended_at"), "ended_at")
    except InvalidRecord:  # a copy for queries only: the record keeps what it has
        ended_at = None
    snapshot = _snapshot(record)
    values = {
        "call_sid": call_sid,
        "direction": _text(snapshot.get("direction")),
        "from_number": _text(snapshot.get("from")),
        "to_number": _text(snapshot.get("to")),
        "agent": _text(snapshot.get("agent")),
        "started_at": started_at,
        "ended_at": ended_at,
        "duration_s": _float(snapshot.get("duration_s")),
        "outcome": _text(snapshot.get("outcome")),
        "barge_ins": _int(snapshot.get("barge_ins")),
        "heard_latency_ms": _int(snapshot.get("heard_latency_ms")),
        "recording": _full_text(snapshot.get("recording")),
        "record": snapshot,
    }
    return Row(call_sid=call_sid, values=values)
