import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Agent, Episode, Feedback, JobStatus, MemoryEvent, TrainingJob


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
    """Episodes of ``agent`` that carry feedback, in the plain form training reads, newest
    feedback first. Manager episodes get theirs from the answers that used their memories
    (see ``_credited_manager_episodes``)."""
    if agent == Agent.manager:
        return await _credited_manager_episodes(session, tenant_id, limit)
    rows = await session.execute(
        select(Episode, Feedback)
        .join(Feedback, Feedback.episode_id == Episode.id)
        .where(Episode.tenant_id == tenant_id, Episode.agent == agent, Episode.error.is_(None))
        .order_by(Feedback.created_at.desc())
        .limit(limit)
    )
    return [
        _plain(episode, {"gold_answer": feedback.gold_answer, "rating": feedback.rating})
        for episode, feedback in rows.all()
    ]


async def _credited_manager_episodes(
    session: AsyncSession, tenant_id: uuid.UUID, limit: int
) -> list[dict[str, Any]]:
    """The Manager's share of answer feedback. An answer given a gold answer credits, for each
    memory it selected, the Manager episode that wrote the version it read (the memory's
    last pipeline write before the answer). That episode's feedback is then the answer's
    question and gold answer: training replays the decision on the bank the Manager was
    shown and scores whether the bank it leaves answers that question (the Memory-R1
    outcome reward). Memories written by hand credit nobody."""
    answers = (
        await session.execute(
            select(Episode, Feedback)
            .join(Feedback, Feedback.episode_id == Episode.id)
            .where(
                Episode.tenant_id == tenant_id,
                Episode.agent == Agent.answer,
                Episode.error.is_(None),
                Feedback.gold_answer.is_not(None),
            )
            .order_by(Feedback.created_at.desc())
            .limit(limit)
        )
    ).all()
    used: list[tuple[Episode, str, list[uuid.UUID]]] = []
    for answer, feedback in answers:
        by_key = {m["key"]: uuid.UUID(m["id"]) for m in answer.input.get("memories", [])}
        selected = (answer.parsed or {}).get("selected", [])
        memories = [by_key[key] for key in selected if key in by_key]
        used.append((answer, str(feedback.gold_answer), memories))
    memory_ids = {memory_id for _, _, ids in used for memory_id in ids}
    if not memory_ids:
        return []
    writes: dict[uuid.UUID, list[tuple[datetime, uuid.UUID]]] = {}  # memory -> in order
    for memory_id, episode_id, at in await session.execute(
        select(MemoryEvent.memory_id, MemoryEvent.episode_id, MemoryEvent.created_at)
        .where(
            MemoryEvent.tenant_id == tenant_id,
            MemoryEvent.memory_id.in_(memory_ids),
            MemoryEvent.episode_id.is_not(None),
        )
        .order_by(MemoryEvent.id)
    ):
        if episode_id is not None:
            writes.setdefault(memory_id, []).append((at, episode_id))
    credited: list[tuple[uuid.UUID, str, str]] = []  # (manager episode, question, gold)
    for answer, gold, ids in used:
        for memory_id in ids:
            read = [e for at, e in writes.get(memory_id, []) if at <= answer.created_at]
            if read:
                credited.append((read[-1], answer.input["question"], gold))
    managers = {
        episode.id: episode
        for episode in await session.scalars(
            select(Episode).where(
                Episode.tenant_id == tenant_id,
                Episode.agent == Agent.manager,
                Episode.error.is_(None),
                Episode.id.in_({episode_id for episode_id, _, _ in credited}),
            )
        )
    }
    return [
        _plain(managers[episode_id], {"question": question, "gold_answer": gold})
        for episode_id, question, gold in credited[:limit]
        if episode_id in managers
    ]


def _plain(episode: Episode, feedback: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(episode.id),
        "user_id": str(episode.user_id) if episode.user_id else None,
        "agent": episode.agent,
        "input": episode.input,
        "output": episode.parsed,
        "feedback": feedback,
    }


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
