import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Session, Turn


async def find(session: AsyncSession, tenant_id: uuid.UUID, external_id: str) -> Session | None:
    return await session.scalar(
        select(Session).where(Session.tenant_id == tenant_id, Session.external_id == external_id)
    )


async def get_or_create_locked(
    session: AsyncSession, tenant_id: uuid.UUID, user_id: uuid.UUID, external_id: str
) -> Session:
    """The session row, locked until commit so that turn numbering is serialised."""
    await session.execute(
        insert(Session)
        .values(id=uuid.uuid4(), tenant_id=tenant_id, user_id=user_id, external_id=external_id)
        .on_conflict_do_nothing(index_elements=["tenant_id", "external_id"])
    )
    row = await session.scalar(
        select(Session)
        .where(Session.tenant_id == tenant_id, Session.external_id == external_id)
        .with_for_update()
    )
    assert row is not None
    return row


async def next_seq(session: AsyncSession, session_id: uuid.UUID) -> int:
    last = await session.scalar(select(func.max(Turn.seq)).where(Turn.session_id == session_id))
    return 0 if last is None else last + 1


async def add_turns(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    user_id: uuid.UUID,
    session_id: uuid.UUID,
    first_seq: int,
    turns: Sequence[tuple[str, str, datetime]],
) -> list[Turn]:
    rows = [
        Turn(
            tenant_id=tenant_id,
            user_id=user_id,
            session_id=session_id,
            seq=first_seq + i,
            speaker=speaker,
            text=text,
            occurred_at=occurred_at,
        )
        for i, (speaker, text, occurred_at) in enumerate(turns)
    ]
    session.add_all(rows)
    await session.flush()
    return rows


async def list_turns(
    session: AsyncSession, tenant_id: uuid.UUID, session_id: uuid.UUID, after_seq: int, limit: int
) -> Sequence[Turn]:
    query = (
        select(Turn)
        .where(Turn.tenant_id == tenant_id, Turn.session_id == session_id, Turn.seq > after_seq)
        .order_by(Turn.seq)
        .limit(limit)
    )
    return (await session.scalars(query)).all()


async def get_turns(
    session: AsyncSession, tenant_id: uuid.UUID, turn_ids: Sequence[uuid.UUID]
) -> Sequence[Turn]:
    query = (
        select(Turn)
        .where(Turn.tenant_id == tenant_id, Turn.id.in_(turn_ids))
        .order_by(Turn.session_id, Turn.seq)
    )
    return (await session.scalars(query)).all()
