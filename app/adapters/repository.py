import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Adapter, AdapterStatus, TrainingJob


def _visible_to(tenant_id: uuid.UUID) -> ColumnElement[bool]:
    """The tenant's own adapters and the global defaults."""
    return or_(Adapter.tenant_id == tenant_id, Adapter.tenant_id.is_(None))


async def get(session: AsyncSession, tenant_id: uuid.UUID, adapter_id: uuid.UUID) -> Adapter | None:
    """One of the tenant's adapters or a global default."""
    return await session.scalar(
        select(Adapter).where(_visible_to(tenant_id), Adapter.id == adapter_id)
    )


async def get_active(session: AsyncSession, tenant_id: uuid.UUID, agent: str) -> Adapter | None:
    """What serves the tenant's agent: its own active adapter, else the active global
    default, else None (the base model)."""
    return await session.scalar(
        select(Adapter)
        .where(
            _visible_to(tenant_id),
            Adapter.agent == agent,
            Adapter.status == AdapterStatus.active,
        )
        .order_by(Adapter.tenant_id.is_(None))
        .limit(1)
    )


async def get_by_name(session: AsyncSession, name: str) -> Adapter | None:
    return await session.scalar(select(Adapter).where(Adapter.name == name))


async def all_active(session: AsyncSession) -> Sequence[Adapter]:
    return (
        await session.scalars(select(Adapter).where(Adapter.status == AdapterStatus.active))
    ).all()


async def list_adapters(
    session: AsyncSession, tenant_id: uuid.UUID, agent: str | None
) -> Sequence[Adapter]:
    query = select(Adapter).where(_visible_to(tenant_id))
    if agent is not None:
        query = query.where(Adapter.agent == agent)
    return (await session.scalars(query.order_by(Adapter.created_at.desc()))).all()


async def add(session: AsyncSession, adapter: Adapter) -> Adapter:
    session.add(adapter)
    await session.flush()
    await session.refresh(adapter)
    return adapter


async def lock_agent(session: AsyncSession, tenant_id: uuid.UUID | None, agent: str) -> None:
    """Serialise activations of one agent's adapters (a tenant's, or the global defaults
    for None) until the transaction ends."""
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
        {"key": f"adapters:{tenant_id or 'global'}:{agent}"},
    )


async def retire_active(session: AsyncSession, tenant_id: uuid.UUID | None, agent: str) -> None:
    """The tenant's (or, for None, the global) active adapter of the agent becomes retired."""
    owner = Adapter.tenant_id.is_(None) if tenant_id is None else Adapter.tenant_id == tenant_id
    await session.execute(
        update(Adapter)
        .where(owner, Adapter.agent == agent, Adapter.status == AdapterStatus.active)
        .values(status=AdapterStatus.retired)
    )


async def set_active(session: AsyncSession, adapter: Adapter) -> None:
    await retire_active(session, adapter.tenant_id, adapter.agent)
    await session.execute(
        update(Adapter)
        .where(Adapter.id == adapter.id)
        .values(status=AdapterStatus.active, activated_at=datetime.now(UTC))
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
