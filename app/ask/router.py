from fastapi import APIRouter

from app.ask import service
from app.ask.schemas import AskRequest, AskResponse
from app.core.deps import MemoryPrincipal, RuntimeDep

router = APIRouter(tags=["ask"])


@router.post("/ask")
async def ask(body: AskRequest, principal: MemoryPrincipal, runtime: RuntimeDep) -> AskResponse:
    """Answer a question from the user's memories (Memory-R1 Answer Agent)."""
    return await service.ask(runtime, principal.tenant_id, body)
