from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from app.core.deps import DbSession, MemoryPrincipal, RuntimeDep
from app.core.schemas import MAX_INT, ExternalId
from app.models import JobStatus
from app.sessions import service
from app.sessions.schemas import TurnPage, TurnsAccepted, TurnsCreate

router = APIRouter(tags=["sessions"])


@router.post("/sessions/{session_id}/turns", status_code=status.HTTP_202_ACCEPTED)
async def post_turns(
    session_id: ExternalId,
    body: TurnsCreate,
    principal: MemoryPrincipal,
    runtime: RuntimeDep,
    response: Response,
    wait: Annotated[
        bool, Query(description="Process inline and return the memory operations applied.")
    ] = False,
) -> TurnsAccepted:
    """Store turns (committed before anything else), then ingest them into memories:
    in the background (202), or inline with ``wait=true`` (200). A user's turns are ingested
    in the order they were posted: while a worker is still ingesting the user's earlier
    turns, ``wait=true`` answers 202 too, and the job runs after them."""
    accepted = await service.post_turns(runtime, principal.tenant_id, session_id, body, wait)
    if wait and accepted.status != JobStatus.queued:
        response.status_code = status.HTTP_200_OK
    return accepted


@router.get("/sessions/{session_id}/turns")
async def list_turns(
    session_id: ExternalId,
    principal: MemoryPrincipal,
    db: DbSession,
    after_seq: Annotated[
        int, Query(ge=-1, le=MAX_INT, description="Return turns after this seq.")
    ] = -1,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> TurnPage:
    return await service.list_turns(db, principal.tenant_id, session_id, after_seq, limit)
