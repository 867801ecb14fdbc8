from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from app.core.deps import DbSession, MemoryPrincipal
from app.core.schemas import MAX_INT, ExternalId
from app.users import service
from app.users.schemas import UserPage

router = APIRouter(tags=["users"])


@router.get("/users")
async def list_users(
    principal: MemoryPrincipal,
    db: DbSession,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
) -> UserPage:
    """The tenant's users, by id, with the size of each bank."""
    return await service.list_users(db, principal.tenant_id, limit, offset)


@router.delete("/users/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
async def erase_user(user_id: ExternalId, principal: MemoryPrincipal, db: DbSession) -> Response:
    """Erase the user and everything stored about them. Irreversible."""
    await service.erase_user(db, principal.tenant_id, user_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
