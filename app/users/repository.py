import uuid

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Memory, User


async def find(session: AsyncSession, tenant_id: uuid.UUID, external_id: str) -> User | None:
    return await session.scalar(
        select(User).where(User.tenant_id == tenant_id, User.external_id == external_id)
    )


async def get_or_create(session: AsyncSession, tenant_id: uuid.UUID, external_id: str) -> User:
    await session.execute(
        insert(User)
        .values(id=uuid.uuid4(), tenant_id=tenant_id, external_id=external_id)
        .on_conflict_do_nothing(index_elements=["tenant_id", "external_id"])
    )
    user = await find(session, tenant_id, external_id)
    assert user is not None  # inserted above or by a concurrent request
    return user


async def delete_user(session: AsyncSession, user_id: uuid.UUID) -> None:
    # Every table that holds a user's data references users.id with ON DELETE CASCADE.
    await session.execute(delete(User).where(User.id == user_id))


async def get(session: AsyncSession, tenant_id: uuid.UUID, user_id: uuid.UUID) -> User | None:
    return await session.scalar(select(User).where(User.tenant_id == tenant_id, User.id == user_id))


async def list_with_counts(
    session: AsyncSession, tenant_id: uuid.UUID, limit: int, offset: int
) -> list[tuple[User, int]]:
    live = (
        select(func.count(Memory.id))
        .where(Memory.user_id == User.id, Memory.deleted_at.is_(None))
        .scalar_subquery()
    )
    query = (
        select(User, live)
        .where(User.tenant_id == tenant_id)
        .order_by(User.external_id)
        .limit(limit)
        .offset(offset)
    )
    return [(user, count) for user, count in (await session.execute(query)).all()]
