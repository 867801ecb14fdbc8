"""One event loop and one Runtime per worker process, created on first use and reused by every
task the process runs (the models load once)."""

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from app.core.config import get_settings
from app.core.runtime import Runtime, build_runtime

T = TypeVar("T")

_runner: asyncio.Runner | None = None
_runtime: Runtime | None = None


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
