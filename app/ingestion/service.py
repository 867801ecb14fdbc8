"""Stage 1 of the pipeline: turns -> facts -> Manager operations -> the memory bank.

A user's jobs run in the order they were posted, each claimed once (queued -> running).
Facts are extracted for a window of turns at once (extraction reads only its own turn, so the
calls are independent and the model batches them); the Manager then decides fact by fact, in
turn order, because each decision reads the bank the previous ones wrote, while the next
window's facts are extracted alongside its calls. Progress is recorded in the transaction that
writes what it records (a window's extractions, each fact's operations), so a job resumed
after any failure or kill goes on from where it stopped, and applies no fact twice. No
transaction is open while a model runs: read, release, call, write."""

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.adapters import service as adapters
from app.core.db import UNAVAILABLE, transaction
from app.core.errors import AppError, Conflict, NotFound, Upstream
from app.core.runtime import Runtime
from app.core.schemas import ADD_ONLY, next_offset
from app.core.tracing import APPLY, EXTRACT, INGESTION_JOB, MANAGE, record_completion, tracer
from app.episodes import repository as episodes
from app.episodes.views import fact_from_json, fact_json, view_json
from app.ingestion import repository
from app.ingestion.schemas import IngestionPage, IngestionRead
from app.memories import repository as memories
from app.memories import service as memories_service
from app.memory.extractor import Extraction, extract_facts
from app.memory.manager import Decision, check_noop, decide, keep_fact
from app.memory.prompts import EXTRACT_PROMPT_VERSION, MANAGER_PROMPT_VERSION
from app.memory.schemas import Fact, Operation, OpKind, as_views
from app.models import Agent, IngestionJob, JobStatus, Turn
from app.sessions import repository as turns_repository
from app.sessions.schemas import TurnRead
from app.users import service as users_service

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Context:
    job: IngestionJob
    extractor: str | None
    manager: str | None


async def get_job(runtime: Runtime, tenant_id: uuid.UUID, job_id: uuid.UUID) -> IngestionRead:
    async with transaction(runtime.sessions) as db:
        job = await repository.get_job(db, job_id, tenant_id)
        if job is None:
            raise NotFound(f"ingestion job {job_id} not found")
        return IngestionRead.from_job(job)


async def list_jobs(
    runtime: Runtime, tenant_id: uuid.UUID, user_external_id: str, limit: int, offset: int
) -> IngestionPage:
    async with transaction(runtime.sessions) as db:
        user = await users_service.require_user(db, tenant_id, user_external_id)
        jobs = await repository.list_for_user(db, tenant_id, user.id, limit, offset)
        items = [IngestionRead.from_job(job) for job in jobs]
    return IngestionPage(items=items, next_offset=next_offset(offset, limit, len(items)))


async def job_turns(runtime: Runtime, tenant_id: uuid.UUID, job_id: uuid.UUID) -> list[TurnRead]:
    async with transaction(runtime.sessions) as db:
        job = await repository.get_job(db, job_id, tenant_id)
        if job is None:
            raise NotFound(f"ingestion job {job_id} not found")
        turns = await turns_repository.get_turns(db, tenant_id, job.turn_ids)
        return [TurnRead.model_validate(t, from_attributes=True) for t in turns]


async def retry_job(runtime: Runtime, tenant_id: uuid.UUID, job_id: uuid.UUID) -> IngestionRead:
    """Queue a failed job again (its error stays until the next run starts) and send it."""
    async with transaction(runtime.sessions) as db:
        job = await repository.requeue_failed(db, job_id, tenant_id)
        if job is None:
            current = await repository.get_job(db, job_id, tenant_id)
            if current is None:
                raise NotFound(f"ingestion job {job_id} not found")
            raise Conflict(
                f"ingestion job {job_id} is {current.status}; only a failed job is retried"
            )
    await asyncio.to_thread(runtime.enqueue_ingestion, job.id)
    return IngestionRead.from_job(job)


async def process_job(
    runtime: Runtime, job_id: uuid.UUID, worker: str | None = None
) -> IngestionRead | None:
    """Run the jobs of ``job_id``'s user in the order they were posted, from the first
    unfinished one to the last queued, each claimed (queued -> running) by ``worker``. Returns
    ``job_id``'s outcome when this call ran it; None when it did not (the user's first
    unfinished job is running elsewhere, whose worker goes on to the next ones, or it is done).

    Raises Upstream (or a database error) when the model or the database went away: that job
    is then queued again for a retry, which also resumes the jobs after it, or failed once it
    has used its attempts. A job that fails for good does not hold up the ones after it: they
    run, and its error is raised at the end. While a job runs, a heartbeat records that it is
    alive; if the sweep queued it again meanwhile (its heartbeats stopped reaching the
    database), this call stops without writing anything more and returns None."""
    outcome: IngestionRead | None = None
    failure: Exception | None = None
    while True:
        async with transaction(runtime.sessions) as db:
            job = await repository.claim(db, job_id, worker)
            if job is None:
                break
            turns = await turns_repository.get_turns(db, job.tenant_id, job.turn_ids)
        beat = asyncio.create_task(_heartbeat(runtime, job))
        try:
            with tracer.start_as_current_span(
                INGESTION_JOB,
                attributes={"memory_r1.job_id": str(job.id), "memory_r1.turns": len(turns)},
            ):
                done = await _run(runtime, job, turns)
        except LostClaim:
            log.warning("ingestion %s: queued again while this worker ran it; stopping", job.id)
            return None
        except Exception as exc:
            done = await get_job(runtime, job.tenant_id, job.id)
            if done.status != JobStatus.failed:  # queued for a retry, which goes first
                raise
            failure = failure or exc  # failed for good, its error recorded: go on
        finally:
            beat.cancel()
        if job.id == job_id:
            outcome = done
    if failure is not None:
        raise failure
    return outcome


class LostClaim(Exception):
    """The job was queued again (by the sweep) while this run still held it."""


async def _heartbeat(runtime: Runtime, job: IngestionJob) -> None:
    every = runtime.settings.pipeline.heartbeat_s
    while True:
        await asyncio.sleep(every)
        try:
            async with transaction(runtime.sessions) as db:
                if not await repository.heartbeat(db, job.id, job.attempts):
                    return
        except Exception as exc:  # the database may be back at the next beat
            log.warning("ingestion %s: heartbeat failed: %r", job.id, exc)


async def _run(runtime: Runtime, job: IngestionJob, turns: Sequence[Turn]) -> IngestionRead:
    """Process the job's turns after its last recorded progress. Progress is the turns done,
    the facts extracted from the turns of the current window (stored with their extraction
    episodes, so a resumed run does not extract them again) and how many of the first
    pending turn's facts are done (stored with each fact's operations, in one transaction,
    so a run killed at any point applies no fact twice)."""
    try:
        context = _Context(
            job=job,
            extractor=await adapters.resolve(
                runtime, job.tenant_id, Agent.extractor, job.extractor_adapter
            ),
            manager=await adapters.resolve(
                runtime, job.tenant_id, Agent.manager, job.manager_adapter
            ),
        )
        result: dict[str, Any] = {
            "processed_turns": 0,
            "operations": [],
            "window": [],
            "facts_done": 0,
            **(job.result or {}),
        }
        by_id = {str(turn.id): turn for turn in turns}
        size = runtime.settings.pipeline.extract_concurrency
        ahead: _Ahead | None = None
        try:
            while result["processed_turns"] < len(turns):
                # The turns after the stored window: extracted while its facts are decided on.
                start = result["processed_turns"] + len(result["window"])
                if ahead is None and start < len(turns):
                    ahead = _Ahead.start(runtime, context, turns[start : start + size])
                if not result["window"]:
                    assert ahead is not None  # the window is empty, so its turns are ahead
                    result = await _store_window(runtime, context, ahead, result)
                    ahead = None
                    continue
                turn = by_id[result["window"][0]["turn_id"]]
                facts = [fact_from_json(f) for f in result["window"][0]["facts"]]
                for fact in facts[result["facts_done"] :]:
                    result = await _manage_fact(runtime, context, turn, fact, result)
                result = {
                    **result,
                    "processed_turns": result["processed_turns"] + 1,
                    "window": result["window"][1:],
                    "facts_done": 0,
                }
                async with transaction(runtime.sessions) as db:
                    await _save(db, job, result)
        finally:
            if ahead is not None:
                await ahead.cancel()
    except LostClaim:
        raise
    except (Upstream, *UNAVAILABLE) as exc:
        # The model endpoint or the database went away: try again later, a few times.
        reason = exc.detail if isinstance(exc, Upstream) else f"database unavailable: {exc!r}"
        await _finish_when_reachable(runtime, job, reason)
        raise
    except AppError as exc:
        await _finish(runtime, job, JobStatus.failed, exc.detail)
        raise
    except Exception as exc:
        await _finish(runtime, job, JobStatus.failed, f"internal error: {exc!r}")
        raise
    await _finish(runtime, job, JobStatus.succeeded, None)
    return await get_job(runtime, job.tenant_id, job.id)


async def _save(db: AsyncSession, job: IngestionJob, result: dict[str, Any]) -> None:
    """Record progress in ``db``'s transaction; LostClaim (rolling it back) when the sweep
    took the job away from this run."""
    if not await repository.save_result(db, job.id, result, job.attempts):
        raise LostClaim


async def _finish(
    runtime: Runtime,
    job: IngestionJob,
    status: JobStatus,
    error: str | None,
    retry_after: timedelta | None = None,
) -> None:
    async with transaction(runtime.sessions) as db:
        await repository.finish(db, job.id, status, error, job.attempts, retry_after)


async def _finish_when_reachable(runtime: Runtime, job: IngestionJob, error: str) -> None:
    """After a transient failure: queue the job again, due after a backoff that doubles with
    each attempt, or fail it once it has used its attempts. Tried again while the database
    is unreachable (restarting, say), for up to ``stale_after_s``; after that the sweep
    queues the job again."""
    pipeline = runtime.settings.pipeline
    if job.attempts >= pipeline.ingest_max_attempts:
        status, retry_after = JobStatus.failed, None
    else:
        backoff = pipeline.ingest_retry_backoff_s * 2 ** (job.attempts - 1)
        status = JobStatus.queued
        retry_after = timedelta(seconds=min(backoff, pipeline.ingest_retry_max_backoff_s))
    deadline = time.monotonic() + pipeline.stale_after_s
    pause = 0.5
    while True:
        try:
            return await _finish(runtime, job, status, error, retry_after)
        except UNAVAILABLE:
            if time.monotonic() + pause > deadline:
                raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 5.0)


@dataclass(frozen=True)
class _Ahead:
    """The extractions of the next window's turns, running while the Manager decides on the
    current window's facts (extraction reads only its own turn). Kept in memory until the
    current window is done, then stored as the next one: a run stopped before that extracts
    those turns again, and nothing it extracted was applied."""

    turns: Sequence[Turn]
    task: asyncio.Task[list[Extraction]]

    @classmethod
    def start(cls, runtime: Runtime, ctx: _Context, turns: Sequence[Turn]) -> "_Ahead":
        return cls(turns, asyncio.create_task(_extract_all(runtime, ctx, turns)))

    async def cancel(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def _store_window(
    runtime: Runtime, ctx: _Context, ahead: _Ahead, result: dict[str, Any]
) -> dict[str, Any]:
    """Wait for ``ahead``'s extractions and store them, with their episodes, as the window."""
    turns, extractions = ahead.turns, await ahead.task
    window = [
        {"turn_id": str(turn.id), "facts": [fact_json(f) for f in extraction.facts]}
        for turn, extraction in zip(turns, extractions, strict=True)
    ]
    result = {**result, "window": window, "facts_done": 0}
    async with transaction(runtime.sessions) as db:
        for turn, extraction in zip(turns, extractions, strict=True):
            await _log_extraction(db, runtime, ctx, turn, extraction)
        await _save(db, ctx.job, result)
    return result


async def _extract_all(runtime: Runtime, ctx: _Context, turns: Sequence[Turn]) -> list[Extraction]:
    """The extractions of ``turns``, computed concurrently (model calls only, no database). The
    first failure is raised as itself, and the other calls are cancelled."""
    max_facts = runtime.settings.pipeline.max_facts_per_turn
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_extract(runtime, ctx, turn, max_facts)) for turn in turns]
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return [task.result() for task in tasks]


async def _extract(runtime: Runtime, ctx: _Context, turn: Turn, max_facts: int) -> Extraction:
    with tracer.start_as_current_span(EXTRACT) as span:
        extraction = await extract_facts(
            runtime.llm,
            speaker=turn.speaker,
            text=turn.text,
            occurred_at=turn.occurred_at,
            adapter=ctx.extractor,
            max_facts=max_facts,
        )
        record_completion(
            span,
            extraction.completion,
            **{
                "memory_r1.facts": len(extraction.facts),
                "memory_r1.rejected": len(extraction.dropped),
                "memory_r1.error": extraction.error,
            },
        )
    return extraction


async def _log_extraction(
    db: AsyncSession, runtime: Runtime, ctx: _Context, turn: Turn, extraction: Extraction
) -> None:
    await episodes.add(
        db,
        tenant_id=ctx.job.tenant_id,
        user_id=ctx.job.user_id,
        agent=Agent.extractor,
        prompt_version=EXTRACT_PROMPT_VERSION,
        input_={"turn_id": str(turn.id), "speaker": turn.speaker, "text": turn.text},
        completion=extraction.completion,
        parsed={
            "facts": [fact_json(f) for f in extraction.facts],
            "rejected": [{"raw": text, "reason": why} for text, why in extraction.dropped],
        },
        error=extraction.error,
        model=runtime.llm.base_model,
    )


async def _manage_fact(
    runtime: Runtime, ctx: _Context, turn: Turn, fact: Fact, result: dict[str, Any]
) -> dict[str, Any]:
    """Decide on one fact and apply the operations; the progress that follows (``result``
    with this fact done) is recorded in the same transaction, and returned."""
    job = ctx.job
    [embedding] = await runtime.embedder.embed([fact.text])
    async with transaction(runtime.sessions) as db:
        hits = await memories.search(
            db, job.tenant_id, job.user_id, embedding, runtime.settings.pipeline.manager_candidates
        )
    seen = {memory.id: memory.version for memory, _ in hits}
    candidates = as_views([(m.id, m.text, m.speaker, m.occurred_at) for m, _ in hits])
    add_only = job.manager_adapter == ADD_ONLY
    with tracer.start_as_current_span(MANAGE) as span:
        if add_only:
            decision = Decision([Operation(OpKind.ADD, None, fact.text)], [], None, None)
        else:
            decision = await decide(runtime.llm, fact, candidates, adapter=ctx.manager)
            nearest = 1.0 - hits[0][1] if hits else None  # hits come nearest first
            noop_min = runtime.settings.pipeline.noop_min_similarity
            decision = keep_fact(check_noop(decision, fact, nearest, noop_min), fact)
        record_completion(
            span,
            decision.completion,
            **{
                "memory_r1.candidates": len(candidates),
                "memory_r1.operations": [op.kind.value for op in decision.operations],
                "memory_r1.rejected": len(decision.rejected),
                "memory_r1.error": decision.error,
            },
        )
    texts = [op.text for op in decision.operations if op.kind != OpKind.DELETE and op.text]
    embeddings = dict(zip(texts, await runtime.embedder.embed(texts), strict=True))
    async with transaction(runtime.sessions) as db:
        episode = await episodes.add(
            db,
            tenant_id=job.tenant_id,
            user_id=job.user_id,
            agent=Agent.manager,
            prompt_version=ADD_ONLY if add_only else MANAGER_PROMPT_VERSION,
            input_={"fact": fact_json(fact), "candidates": [view_json(c) for c in candidates]},
            completion=decision.completion,
            parsed={
                "operations": [
                    {"op": op.kind.value, "memory_id": str(op.memory_id or ""), "text": op.text}
                    for op in decision.operations
                ],
                "rejected": [{"raw": r.raw, "reason": r.reason} for r in decision.rejected],
            },
            error=decision.error,
            model=ADD_ONLY if add_only else runtime.llm.base_model,
        )
        with tracer.start_as_current_span(APPLY) as span:
            applied, stale = await memories_service.apply_operations(
                db,
                tenant_id=job.tenant_id,
                user_id=job.user_id,
                operations=decision.operations,
                seen_versions=seen,
                embeddings=embeddings,
                fact=fact,
                source_turn_id=turn.id,
                episode_id=episode.id,
            )
            span.set_attributes({"memory_r1.applied": len(applied), "memory_r1.stale": len(stale)})
        result = {
            **result,
            "operations": result["operations"] + applied,
            "facts_done": result["facts_done"] + 1,
        }
        await _save(db, job, result)
    if decision.rejected or stale:
        log.info(
            "episode %s: %d rejected, %d stale operations",
            episode.id,
            len(decision.rejected),
            len(stale),
        )
    return result
