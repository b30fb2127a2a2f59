"""The calls table: one row per finished call, the record as JSON plus query columns.

Revision ID: 0001
Revises:
Create Date: 2026-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TEXT = sa.String(255)


def upgrade() -> None:
    op.create_table(
        "calls",
        sa.Column("call_sid", _TEXT, primary_key=True),
        sa.Column("direction", _TEXT, nullable=True),
        sa.Column("from_number", _TEXT, nullable=True),
        sa.Column("to_number", _TEXT, nullable=True),
        sa.Column("agent", _TEXT, nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("outcome", _TEXT, nullable=True),
        sa.Column("barge_ins", sa.Integer(), nullable=True),
        sa.Column("heard_latency_ms", sa.Integer(), nullable=True),
        sa.Column("recording", sa.Text(), nullable=True),
        sa.Column("record", sa.JSON().with_variant(JSONB(), "postgresql"), nullable=False),
    )
    op.create_index("ix_calls_started_at_call_sid", "calls", ["started_at", "call_sid"])
    for column in ("outcome", "from_number", "to_number", "direction", "agent"):
        op.create_index(f"ix_calls_{column}", "calls", [column])


def downgrade() -> None:
    op.drop_table("calls")
