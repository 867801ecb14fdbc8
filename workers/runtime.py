"""Per worker process: one event loop, reused by every task the process runs, and what the
tasks need, created on first use: the database alone (training) or the full runtime with the
models (ingestion), loaded once."""

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import get_settings
from app.core.db import create_engine, session_factory
from app.core.runtime import Runtime, build_runtime

T = TypeVar("T")

_runner: asyncio.Runner | None = None
_runtime: Runtime | None = None
_sessions: async_sessionmaker[AsyncSession] | None = None


def run(coro: Coroutine[Any, Any, T]) -> T:
    global _runner
    if _runner is None:
        _runner = asyncio.Runner()
    return _runner.run(coro)


async def runtime() -> Runtime:
    global _runtime
    if _runtime is None:
        _runtime = await build_runtime(get_settings(), with_queue=True)
    return _runtime


def sessions() -> async_sessionmaker[AsyncSession]:
    global _sessions
    if _sessions is None:
        if _runtime is not None:
            _sessions = _runtime.sessions
        else:
            url = get_settings().database_url
            if not url:
                raise RuntimeError("set MEMR1_DATABASE_URL for the worker")
            _sessions = session_factory(create_engine(url, pool_size=2))
    return _sessions
