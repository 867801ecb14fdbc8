"""Ingestion jobs record the name of the worker that claimed them, so a worker starting again
queues its interrupted jobs at once.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 14:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("ingestion_jobs", sa.Column("worker", sa.String(255), nullable=True))


def downgrade() -> None:
    op.drop_column("ingestion_jobs", "worker")
