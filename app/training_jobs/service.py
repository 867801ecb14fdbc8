"""Training jobs: validated and stored here, run by a worker (workers/tasks/train.py)."""

import asyncio
import uuid
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db import transaction
from app.core.errors import Conflict, NotFound, Unprocessable
from app.core.runtime import Runtime
from app.models import JobStatus, TrainingJob
from app.training_jobs import repository
from app.training_jobs.schemas import TrainingJobCreate, TrainingJobRead
from training.config import GRPOJobConfig


def dataset_path(roots: list[Path], name: str, path: str) -> str:
    """``path`` resolved inside one of the configured dataset folders (a relative path inside
    the first), as the absolute path the worker will read; links are followed before the
    check, so none leads out."""
    given = Path(path)
    resolved = (given if given.is_absolute() else roots[0] / given).resolve()
    inside = any(resolved.is_relative_to(root.resolve()) for root in roots)
    if not inside or not resolved.is_file():
        folders = ", ".join(str(root) for root in roots)
        raise Unprocessable(
            f"{name} {path!r} is not a file in the dataset folders ({folders}); put it there, "
            "or add its folder to MEMR1_DATASET_DIRS"
        )
    return str(resolved)


def _check(body: TrainingJobCreate, roots: list[Path], max_rank: int) -> TrainingJobCreate:
    """``body`` with its dataset paths resolved, or Unprocessable saying what to fix."""
    try:
        # Paths are chosen by the worker; placeholders let the rest of the config be checked now.
        config = GRPOJobConfig.from_params(
            body.params, agent=body.agent, output_dir=Path("."), base_model_dir=Path(".")
        )
    except (TypeError, ValueError) as exc:
        raise Unprocessable(f"params: {exc}") from exc
    if config.lora_r > max_rank:
        raise Unprocessable(
            f"params: lora_r {config.lora_r} is above the largest rank serving loads "
            f"(MEMR1_LLM__MAX_LORA_RANK={max_rank}); the adapter could never be activated"
        )
    if body.source == "dataset" and not body.dataset:
        raise Unprocessable("source 'dataset' needs 'dataset': a LoCoMo-format JSON file path")
    if body.activate == "if_better" and not body.validation_dataset:
        raise Unprocessable(
            "activate 'if_better' compares adapters on a validation set: give "
            "'validation_dataset', or set activate to 'always' or 'never'"
        )
    paths = {"dataset": body.dataset, "validation_dataset": body.validation_dataset}
    resolved = {name: dataset_path(roots, name, path) for name, path in paths.items() if path}
    return body.model_copy(update=resolved)


async def create_job(
    runtime: Runtime, tenant_id: uuid.UUID, body: TrainingJobCreate
) -> TrainingJobRead:
    """Store the job, commit, then enqueue it."""
    body = _check(body, runtime.settings.dataset_roots, runtime.settings.llm.max_lora_rank)
    async with transaction(runtime.sessions) as db:
        job = await repository.add(
            db,
            TrainingJob(
                tenant_id=tenant_id,
                agent=body.agent,
                algorithm=body.algorithm,
                source=body.source,
                dataset=body.dataset,
                validation_dataset=body.validation_dataset,
                params=body.params,
                activate=body.activate,
                status=JobStatus.queued,
                cancel_requested=False,
                logs="",
            ),
        )
    await asyncio.to_thread(runtime.enqueue_training, job.id)
    return TrainingJobRead.from_job(job)


async def get_job(db: AsyncSession, tenant_id: uuid.UUID, job_id: uuid.UUID) -> TrainingJobRead:
    job = await repository.get(db, job_id, tenant_id)
    if job is None:
        raise NotFound(f"training job {job_id} not found")
    return TrainingJobRead.from_job(job)


async def list_jobs(db: AsyncSession, tenant_id: uuid.UUID, limit: int) -> list[TrainingJobRead]:
    return [TrainingJobRead.from_job(j) for j in await repository.list_jobs(db, tenant_id, limit)]


async def cancel(db: AsyncSession, tenant_id: uuid.UUID, job_id: uuid.UUID) -> TrainingJobRead:
    job = await repository.get(db, job_id, tenant_id)
    if job is None:
        raise NotFound(f"training job {job_id} not found")
    if job.status not in (JobStatus.queued, JobStatus.running):
        raise Conflict(f"training job {job_id} is already {job.status}")
    if not await repository.cancel_if_queued(db, job_id):
        # Running: the worker sees the request at its next heartbeat and stops the run.
        await repository.request_cancel(db, tenant_id, job_id)
    await db.refresh(job)
    return TrainingJobRead.from_job(job)


async def retry(runtime: Runtime, tenant_id: uuid.UUID, job_id: uuid.UUID) -> TrainingJobRead:
    async with transaction(runtime.sessions) as db:
        job = await repository.requeue_ended(db, job_id, tenant_id)
        if job is None:
            current = await repository.get(db, job_id, tenant_id)
            if current is None:
                raise NotFound(f"training job {job_id} not found")
            raise Conflict(
                f"training job {job_id} is {current.status}; only a failed or cancelled job "
                "is retried"
            )
    await asyncio.to_thread(runtime.enqueue_training, job.id)
    return TrainingJobRead.from_job(job)
