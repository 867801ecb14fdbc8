"""Jobs whose worker stopped are found and queued again while the system runs; a run that lost
its job stops writing; a database that went away queues the job for a retry instead of failing
it."""

import asyncio
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import OperationalError

from app.core.config import PipelineSettings
from app.core.db import transaction
from app.ingestion import repository
from app.ingestion import service as ingestion
from app.models import IngestionJob, JobStatus, Memory, TrainingJob
from app.sessions import service as sessions
from app.training_jobs import repository as training_repository
from tests.conftest import make_tenant
from tests.fixtures.fake_llm import FakeLLM
from tests.ingestion.test_pipeline import andrew_said, fact_per_turn
from workers import sweep as sweep_module


def tuned(runtime: Any, **pipeline: Any) -> None:
    runtime.settings = runtime.settings.model_copy(
        update={
            "pipeline": PipelineSettings(**{**runtime.settings.pipeline.model_dump(), **pipeline})
        }
    )


async def age(runtime: Any, model: Any, job_id: uuid.UUID, seconds: float) -> None:
    async with transaction(runtime.sessions) as db:
        await db.execute(
            update(model)
            .where(model.id == job_id)
            .values(heartbeat_at=func.now() - timedelta(seconds=seconds))
        )


async def training_job(runtime: Any, tenant_id: uuid.UUID, attempts: int) -> uuid.UUID:
    async with transaction(runtime.sessions) as db:
        job = await training_repository.add(
            db,
            TrainingJob(
                tenant_id=tenant_id,
                agent="answer",
                algorithm="grpo",
                source="episodes",
                params={},
                activate="never",
                status=JobStatus.queued,
                cancel_requested=False,
                attempts=attempts,
                logs="",
            ),
        )
        await training_repository.claim(db, job.id)
        return job.id


async def test_the_sweep_queues_again_and_sends_what_lost_its_worker(
    committed_runtime, monkeypatch
):
    runtime = committed_runtime
    tuned(runtime, stale_after_s=30, training_max_attempts=2)
    tenant = await make_tenant(runtime, f"sweep-{uuid.uuid4().hex[:6]}")
    stale = await sessions.accept_turns(runtime, tenant.tenant_id, "a", andrew_said(["hi"]))
    bob = andrew_said(["hi"]).model_copy(update={"user_id": "bob"})
    lively = await sessions.accept_turns(runtime, tenant.tenant_id, "b", bob)
    async with transaction(runtime.sessions) as db:
        await repository.claim(db, stale.job_id)
        await repository.claim(db, lively.job_id)
    await age(runtime, IngestionJob, stale.job_id, 31)
    await age(runtime, IngestionJob, lively.job_id, 10)
    first_run = await training_job(runtime, tenant.tenant_id, attempts=0)  # now at run 1
    last_run = await training_job(runtime, tenant.tenant_id, attempts=1)  # now at run 2
    for job_id in (first_run, last_run):
        await age(runtime, TrainingJob, job_id, 31)

    sent: list[tuple[str, uuid.UUID]] = []
    monkeypatch.setattr(sweep_module, "enqueue_ingestion", lambda j: sent.append(("ingest", j)))
    monkeypatch.setattr(sweep_module, "enqueue_training", lambda j: sent.append(("train", j)))
    await sweep_module.sweep(runtime.sessions, runtime.settings)

    assert ("ingest", stale.job_id) in sent and ("ingest", lively.job_id) not in sent
    assert ("train", first_run) in sent and ("train", last_run) not in sent
    async with transaction(runtime.sessions) as db:
        status = {
            job.id: (job.status, job.error)
            for job in await db.scalars(
                select(TrainingJob).where(TrainingJob.tenant_id == tenant.tenant_id)
            )
        }
        assert (await db.get(IngestionJob, lively.job_id)).status == JobStatus.running
    assert status[first_run][0] == JobStatus.queued
    assert status[last_run] == (
        JobStatus.failed,
        "its worker stopped mid-run in each of its 2 runs",
    )
    # A second sweep finds nothing more to do.
    sent.clear()
    await sweep_module.sweep(runtime.sessions, runtime.settings)
    assert [s for s in sent if s[1] in (stale.job_id, first_run)] == []


class SweptAway(FakeLLM):
    """After the first Manager call, the sweep takes the job away from this run."""

    def __init__(self, runtime: Any, job_id: uuid.UUID) -> None:
        super().__init__(responder=fact_per_turn)
        self.runtime, self.job_id, self.manager_calls = runtime, job_id, 0

    async def complete(self, messages: list[dict[str, str]], **kwargs: Any) -> Any:
        reply = await super().complete(messages, **kwargs)
        if reply.parsed and "operations" in reply.parsed:
            self.manager_calls += 1
            if self.manager_calls == 1:
                async with transaction(self.runtime.sessions) as db:
                    await db.execute(
                        update(IngestionJob)
                        .where(IngestionJob.id == self.job_id)
                        .values(status=JobStatus.queued)
                    )
        return reply


async def test_a_run_that_lost_its_job_stops_writing(committed_runtime):
    runtime = committed_runtime
    tuned(runtime, extract_concurrency=1)
    tenant = await make_tenant(runtime, f"lost-{uuid.uuid4().hex[:6]}")
    texts = [f"I visited city number {i}." for i in range(3)]
    stored = await sessions.accept_turns(runtime, tenant.tenant_id, "a", andrew_said(texts))
    runtime.llm = SweptAway(runtime, stored.job_id)
    assert await ingestion.process_job(runtime, stored.job_id) is None
    async with transaction(runtime.sessions) as db:
        job = await db.get(IngestionJob, stored.job_id)
        kept = (await db.scalars(select(Memory).where(Memory.tenant_id == tenant.tenant_id))).all()
    # The first fact's operation is written with its progress record, which found the job
    # gone: nothing was written.
    assert job.status == JobStatus.queued and job.result["processed_turns"] == 0
    assert kept == [] and runtime.llm.manager_calls == 1
    # The next run (the one the sweep sent) picks the job up.
    runtime.llm = FakeLLM(responder=fact_per_turn)
    result = await ingestion.process_job(runtime, stored.job_id)
    assert result is not None and result.status == "succeeded" and result.processed_turns == 3


async def test_a_running_job_heartbeats_while_the_model_works(committed_runtime):
    runtime = committed_runtime
    tuned(runtime, heartbeat_s=0.05)
    tenant = await make_tenant(runtime, f"beat-{uuid.uuid4().hex[:6]}")
    stored = await sessions.accept_turns(runtime, tenant.tenant_id, "a", andrew_said(["hi"]))

    class Slow(FakeLLM):
        async def complete(self, messages: list[dict[str, str]], **kwargs: Any) -> Any:
            await asyncio.sleep(0.5)
            return await super().complete(messages, **kwargs)

    runtime.llm = Slow(responder=fact_per_turn)
    run = asyncio.create_task(ingestion.process_job(runtime, stored.job_id))
    await asyncio.sleep(0.2)
    async with transaction(runtime.sessions) as db:
        claimed = (await db.get(IngestionJob, stored.job_id)).heartbeat_at
    await asyncio.sleep(0.2)
    async with transaction(runtime.sessions) as db:
        later = (await db.get(IngestionJob, stored.job_id)).heartbeat_at
    assert later > claimed  # no turn finished yet: the beat came from the heartbeat
    assert (await run).status == "succeeded"


async def test_a_database_that_went_away_queues_the_job_for_a_retry(committed_runtime):
    runtime = committed_runtime
    tenant = await make_tenant(runtime, f"dbgone-{uuid.uuid4().hex[:6]}")
    stored = await sessions.accept_turns(runtime, tenant.tenant_id, "a", andrew_said(["hi"]))
    runtime.llm = FakeLLM([OperationalError("SELECT 1", {}, ConnectionResetError("gone"))])
    try:
        await ingestion.process_job(runtime, stored.job_id)
    except OperationalError:
        pass
    job = await ingestion.get_job(runtime, tenant.tenant_id, stored.job_id)
    assert job.status == "queued" and "database unavailable" in (job.error or "")


async def test_the_sweep_sends_again_a_retry_nobody_claimed_long_after_it_was_due(
    committed_runtime, monkeypatch
):
    runtime = committed_runtime
    tuned(runtime, stale_after_s=30)
    tenant = await make_tenant(runtime, f"overdue-{uuid.uuid4().hex[:6]}")
    lost = await sessions.accept_turns(runtime, tenant.tenant_id, "a", andrew_said(["hi"]))
    bob = andrew_said(["hi"]).model_copy(update={"user_id": "bob"})
    pending = await sessions.accept_turns(runtime, tenant.tenant_id, "b", bob)
    async with transaction(runtime.sessions) as db:
        for job_id, due_ago in ((lost.job_id, 31), (pending.job_id, 10)):
            await db.execute(
                update(IngestionJob)
                .where(IngestionJob.id == job_id)
                .values(retry_at=func.now() - timedelta(seconds=due_ago))
            )

    sent: list[uuid.UUID] = []
    monkeypatch.setattr(sweep_module, "enqueue_ingestion", sent.append)
    monkeypatch.setattr(sweep_module, "enqueue_training", lambda job_id: None)
    await sweep_module.sweep(runtime.sessions, runtime.settings)
    assert lost.job_id in sent and pending.job_id not in sent

    # Sent once: due again from now, so the next sweep leaves it to its new message.
    sent.clear()
    await sweep_module.sweep(runtime.sessions, runtime.settings)
    assert lost.job_id not in sent
