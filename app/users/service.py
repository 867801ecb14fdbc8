import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from app.adapters import repository as adapters
from app.core.errors import NotFound
from app.core.schemas import next_offset
from app.models import User
from app.users import repository
from app.users.schemas import UserPage, UserRead


async def require_user(session: AsyncSession, tenant_id: uuid.UUID, external_id: str) -> User:
    user = await repository.find(session, tenant_id, external_id)
    if user is None:
        raise NotFound(f"user '{external_id}' not found")
    return user


async def erase_user(session: AsyncSession, tenant_id: uuid.UUID, external_id: str) -> None:
    """Erase everything of a user: turns, sessions, memories, history, episodes, feedback, jobs;
    and withdraw the adapters trained on the user's episodes, so that nothing learned from
    them is served again (an agent whose active adapter goes serves the base model)."""
    user = await require_user(session, tenant_id, external_id)
    await adapters.withdraw_trained_on(session, tenant_id, user.id)
    await repository.delete_user(session, user.id)


async def require_user_by_id(
    session: AsyncSession, tenant_id: uuid.UUID, user_id: uuid.UUID
) -> User:
    user = await repository.get(session, tenant_id, user_id)
    if user is None:
        raise NotFound(f"user {user_id} not found")
    return user


async def list_users(
    session: AsyncSession, tenant_id: uuid.UUID, limit: int, offset: int
) -> UserPage:
    rows = await repository.list_with_counts(session, tenant_id, limit, offset)
    items = [
        UserRead(user_id=user.external_id, created_at=user.created_at, memory_count=count)
        for user, count in rows
    ]
    return UserPage(items=items, next_offset=next_offset(offset, limit, len(items)))
