import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from app.feedback.schemas import FeedbackRead


class EpisodeRead(BaseModel):
    """One model decision as it was logged: what the agent saw, said, and what came of it."""

    id: uuid.UUID
    agent: str
    user_id: str | None
    prompt_version: str
    input: dict[str, Any]
    raw_output: str | None = Field(description="The model's reply, verbatim.")
    parsed: dict[str, Any] | None = Field(description="The reply as applied, overrides included.")
    error: str | None
    model: str
    adapter: str | None
    latency_ms: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    reward: float | None
    feedback: list[FeedbackRead]
    created_at: datetime
