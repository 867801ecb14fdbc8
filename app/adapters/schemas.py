import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel


class AdapterRead(BaseModel):
    id: uuid.UUID
    # None: a global default, serving every tenant without an active adapter of its own.
    tenant_id: uuid.UUID | None
    agent: str
    name: str
    base_model: str
    path: str
    rank: int
    status: str
    validation_metrics: dict[str, Any] | None
    training_job_id: uuid.UUID | None
    created_at: datetime
    activated_at: datetime | None
