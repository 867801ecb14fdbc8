import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import IngestionJob, JobStatus


async def create_job(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    user_id: uuid.UUID,
    session_id: uuid.UUID,
    turn_ids: list[uuid.UUID],
    manager_adapter: str,
) -> IngestionJob:
    job = IngestionJob(
        tenant_id=tenant_id,
        user_id=user_id,
        session_id=session_id,
        turn_ids=turn_ids,
        manager_adapter=manager_adapter,
        status=JobStatus.queued,
        attempts=0,
        result={"processed_turns": 0, "operations": []},
    )
    session.add(job)
    await session.flush()
    return job


async def get_job(
    session: AsyncSession, job_id: uuid.UUID, tenant_id: uuid.UUID | None = None
) -> IngestionJob | None:
    query = select(IngestionJob).where(IngestionJob.id == job_id)
    if tenant_id is not None:
        query = query.where(IngestionJob.tenant_id == tenant_id)
    return await session.scalar(query)


async def claim(
    session: AsyncSession, job_id: uuid.UUID, worker: str | None = None
) -> IngestionJob | None:
    """Queued -> running for the first unfinished job of ``job_id``'s user (a user's turns
    are ingested in the order they were posted, whatever their session): that job, which may
    be an earlier one than ``job_id``; None when the first unfinished job is already running
    (or none is left). Claimed at most once per delivery, recording ``worker``, the claiming
    worker's name."""
    of_job = select(IngestionJob.tenant_id, IngestionJob.user_id).where(IngestionJob.id == job_id)
    first = (
        select(IngestionJob.id)
        .where(
            tuple_(IngestionJob.tenant_id, IngestionJob.user_id).in_(of_job),
            IngestionJob.status.in_([JobStatus.queued, JobStatus.running]),
        )
        .order_by(IngestionJob.created_at, IngestionJob.id)
        .limit(1)
        .scalar_subquery()
    )
    return await session.scalar(
        update(IngestionJob)
        .where(IngestionJob.id == first, IngestionJob.status == JobStatus.queued)
        .values(
            status=JobStatus.running,
            attempts=IngestionJob.attempts + 1,
            worker=worker,
            started_at=datetime.now(UTC),
            heartbeat_at=datetime.now(UTC),
            error=None,
        )
        .returning(IngestionJob)
    )


def _held(job_id: uuid.UUID, attempt: int | None) -> Any:
    """The job's row while the claim numbered ``attempt`` still holds it (any row: None)."""
    where = IngestionJob.id == job_id
    if attempt is not None:
        where &= (IngestionJob.status == JobStatus.running) & (IngestionJob.attempts == attempt)
    return where


async def save_result(
    session: AsyncSession, job_id: uuid.UUID, result: dict[str, Any], attempt: int | None = None
) -> bool:
    """Record progress; False when the claim ``attempt`` lost the job (it was queued again)."""
    saved = await session.execute(
        update(IngestionJob)
        .where(_held(job_id, attempt))
        .values(result=result, heartbeat_at=datetime.now(UTC))
        .returning(IngestionJob.id)
    )
    return saved.first() is not None


async def heartbeat(session: AsyncSession, job_id: uuid.UUID, attempt: int) -> bool:
    beat = await session.execute(
        update(IngestionJob)
        .where(_held(job_id, attempt))
        .values(heartbeat_at=datetime.now(UTC))
        .returning(IngestionJob.id)
    )
    return beat.first() is not None


async def finish(
    session: AsyncSession,
    job_id: uuid.UUID,
    status: JobStatus,
    error: str | None = None,
    attempt: int | None = None,
) -> None:
    finished = datetime.now(UTC) if status != JobStatus.queued else None
    await session.execute(
        update(IngestionJob)
        .where(_held(job_id, attempt))
        .values(status=status, error=error, finished_at=finished)
    )


async def queued_job_ids(session: AsyncSession) -> Sequence[uuid.UUID]:
    query = select(IngestionJob.id).where(IngestionJob.status == JobStatus.queued)
    return (await session.scalars(query.order_by(IngestionJob.created_at))).all()


async def requeue_stale(
    session: AsyncSession, stale_after: timedelta, worker: str | None = None
) -> Sequence[uuid.UUID]:
    """Running jobs without a heartbeat for ``stale_after`` lost their worker (killed, or its
    machine went away): queue them again. So are, at once, the running jobs of ``worker``,
    a worker that is starting and so no longer runs them. They resume after their last
    recorded fact."""
    cutoff = datetime.now(UTC) - stale_after
    lost = IngestionJob.heartbeat_at < cutoff
    if worker is not None:
        lost |= IngestionJob.worker == worker
    stale = await session.scalars(
        update(IngestionJob)
        .where(IngestionJob.status == JobStatus.running, lost)
        .values(status=JobStatus.queued, error="its worker stopped mid-run; queued again")
        .returning(IngestionJob.id)
    )
    return stale.all()


async def requeue_failed(
    session: AsyncSession, job_id: uuid.UUID, tenant_id: uuid.UUID
) -> IngestionJob | None:
    """A failed job queued again with fresh attempts (it resumes after its last processed
    turn); None when the tenant has no such failed job."""
    return await session.scalar(
        update(IngestionJob)
        .where(
            IngestionJob.id == job_id,
            IngestionJob.tenant_id == tenant_id,
            IngestionJob.status == JobStatus.failed,
        )
        .values(status=JobStatus.queued, attempts=0, finished_at=None)
        .returning(IngestionJob)
    )
