"""Adapters without a tenant are global defaults: the one active per agent serves every tenant
that has no active adapter of its own for that agent.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 19:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.alter_column("adapters", "tenant_id", existing_type=sa.UUID(), nullable=True)
    # The per-tenant unique index treats NULL tenants as distinct: globals need their own.
    op.create_index(
        "uq_adapters_one_global_active",
        "adapters",
        ["agent"],
        unique=True,
        postgresql_where=sa.text("status = 'active' AND tenant_id IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("uq_adapters_one_global_active", table_name="adapters")
    op.execute("DELETE FROM adapters WHERE tenant_id IS NULL")
    op.alter_column("adapters", "tenant_id", existing_type=sa.UUID(), nullable=False)
