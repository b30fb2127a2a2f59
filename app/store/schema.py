"""The tables: `calls`, one row per finished call (the whole record plus columns to query
by), and `outbound_calls`, one row per call the bridge placed (its settings and status).

Why this shape: the call record (built by the call layer) grows fields over time, and the
operator API must return it exactly as it was submitted, so it is kept whole in one JSON
column (JSONB on PostgreSQL). What the API filters and sorts by is copied into plain
indexed columns beside it, so a listing never has to look inside the JSON. An outbound
call's settings are one JSON column likewise (opaque to the store); its status columns
change as Twilio reports, which is why it has a table of its own, written in place.

Timestamps are stored in UTC: SQLite has no time zones (SQLAlchemy writes the wall-clock
fields as text, which then sorts correctly only if every value is in the same zone), and
PostgreSQL hands values back in its session zone. `UTCDateTime` converts on the way in
and out, so both dialects store, compare and return the same instants.

This module is the code's view of the schema; the migrations (migrations/versions/) are
the database's, and must agree with it (a test compares the two).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect

#: Longest value kept in an indexed text column (the record keeps the full value): a
#: btree entry must stay small, and a phone number or agent name is far shorter.
INDEXED_TEXT_CHARS = 255
JSON_TYPE = sa.JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timezone-aware datetime stored in UTC; naive values are taken as UTC."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)


def as_utc(moment: datetime) -> datetime:
    """`moment` in UTC (a naive datetime is taken to be UTC already)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


metadata = sa.MetaData()

calls = sa.Table(
    "calls",
    metadata,
    sa.Column("call_sid", sa.String(INDEXED_TEXT_CHARS), primary_key=True),
    sa.Column("direction", sa.String(INDEXED_TEXT_CHARS), nullable=True),
    sa.Column("from_number", sa.String(INDEXED_TEXT_CHARS), nullable=True),
    sa.Column("to_number", sa.String(INDEXED_TEXT_CHARS), nullable=True),
    sa.Column("agent", sa.String(INDEXED_TEXT_CHARS), nullable=True),
    sa.Column("started_at", UTCDateTime(), nullable=False),
    sa.Column("ended_at", UTCDateTime(), nullable=True),
    sa.Column("duration_s", sa.Float(), nullable=True),
    sa.Column("outcome", sa.String(INDEXED_TEXT_CHARS), nullable=True),
    sa.Column("barge_ins", sa.Integer(), nullable=True),
    sa.Column("heard_latency_ms", sa.Integer(), nullable=True),
    sa.Column("recording", sa.Text(), nullable=True),
    sa.Column("record", JSON_TYPE, nullable=False),
    # Newest first is the one order the API lists in; the call_sid breaks ties.
    sa.Index("ix_calls_started_at_call_sid", "started_at", "call_sid"),
    sa.Index("ix_calls_outcome", "outcome"),
    sa.Index("ix_calls_from_number", "from_number"),
    sa.Index("ix_calls_to_number", "to_number"),
    sa.Index("ix_calls_direction", "direction"),
    sa.Index("ix_calls_agent", "agent"),
)

#: Outbound calls the bridge placed (`app.outbound`): each call's settings, found by any
#: replica when Twilio opens its stream there, and its status as Twilio's callbacks tell.
#: A row is written before Twilio is asked to dial; `ended_at` is set by the final status.
outbound_calls = sa.Table(
    "outbound_calls",
    metadata,
    sa.Column("outbound_id", sa.String(64), primary_key=True),
    sa.Column("call_sid", sa.String(64), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("to_number", sa.String(INDEXED_TEXT_CHARS), nullable=True),
    sa.Column("from_number", sa.String(INDEXED_TEXT_CHARS), nullable=True),
    sa.Column("agent", sa.String(INDEXED_TEXT_CHARS), nullable=True),
    sa.Column("settings", JSON_TYPE, nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("answered_by", sa.String(32), nullable=True),
    sa.Column("answered_at", UTCDateTime(), nullable=True),
    sa.Column("stream_at", UTCDateTime(), nullable=True),
    sa.Column("ended_at", UTCDateTime(), nullable=True),
    sa.Index("ix_outbound_calls_call_sid", "call_sid", unique=True),
    # The in-flight count: open rows (no final status yet) created since a moment.
    sa.Index("ix_outbound_calls_open", "ended_at", "created_at"),
)
