import uuid
from typing import Annotated

from fastapi import APIRouter, Query, status

from app.core.deps import MemoryPrincipal, RuntimeDep
from app.core.schemas import MAX_INT, ExternalId
from app.ingestion import service
from app.ingestion.schemas import IngestionPage, IngestionRead
from app.sessions.schemas import TurnRead

router = APIRouter(tags=["ingestion"])


@router.get("/users/{user_id}/ingestions")
async def list_ingestions(
    user_id: ExternalId,
    principal: MemoryPrincipal,
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
) -> IngestionPage:
    """The user's ingestion jobs, newest first."""
    return await service.list_jobs(runtime, principal.tenant_id, user_id, limit, offset)


@router.get("/ingestions/{job_id}")
async def get_ingestion(
    job_id: uuid.UUID, principal: MemoryPrincipal, runtime: RuntimeDep
) -> IngestionRead:
    return await service.get_job(runtime, principal.tenant_id, job_id)


@router.get("/ingestions/{job_id}/turns")
async def ingestion_turns(
    job_id: uuid.UUID, principal: MemoryPrincipal, runtime: RuntimeDep
) -> list[TurnRead]:
    """The turns the job ingests, in session order."""
    return await service.job_turns(runtime, principal.tenant_id, job_id)


@router.post("/ingestions/{job_id}/retry", status_code=status.HTTP_202_ACCEPTED)
async def retry_ingestion(
    job_id: uuid.UUID, principal: MemoryPrincipal, runtime: RuntimeDep
) -> IngestionRead:
    """Queue a failed job again; it resumes after the last fact it processed."""
    return await service.retry_job(runtime, principal.tenant_id, job_id)
