from fastapi import APIRouter, status

from app.core.deps import DbSession, MemoryPrincipal
from app.feedback import service
from app.feedback.schemas import FeedbackCreate, FeedbackRead

router = APIRouter(tags=["feedback"])


@router.post("/feedback", status_code=status.HTTP_201_CREATED)
async def add_feedback(
    body: FeedbackCreate, principal: MemoryPrincipal, db: DbSession
) -> FeedbackRead:
    """Attach a gold answer or a rating to an episode (the reward for training)."""
    return await service.add_feedback(db, principal.tenant_id, body)
