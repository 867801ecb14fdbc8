import uuid

from fastapi import APIRouter

from app.core.deps import MemoryPrincipal, RuntimeDep
from app.ingestion import service
from app.ingestion.schemas import IngestionRead

router = APIRouter(tags=["ingestion"])


@router.get("/ingestions/{job_id}")
async def get_ingestion(
    job_id: uuid.UUID, principal: MemoryPrincipal, runtime: RuntimeDep
) -> IngestionRead:
    return await service.get_job(runtime, principal.tenant_id, job_id)
