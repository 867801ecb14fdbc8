"""ORM models: the data model of DESIGN.md. Every row carries tenant_id and every query filters
by it. The schema itself is only ever created by Alembic migrations."""

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

EMBEDDING_DIM = 384


class Base(DeclarativeBase):
    type_annotation_map = {
        uuid.UUID: UUID(as_uuid=True),
        dict[str, Any]: JSONB,
        datetime: DateTime(timezone=True),
    }


def _pk() -> Mapped[uuid.UUID]:
    return mapped_column(primary_key=True, default=uuid.uuid4)


def _tenant_fk() -> Mapped[uuid.UUID]:
    return mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)


def _user_fk() -> Mapped[uuid.UUID]:
    # Indexed on its own: erasing a user cascades through every table by this column.
    return mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)


def _created() -> Mapped[datetime]:
    return mapped_column(server_default=func.now())


class Scope(StrEnum):
    memory = "memory"
    admin = "admin"


class Actor(StrEnum):
    manager = "manager"
    api = "api"
    user = "user"


class MemoryOp(StrEnum):
    ADD = "ADD"
    UPDATE = "UPDATE"
    DELETE = "DELETE"


class Agent(StrEnum):
    extractor = "extractor"
    manager = "manager"
    answer = "answer"


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class AdapterStatus(StrEnum):
    candidate = "candidate"
    active = "active"
    retired = "retired"
    # trained on the episodes of a user who was erased since: never served again
    withdrawn = "withdrawn"


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[uuid.UUID] = _pk()
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = _created()


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[uuid.UUID] = _pk()
    tenant_id: Mapped[uuid.UUID] = _tenant_fk()
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(ARRAY(String(16)))
    created_at: Mapped[datetime] = _created()
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class User(Base):
    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("tenant_id", "external_id"),)
    id: Mapped[uuid.UUID] = _pk()
    tenant_id: Mapped[uuid.UUID] = _tenant_fk()
    external_id: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = _created()


class Session(Base):
    __tablename__ = "sessions"
    __table_args__ = (
        UniqueConstraint("tenant_id", "external_id"),
        Index("ix_sessions_tenant_user", "tenant_id", "user_id"),
    )
    id: Mapped[uuid.UUID] = _pk()
    tenant_id: Mapped[uuid.UUID] = _tenant_fk()
    user_id: Mapped[uuid.UUID] = _user_fk()
    external_id: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = _created()


class Turn(Base):
    __tablename__ = "turns"
    __table_args__ = (
        UniqueConstraint("session_id", "seq"),
        Index("ix_turns_tenant_user", "tenant_id", "user_id"),
    )
    id: Mapped[uuid.UUID] = _pk()
    tenant_id: Mapped[uuid.UUID] = _tenant_fk()
    user_id: Mapped[uuid.UUID] = _user_fk()
    session_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    speaker: Mapped[str] = mapped_column(String(200))
    text: Mapped[str] = mapped_column(Text)
    occurred_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = _created()


class Memory(Base):
    __tablename__ = "memories"
    __table_args__ = (
        # Exact per-user retrieval reads only this index (an index-only scan: the user's
        # vectors sit together instead of scattered over the heap); see memories/repository.py.
        Index(
            "ix_memories_tenant_user_live",
            "tenant_id",
            "user_id",
            postgresql_include=["id", "speaker", "embedding"],
            postgresql_where=text("deleted_at IS NULL"),
        ),
        Index(
            "ix_memories_embedding_hnsw",
            "embedding",
            postgresql_using="hnsw",
            postgresql_with={"m": 16, "ef_construction": 64},
            postgresql_ops={"embedding": "vector_cosine_ops"},
        ),
    )
    id: Mapped[uuid.UUID] = _pk()
    tenant_id: Mapped[uuid.UUID] = _tenant_fk()
    user_id: Mapped[uuid.UUID] = _user_fk()
    speaker: Mapped[str | None] = mapped_column(String(200))
    text: Mapped[str] = mapped_column(Text)
    # Only the database reads vectors back (to rank them); loading 384 floats per row into
    # Python would cost more than the search itself.
    embedding: Mapped[list[float]] = mapped_column(
        Vector(EMBEDDING_DIM), deferred=True, deferred_raiseload=True
    )
    occurred_at: Mapped[datetime | None]
    source_turn_ids: Mapped[list[uuid.UUID]] = mapped_column(
        ARRAY(UUID(as_uuid=True)), default=list
    )
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())
    deleted_at: Mapped[datetime | None]


class MemoryEvent(Base):
    __tablename__ = "memory_events"
    __table_args__ = (Index("ix_memory_events_memory", "memory_id", "id"),)
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    tenant_id: Mapped[uuid.UUID] = _tenant_fk()
    user_id: Mapped[uuid.UUID] = _user_fk()
    memory_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("memories.id", ondelete="CASCADE"))
    op: Mapped[str] = mapped_column(String(16))
    before: Mapped[dict[str, Any] | None]
    after: Mapped[dict[str, Any] | None]
    episode_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("episodes.id", ondelete="SET NULL"), index=True
    )
    actor: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = _created()


class Episode(Base):
    __tablename__ = "episodes"
    __table_args__ = (Index("ix_episodes_tenant_agent", "tenant_id", "agent", "created_at"),)
    id: Mapped[uuid.UUID] = _pk()
    tenant_id: Mapped[uuid.UUID] = _tenant_fk()
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    agent: Mapped[str] = mapped_column(String(16))
    prompt_version: Mapped[str] = mapped_column(String(64))
    input: Mapped[dict[str, Any]]
    raw_output: Mapped[str | None] = mapped_column(Text)
    parsed: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(Text)
    model: Mapped[str] = mapped_column(String(200))
    adapter: Mapped[str | None] = mapped_column(String(200))
    latency_ms: Mapped[float | None] = mapped_column(Float)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    reward: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = _created()


class Feedback(Base):
    __tablename__ = "feedback"
    id: Mapped[uuid.UUID] = _pk()
    tenant_id: Mapped[uuid.UUID] = _tenant_fk()
    episode_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("episodes.id", ondelete="CASCADE"), index=True
    )
    gold_answer: Mapped[str | None] = mapped_column(Text)
    rating: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = _created()


class IngestionJob(Base):
    __tablename__ = "ingestion_jobs"
    __table_args__ = (Index("ix_ingestion_jobs_tenant_user", "tenant_id", "user_id"),)
    id: Mapped[uuid.UUID] = _pk()
    tenant_id: Mapped[uuid.UUID] = _tenant_fk()
    user_id: Mapped[uuid.UUID] = _user_fk()
    session_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), index=True
    )
    turn_ids: Mapped[list[uuid.UUID]] = mapped_column(ARRAY(UUID(as_uuid=True)))
    manager_adapter: Mapped[str] = mapped_column(String(64), default="active")
    extractor_adapter: Mapped[str] = mapped_column(String(64), default="active")
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.queued)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = _created()
    started_at: Mapped[datetime | None]
    # Set on claim and every few seconds while a worker runs it: a running job whose heartbeat
    # is old has lost its worker (see ``repository.requeue_stale``).
    heartbeat_at: Mapped[datetime | None]
    # The name of the worker that claimed it: a worker of that name starting again queues the
    # job again at once, without waiting for its heartbeat to go stale.
    worker: Mapped[str | None] = mapped_column(String(255))
    # A job queued again after a transient failure is not claimed before this (its backoff).
    retry_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class TrainingJob(Base):
    __tablename__ = "training_jobs"
    __table_args__ = (
        Index("ix_training_jobs_status", "status"),
        Index("ix_training_jobs_trained_on_users", "trained_on_users", postgresql_using="gin"),
    )
    id: Mapped[uuid.UUID] = _pk()
    tenant_id: Mapped[uuid.UUID] = _tenant_fk()
    agent: Mapped[str] = mapped_column(String(16))
    algorithm: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(16))
    dataset: Mapped[str | None] = mapped_column(Text)
    validation_dataset: Mapped[str | None] = mapped_column(Text)
    params: Mapped[dict[str, Any]]
    activate: Mapped[str] = mapped_column(String(16), default="if_better")
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.queued)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # the users whose episodes the run trained on (source=episodes)
    trained_on_users: Mapped[list[uuid.UUID]] = mapped_column(
        ARRAY(UUID(as_uuid=True)), default=list, server_default="{}"
    )
    heartbeat_at: Mapped[datetime | None]
    metrics: Mapped[dict[str, Any] | None]
    logs: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text)
    adapter_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("adapters.id", ondelete="SET NULL", use_alter=True), index=True
    )
    created_at: Mapped[datetime] = _created()
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class Adapter(Base):
    __tablename__ = "adapters"
    __table_args__ = (
        # Exactly one active adapter per agent per tenant.
        Index(
            "uq_adapters_one_active",
            "tenant_id",
            "agent",
            unique=True,
            postgresql_where=text("status = 'active'"),
        ),
        # Exactly one active global default per agent.
        Index(
            "uq_adapters_one_global_active",
            "agent",
            unique=True,
            postgresql_where=text("status = 'active' AND tenant_id IS NULL"),
        ),
    )
    id: Mapped[uuid.UUID] = _pk()
    # None: a global default, serving every tenant without an active adapter of its own.
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    agent: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200), unique=True)
    base_model: Mapped[str] = mapped_column(String(200))
    path: Mapped[str] = mapped_column(Text)
    rank: Mapped[int] = mapped_column(Integer)
    validation_metrics: Mapped[dict[str, Any] | None]
    status: Mapped[str] = mapped_column(String(16), default=AdapterStatus.candidate)
    training_job_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("training_jobs.id", ondelete="SET NULL"), index=True
    )
    created_at: Mapped[datetime] = _created()
    activated_at: Mapped[datetime | None]
