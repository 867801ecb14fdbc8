import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.llm.backend import Completion
from app.models import Episode, Feedback


async def add(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    user_id: uuid.UUID | None,
    agent: str,
    prompt_version: str,
    input_: dict[str, Any],
    completion: Completion | None,
    parsed: dict[str, Any] | None,
    error: str | None,
    model: str,
) -> Episode:
    episode = Episode(
        tenant_id=tenant_id,
        user_id=user_id,
        agent=agent,
        prompt_version=prompt_version,
        input=input_,
        raw_output=completion.text if completion else None,
        parsed=parsed,
        error=error,
        model=completion.model if completion else model,
        adapter=completion.adapter if completion else None,
        latency_ms=completion.latency_ms if completion else None,
        prompt_tokens=completion.prompt_tokens if completion else None,
        completion_tokens=completion.completion_tokens if completion else None,
    )
    session.add(episode)
    await session.flush()
    return episode


async def get(session: AsyncSession, tenant_id: uuid.UUID, episode_id: uuid.UUID) -> Episode | None:
    return await session.scalar(
        select(Episode).where(Episode.tenant_id == tenant_id, Episode.id == episode_id)
    )


async def feedback_of(session: AsyncSession, episode_id: uuid.UUID) -> Sequence[Feedback]:
    query = select(Feedback).where(Feedback.episode_id == episode_id).order_by(Feedback.created_at)
    return (await session.scalars(query)).all()
