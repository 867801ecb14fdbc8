import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, tuple_, update
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
    extractor_adapter: str,
) -> IngestionJob:
    job = IngestionJob(
        tenant_id=tenant_id,
        user_id=user_id,
        session_id=session_id,
        turn_ids=turn_ids,
        manager_adapter=manager_adapter,
        extractor_adapter=extractor_adapter,
        status=JobStatus.queued,
        attempts=0,
        # The clock, not the transaction's start: a user's jobs run in this order, and two
        # created in one transaction must not tie.
        created_at=datetime.now(UTC),
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


async def list_for_user(
    session: AsyncSession, tenant_id: uuid.UUID, user_id: uuid.UUID, limit: int, offset: int
) -> Sequence[IngestionJob]:
    query = (
        select(IngestionJob)
        .where(IngestionJob.tenant_id == tenant_id, IngestionJob.user_id == user_id)
        .order_by(IngestionJob.created_at.desc(), IngestionJob.id)
        .limit(limit)
        .offset(offset)
    )
    return (await session.scalars(query)).all()


async def claim(
    session: AsyncSession, job_id: uuid.UUID, worker: str | None = None
) -> IngestionJob | None:
    """Queued -> running for the first unfinished job of ``job_id``'s user (a user's turns
    are ingested in the order they were posted, whatever their session): that job, which may
    be an earlier one than ``job_id``; None when the first unfinished job is already running,
    is waiting out its retry backoff (see ``retry_wait``), or none is left. Claimed at most
    once per delivery, recording ``worker``, the claiming worker's name."""
    first = _first_unfinished(job_id, IngestionJob.id).scalar_subquery()
    due = IngestionJob.retry_at.is_(None) | (IngestionJob.retry_at <= func.now())
    return await session.scalar(
        update(IngestionJob)
        .where(IngestionJob.id == first, IngestionJob.status == JobStatus.queued, due)
        .values(
            status=JobStatus.running,
            attempts=IngestionJob.attempts + 1,
            worker=worker,
            retry_at=None,
            started_at=datetime.now(UTC),
            heartbeat_at=datetime.now(UTC),
            error=None,
        )
        .returning(IngestionJob)
    )


def _first_unfinished(job_id: uuid.UUID, *columns: Any) -> Any:
    """``columns`` of the first unfinished job of ``job_id``'s user, in posted order."""
    of_job = select(IngestionJob.tenant_id, IngestionJob.user_id).where(IngestionJob.id == job_id)
    return (
        select(*columns)
        .where(
            tuple_(IngestionJob.tenant_id, IngestionJob.user_id).in_(of_job),
            IngestionJob.status.in_([JobStatus.queued, JobStatus.running]),
        )
        .order_by(IngestionJob.created_at, IngestionJob.id)
        .limit(1)
    )


async def retry_wait(session: AsyncSession, job_id: uuid.UUID) -> float | None:
    """Seconds until the first unfinished job of ``job_id``'s user may be claimed, when it is
    queued (0 when it may be now); None when it runs (its worker goes on to the next jobs)
    or none is left."""
    row = (
        await session.execute(
            _first_unfinished(
                job_id,
                IngestionJob.status,
                func.extract("epoch", IngestionJob.retry_at - func.now()),
            )
        )
    ).first()
    if row is None or row[0] != JobStatus.queued:
        return None
    return max(float(row[1] or 0), 0.0)


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
    retry_after: timedelta | None = None,
) -> None:
    """End the run: succeeded or failed, or queued again, to be claimed no sooner than
    ``retry_after`` from now."""
    finished = datetime.now(UTC) if status != JobStatus.queued else None
    retry_at = datetime.now(UTC) + retry_after if retry_after is not None else None
    await session.execute(
        update(IngestionJob)
        .where(_held(job_id, attempt))
        .values(status=status, error=error, finished_at=finished, retry_at=retry_at)
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


async def overdue_retries(session: AsyncSession, overdue_after: timedelta) -> Sequence[uuid.UUID]:
    """Jobs queued for a retry that nobody claimed for ``overdue_after`` after they were due
    (their message was lost, with a broker that went down, say): due again from now, to be
    sent again."""
    cutoff = datetime.now(UTC) - overdue_after
    overdue = await session.scalars(
        update(IngestionJob)
        .where(IngestionJob.status == JobStatus.queued, IngestionJob.retry_at < cutoff)
        .values(retry_at=func.now())
        .returning(IngestionJob.id)
    )
    return overdue.all()


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
