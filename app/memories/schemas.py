import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from app.core.schemas import NonEmptyText, StorableText, UtcDatetime


class MemoryCreate(BaseModel):
    text: NonEmptyText
    speaker: StorableText | None = Field(None, max_length=200)
    occurred_at: UtcDatetime | None = None


class MemoryUpdate(BaseModel):
    text: NonEmptyText | None = None
    speaker: StorableText | None = Field(None, max_length=200)
    occurred_at: UtcDatetime | None = None


class MemoryRead(BaseModel):
    id: uuid.UUID
    user_id: str
    speaker: str | None
    text: str
    occurred_at: datetime | None
    version: int
    source_turn_ids: list[uuid.UUID]
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None
    score: float | None = Field(None, description="Cosine similarity, on semantic search.")


class MemoryPage(BaseModel):
    items: list[MemoryRead]
    next_offset: int | None = Field(None, description="Pass as ?offset= for the next page.")


class MemoryEventRead(BaseModel):
    op: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    actor: str
    episode_id: uuid.UUID | None
    created_at: datetime
