"""Training jobs record the users whose episodes they trained on, so erasing a user withdraws
the adapters that learned from that user's data.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 12:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "training_jobs",
        sa.Column(
            "trained_on_users",
            postgresql.ARRAY(postgresql.UUID(as_uuid=True)),
            nullable=False,
            server_default="{}",
        ),
    )
    op.create_index(
        "ix_training_jobs_trained_on_users",
        "training_jobs",
        ["trained_on_users"],
        postgresql_using="gin",
    )


def downgrade() -> None:
    op.drop_index("ix_training_jobs_trained_on_users", table_name="training_jobs")
    op.drop_column("training_jobs", "trained_on_users")
