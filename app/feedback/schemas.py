import uuid
from datetime import datetime
from typing import Self

from pydantic import BaseModel, Field, model_validator

from app.core.schemas import NonEmptyText


class FeedbackCreate(BaseModel):
    episode_id: uuid.UUID
    gold_answer: NonEmptyText | None = Field(None, max_length=2000)
    rating: int | None = Field(None, ge=-1, le=1, description="1 good, 0 neutral, -1 bad.")

    @model_validator(mode="after")
    def _one_signal(self) -> Self:
        if self.gold_answer is None and self.rating is None:
            raise ValueError("send gold_answer, rating, or both")
        return self


class FeedbackRead(BaseModel):
    id: uuid.UUID
    episode_id: uuid.UUID
    gold_answer: str | None
    rating: int | None
    created_at: datetime
