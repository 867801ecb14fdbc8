"""The FastAPI application."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.adapters import service as adapters
from app.adapters.router import router as adapters_router
from app.ask.router import router as ask_router
from app.console import mount_console
from app.core.config import Settings, get_settings
from app.core.errors import install_error_handlers
from app.core.middleware import BodySizeLimitMiddleware, MetricsMiddleware
from app.core.runtime import Runtime, build_runtime
from app.core.tracing import instrument_app
from app.episodes.router import router as episodes_router
from app.feedback.router import router as feedback_router
from app.health.router import router as health_router
from app.ingestion.router import router as ingestion_router
from app.memories.router import router as memories_router
from app.sessions.router import router as sessions_router
from app.training_jobs.router import router as training_router
from app.users.router import router as users_router


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    """The API. With ``runtime`` given (tests, embedding), the caller owns its lifecycle;
    otherwise the lifespan builds one from ``settings`` (which must name a database URL)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if runtime is not None:
            app.state.runtime = runtime
            yield
            return
        built = await build_runtime(settings, with_queue=True)
        app.state.runtime = built
        # The API serves (and /readyz says not ready) while a model server loads.
        reconciling = asyncio.create_task(adapters.reconcile_when_served(built))
        try:
            yield
        finally:
            reconciling.cancel()
            await built.close()

    app = FastAPI(
        title="Memory-R1 service",
        version="0.1.0",
        description="Multi-tenant memory for LLM agents that learns how to manage memory.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.limits.max_body_bytes)
    app.add_middleware(MetricsMiddleware)
    for router in (
        health_router,
        sessions_router,
        ingestion_router,
        memories_router,
        users_router,
        ask_router,
        episodes_router,
        feedback_router,
        training_router,
        adapters_router,
    ):
        app.include_router(router)
    mount_console(app)
    instrument_app(app, settings.tracing)
    return app
