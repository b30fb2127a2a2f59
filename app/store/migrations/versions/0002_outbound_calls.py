"""The outbound_calls table: the calls the bridge placed, their settings and status.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TEXT = sa.String(255)
_WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "outbound_calls",
        sa.Column("outbound_id", sa.String(64), primary_key=True),
        sa.Column("call_sid", sa.String(64), nullable=True),
        sa.Column("created_at", _WHEN, nullable=False),
        sa.Column("to_number", _TEXT, nullable=True),
        sa.Column("from_number", _TEXT, nullable=True),
        sa.Column("agent", _TEXT, nullable=True),
        sa.Column("settings", sa.JSON().with_variant(JSONB(), "postgresql"), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("answered_by", sa.String(32), nullable=True),
        sa.Column("answered_at", _WHEN, nullable=True),
        sa.Column("stream_at", _WHEN, nullable=True),
        sa.Column("ended_at", _WHEN, nullable=True),
    )
    op.create_index("ix_outbound_calls_call_sid", "outbound_calls", ["call_sid"], unique=True)
    op.create_index("ix_outbound_calls_open", "outbound_calls", ["ended_at", "created_at"])


def downgrade() -> None:
    op.drop_table("outbound_calls")
