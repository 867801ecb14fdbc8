import uuid
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Adapter, AdapterStatus


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
    return (await session.scalars(select(Adapter).where(Adapter.status == AdapterStatus.active))).all()
