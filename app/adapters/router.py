import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query

from app.adapters import service
from app.adapters.schemas import AdapterRead
from app.core.deps import AdminPrincipal, DbSession, RuntimeDep

router = APIRouter(prefix="/admin", tags=["adapters"])


@router.get("/adapters")
async def list_adapters(
    principal: AdminPrincipal,
    db: DbSession,
    agent: Annotated[Literal["extractor", "manager", "answer"] | None, Query()] = None,
) -> list[AdapterRead]:
    return await service.list_adapters(db, principal.tenant_id, agent)


@router.post("/adapters/{adapter_id}/activate")
async def activate_adapter(
    adapter_id: uuid.UUID, principal: AdminPrincipal, runtime: RuntimeDep
) -> AdapterRead:
    """Make this adapter its agent's active one (also rolls back to an earlier adapter)."""
    return await service.activate(runtime, principal.tenant_id, adapter_id)
