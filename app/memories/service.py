"""The memory bank: manual edits through the API and operations decided by the Manager.

Embeddings are computed before any database work so that no transaction stays open across a
model call."""

import uuid
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import LimitSettings
from app.core.errors import Conflict, NotFound, Unprocessable
from app.core.schemas import next_offset
from app.embeddings import Embedder
from app.memories import repository
from app.memories.schemas import (
    MemoryCreate,
    MemoryEventRead,
    MemoryPage,
    MemoryRead,
    MemoryUpdate,
)
from app.memory.schemas import Fact, Operation, OpKind
from app.models import Actor, Memory, MemoryOp
from app.users import repository as users
from app.users import service as users_service


def snapshot(memory: Memory) -> dict[str, object]:
    return {
        "text": memory.text,
        "speaker": memory.speaker,
        "occurred_at": memory.occurred_at.isoformat() if memory.occurred_at else None,
        "version": memory.version,
    }


def to_read(memory: Memory, user_external_id: str, score: float | None = None) -> MemoryRead:
    return MemoryRead(
        id=memory.id,
        user_id=user_external_id,
        speaker=memory.speaker,
        text=memory.text,
        occurred_at=memory.occurred_at,
        version=memory.version,
        source_turn_ids=list(memory.source_turn_ids),
        created_at=memory.created_at,
        updated_at=memory.updated_at,
        deleted_at=memory.deleted_at,
        score=score,
    )


def check_length(text: str, limit: int, what: str) -> None:
    if len(text) > limit:
        raise Unprocessable(f"{what} has {len(text)} characters; the limit is {limit}")


def check_text(text: str, limits: LimitSettings) -> None:
    check_length(text, limits.max_memory_chars, "text")


def check_query(query: str, top_k: int, limits: LimitSettings, what: str = "query") -> None:
    check_length(query, limits.max_query_chars, what)
    if top_k > limits.max_top_k:
        raise Unprocessable(f"top_k/limit is {top_k}; the limit is {limits.max_top_k}")


async def add_manual(
    db: AsyncSession,
    embedder: Embedder,
    limits: LimitSettings,
    tenant_id: uuid.UUID,
    user_external_id: str,
    body: MemoryCreate,
) -> MemoryRead:
    check_text(body.text, limits)
    [embedding] = await embedder.embed([body.text])
    user = await users.get_or_create(db, tenant_id, user_external_id)
    await repository.lock_user(db, tenant_id, user.id)
    memory = await repository.add(
        db,
        tenant_id=tenant_id,
        user_id=user.id,
        text_=body.text,
        embedding=embedding,
        speaker=body.speaker,
        occurred_at=body.occurred_at,
        source_turn_ids=[],
    )
    await repository.add_event(
        db, memory, op=MemoryOp.ADD, before=None, after=snapshot(memory), actor=Actor.api
    )
    return to_read(memory, user_external_id)


async def list_or_search(
    db: AsyncSession,
    embedder: Embedder,
    limits: LimitSettings,
    tenant_id: uuid.UUID,
    user_external_id: str,
    *,
    query: str | None,
    limit: int,
    offset: int,
) -> MemoryPage:
    embedding = None
    if query is not None:
        if offset:
            raise Unprocessable("offset does not apply to ?query= (search returns the top `limit`)")
        # Search returns at most max_top_k (60) results, however large the page asked for.
        limit = min(limit, limits.max_top_k)
        check_query(query, limit, limits)
        [embedding] = await embedder.embed([query])
    user = await users_service.require_user(db, tenant_id, user_external_id)
    if embedding is not None:
        hits = await repository.search(db, tenant_id, user.id, embedding, limit)
        return MemoryPage(items=[to_read(m, user.external_id, 1 - d) for m, d in hits])
    rows = await repository.list_page(db, tenant_id, user.id, limit, offset)
    return MemoryPage(
        items=[to_read(m, user.external_id) for m in rows],
        next_offset=next_offset(offset, limit, len(rows)),
    )


async def _require(db: AsyncSession, tenant_id: uuid.UUID, memory_id: uuid.UUID) -> Memory:
    memory = await repository.get(db, tenant_id, memory_id)
    if memory is None:
        raise NotFound(f"memory {memory_id} not found")
    return memory


async def _require_locked(db: AsyncSession, tenant_id: uuid.UUID, memory_id: uuid.UUID) -> Memory:
    """The memory as it is once this transaction holds its user's lock: read again after
    the lock, so a write that committed while we waited is not overwritten."""
    memory = await _require(db, tenant_id, memory_id)
    await repository.lock_user(db, tenant_id, memory.user_id)
    await db.refresh(memory)
    return memory


async def _owner(db: AsyncSession, memory: Memory) -> str:
    user = await users_service.require_user_by_id(db, memory.tenant_id, memory.user_id)
    return user.external_id


async def get_memory(db: AsyncSession, tenant_id: uuid.UUID, memory_id: uuid.UUID) -> MemoryRead:
    memory = await _require(db, tenant_id, memory_id)
    return to_read(memory, await _owner(db, memory))


async def update_manual(
    db: AsyncSession,
    embedder: Embedder,
    limits: LimitSettings,
    tenant_id: uuid.UUID,
    memory_id: uuid.UUID,
    body: MemoryUpdate,
) -> MemoryRead:
    if body.text is None and body.speaker is None and body.occurred_at is None:
        raise Unprocessable("nothing to change: send at least one of text, speaker, occurred_at")
    embedding = None
    if body.text is not None:
        check_text(body.text, limits)
        [embedding] = await embedder.embed([body.text])
    memory = await _require_locked(db, tenant_id, memory_id)
    if memory.deleted_at is not None:
        raise Conflict(f"memory {memory_id} is deleted; add a new memory instead")
    before = snapshot(memory)
    await repository.update_text(
        db,
        memory,
        text_=body.text,
        embedding=embedding,
        speaker=body.speaker,
        occurred_at=body.occurred_at,
    )
    await repository.add_event(
        db, memory, op=MemoryOp.UPDATE, before=before, after=snapshot(memory), actor=Actor.api
    )
    return to_read(memory, await _owner(db, memory))


async def delete_manual(db: AsyncSession, tenant_id: uuid.UUID, memory_id: uuid.UUID) -> None:
    memory = await _require_locked(db, tenant_id, memory_id)
    if memory.deleted_at is not None:
        raise Conflict(f"memory {memory_id} is already deleted")
    before = snapshot(memory)
    await repository.soft_delete(db, memory)
    await repository.add_event(
        db, memory, op=MemoryOp.DELETE, before=before, after=None, actor=Actor.api
    )


async def history(
    db: AsyncSession, tenant_id: uuid.UUID, memory_id: uuid.UUID
) -> list[MemoryEventRead]:
    await _require(db, tenant_id, memory_id)
    events = await repository.events(db, tenant_id, memory_id)
    return [MemoryEventRead.model_validate(e, from_attributes=True) for e in events]


async def retrieve(
    db: AsyncSession,
    tenant_id: uuid.UUID,
    user_id: uuid.UUID,
    embedding: list[float],
    k: int,
) -> list[tuple[Memory, float]]:
    """Top-k for the Answer Agent. When every memory belongs to one of exactly two speakers
    (two-party conversations, as in LoCoMo), each speaker gets half of the k slots and slots
    one speaker cannot fill go to the other (the paper's per-speaker split); otherwise the
    plain top-k."""
    speakers = await repository.speakers(db, tenant_id, user_id)
    if len(speakers) != 2 or None in speakers:
        return await repository.search(db, tenant_id, user_id, embedding, k)
    first = await repository.search(db, tenant_id, user_id, embedding, k, speakers[0])
    second = await repository.search(db, tenant_id, user_id, embedding, k, speakers[1])
    take_first = min(len(first), k - min(len(second), k // 2))
    hits = first[:take_first] + second[: k - take_first]
    return sorted(hits, key=lambda hit: hit[1])


async def apply_operations(
    db: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    user_id: uuid.UUID,
    operations: Sequence[Operation],
    seen_versions: dict[uuid.UUID, int],
    embeddings: dict[str, list[float]],
    fact: Fact,
    source_turn_id: uuid.UUID,
    episode_id: uuid.UUID,
) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """Apply the Manager's validated operations for one fact, serialised per user.

    The candidates were read before the model call, outside any transaction; a memory that
    another writer changed meanwhile is not touched (the operation is reported as stale)."""
    await repository.lock_user(db, tenant_id, user_id)
    targets = await repository.get_live_many(
        db, tenant_id, user_id, [op.memory_id for op in operations if op.memory_id]
    )
    applied: list[dict[str, object]] = []
    stale: list[dict[str, object]] = []
    for op in operations:
        if op.kind == OpKind.ADD:
            assert op.text is not None
            memory = await repository.add(
                db,
                tenant_id=tenant_id,
                user_id=user_id,
                text_=op.text,
                embedding=embeddings[op.text],
                speaker=fact.speaker,
                occurred_at=fact.occurred_at,
                source_turn_ids=[source_turn_id],
            )
            before = None
        else:
            assert op.memory_id is not None
            memory = targets.get(op.memory_id)  # type: ignore[assignment]
            if memory is None or memory.version != seen_versions.get(op.memory_id):
                stale.append({"op": op.kind.value, "memory_id": str(op.memory_id)})
                continue
            before = snapshot(memory)
            if op.kind == OpKind.UPDATE:
                assert op.text is not None
                await repository.update_text(
                    db,
                    memory,
                    text_=op.text,
                    embedding=embeddings[op.text],
                    occurred_at=fact.occurred_at,
                    source_turn_ids=[source_turn_id],
                )
            else:
                await repository.soft_delete(db, memory)
        after = None if op.kind == OpKind.DELETE else snapshot(memory)
        await repository.add_event(
            db,
            memory,
            op=op.kind.value,
            before=before,
            after=after,
            actor=Actor.manager,
            episode_id=episode_id,
        )
        applied.append({"op": op.kind.value, "memory_id": str(memory.id), "text": op.text})
    return applied, stale
