from fastapi import APIRouter, Response, status

from app.core.deps import DbSession, MemoryPrincipal
from app.core.schemas import ExternalId
from app.users import service

router = APIRouter(tags=["users"])


@router.delete("/users/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
async def erase_user(user_id: ExternalId, principal: MemoryPrincipal, db: DbSession) -> Response:
    """Erase the user and everything stored about them. Irreversible."""
    await service.erase_user(db, principal.tenant_id, user_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
