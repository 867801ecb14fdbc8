import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Feedback


async def add(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    episode_id: uuid.UUID,
    gold_answer: str | None,
    rating: int | None,
) -> Feedback:
    feedback = Feedback(
        tenant_id=tenant_id, episode_id=episode_id, gold_answer=gold_answer, rating=rating
    )
    session.add(feedback)
    await session.flush()
    await session.refresh(feedback)
    return feedback
