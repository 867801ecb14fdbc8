import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from app.core.deps import DbSession, MemoryPrincipal, RuntimeDep
from app.core.schemas import MAX_INT, ExternalId, StorableText
from app.memories import service
from app.memories.schemas import MemoryCreate, MemoryEventRead, MemoryPage, MemoryRead, MemoryUpdate

router = APIRouter(tags=["memories"])


@router.get("/users/{user_id}/memories")
async def list_memories(
    user_id: ExternalId,
    principal: MemoryPrincipal,
    db: DbSession,
    runtime: RuntimeDep,
    query: Annotated[
        StorableText | None,
        Query(min_length=1, description="Semantic search: most similar first."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
) -> MemoryPage:
    return await service.list_or_search(
        db,
        runtime.embedder,
        runtime.settings.limits,
        principal.tenant_id,
        user_id,
        query=query,
        limit=limit,
        offset=offset,
    )


@router.post("/users/{user_id}/memories", status_code=status.HTTP_201_CREATED)
async def add_memory(
    user_id: ExternalId,
    body: MemoryCreate,
    principal: MemoryPrincipal,
    db: DbSession,
    runtime: RuntimeDep,
) -> MemoryRead:
    return await service.add_manual(
        db, runtime.embedder, runtime.settings.limits, principal.tenant_id, user_id, body
    )


@router.get("/memories/{memory_id}")
async def get_memory(memory_id: uuid.UUID, principal: MemoryPrincipal, db: DbSession) -> MemoryRead:
    return await service.get_memory(db, principal.tenant_id, memory_id)


@router.patch("/memories/{memory_id}")
async def update_memory(
    memory_id: uuid.UUID,
    body: MemoryUpdate,
    principal: MemoryPrincipal,
    db: DbSession,
    runtime: RuntimeDep,
) -> MemoryRead:
    return await service.update_manual(
        db, runtime.embedder, runtime.settings.limits, principal.tenant_id, memory_id, body
    )


@router.delete("/memories/{memory_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_memory(
    memory_id: uuid.UUID, principal: MemoryPrincipal, db: DbSession
) -> Response:
    await service.delete_manual(db, principal.tenant_id, memory_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/memories/{memory_id}/history")
async def memory_history(
    memory_id: uuid.UUID, principal: MemoryPrincipal, db: DbSession
) -> list[MemoryEventRead]:
    return await service.history(db, principal.tenant_id, memory_id)
