import uuid

from fastapi import APIRouter, status

from app.core.deps import MemoryPrincipal, RuntimeDep
from app.ingestion import service
from app.ingestion.schemas import IngestionRead

router = APIRouter(tags=["ingestion"])


@router.get("/ingestions/{job_id}")
async def get_ingestion(
    job_id: uuid.UUID, principal: MemoryPrincipal, runtime: RuntimeDep
) -> IngestionRead:
    return await service.get_job(runtime, principal.tenant_id, job_id)


@router.post("/ingestions/{job_id}/retry", status_code=status.HTTP_202_ACCEPTED)
async def retry_ingestion(
    job_id: uuid.UUID, principal: MemoryPrincipal, runtime: RuntimeDep
) -> IngestionRead:
    """Queue a failed job again; it resumes after the last fact it processed."""
    return await service.retry_job(runtime, principal.tenant_id, job_id)
