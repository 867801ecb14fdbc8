import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from app.core.schemas import StorableJson, StorableText
from app.models import TrainingJob


class TrainingJobCreate(BaseModel):
    agent: Literal["answer", "manager"]
    algorithm: Literal["grpo"] = "grpo"
    source: Literal["episodes", "dataset"]
    dataset: StorableText | None = Field(
        None,
        description="source=dataset: path (on the worker) of a LoCoMo-format JSON file.",
    )
    validation_dataset: StorableText | None = Field(
        None,
        description="LoCoMo-format JSON file the adapter is evaluated on before activation.",
    )
    params: StorableJson = Field(
        default_factory=dict, description="GRPO settings; see GET /admin/training-params."
    )
    activate: Literal["if_better", "always", "never"] = "if_better"


class TrainingJobRead(BaseModel):
    id: uuid.UUID
    agent: str
    algorithm: str
    source: str
    dataset: str | None
    validation_dataset: str | None
    params: dict[str, Any]
    activate: str
    status: str
    cancel_requested: bool
    attempts: int
    heartbeat_at: datetime | None
    metrics: dict[str, Any] | None
    log_tail: str
    error: str | None
    adapter_id: uuid.UUID | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_job(cls, job: TrainingJob, tail_lines: int = 40) -> "TrainingJobRead":
        return cls(
            id=job.id,
            agent=job.agent,
            algorithm=job.algorithm,
            source=job.source,
            dataset=job.dataset,
            validation_dataset=job.validation_dataset,
            params=job.params,
            activate=job.activate,
            status=job.status,
            cancel_requested=job.cancel_requested,
            attempts=job.attempts or 0,
            heartbeat_at=job.heartbeat_at,
            metrics=job.metrics,
            log_tail="\n".join(job.logs.splitlines()[-tail_lines:]),
            error=job.error,
            adapter_id=job.adapter_id,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
        )
