import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import NotFound
from app.episodes import repository
from app.episodes.schemas import EpisodeRead
from app.feedback.schemas import FeedbackRead
from app.users import repository as users


async def get_episode(db: AsyncSession, tenant_id: uuid.UUID, episode_id: uuid.UUID) -> EpisodeRead:
    episode = await repository.get(db, tenant_id, episode_id)
    if episode is None:
        raise NotFound(f"episode {episode_id} not found")
    user = await users.get(db, tenant_id, episode.user_id) if episode.user_id else None
    feedback = await repository.feedback_of(db, episode.id)
    return EpisodeRead(
        id=episode.id,
        agent=episode.agent,
        user_id=user.external_id if user else None,
        prompt_version=episode.prompt_version,
        input=episode.input,
        raw_output=episode.raw_output,
        parsed=episode.parsed,
        error=episode.error,
        model=episode.model,
        adapter=episode.adapter,
        latency_ms=episode.latency_ms,
        prompt_tokens=episode.prompt_tokens,
        completion_tokens=episode.completion_tokens,
        reward=episode.reward,
        feedback=[FeedbackRead.model_validate(f, from_attributes=True) for f in feedback],
        created_at=episode.created_at,
    )
