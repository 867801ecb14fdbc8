"""Sessions and turns. Turns are committed before anything else happens to them."""

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from app.adapters import service as adapters
from app.core.config import LimitSettings
from app.core.db import transaction
from app.core.errors import Conflict, NotFound, PayloadTooLarge, Unprocessable, Upstream
from app.core.runtime import Runtime
from app.ingestion import repository as jobs
from app.ingestion import service as ingestion
from app.models import Agent, JobStatus
from app.sessions import repository
from app.sessions.schemas import TurnPage, TurnRead, TurnsAccepted, TurnsCreate
from app.users import repository as users
from app.users import service as users_service


@dataclass(frozen=True)
class StoredTurns:
    turn_ids: list[uuid.UUID]
    job_id: uuid.UUID


def check_turn_limits(body: TurnsCreate, limits: LimitSettings) -> None:
    if len(body.turns) > limits.max_turns_per_request:
        raise PayloadTooLarge(
            f"{len(body.turns)} turns in one request; send at most "
            f"{limits.max_turns_per_request} per request"
        )
    for i, turn in enumerate(body.turns):
        if len(turn.text) > limits.max_turn_chars:
            raise Unprocessable(
                f"turns[{i}].text has {len(turn.text)} characters; the limit is "
                f"{limits.max_turn_chars}: split long turns"
            )


async def accept_turns(
    runtime: Runtime, tenant_id: uuid.UUID, session_external_id: str, body: TurnsCreate
) -> StoredTurns:
    """Store the turns and their ingestion job in one committed transaction."""
    check_turn_limits(body, runtime.settings.limits)
    now = datetime.now(UTC)
    async with transaction(runtime.sessions) as db:
        user = await users.get_or_create(db, tenant_id, body.user_id)
        chat = await repository.get_or_create_locked(db, tenant_id, user.id, session_external_id)
        if chat.user_id != user.id:
            raise Conflict(
                f"session '{session_external_id}' belongs to another user; "
                "use a new session id for this user"
            )
        turns = await repository.add_turns(
            db,
            tenant_id=tenant_id,
            user_id=user.id,
            session_id=chat.id,
            first_seq=await repository.next_seq(db, chat.id),
            turns=[(t.speaker, t.text, t.occurred_at or now) for t in body.turns],
        )
        turn_ids = [t.id for t in turns]
        job = await jobs.create_job(
            db,
            tenant_id=tenant_id,
            user_id=user.id,
            session_id=chat.id,
            turn_ids=turn_ids,
            manager_adapter=body.manager_adapter,
            extractor_adapter=body.extractor_adapter,
        )
    return StoredTurns(turn_ids=turn_ids, job_id=job.id)


async def list_turns(
    db: AsyncSession, tenant_id: uuid.UUID, session_external_id: str, after_seq: int, limit: int
) -> TurnPage:
    chat = await repository.find(db, tenant_id, session_external_id)
    if chat is None:
        raise NotFound(f"session '{session_external_id}' not found")
    rows = await repository.list_turns(db, tenant_id, chat.id, after_seq, limit)
    user = await users_service.require_user_by_id(db, tenant_id, chat.user_id)
    items = [TurnRead.model_validate(r, from_attributes=True) for r in rows]
    return TurnPage(
        session_id=session_external_id,
        user_id=user.external_id,
        items=items,
        next_after_seq=items[-1].seq if len(items) == limit else None,
    )


async def post_turns(
    runtime: Runtime, tenant_id: uuid.UUID, session_external_id: str, body: TurnsCreate, wait: bool
) -> TurnsAccepted:
    await adapters.check_choice(runtime, tenant_id, Agent.manager, body.manager_adapter)
    await adapters.check_choice(runtime, tenant_id, Agent.extractor, body.extractor_adapter)
    stored = await accept_turns(runtime, tenant_id, session_external_id, body)
    job = None
    if wait:
        try:
            # None while a worker is ingesting this user's earlier turns: it runs this job
            # next, in order.
            job = await ingestion.process_job(runtime, stored.job_id)
        except Upstream as exc:
            await asyncio.to_thread(runtime.enqueue_ingestion, stored.job_id)
            raise Upstream(
                f"{exc.detail}. The {len(stored.turn_ids)} turns are stored and ingestion job "
                f"{stored.job_id} will be retried in the background."
            ) from exc
    accepted = TurnsAccepted(
        session_id=session_external_id,
        turn_ids=stored.turn_ids,
        ingestion_job_id=stored.job_id,
        status=JobStatus.queued,
    )
    if job is None:
        await asyncio.to_thread(runtime.enqueue_ingestion, stored.job_id)
        return accepted
    return accepted.model_copy(update={"status": job.status, "operations": job.operations})
