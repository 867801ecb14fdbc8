"""The adapter registry. Postgres is the source of truth; what the serving backend has loaded
is a cache that is filled on demand and reconciled on start."""

import uuid

from app.core.db import transaction
from app.core.errors import NotFound
from app.core.runtime import Runtime
from app.adapters import repository
from app.models import Adapter


async def ensure_loaded(runtime: Runtime, adapter: Adapter) -> str:
    if runtime.loaded_adapters.get(adapter.name) != adapter.path:
        await runtime.llm.load_adapter(adapter.name, adapter.path)
        runtime.loaded_adapters[adapter.name] = adapter.path
    return adapter.name


async def resolve(runtime: Runtime, tenant_id: uuid.UUID, agent: str, choice: str) -> str | None:
    """The adapter name to serve ``agent`` with: None for the base model."""
    if choice == "base":
        return None
    async with transaction(runtime.sessions) as db:
        if choice == "active":
            adapter = await repository.get_active(db, tenant_id, agent)
        else:
            adapter = await repository.get(db, tenant_id, uuid.UUID(choice))
            if adapter is None or adapter.agent != agent:
                raise NotFound(f"no {agent} adapter with id {choice}")
    return None if adapter is None else await ensure_loaded(runtime, adapter)


async def reconcile(runtime: Runtime) -> list[str]:
    """Load every active adapter into this process's backend (on start)."""
    async with transaction(runtime.sessions) as db:
        active = await repository.all_active(db)
    return [await ensure_loaded(runtime, adapter) for adapter in active]
