"""Every foreign key gets an index leading with its column, so erasing a user or a tenant (which
cascades through every table) and deleting an episode, adapter or job find the referencing rows
without scanning the largest tables.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 12:10:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = [
    ("sessions", "user_id"),
    ("turns", "user_id"),
    ("memories", "user_id"),
    ("memory_events", "user_id"),
    ("memory_events", "episode_id"),
    ("episodes", "user_id"),
    ("ingestion_jobs", "user_id"),
    ("ingestion_jobs", "session_id"),
    ("training_jobs", "adapter_id"),
    ("adapters", "training_job_id"),
    ("kombu_message", "queue_id"),
]


def upgrade() -> None:
    for table, column in INDEXES:
        op.create_index(f"ix_{table}_{column}", table, [column])


def downgrade() -> None:
    for table, column in INDEXES:
        op.drop_index(f"ix_{table}_{column}", table_name=table)
