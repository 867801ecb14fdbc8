"""A user's jobs run in the order they were posted, whichever message arrives first; a job
killed at any point resumes without extracting its window again or applying a fact twice; a
worker that starts again resumes the jobs it was running at once."""

import asyncio
import json
import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from app.core.db import transaction
from app.core.errors import Upstream
from app.ingestion import repository
from app.ingestion import service as ingestion
from app.models import Agent, Episode, IngestionJob, JobStatus, Memory
from app.sessions import service as sessions
from tests.conftest import make_tenant
from tests.fixtures.fake_llm import FakeCall, FakeLLM
from tests.ingestion.test_pipeline import andrew_said, fact_per_turn, said
from workers.tasks import ingest as ingest_task


def is_manager(call: FakeCall) -> bool:
    return "operations" in json.dumps(call.json_schema)


async def bank(runtime: Any, tenant_id: uuid.UUID) -> list[str]:
    async with transaction(runtime.sessions) as db:
        rows = await db.scalars(
            select(Memory.text).where(Memory.tenant_id == tenant_id).order_by(Memory.created_at)
        )
        return list(rows)


async def test_a_later_job_delivered_first_runs_after_the_earlier_one(committed_runtime):
    runtime = committed_runtime
    runtime.llm = llm = FakeLLM(responder=fact_per_turn)
    tenant = await make_tenant(runtime, f"order-{uuid.uuid4().hex[:6]}")
    first = await sessions.accept_turns(runtime, tenant.tenant_id, "s1", andrew_said(["one"]))
    second = await sessions.accept_turns(runtime, tenant.tenant_id, "s2", andrew_said(["two"]))
    other = andrew_said(["hi"]).model_copy(update={"user_id": "bob"})
    elsewhere = await sessions.accept_turns(runtime, tenant.tenant_id, "s3", other)

    outcome = await ingestion.process_job(runtime, second.job_id)

    assert [is_manager(c) for c in llm.calls] == [False, True, False, True]
    assert outcome is not None and outcome.id == second.job_id and outcome.status == "succeeded"
    decided = [
        c.last_user.split("<fact>")[1].split("</fact>")[0] for c in llm.calls if is_manager(c)
    ]
    assert decided == [said("one"), said("two")]
    assert (await ingestion.get_job(runtime, tenant.tenant_id, first.job_id)).status == "succeeded"
    # The earlier job's own message then finds nothing left to do; another user's job was
    # not touched.
    assert await ingestion.process_job(runtime, first.job_id) is None
    assert (await ingestion.get_job(runtime, tenant.tenant_id, elsewhere.job_id)).status == "queued"


class PostsWhileRunning(FakeLLM):
    """While the first job's Manager decides, the user's next job is posted and its message
    delivered to another worker: it finds the user busy."""

    def __init__(self, runtime: Any, tenant_id: uuid.UUID) -> None:
        super().__init__(responder=fact_per_turn)
        self.runtime, self.tenant_id = runtime, tenant_id
        self.later: uuid.UUID | None = None
        self.delivered: list[Any] = []

    async def complete(self, messages: list[dict[str, str]], **kwargs: Any) -> Any:
        reply = await super().complete(messages, **kwargs)
        if self.later is None and is_manager(self.calls[-1]):
            stored = await sessions.accept_turns(
                self.runtime, self.tenant_id, "s", andrew_said(["two"])
            )
            self.later = stored.job_id
            self.delivered.append(await ingestion.process_job(self.runtime, stored.job_id))
        return reply


async def test_a_job_posted_while_its_user_is_busy_is_run_next_by_the_same_worker(
    committed_runtime,
):
    runtime = committed_runtime
    tenant = await make_tenant(runtime, f"drain-{uuid.uuid4().hex[:6]}")
    runtime.llm = llm = PostsWhileRunning(runtime, tenant.tenant_id)
    first = await sessions.accept_turns(runtime, tenant.tenant_id, "s", andrew_said(["one"]))

    outcome = await ingestion.process_job(runtime, first.job_id)

    assert outcome is not None and outcome.status == "succeeded"
    assert llm.delivered == [None]  # the other worker left it alone...
    assert llm.later is not None
    later = await ingestion.get_job(runtime, tenant.tenant_id, llm.later)
    assert later.status == "succeeded"  # ...and this one ran it after the first
    assert await bank(runtime, tenant.tenant_id) == [said("one"), said("two")]


class Killed(BaseException):
    """The worker process dying: nothing in the pipeline handles it."""


def two_facts_per_turn(call: FakeCall) -> Any:
    if not is_manager(call):
        text = call.last_user.split("<message>\n")[1].split("\n</message>")[0]
        return {"facts": [said(f"{text} (first)"), said(f"{text} (second)")]}
    return fact_per_turn(call)


async def test_a_job_killed_between_two_facts_of_a_turn_applies_each_fact_once(
    committed_runtime, database_url, monkeypatch
):
    runtime = committed_runtime
    tenant = await make_tenant(runtime, f"kill-{uuid.uuid4().hex[:6]}")
    texts = ["I visited Lisbon.", "I visited Porto."]
    stored = await sessions.accept_turns(runtime, tenant.tenant_id, "s", andrew_said(texts))

    def killed_at_the_second_fact(call: FakeCall) -> Any:
        if is_manager(call) and "(second)" in call.last_user:
            return Killed()
        return two_facts_per_turn(call)

    runtime.llm = FakeLLM(responder=killed_at_the_second_fact)
    try:
        await ingestion.process_job(runtime, stored.job_id, "ingest@a")
    except Killed:
        pass
    async with transaction(runtime.sessions) as db:
        job = await db.get(IngestionJob, stored.job_id)
    assert job.status == JobStatus.running and job.worker == "ingest@a"
    assert job.result["processed_turns"] == 0 and job.result["facts_done"] == 1
    assert await bank(runtime, tenant.tenant_id) == [said("I visited Lisbon. (first)")]

    # The worker starts again under the same name: its job is queued again at once.
    sent: list[uuid.UUID] = []
    monkeypatch.setattr(ingest_task, "enqueue_ingestion", sent.append)
    await asyncio.to_thread(
        ingest_task.resume_queued, database_url, timedelta(minutes=10), "ingest@a"
    )
    assert stored.job_id in sent
    runtime.llm = llm = FakeLLM(responder=two_facts_per_turn)
    outcome = await ingestion.process_job(runtime, stored.job_id, "ingest@a")

    assert outcome is not None and outcome.status == "succeeded" and outcome.attempts == 2
    expected = [said(f"{t} ({n})") for t in texts for n in ("first", "second")]
    assert await bank(runtime, tenant.tenant_id) == expected
    assert [op["text"] for op in outcome.operations] == expected
    # The window's facts were kept with their extraction: only the Manager ran for turn 0.
    decided = [c.last_user.split("<fact>")[1].split("</fact>")[0] for c in llm.calls]
    assert all(is_manager(c) for c in llm.calls)
    assert decided == expected[1:]
    async with transaction(runtime.sessions) as db:
        extracted = await db.scalars(
            select(Episode).where(
                Episode.tenant_id == tenant.tenant_id, Episode.agent == Agent.extractor
            )
        )
        assert len(extracted.all()) == 2  # one per turn, not one per attempt


async def test_a_starting_worker_queues_again_only_its_own_running_jobs(
    committed_runtime, database_url, monkeypatch
):
    runtime = committed_runtime
    tenant = await make_tenant(runtime, f"own-{uuid.uuid4().hex[:6]}")
    mine = await sessions.accept_turns(runtime, tenant.tenant_id, "a", andrew_said(["hi"]))
    bob = andrew_said(["hi"]).model_copy(update={"user_id": "bob"})
    theirs = await sessions.accept_turns(runtime, tenant.tenant_id, "b", bob)
    async with transaction(runtime.sessions) as db:
        await repository.claim(db, mine.job_id, "ingest@a")
        await repository.claim(db, theirs.job_id, "ingest@b")

    monkeypatch.setattr(ingest_task, "enqueue_ingestion", lambda job_id: None)
    await asyncio.to_thread(
        ingest_task.resume_queued, database_url, timedelta(minutes=10), "ingest@a"
    )

    async with transaction(runtime.sessions) as db:
        assert (await db.get(IngestionJob, mine.job_id)).status == JobStatus.queued
        assert (await db.get(IngestionJob, theirs.job_id)).status == JobStatus.running


async def two_jobs_the_model_fails_once(runtime: Any, label: str) -> tuple[Any, Any, Any]:
    """A tenant whose user has two jobs, and a model unreachable for its first call."""
    tenant = await make_tenant(runtime, f"{label}-{uuid.uuid4().hex[:6]}")
    first = await sessions.accept_turns(runtime, tenant.tenant_id, "s1", andrew_said(["one"]))
    second = await sessions.accept_turns(runtime, tenant.tenant_id, "s2", andrew_said(["two"]))
    runtime.llm = FakeLLM([Upstream("model server unreachable")], responder=fact_per_turn)
    return tenant, first, second


async def test_a_job_failed_for_good_does_not_hold_up_the_users_next_one(
    committed_runtime, monkeypatch
):
    runtime = committed_runtime
    monkeypatch.setattr(runtime.settings.pipeline, "ingest_max_attempts", 1)
    tenant, first, second = await two_jobs_the_model_fails_once(runtime, "failed")

    with pytest.raises(Upstream):
        await ingestion.process_job(runtime, second.job_id)

    failed = await ingestion.get_job(runtime, tenant.tenant_id, first.job_id)
    assert failed.status == "failed" and "unreachable" in (failed.error or "")
    later = await ingestion.get_job(runtime, tenant.tenant_id, second.job_id)
    assert later.status == "succeeded"
    assert await bank(runtime, tenant.tenant_id) == [said("two")]


async def test_every_message_for_a_job_waits_out_its_backoff_and_a_retry_is_one_attempt(
    committed_runtime, monkeypatch
):
    runtime = committed_runtime
    monkeypatch.setattr(runtime.settings.pipeline, "ingest_retry_backoff_s", 0.5)
    tenant, first, second = await two_jobs_the_model_fails_once(runtime, "backoff")
    with pytest.raises(Upstream):
        await ingestion.process_job(runtime, first.job_id)

    # Both jobs' messages come back before the retry is due: neither claims anything.
    for job_id in (first.job_id, second.job_id):
        assert await ingestion.process_job(runtime, job_id) is None
        async with transaction(runtime.sessions) as db:
            assert 0 < await repository.retry_wait(db, job_id) <= 0.5
    await asyncio.sleep(0.6)
    async with transaction(runtime.sessions) as db:
        assert await repository.retry_wait(db, second.job_id) == 0
    outcome = await ingestion.process_job(runtime, second.job_id)

    assert outcome is not None and outcome.status == "succeeded"
    done = await ingestion.get_job(runtime, tenant.tenant_id, first.job_id)
    assert done.status == "succeeded" and done.attempts == 2  # one failure, one retry
    async with transaction(runtime.sessions) as db:
        assert await repository.retry_wait(db, first.job_id) is None  # nothing left to do
