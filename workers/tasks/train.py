"""Training task: claim the job, run GRPO in a spawned process, heartbeat, then register the
adapter and activate it when it wins on validation. A crash or a cancel leaves the job failed
or cancelled with the reason, and no adapter activated."""

import asyncio
import logging
import multiprocessing
import queue
import uuid
from dataclasses import dataclass, field
from typing import Any

from celery import shared_task
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.adapters import repository as adapters_repository
from app.adapters import service as adapters
from app.core.config import Settings, get_settings
from app.core.db import transaction
from app.core.tracing import TRAINING_JOB, tracer
from app.models import JobStatus, TrainingJob
from app.training_jobs import repository
from training.pipeline import JobSpec, run_job
from workers.celery_app import TRAIN_TASK
from workers.runtime import run, sessions

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0
MAX_EPISODES = 5000


@shared_task(name=TRAIN_TASK)
def train(job_id: str) -> None:
    with tracer.start_as_current_span(TRAINING_JOB, attributes={"memory_r1.job_id": job_id}):
        run(train_job(sessions(), get_settings(), uuid.UUID(job_id)))


@dataclass
class _Progress:
    metrics: dict[str, Any] = field(default_factory=dict)
    logs: list[str] = field(default_factory=list)
    result: dict[str, Any] | None = None
    error: str | None = None

    def take(self, events: Any) -> None:
        while True:
            try:
                kind, payload = events.get_nowait()
            except queue.Empty:
                return
            match kind:
                case "metrics":
                    # Step reports also build the history the console draws curves from.
                    history = self.metrics.get("history", [])
                    if "step" in payload:
                        history = [*history, payload]
                    self.metrics = {**self.metrics, **payload, "history": history}
                case "log":
                    self.logs.append(payload)
                case "result":
                    self.result = payload
                case "error":
                    self.error = payload


async def _spec(db: AsyncSession, settings: Settings, job: TrainingJob) -> JobSpec:
    episodes = []
    if job.source == "episodes":
        episodes = await repository.episodes_with_feedback(
            db, job.tenant_id, job.agent, MAX_EPISODES
        )
        users = sorted({uuid.UUID(e["user_id"]) for e in episodes if e["user_id"]})
        await repository.record_users(db, job.id, users)
    active = await adapters_repository.get_active(db, job.tenant_id, job.agent)
    name = f"{job.agent}-{job.id.hex[:12]}"
    return JobSpec(
        job_id=str(job.id),
        agent=job.agent,
        params=dict(job.params),
        dataset=job.dataset,
        validation_dataset=job.validation_dataset,
        episodes=episodes,
        adapter_name=name,
        output_dir=str(settings.adapter_root / str(job.tenant_id) / name),
        data_dir=str(settings.data_dir),
        serving=settings.llm,
        baseline_adapter_dir=active.path if active else None,
    )


async def train_job(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, job_id: uuid.UUID
) -> None:
    async with transaction(sessions) as db:
        job = await repository.claim(db, job_id)
        if job is None:
            log.info("training job %s is not queued; nothing to do", job_id)
            return
        spec = await _spec(db, settings, job)
    progress = _Progress()
    context = multiprocessing.get_context("spawn")
    events = context.Queue()
    process = context.Process(target=run_job, args=(spec, events), name=f"train-{job_id}")
    process.start()
    while True:
        alive = process.is_alive()
        progress.take(events)
        async with transaction(sessions) as db:
            cancel = await repository.heartbeat(
                db, job_id, job.attempts, progress.metrics, progress.logs
            )
        progress.logs = []
        if cancel is None:  # queued again by the sweep: another run owns it now
            log.warning("training job %s was queued again while it ran; stopping", job_id)
            process.terminate()
            process.join()
            return
        if cancel and alive:
            process.terminate()
            process.join()
            await _finish(sessions, job_id, JobStatus.cancelled, "cancelled on request", progress)
            return
        if not alive:
            break
        await asyncio.sleep(HEARTBEAT_S)
    process.join()
    progress.take(events)
    if progress.result is None:
        reason = progress.error or f"training process exited with code {process.exitcode}"
        await _finish(sessions, job_id, JobStatus.failed, reason, progress)
        return
    await _register(sessions, job, spec, progress.result, progress)


async def _finish(
    sessions: async_sessionmaker[AsyncSession],
    job_id: uuid.UUID,
    status: JobStatus,
    error: str | None,
    progress: _Progress,
    adapter_id: uuid.UUID | None = None,
) -> None:
    async with transaction(sessions) as db:
        await repository.finish(
            db, job_id, status, error=error, adapter_id=adapter_id, metrics=progress.metrics
        )


def _wins(job: TrainingJob, validation: dict[str, Any]) -> bool:
    if job.activate != "if_better":
        return job.activate == "always"
    return bool(validation["candidate"]["f1"] > validation["baseline"]["f1"])


async def _register(
    sessions: async_sessionmaker[AsyncSession],
    job: TrainingJob,
    spec: JobSpec,
    result: dict[str, Any],
    progress: _Progress,
) -> None:
    validation: dict[str, Any] = result.get("validation") or {}
    progress.metrics = {**progress.metrics, "validation": validation}
    async with transaction(sessions) as db:
        adapter = await adapters.register_candidate(
            db,
            tenant_id=job.tenant_id,
            agent=job.agent,
            name=spec.adapter_name,
            base_model=result["base_model"],
            path=result["adapter_dir"],
            rank=result["rank"],
            validation_metrics=validation or None,
            training_job_id=job.id,
        )
        if _wins(job, validation):
            await adapters.set_active(db, adapter)
        await repository.finish(
            db, job.id, JobStatus.succeeded, adapter_id=adapter.id, metrics=progress.metrics
        )
