"""Feedback on an episode is the reward signal for later training."""

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import NotFound
from app.episodes import repository as episodes
from app.feedback import repository
from app.feedback.schemas import FeedbackCreate, FeedbackRead


async def add_feedback(
    db: AsyncSession, tenant_id: uuid.UUID, body: FeedbackCreate
) -> FeedbackRead:
    if await episodes.get(db, tenant_id, body.episode_id) is None:
        raise NotFound(f"episode {body.episode_id} not found")
    feedback = await repository.add(db, tenant_id, body.episode_id, body.gold_answer, body.rating)
    return FeedbackRead.model_validate(feedback, from_attributes=True)
