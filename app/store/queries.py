"""What the operator API asks of the stored calls: one call, a page of calls, a prune.

Why keyset paging: calls are listed newest first, by (started_at, call_sid), and a page
ends with a cursor naming its last row; the next page is "everything strictly before that
row". Unlike an offset, this neither repeats nor skips rows while new calls arrive at the
top, and it costs an index seek however deep the operator pages.

The cursor is opaque to clients (base64url of the last row's start time and CallSid) and
checked on the way back in: anything this store did not hand out is `BadCursor`.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from app.store.errors import BadCursor
from app.store.schema import as_utc, calls

MAX_LIMIT = 500


@dataclass(frozen=True, slots=True)
class Position:
    """Where a page ended: the last row's sort key."""

    started_at: datetime
    call_sid: str


def encode_cursor(position: Position) -> str:
    moment = as_utc(position.started_at).isoformat()
    raw = json.dumps([moment, position.call_sid], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> Position:
    """The position a cursor names; BadCursor if it is not one of ours."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        raw = base64.urlsafe_b64decode(padded.encode("ascii"))
        data = json.loads(raw)
        if not isinstance(data, list) or len(data) != 2:
            raise ValueError("not a pair")
        started, call_sid = data
        if not isinstance(started, str) or not isinstance(call_sid, str) or not call_sid:
            raise ValueError("wrong types")
        moment = datetime.fromisoformat(started)
    except (ValueError, TypeError, UnicodeError, binascii.Error, RecursionError):
        raise BadCursor("not a cursor from this API (use next_cursor as given)") from None
    if moment.tzinfo is None:
        raise BadCursor("not a cursor from this API (use next_cursor as given)")
    return Position(started_at=as_utc(moment), call_sid=call_sid)


@dataclass(frozen=True, slots=True)
class CallFilter:
    """The filters of a listing; None means "any". `since` is inclusive, `until` not."""

    outcome: str | None = None
    number: str | None = None
    from_number: str | None = None
    to_number: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    direction: str | None = None
    agent: str | None = None

    def conditions(self) -> list[sa.ColumnElement[bool]]:
        c = calls.c
        out: list[sa.ColumnElement[bool]] = []
        if self.outcome is not None:
            out.append(c.outcome == self.outcome)
        if self.number is not None:
            out.append(sa.or_(c.from_number == self.number, c.to_number == self.number))
        if self.from_number is not None:
            out.append(c.from_number == self.from_number)
        if self.to_number is not None:
            out.append(c.to_number == self.to_number)
        if self.since is not None:
            out.append(c.started_at >= as_utc(self.since))
        if self.until is not None:
            out.append(c.started_at < as_utc(self.until))
        if self.direction is not None:
            out.append(c.direction == self.direction)
        if self.agent is not None:
            out.append(c.agent == self.agent)
        return out


def check_limit(limit: object) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be an integer from 1 to {MAX_LIMIT}, not {limit!r}")
    return limit


async def get_call(conn: AsyncConnection, call_sid: str) -> dict[str, Any] | None:
    result = await conn.execute(sa.select(calls.c.record).where(calls.c.call_sid == call_sid))
    record = result.scalar_one_or_none()
    return dict(record) if record is not None else None


async def list_calls(
    conn: AsyncConnection, *, limit: int, before: Position | None, where: CallFilter
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of records, newest first, and the cursor of the next page (None at the end)."""
    c = calls.c
    query = sa.select(c.started_at, c.call_sid, c.record).where(*where.conditions())
    if before is not None:
        query = query.where(
            sa.or_(
                c.started_at < before.started_at,
                sa.and_(c.started_at == before.started_at, c.call_sid < before.call_sid),
            )
        )
    query = query.order_by(c.started_at.desc(), c.call_sid.desc()).limit(limit + 1)
    rows = (await conn.execute(query)).all()
    page = rows[:limit]
    records = [dict(row.record) for row in page]
    if len(rows) <= limit:
        return records, None
    last = page[-1]
    return records, encode_cursor(Position(started_at=last.started_at, call_sid=last.call_sid))


async def prune(conn: AsyncConnection, *, cutoff: datetime) -> int:
    """Delete the calls that started before `cutoff`; how many were deleted."""
    result = await conn.execute(sa.delete(calls).where(calls.c.started_at < as_utc(cutoff)))
    return max(int(result.rowcount or 0), 0)


def retention_cutoff(now: datetime, retention_days: int) -> datetime:
    return as_utc(now) - timedelta(days=retention_days)
