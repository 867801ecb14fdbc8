import uuid

from fastapi import APIRouter

from app.core.deps import DbSession, MemoryPrincipal
from app.episodes import service
from app.episodes.schemas import EpisodeRead

router = APIRouter(tags=["episodes"])


@router.get("/episodes/{episode_id}")
async def get_episode(
    episode_id: uuid.UUID, principal: MemoryPrincipal, db: DbSession
) -> EpisodeRead:
    """A logged model decision: its input, raw reply, what was applied, and its feedback."""
    return await service.get_episode(db, principal.tenant_id, episode_id)
