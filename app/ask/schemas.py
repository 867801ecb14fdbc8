import uuid
from datetime import datetime

from pydantic import BaseModel, Field

from app.core.schemas import AdapterChoice, ExternalIdField, NonEmptyText


class AskRequest(BaseModel):
    user_id: ExternalIdField
    question: NonEmptyText
    top_k: int | None = Field(
        None,
        ge=1,
        le=60,
        description="Memories retrieved before distillation "
        "(default MEMR1_PIPELINE__ANSWER_TOP_K, 10).",
    )
    answer_adapter: AdapterChoice = "active"


class AskMemory(BaseModel):
    id: uuid.UUID
    text: str
    speaker: str | None
    occurred_at: datetime | None


class AskResponse(BaseModel):
    answer: str
    memories: list[AskMemory] = Field(description="The memories the Answer Agent selected.")
    retrieved: int = Field(description="How many memories were retrieved before selection.")
    episode_id: uuid.UUID = Field(description="Send feedback on this answer to POST /feedback.")
    model: str
    adapter: str | None
