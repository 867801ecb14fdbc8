import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from app.core.schemas import (
    AdapterChoice,
    ExternalIdField,
    ManagerChoice,
    NonEmptyText,
    UtcDatetime,
)


class TurnIn(BaseModel):
    speaker: NonEmptyText = Field(max_length=200, description="Who said it, e.g. 'user' or a name.")
    text: NonEmptyText
    occurred_at: UtcDatetime | None = Field(
        None, description="When it was said (ISO 8601). Defaults to the time it was received."
    )


class TurnsCreate(BaseModel):
    user_id: ExternalIdField
    turns: list[TurnIn] = Field(min_length=1)
    manager_adapter: ManagerChoice = "active"
    extractor_adapter: AdapterChoice = "active"


class TurnsAccepted(BaseModel):
    session_id: str
    turn_ids: list[uuid.UUID]
    ingestion_job_id: uuid.UUID
    status: str
    operations: list[dict[str, Any]] | None = Field(
        None, description="With wait=true: the memory operations applied."
    )


class TurnRead(BaseModel):
    id: uuid.UUID
    seq: int
    speaker: str
    text: str
    occurred_at: datetime | None
    created_at: datetime


class TurnPage(BaseModel):
    session_id: str
    user_id: str
    items: list[TurnRead]
    next_after_seq: int | None
