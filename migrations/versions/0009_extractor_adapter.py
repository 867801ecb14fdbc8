"""Ingestion jobs record which extractor adapter reads their turns ('active', 'base' or an
adapter id), as they record the Manager's: a shipped extractor default must not be the only
choice when a base pipeline is measured against a trained one.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 09:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "ingestion_jobs",
        sa.Column(
            "extractor_adapter", sa.String(length=64), nullable=False, server_default="active"
        ),
    )


def downgrade() -> None:
    op.drop_column("ingestion_jobs", "extractor_adapter")
