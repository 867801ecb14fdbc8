"""The sweep. Every worker runs one in a thread of its own while it consumes tasks: every few
seconds it queues again the running ingestion and training jobs whose worker stopped
heartbeating (killed, its machine gone, or cut off from the database for too long) and sends
them to the broker, and sends again the ingestion retries left unclaimed long after they were
due. A job swept twice, or by two workers, is still claimed only once."""

import asyncio
import logging
import threading
import uuid
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.core.db import create_engine, session_factory, transaction
from app.ingestion import repository as ingestion
from app.training_jobs import repository as training
from workers.celery_app import enqueue_ingestion, enqueue_training

log = logging.getLogger(__name__)


async def sweep(
    sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    """Queue the stale jobs again and send them; returns (ingestion, training) job ids."""
    stale_after = timedelta(seconds=settings.pipeline.stale_after_s)
    async with transaction(sessions) as db:
        ingest = list(await ingestion.requeue_stale(db, stale_after))
        ingest += await ingestion.overdue_retries(db, stale_after)
        train = list(
            await training.requeue_stale(db, stale_after, settings.pipeline.training_max_attempts)
        )
    for job_id in ingest:
        enqueue_ingestion(job_id)
    for job_id in train:
        enqueue_training(job_id)
    if ingest or train:
        log.warning(
            "sweep: sent again %d ingestion and %d training jobs (worker lost, or retry lost)",
            len(ingest),
            len(train),
        )
    return ingest, train


def start_sweeper(settings: Settings) -> threading.Thread:
    """The sweep every ``pipeline.sweep_every_s``, in a daemon thread with its own event loop
    and connection; a failed sweep (the database down) is logged and tried again."""
    assert settings.database_url

    async def forever() -> None:
        engine = create_engine(settings.database_url or "", pool_size=1)
        sessions = session_factory(engine)
        while True:
            try:
                await sweep(sessions, settings)
            except Exception as exc:
                log.warning("sweep failed, trying again later: %r", exc)
            await asyncio.sleep(settings.pipeline.sweep_every_s)

    thread = threading.Thread(target=asyncio.run, args=(forever(),), name="sweep", daemon=True)
    thread.start()
    return thread
