import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Episode, Feedback, JobStatus, TrainingJob


async def add(session: AsyncSession, job: TrainingJob) -> TrainingJob:
    session.add(job)
    await session.flush()
    await session.refresh(job)
    return job


async def get(
    session: AsyncSession, job_id: uuid.UUID, tenant_id: uuid.UUID | None = None
) -> TrainingJob | None:
    query = select(TrainingJob).where(TrainingJob.id == job_id)
    if tenant_id is not None:
        query = query.where(TrainingJob.tenant_id == tenant_id)
    return await session.scalar(query)


async def list_jobs(
    session: AsyncSession, tenant_id: uuid.UUID, limit: int
) -> Sequence[TrainingJob]:
    query = (
        select(TrainingJob)
        .where(TrainingJob.tenant_id == tenant_id)
        .order_by(TrainingJob.created_at.desc())
        .limit(limit)
    )
    return (await session.scalars(query)).all()


async def claim(session: AsyncSession, job_id: uuid.UUID) -> TrainingJob | None:
    """Queued -> running exactly once; a redelivered message finds nothing to claim."""
    now = datetime.now(UTC)
    return await session.scalar(
        update(TrainingJob)
        .where(TrainingJob.id == job_id, TrainingJob.status == JobStatus.queued)
        .values(
            status=JobStatus.running,
            started_at=now,
            heartbeat_at=now,
            attempts=TrainingJob.attempts + 1,
            error=None,
        )
        .returning(TrainingJob)
    )


async def request_cancel(session: AsyncSession, tenant_id: uuid.UUID, job_id: uuid.UUID) -> None:
    await session.execute(
        update(TrainingJob)
        .where(TrainingJob.tenant_id == tenant_id, TrainingJob.id == job_id)
        .values(cancel_requested=True)
    )


async def cancel_if_queued(session: AsyncSession, job_id: uuid.UUID) -> bool:
    result = await session.execute(
        update(TrainingJob)
        .where(TrainingJob.id == job_id, TrainingJob.status == JobStatus.queued)
        .values(status=JobStatus.cancelled, finished_at=datetime.now(UTC), error="cancelled")
        .returning(TrainingJob.id)
    )
    return result.first() is not None


async def heartbeat(
    session: AsyncSession,
    job_id: uuid.UUID,
    attempt: int,
    metrics: dict[str, Any] | None,
    log_lines: list[str],
) -> bool | None:
    """Record liveness and progress; returns whether a cancel was requested, or None when
    the run numbered ``attempt`` no longer holds the job (the sweep queued it again)."""
    values: dict[str, Any] = {"heartbeat_at": datetime.now(UTC)}
    if metrics is not None:
        values["metrics"] = metrics
    if log_lines:
        values["logs"] = TrainingJob.logs + "".join(line + "\n" for line in log_lines)
    held = (TrainingJob.status == JobStatus.running) & (TrainingJob.attempts == attempt)
    cancel = await session.scalar(
        update(TrainingJob)
        .where(TrainingJob.id == job_id, held)
        .values(**values)
        .returning(TrainingJob.cancel_requested)
    )
    return cancel


async def finish(
    session: AsyncSession,
    job_id: uuid.UUID,
    status: JobStatus,
    *,
    error: str | None = None,
    adapter_id: uuid.UUID | None = None,
    metrics: dict[str, Any] | None = None,
) -> None:
    values: dict[str, Any] = {"status": status, "error": error, "finished_at": datetime.now(UTC)}
    if adapter_id is not None:
        values["adapter_id"] = adapter_id
    if metrics is not None:
        values["metrics"] = metrics
    await session.execute(update(TrainingJob).where(TrainingJob.id == job_id).values(**values))


async def episodes_with_feedback(
    session: AsyncSession, tenant_id: uuid.UUID, agent: str, limit: int
) -> list[dict[str, Any]]:
    """Episodes of ``agent`` that carry feedback, in the plain form training reads."""
    rows = await session.execute(
        select(Episode, Feedback)
        .join(Feedback, Feedback.episode_id == Episode.id)
        .where(Episode.tenant_id == tenant_id, Episode.agent == agent, Episode.error.is_(None))
        .order_by(Feedback.created_at.desc())
        .limit(limit)
    )
    return [
        {
            "id": str(episode.id),
            "user_id": str(episode.user_id) if episode.user_id else None,
            "agent": episode.agent,
            "input": episode.input,
            "output": episode.parsed,
            "feedback": {"gold_answer": feedback.gold_answer, "rating": feedback.rating},
        }
        for episode, feedback in rows.all()
    ]


async def requeue_stale(
    session: AsyncSession, stale_after: timedelta, max_attempts: int
) -> Sequence[uuid.UUID]:
    """Running jobs without a heartbeat for ``stale_after`` lost their worker: queue them
    again (training starts over), or fail those that have had ``max_attempts`` runs."""
    stale = (TrainingJob.status == JobStatus.running) & (
        TrainingJob.heartbeat_at < datetime.now(UTC) - stale_after
    )
    await session.execute(
        update(TrainingJob)
        .where(stale, TrainingJob.attempts >= max_attempts)
        .values(
            status=JobStatus.failed,
            finished_at=datetime.now(UTC),
            error=f"its worker stopped mid-run in each of its {max_attempts} runs",
        )
    )
    queued = await session.scalars(
        update(TrainingJob)
        .where(stale)
        .values(status=JobStatus.queued, error="its worker stopped mid-run; queued again")
        .returning(TrainingJob.id)
    )
    return queued.all()


async def requeue_ended(
    session: AsyncSession, job_id: uuid.UUID, tenant_id: uuid.UUID
) -> TrainingJob | None:
    """A failed or cancelled job queued again to run from the start; None when the tenant
    has no such job."""
    return await session.scalar(
        update(TrainingJob)
        .where(
            TrainingJob.id == job_id,
            TrainingJob.tenant_id == tenant_id,
            TrainingJob.status.in_([JobStatus.failed, JobStatus.cancelled]),
        )
        .values(status=JobStatus.queued, attempts=0, cancel_requested=False, finished_at=None)
        .returning(TrainingJob)
    )


async def record_users(session: AsyncSession, job_id: uuid.UUID, user_ids: list[uuid.UUID]) -> None:
    await session.execute(
        update(TrainingJob).where(TrainingJob.id == job_id).values(trained_on_users=user_ids)
    )
