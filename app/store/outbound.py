"""The `outbound_calls` table's queries (`app.outbound` is their one user).

Rows are plain dicts, column name to value, datetimes timezone-aware UTC; `settings` is
opaque here (any JSON-able dict). Column names are checked before any statement is made:
an unknown one, a row left without a required value, or an update of nothing is a bug of
ours (ValueError), never a database error.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from app.store.schema import as_utc, outbound_calls

COLUMNS = frozenset(column.name for column in outbound_calls.columns)
#: What a new row can't do without (the NOT NULL columns).
REQUIRED = frozenset(column.name for column in outbound_calls.columns if not column.nullable)


def checked(values: dict[str, Any], *, whole: bool = False) -> dict[str, Any]:
    """`values`, if every key is a column and there is at least one (`whole`: and every
    required column has a value); ValueError naming what is wrong, never the values."""
    unknown = sorted(set(values) - COLUMNS)
    if unknown:
        raise ValueError(f"not columns of outbound_calls: {', '.join(unknown)}")
    if not values:
        raise ValueError("no columns of outbound_calls given")
    if whole:
        missing = sorted(name for name in REQUIRED if values.get(name) is None)
        if missing:
            raise ValueError(f"an outbound_calls row needs: {', '.join(missing)}")
    return dict(values)


async def add(conn: AsyncConnection, row: dict[str, Any]) -> None:
    await conn.execute(sa.insert(outbound_calls).values(**row))


async def get(conn: AsyncConnection, column: str, value: str) -> dict[str, Any] | None:
    """The row whose `column` (a unique one) is `value`, or None."""
    result = await conn.execute(sa.select(outbound_calls).where(outbound_calls.c[column] == value))
    found = result.mappings().first()
    return dict(found) if found is not None else None


async def update(
    conn: AsyncConnection, outbound_id: str, values: dict[str, Any], only_if_open: bool
) -> bool:
    """Set `values` on the row (`only_if_open`: only while `ended_at` is NULL); whether a
    row was updated."""
    statement = (
        sa.update(outbound_calls)
        .where(outbound_calls.c.outbound_id == outbound_id)
        .values(**values)
    )
    if only_if_open:
        statement = statement.where(outbound_calls.c.ended_at.is_(None))
    result = await conn.execute(statement)
    return bool(result.rowcount)


async def in_flight(conn: AsyncConnection, since: datetime) -> int:
    """Rows still open (`ended_at` NULL) created at or after `since`."""
    result = await conn.execute(
        sa.select(sa.func.count())
        .select_from(outbound_calls)
        .where(outbound_calls.c.ended_at.is_(None), outbound_calls.c.created_at >= as_utc(since))
    )
    return int(result.scalar_one())


async def prune(conn: AsyncConnection, *, cutoff: datetime) -> int:
    """Delete the rows of calls created before `cutoff` (they hold the callee's number and
    the call's context, kept no longer than the call records); how many were deleted."""
    result = await conn.execute(
        sa.delete(outbound_calls).where(outbound_calls.c.created_at < as_utc(cutoff))
    )
    return max(int(result.rowcount or 0), 0)
