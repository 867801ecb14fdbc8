import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import ApiKey, Tenant


async def lock_bootstrap(session: AsyncSession) -> None:
    """Serialise first-start bootstrapping (several API replicas may start at once)."""
    await session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended('bootstrap', 0))"))


async def count_tenants(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(Tenant)) or 0)


async def add_tenant(session: AsyncSession, name: str) -> Tenant:
    tenant = Tenant(name=name)
    session.add(tenant)
    await session.flush()
    return tenant


async def get_tenant(session: AsyncSession, tenant_id: uuid.UUID) -> Tenant | None:
    return await session.get(Tenant, tenant_id)


async def add_key(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    name: str,
    prefix: str,
    key_hash: str,
    scopes: list[str],
) -> ApiKey:
    key = ApiKey(tenant_id=tenant_id, name=name, prefix=prefix, key_hash=key_hash, scopes=scopes)
    session.add(key)
    await session.flush()
    return key


async def find_live_key(session: AsyncSession, key_hash: str) -> ApiKey | None:
    return await session.scalar(
        select(ApiKey).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
    )


async def list_keys(session: AsyncSession, tenant_id: uuid.UUID | None) -> Sequence[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.created_at)
    if tenant_id is not None:
        query = query.where(ApiKey.tenant_id == tenant_id)
    return (await session.scalars(query)).all()


async def revoke_key(session: AsyncSession, key_id: uuid.UUID) -> bool:
    result = await session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
        .returning(ApiKey.id)
    )
    return result.first() is not None
