"""What a process needs to serve requests or run tasks, built once: settings, the database,
the embedder and the LLM backend. The API keeps it on ``app.state.runtime``; a worker keeps one
per process."""

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.embeddings import Embedder
from app.llm.backend import LLMBackend

Enqueue = Callable[[uuid.UUID], None]


def _no_queue(job_id: uuid.UUID) -> None:
    raise RuntimeError("this runtime has no task queue")


@dataclass
class Runtime:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    embedder: Embedder
    llm: LLMBackend
    enqueue_ingestion: Enqueue = _no_queue
    enqueue_training: Enqueue = _no_queue
    # adapter name -> path, of what this process's backend has loaded
    loaded_adapters: dict[str, str] = field(default_factory=dict)
    # active adapters that failed to load at start: their agents serve the base model
    unloadable_adapters: set[uuid.UUID] = field(default_factory=set)

    async def close(self) -> None:
        await self.llm.close()
        await self.embedder.close()
        await self.engine.dispose()


async def build_runtime(settings: Settings, *, with_queue: bool) -> Runtime:
    """Everything a process needs, from settings that name the database URL."""
    from app.core.db import create_engine, session_factory
    from app.embeddings import build_embedder
    from app.llm.factory import build_backend

    if not settings.database_url:
        raise RuntimeError("settings.database_url must be resolved before building a runtime")
    engine = create_engine(settings.database_url)
    runtime = Runtime(
        settings=settings,
        engine=engine,
        sessions=session_factory(engine),
        embedder=build_embedder(settings.embedding),
        llm=build_backend(settings),
    )
    if with_queue:
        from workers.celery_app import enqueue_ingestion, enqueue_training

        runtime.enqueue_ingestion = enqueue_ingestion
        runtime.enqueue_training = enqueue_training
    return runtime
