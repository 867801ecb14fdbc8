"""All SQL about memories and their history.

Retrieval is exact. An HNSW scan over the whole table filtered by user afterwards returns too
few rows for a user whose memories are a small part of the table, so search ranks all of the
user's live vectors instead, in two steps: the top-k ids and distances come from an index-only
scan of the (tenant_id, user_id) partial index, which carries id, speaker and embedding, so a
user's vectors are read together rather than from pages scattered over the heap; then only
those k rows are fetched. The distance is written as ``(embedding <=> q) + 0``, an expression
the HNSW index cannot serve, so the planner never swaps it in. bench/retrieval.py measures it.
"""

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Memory, MemoryEvent


async def lock_user(session: AsyncSession, tenant_id: uuid.UUID, user_id: uuid.UUID) -> None:
    """Serialise memory writes of one user until the transaction ends."""
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
        {"key": f"memories:{tenant_id}:{user_id}"},
    )


async def add(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    user_id: uuid.UUID,
    text_: str,
    embedding: list[float],
    speaker: str | None,
    occurred_at: datetime | None,
    source_turn_ids: list[uuid.UUID],
) -> Memory:
    memory = Memory(
        tenant_id=tenant_id,
        user_id=user_id,
        text=text_,
        embedding=embedding,
        speaker=speaker,
        occurred_at=occurred_at,
        source_turn_ids=source_turn_ids,
        version=1,
    )
    session.add(memory)
    await session.flush()
    return memory


async def get(session: AsyncSession, tenant_id: uuid.UUID, memory_id: uuid.UUID) -> Memory | None:
    return await session.scalar(
        select(Memory).where(Memory.tenant_id == tenant_id, Memory.id == memory_id)
    )


async def get_live_many(
    session: AsyncSession, tenant_id: uuid.UUID, user_id: uuid.UUID, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, Memory]:
    rows = await session.scalars(
        select(Memory).where(
            Memory.tenant_id == tenant_id,
            Memory.user_id == user_id,
            Memory.id.in_(ids),
            Memory.deleted_at.is_(None),
        )
    )
    return {m.id: m for m in rows}


async def list_page(
    session: AsyncSession, tenant_id: uuid.UUID, user_id: uuid.UUID, limit: int, offset: int
) -> Sequence[Memory]:
    query = (
        select(Memory)
        .where(
            Memory.tenant_id == tenant_id, Memory.user_id == user_id, Memory.deleted_at.is_(None)
        )
        .order_by(Memory.created_at.desc(), Memory.id)
        .limit(limit)
        .offset(offset)
    )
    return (await session.scalars(query)).all()


async def search(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    user_id: uuid.UUID,
    embedding: list[float],
    k: int,
    speaker: str | None = None,
) -> list[tuple[Memory, float]]:
    """The exact top-k live memories of one user by cosine distance (see module docstring)."""
    distance = (Memory.embedding.cosine_distance(embedding) + 0).label("distance")
    top = select(Memory.id, distance).where(
        Memory.tenant_id == tenant_id, Memory.user_id == user_id, Memory.deleted_at.is_(None)
    )
    if speaker is not None:
        top = top.where(Memory.speaker == speaker)
    ranked = top.order_by(distance, Memory.id).limit(k).subquery("top")
    rows = await session.execute(
        select(Memory, ranked.c.distance)
        .join(ranked, Memory.id == ranked.c.id)
        .order_by(ranked.c.distance, Memory.id)
    )
    return [(memory, float(dist)) for memory, dist in rows.all()]


async def speakers(
    session: AsyncSession, tenant_id: uuid.UUID, user_id: uuid.UUID
) -> list[str | None]:
    """The distinct speakers of the user's live memories (None for memories without one)."""
    rows = await session.scalars(
        select(Memory.speaker)
        .where(
            Memory.tenant_id == tenant_id,
            Memory.user_id == user_id,
            Memory.deleted_at.is_(None),
        )
        .group_by(Memory.speaker)
        .order_by(func.count().desc())
    )
    return list(rows.all())


async def update_text(
    session: AsyncSession,
    memory: Memory,
    *,
    text_: str | None = None,
    embedding: list[float] | None = None,
    speaker: str | None = None,
    occurred_at: datetime | None = None,
    source_turn_ids: list[uuid.UUID] | None = None,
) -> Memory:
    if text_ is not None:
        memory.text = text_
    if embedding is not None:
        memory.embedding = embedding
    if speaker is not None:
        memory.speaker = speaker
    if occurred_at is not None:
        memory.occurred_at = occurred_at
    if source_turn_ids:
        memory.source_turn_ids = [*memory.source_turn_ids, *source_turn_ids]
    memory.version += 1
    memory.updated_at = datetime.now(UTC)
    await session.flush()
    return memory


async def soft_delete(session: AsyncSession, memory: Memory) -> None:
    now = datetime.now(UTC)
    await session.execute(
        update(Memory)
        .where(Memory.id == memory.id)
        .values(deleted_at=now, updated_at=now, version=Memory.version + 1)
    )
    await session.refresh(memory)


async def add_event(
    session: AsyncSession,
    memory: Memory,
    *,
    op: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    actor: str,
    episode_id: uuid.UUID | None = None,
) -> None:
    session.add(
        MemoryEvent(
            tenant_id=memory.tenant_id,
            user_id=memory.user_id,
            memory_id=memory.id,
            op=op,
            before=before,
            after=after,
            actor=actor,
            episode_id=episode_id,
        )
    )
    await session.flush()


async def events(
    session: AsyncSession, tenant_id: uuid.UUID, memory_id: uuid.UUID
) -> Sequence[MemoryEvent]:
    query = (
        select(MemoryEvent)
        .where(MemoryEvent.tenant_id == tenant_id, MemoryEvent.memory_id == memory_id)
        .order_by(MemoryEvent.id)
    )
    return (await session.scalars(query)).all()
