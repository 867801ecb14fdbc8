import uuid
from typing import Annotated

from fastapi import APIRouter, Query, status

from app.core.deps import AdminPrincipal, DbSession, RuntimeDep
from app.training_jobs import service
from app.training_jobs.schemas import TrainingJobCreate, TrainingJobRead
from training.config import GRPOJobConfig

router = APIRouter(prefix="/admin", tags=["training"])


@router.post("/training-jobs", status_code=status.HTTP_202_ACCEPTED)
async def create_training_job(
    body: TrainingJobCreate, principal: AdminPrincipal, runtime: RuntimeDep
) -> TrainingJobRead:
    """Queue a GRPO + LoRA training run for one agent."""
    return await service.create_job(runtime, principal.tenant_id, body)


@router.get("/training-jobs")
async def list_training_jobs(
    principal: AdminPrincipal, db: DbSession, limit: Annotated[int, Query(ge=1, le=200)] = 50
) -> list[TrainingJobRead]:
    return await service.list_jobs(db, principal.tenant_id, limit)


@router.get("/training-jobs/{job_id}")
async def get_training_job(
    job_id: uuid.UUID, principal: AdminPrincipal, db: DbSession
) -> TrainingJobRead:
    return await service.get_job(db, principal.tenant_id, job_id)


@router.post("/training-jobs/{job_id}/cancel")
async def cancel_training_job(
    job_id: uuid.UUID, principal: AdminPrincipal, db: DbSession
) -> TrainingJobRead:
    return await service.cancel(db, principal.tenant_id, job_id)


@router.post("/training-jobs/{job_id}/retry", status_code=status.HTTP_202_ACCEPTED)
async def retry_training_job(
    job_id: uuid.UUID, principal: AdminPrincipal, runtime: RuntimeDep
) -> TrainingJobRead:
    """Queue a failed or cancelled job again; it trains from the start."""
    return await service.retry(runtime, principal.tenant_id, job_id)


@router.get("/training-params")
async def training_params(principal: AdminPrincipal) -> dict[str, str]:
    """Every GRPO parameter a job accepts in ``params``, with its meaning."""
    return GRPOJobConfig.help()
