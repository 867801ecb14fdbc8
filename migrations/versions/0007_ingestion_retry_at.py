"""Ingestion jobs queued again after a transient failure record when they are due, so every
message for the job waits out the same backoff and a retry costs one attempt.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 14:15:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "ingestion_jobs", sa.Column("retry_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("ingestion_jobs", "retry_at")
