import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Adapter, AdapterStatus, TrainingJob


async def get(session: AsyncSession, tenant_id: uuid.UUID, adapter_id: uuid.UUID) -> Adapter | None:
    return await session.scalar(
        select(Adapter).where(Adapter.tenant_id == tenant_id, Adapter.id == adapter_id)
    )


async def get_active(session: AsyncSession, tenant_id: uuid.UUID, agent: str) -> Adapter | None:
    return await session.scalar(
        select(Adapter).where(
            Adapter.tenant_id == tenant_id,
            Adapter.agent == agent,
            Adapter.status == AdapterStatus.active,
        )
    )


async def all_active(session: AsyncSession) -> Sequence[Adapter]:
    return (
        await session.scalars(select(Adapter).where(Adapter.status == AdapterStatus.active))
    ).all()


async def list_adapters(
    session: AsyncSession, tenant_id: uuid.UUID, agent: str | None
) -> Sequence[Adapter]:
    query = select(Adapter).where(Adapter.tenant_id == tenant_id)
    if agent is not None:
        query = query.where(Adapter.agent == agent)
    return (await session.scalars(query.order_by(Adapter.created_at.desc()))).all()


async def add(session: AsyncSession, adapter: Adapter) -> Adapter:
    session.add(adapter)
    await session.flush()
    await session.refresh(adapter)
    return adapter


async def lock_agent(session: AsyncSession, tenant_id: uuid.UUID, agent: str) -> None:
    """Serialise activations of one agent's adapters until the transaction ends."""
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
        {"key": f"adapters:{tenant_id}:{agent}"},
    )


async def set_active(session: AsyncSession, adapter: Adapter) -> None:
    now = datetime.now(UTC)
    await session.execute(
        update(Adapter)
        .where(
            Adapter.tenant_id == adapter.tenant_id,
            Adapter.agent == adapter.agent,
            Adapter.status == AdapterStatus.active,
        )
        .values(status=AdapterStatus.retired)
    )
    await session.execute(
        update(Adapter)
        .where(Adapter.id == adapter.id)
        .values(status=AdapterStatus.active, activated_at=now)
    )
    await session.refresh(adapter)


async def withdraw_trained_on(
    session: AsyncSession, tenant_id: uuid.UUID, user_id: uuid.UUID
) -> Sequence[Adapter]:
    """Withdraw every adapter of the tenant trained on the user's episodes (an active one
    leaves its agent on the base model)."""
    trained = select(TrainingJob.id).where(
        TrainingJob.tenant_id == tenant_id, TrainingJob.trained_on_users.contains([user_id])
    )
    withdrawn = await session.scalars(
        update(Adapter)
        .where(Adapter.tenant_id == tenant_id, Adapter.training_job_id.in_(trained))
        .values(status=AdapterStatus.withdrawn)
        .returning(Adapter)
    )
    return withdrawn.all()
