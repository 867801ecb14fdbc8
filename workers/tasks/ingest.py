"""Ingestion task: claim the job row, run the pipeline, record the outcome."""

import asyncio
import logging
import uuid
from datetime import timedelta

from celery import Task, shared_task

from app.core.db import UNAVAILABLE, create_engine, session_factory, transaction
from app.core.errors import Upstream
from app.ingestion import repository
from app.ingestion import service as ingestion
from workers.celery_app import INGEST_TASK, enqueue_ingestion
from workers.runtime import run, runtime

log = logging.getLogger(__name__)


async def _process(job_id: uuid.UUID, worker: str | None) -> float | None:
    """Run the job (and its user's others); returns in how many seconds to try this message
    again: when the user's next job is queued for a retry after a transient failure (the
    job row holds its backoff, so every message for it waits the same), else None."""
    rt = await runtime()
    try:
        await ingestion.process_job(rt, job_id, worker)
    except (Upstream, *UNAVAILABLE) as exc:
        log.warning("ingestion %s: %s", job_id, getattr(exc, "detail", repr(exc)))
    try:
        async with transaction(rt.sessions) as db:
            return await repository.retry_wait(db, job_id)
    except UNAVAILABLE:
        # Still down: the sweep sends the job again once it is back.
        return None


@shared_task(name=INGEST_TASK, bind=True, max_retries=None)
def ingest(self: Task, job_id: str) -> None:
    wait = run(_process(uuid.UUID(job_id), self.request.hostname))
    if wait is not None:
        raise self.retry(countdown=wait)


def resume_queued(database_url: str, stale_after: timedelta, worker: str | None = None) -> int:
    """Send again every queued job (its message may never have reached the broker, or been
    lost), after queueing again the running jobs that lost their worker: those without a
    heartbeat for ``stale_after``, and at once those claimed by ``worker``, the name of the
    worker now starting. Called by `memory-r1 worker` before it starts consuming; a job that
    is also still in the queue is claimed only once."""

    async def queued() -> list[uuid.UUID]:
        engine = create_engine(database_url, pool_size=1)
        try:
            async with transaction(session_factory(engine)) as db:
                stale = await repository.requeue_stale(db, stale_after, worker)
                if stale:
                    log.warning("queued again %d ingestion jobs that lost their worker", len(stale))
                return list(await repository.queued_job_ids(db))
        finally:
            await engine.dispose()

    job_ids = asyncio.run(queued())
    for job_id in job_ids:
        enqueue_ingestion(job_id)
    return len(job_ids)
