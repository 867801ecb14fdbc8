"""Migrations on a fresh database: upgrade, downgrade, upgrade. The schema they build is the
data model of ``app.models``, with the HNSW cosine index on memory embeddings."""

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, pool, text

from app.core.db import alembic_config, head_revision, sync_url, upgrade_to_head
from app.models import Base
from tests.fixtures.database import fresh_database
from tests.migrations.helpers import drop_database

MODEL_TABLES = set(Base.metadata.tables)
BROKER_TABLES = {"kombu_queue", "kombu_message"}  # kombu's SQLAlchemy transport, see 0001


@pytest.fixture
def empty_url(pg_server: str) -> Iterator[str]:
    url = fresh_database(pg_server)
    yield url
    drop_database(pg_server, url)


def tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {name for (name,) in rows}


def index_definition(url: str, name: str) -> str | None:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = %s", (name,)
        ).fetchone()
    return None if row is None else str(row[0])


def revision(url: str) -> str | None:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return None if row is None else str(row[0])


def assert_at_head(url: str) -> None:
    assert MODEL_TABLES | BROKER_TABLES <= tables(url)
    assert revision(url) == head_revision()
    hnsw = index_definition(url, "ix_memories_embedding_hnsw")
    assert hnsw is not None
    assert "USING hnsw" in hnsw and "vector_cosine_ops" in hnsw and "(embedding " in hnsw


def _not_broker(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """Leaves kombu's tables (made by 0001 for the embedded broker) out of the comparison."""
    match type_:
        case "table":
            return name not in BROKER_TABLES
        case "column" | "index" | "unique_constraint" | "foreign_key_constraint":
            return str(obj.table.name) not in BROKER_TABLES
        case _:
            return True


class TestMigrations:
    def test_upgrade_downgrade_upgrade(self, empty_url: str) -> None:
        assert tables(empty_url) == set()

        upgrade_to_head(empty_url)
        assert_at_head(empty_url)

        command.downgrade(alembic_config(empty_url), "base")
        assert tables(empty_url) <= {"alembic_version"}
        assert revision(empty_url) is None
        assert index_definition(empty_url, "ix_memories_embedding_hnsw") is None

        upgrade_to_head(empty_url)
        assert_at_head(empty_url)

    def test_the_schema_is_the_data_model(self, empty_url: str) -> None:
        upgrade_to_head(empty_url)
        engine = create_engine(sync_url(empty_url), poolclass=pool.NullPool)
        try:
            with engine.connect() as conn:
                context = MigrationContext.configure(conn, opts={"include_object": _not_broker})
                diff = compare_metadata(context, Base.metadata)
        finally:
            engine.dispose()
        assert diff == []

    def test_other_indexes(self, empty_url: str) -> None:
        upgrade_to_head(empty_url)
        live = index_definition(empty_url, "ix_memories_tenant_user_live")
        assert live is not None and "(tenant_id, user_id)" in live
        assert "WHERE (deleted_at IS NULL)" in live
        one_active = index_definition(empty_url, "uq_adapters_one_active")
        assert one_active is not None and one_active.startswith("CREATE UNIQUE INDEX")
        assert "(tenant_id, agent)" in one_active and "'active'" in one_active

    def test_every_foreign_key_is_indexed(self, empty_url: str) -> None:
        """A delete of the referenced row (erasing a user or a tenant cascades through every
        table) finds the referencing rows through an index, not a scan of the table."""
        upgrade_to_head(empty_url)
        engine = create_engine(sync_url(empty_url), poolclass=pool.NullPool)
        try:
            with engine.connect() as conn:
                unindexed = (
                    conn.execute(
                        text(
                            """
                        SELECT c.conrelid::regclass::text || '.' || a.attname
                        FROM pg_constraint c
                        JOIN pg_attribute a
                          ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
                        WHERE c.contype = 'f' AND cardinality(c.conkey) = 1
                          AND NOT EXISTS (
                            SELECT 1 FROM pg_index i
                            WHERE i.indrelid = c.conrelid AND i.indkey[0] = c.conkey[1]
                          )
                        ORDER BY 1
                        """
                        )
                    )
                    .scalars()
                    .all()
                )
        finally:
            engine.dispose()
        assert unindexed == [], "\n".join(unindexed)
