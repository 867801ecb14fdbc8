"""The ``if_better`` gate, the API's default: a trained adapter is made active only when it
beat the one serving (the active adapter, or the base model) on the validation set; otherwise
it is kept as a candidate and the serving one stays."""

import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import select

from app.adapters import repository as adapters_repository
from app.core.db import transaction
from app.models import Adapter, AdapterStatus, JobStatus, TrainingJob
from app.training_jobs import repository
from tests.conftest import make_tenant
from workers.tasks.train import _Progress, _register


async def trained(runtime: Any, activate: str, candidate_f1: float) -> tuple[uuid.UUID, str]:
    """A tenant with an active answer adapter, and a finished run of one of its jobs whose
    candidate scored ``candidate_f1`` against that adapter's 0.30; the run is registered."""
    tenant = await make_tenant(runtime, f"gate-{uuid.uuid4().hex[:6]}")
    async with transaction(runtime.sessions) as db:
        serving = await adapters_repository.add(
            db,
            Adapter(
                tenant_id=tenant.tenant_id,
                agent="answer",
                name=f"serving-{uuid.uuid4().hex[:6]}",
                base_model="base",
                path="/adapters/serving",
                rank=8,
                status=AdapterStatus.active,
            ),
        )
        job = await repository.add(
            db,
            TrainingJob(
                tenant_id=tenant.tenant_id,
                agent="answer",
                algorithm="grpo",
                source="episodes",
                params={},
                activate=activate,
                status=JobStatus.queued,
                cancel_requested=False,
                attempts=0,
                logs="",
            ),
        )
        await repository.claim(db, job.id)
    validation = {"candidate": {"f1": candidate_f1}, "baseline": {"f1": 0.30}}
    result = {
        "validation": validation,
        "base_model": "base",
        "adapter_dir": "/adapters/candidate",
        "rank": 8,
    }
    spec = SimpleNamespace(adapter_name=f"candidate-{uuid.uuid4().hex[:6]}")
    await _register(runtime.sessions, job, spec, result, _Progress())  # type: ignore[arg-type]
    return job.id, serving.name


async def statuses(runtime: Any, job_id: uuid.UUID) -> tuple[str, dict[str, str]]:
    """The job's status, and its tenant's adapters' statuses by name ('candidate': the one
    it trained)."""
    async with transaction(runtime.sessions) as db:
        job = await db.get(TrainingJob, job_id)
        assert job is not None and job.adapter_id is not None
        rows = (await db.scalars(select(Adapter).where(Adapter.tenant_id == job.tenant_id))).all()
        named = {a.name: a.status for a in rows if a.id != job.adapter_id}
        [trained_status] = [a.status for a in rows if a.id == job.adapter_id]
        return job.status, named | {"candidate": trained_status}


@pytest.mark.parametrize(
    ("candidate_f1", "activated"),
    [(0.31, True), (0.30, False), (0.12, False)],
    ids=["better", "tie", "worse"],
)
async def test_if_better_activates_only_a_candidate_that_beat_the_serving_adapter(
    committed_runtime, candidate_f1: float, activated: bool
):
    job_id, serving = await trained(committed_runtime, "if_better", candidate_f1)

    status, adapters = await statuses(committed_runtime, job_id)

    assert status == JobStatus.succeeded
    if activated:
        assert adapters["candidate"] == AdapterStatus.active
        assert adapters[serving] == AdapterStatus.retired  # kept for a rollback
    else:
        assert adapters["candidate"] == AdapterStatus.candidate
        assert adapters[serving] == AdapterStatus.active
