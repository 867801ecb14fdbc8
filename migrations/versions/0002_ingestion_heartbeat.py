"""Ingestion jobs record a heartbeat, so a job whose worker died mid-run can be found and
queued again.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 22:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "ingestion_jobs", sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("ingestion_jobs", "heartbeat_at")
