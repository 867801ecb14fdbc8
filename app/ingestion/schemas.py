import uuid
from datetime import datetime
from typing import Any, Self

from pydantic import BaseModel, Field

from app.models import IngestionJob


class IngestionRead(BaseModel):
    id: uuid.UUID
    status: str
    attempts: int
    error: str | None
    turn_count: int
    processed_turns: int
    operations: list[dict[str, Any]]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_job(cls, job: IngestionJob) -> Self:
        result = job.result or {}
        return cls(
            id=job.id,
            status=job.status,
            attempts=job.attempts,
            error=job.error,
            turn_count=len(job.turn_ids),
            processed_turns=result.get("processed_turns", 0),
            operations=result.get("operations", []),
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
        )


class IngestionPage(BaseModel):
    items: list[IngestionRead]
    next_offset: int | None = Field(None, description="Pass as ?offset= for the next page.")
